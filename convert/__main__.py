"""Export a trained Keras model to float16 / int8 TFLite, calibrated on real images, verified.

    python -m convert --model runs/camvid_lite/best.keras --quantize int8 \
        --calib-data ../shared/data/camvid --eval-data ../shared/data/camvid --out-dir models
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402

from edgeseg.cliapp import make_app, run_app  # noqa: E402
from edgeseg.errors import EdgesegError, fail  # noqa: E402
from edgeseg.extras import exit_unless_installed  # noqa: E402
from edgeseg.quiet import native_output_hidden  # noqa: E402

app = make_app()


class Quantize(str, Enum):
    float32 = "float32"
    float16 = "float16"
    int8 = "int8"
    all = "all"


class IOType(str, Enum):
    int8 = "int8"
    uint8 = "uint8"
    float32 = "float32"


class Fallback(str, Enum):
    none = "none"
    int16x8 = "int16x8"
    float_head = "float-head"


def _modes(quantize: list[Quantize], edgetpu: bool, fallback: Fallback, io_type: IOType | None) -> tuple[str, ...]:
    """The export modes asked for, in order; combinations the Edge TPU cannot run are one error line."""
    if edgetpu and fallback != Fallback.none:
        fail(f"--fallback {fallback.value} makes a model with float or 16-bit ops, which the Edge TPU cannot run;"
             " drop --fallback or --edgetpu")
    if edgetpu and io_type == IOType.float32:
        fail("--edgetpu needs integer I/O but --io-type is float32; drop --io-type (uint8 is used) or --edgetpu")
    asked = {mode for q in quantize for mode in (("float16", "int8") if q == Quantize.all else (q.value,))}
    explicit_float = [q.value for q in quantize if q in (Quantize.float16, Quantize.float32)]
    if edgetpu and explicit_float:
        fail(f"the Edge TPU runs only int8 models but --quantize asks for {', '.join(explicit_float)};"
             " use --quantize int8")
    return tuple(m for m in ("float32", "float16", "int8") if m in asked)


@app.command()
def main(
    model: Path = typer.Option(..., "--model", help="Keras model (.keras from `python -m train`) or SavedModel folder."),
    quantize: list[Quantize] = typer.Option([Quantize.all], "--quantize",
                                            help="float32, float16, int8, or all (float16 + int8); repeat to combine,"
                                                 " e.g. --quantize float32 --quantize all."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Images for int8 calibration (ADE layout or a folder)."),
    calib_split: str = typer.Option("training", "--calib-split", help="Split used for calibration."),
    eval_data: Path = typer.Option(..., "--eval-data", help="Held-out images + annotations (ADE layout)."),
    eval_split: str = typer.Option("validation", "--eval-split", help="Split used for verification."),
    out_dir: Path = typer.Option(Path("export"), "--output", "-o", "--out-dir", help="Where models and reports go."),
    num_calib: int = typer.Option(200, "--num-calib", min=1, help="Calibration images."),
    num_eval: int = typer.Option(0, "--num-eval", min=0, help="Verification images (0 = all of the split)."),
    io_type: Optional[IOType] = typer.Option(None, "--io-type", help="int8 model I/O: int8 (default), uint8 (Edge TPU), float32."),
    argmax: bool = typer.Option(False, "--argmax", help="ArgMax inside the model: output a uint8 class map."),
    edgetpu: bool = typer.Option(False, "--edgetpu", help="Edge TPU: uint8 I/O, then edgetpu_compiler."),
    name: Optional[str] = typer.Option(None, "--name", help="Output base name (default: the model's folder name)."),
    min_agreement: float = typer.Option(0.97, "--min-agreement", help="Fail when pixel agreement with Keras is lower."),
    max_miou_drop: float = typer.Option(0.02, "--max-miou-drop", help="Fail when mIoU drops more than this (fraction)."),
    fallback: Fallback = typer.Option(Fallback.none, "--fallback",
                                      help="If int8 fails: also try int16x8 (16-bit activations) or float-head"
                                           " (int8 body, float last conv and I/O)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration image selection."),
    check_video: Optional[list[Path]] = typer.Option(None, "--check-video", exists=True, dir_okay=False,
                                                     help="Unlabelled clip the model never saw (repeatable): also"
                                                          " measure agreement with Keras on its frames, gated by"
                                                          " --min-agreement."),
    check_frames: int = typer.Option(24, "--check-frames", min=1, help="Evenly spaced frames per --check-video clip."),
) -> None:
    """Export float16 / int8 TFLite models with embedded metadata and verify them against Keras."""
    exit_unless_installed("convert")
    with native_output_hidden():  # TensorFlow's start-up log lines
        from .pipeline import ConvertOptions, run

    modes = _modes(quantize, edgetpu, fallback, io_type)
    options = ConvertOptions(
        model=model, modes=modes,
        calib_data=calib_data, calib_split=calib_split, eval_data=eval_data, eval_split=eval_split,
        out_dir=out_dir, num_calib=num_calib, num_eval=num_eval,
        io_type=(io_type.value if io_type else ("uint8" if edgetpu else "int8")), argmax=argmax, edgetpu=edgetpu,
        name=name or (model.parent.name if model.stem == "best" else model.stem), min_agreement=min_agreement,
        max_miou_drop=max_miou_drop, fallback=fallback.value, seed=seed, check_videos=tuple(check_video or ()),
        check_frames=check_frames,
    )

    try:
        report = run(options)
    except EdgesegError as exc:  # ConvertError, DatasetError, OutputError, ...
        fail(str(exc), exc.exit_code)
    if not report["passed"]:
        failed = [r for r in report["models"] if not r["passed"]]
        fail("; ".join(f"{os.path.basename(r['path'])}: {r['reason']}" for r in failed)
             + f" - see {report['report_md']}", code=1)



if __name__ == "__main__":
    sys.exit(run_app(app))
