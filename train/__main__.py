"""Train a U-Net on ADE20K or any dataset in ADE layout.

    python -m train --config configs/camvid_lite.yaml
    python -m train --config configs/ade20k_unet.yaml --data-dir data/ADEChallengeData2016
    python -m train download --dest data/          # ADEChallengeData2016.zip, sha1-checked
    python -m train average runs/a/last.keras runs/b/last.keras -o runs/ab/last.keras   # one graph, mean logits
    python -m train snap-weights runs/camvid_lite/last.keras   # int8-grid kernels -> last_w8.keras
    python -m train resize runs/a/last.keras --height 288 --width 384 -o runs/a/last_384x288.keras
"""

from __future__ import annotations

import json
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

app = make_app("Train segmentation models (run with --config to train; `download` fetches ADE20K).")


class Architecture(str, Enum):
    """The networks `train.models` builds (the config key `architecture`)."""

    unet = "unet"
    unet_lite = "unet-lite"
    unet_lite2 = "unet-lite2"
    dilated_lite = "dilated-lite"


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (keys = TrainConfig fields)."),
    data_dir: Optional[str] = typer.Option(None, "--data", "--data-dir", help="Dataset root in ADE layout."),
    run_dir: Optional[str] = typer.Option(None, "--output", "-o", "--run-dir",
                                          help="Run folder (config, checkpoints, plots, logs)."),
    architecture: Optional[Architecture] = typer.Option(None, help="Network (default: the config's)."),
    height: Optional[int] = typer.Option(None, help="Input height."),
    width: Optional[int] = typer.Option(None, help="Input width."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (global, over all replicas)."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate."),
    max_examples: Optional[int] = typer.Option(None, "--max-images", "--max-examples",
                                               help="Debug: use only the first N pairs per split."),
    mixed_precision: Optional[bool] = typer.Option(None, "--mixed-precision/--no-mixed-precision",
                                                   help="float16 compute on GPUs."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    init_from: Optional[str] = typer.Option(None, help="Start from this .keras model's weights (fine-tuning)."),
) -> None:
    exit_unless_installed("training")
    if ctx.invoked_subcommand is not None:
        return
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config).replace(
            data_dir=data_dir, run_dir=run_dir, architecture=architecture and architecture.value, height=height,
            width=width, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, max_examples=max_examples,
            mixed_precision=mixed_precision, seed=seed, init_from=init_from,
        )
    except ConfigError as exc:
        fail(str(exc))
    with native_output_hidden():  # TensorFlow's start-up log lines
        from .run import fit  # heavy: imports TensorFlow

    from edgeseg.errors import signals_interrupt

    try:
        with signals_interrupt():
            fit(cfg)
    except EdgesegError as exc:  # ConfigError, DatasetError, ClusterError, a full disk while saving, ...
        fail(str(exc), exc.exit_code)
    except ValueError as exc:  # settings Keras or TensorFlow refuse
        fail(str(exc))
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal_name", "SIGINT")
        fail(f"training stopped by {name} {resume_point(Path(cfg.run_dir))}; run the same command again to resume"
             " from there", 143 if name == "SIGTERM" else 130)
    except Exception as exc:  # noqa: BLE001 - TF wraps errors raised inside tf.data
        if os.environ.get("TF_CONFIG") and exc.__class__.__name__ in LOST_PEER_ERRORS:
            lost_worker(exc, cfg.run_dir)
        message = str(exc).strip().splitlines()
        text = next((line for line in message if "DatasetError" in line or "Error:" in line), message[0] if message else "")
        fail(f"training stopped: {text.split('DatasetError:')[-1].strip()}", 1)


def resume_point(run_dir: Path) -> str:
    """Where an interrupted run will resume, read from its backup."""
    import json

    metadata = run_dir / "backup" / "training_metadata.json"
    try:
        epoch = int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return "before finishing its first epoch (it will start over)"
    return f"after finishing epoch {epoch} (backup in {run_dir / 'backup'})"


# What TensorFlow raises on the workers left behind when one worker of a multi-worker run is lost.
LOST_PEER_ERRORS = {"UnavailableError", "CancelledError", "DeadlineExceededError", "AbortedError", "InternalError",
                    "FailedPreconditionError"}


def lost_worker(exc: Exception, run_dir: str) -> None:
    """One line for a multi-worker run whose peer was lost, then exit at once: TensorFlow's
    collective runtime would otherwise keep the process waiting on the dead peer at shutdown."""
    typer.secho(f"error: training stopped: lost contact with another worker ({exc.__class__.__name__}); start every worker"
                f" again with the same command to resume from the last finished epoch (backups in {run_dir}/backup)",
                fg=typer.colors.RED, err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


@app.command()
def download(
    dest: Path = typer.Option(Path("data"), "--output", "-o", "--dest",
                              help="Folder for the zip and the extracted dataset."),
    name: str = typer.Option("ADEChallengeData2016", "--name", help="ADEChallengeData2016 or release_test."),
    url: Optional[str] = typer.Option(None, "--url", help="Override the download URL (mirrors, tests)."),
    sha1: Optional[str] = typer.Option(None, "--sha1", help="Override the expected SHA-1."),
    keep_zip: bool = typer.Option(True, "--keep-zip/--delete-zip", help="Keep the archive after extraction."),
) -> None:
    """Download ADE20K (SceneParse150) with resume and SHA-1 check, then extract it safely."""
    from .download import ARCHIVES, DownloadError, fetch_dataset

    if name not in ARCHIVES:
        fail(f"unknown archive {name!r}; choose one of {', '.join(ARCHIVES)}")
    try:
        root = fetch_dataset(dest, url=url, sha1=sha1, name=name, keep_zip=keep_zip)
    except DownloadError as exc:
        fail(str(exc), 1)
    typer.echo(f"dataset ready in {root}")


@app.command()
def throughput(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (network, size, batch, data)."),
    data_dir: Optional[str] = typer.Option(None, "--data", "--data-dir",
                                           help="Dataset root in ADE layout (a real batch is read from it)."),
    architecture: Optional[Architecture] = typer.Option(None, help="Network (default: the config's)."),
    height: Optional[int] = typer.Option(None, help="Input height."),
    width: Optional[int] = typer.Option(None, help="Input width."),
    base_filters: Optional[int] = typer.Option(None, help="unet: first-level width (64 = the tutorial)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    steps: int = typer.Option(10, help="Timed training steps."),
    warmup: int = typer.Option(3, help="Untimed steps first (graph tracing, allocation)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON line instead of text."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also append the result as one JSON line"
                                          " to this file."),
) -> None:
    """Measure training images/s of a network on this machine (printed; see README)."""
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config).replace(data_dir=data_dir, architecture=architecture and architecture.value,
                                          height=height, width=width,
                                          base_filters=base_filters, batch_size=batch_size)
    except ConfigError as exc:
        fail(str(exc))
    with native_output_hidden():  # TensorFlow's start-up log lines
        from .throughput import append, measure  # heavy: imports TensorFlow

    try:
        result = measure(cfg, steps=steps, warmup=warmup)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"{result['architecture']} {result['input_hw'][0]}x{result['input_hw'][1]} batch"
                   f" {result['batch_size']}: {result['images_per_second']} images/s ({result['step_ms_p50']} ms/step,"
                   f" {result['gflops_forward']} GFLOP forward, ~{result['train_gflop_per_second']} GFLOP/s) on"
                   f" {result['cores']} cores of {result['cpu']} ({' '.join(result['simd']) or 'no SIMD flags read'})")
    if output is not None:
        append(result, output)


@app.command("snap-weights")
def snap_weights(
    model: Path = typer.Argument(..., help="A .keras model from `python -m train` (e.g. runs/NAME/last.keras)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Where the snapped model goes (default: <stem>_w8.keras beside it)."),
) -> None:
    """Put the convolution kernels on the int8 grid the TFLite converter uses (the int8 export then
    loses nothing to its weights; convert the snapped model)."""
    with native_output_hidden():  # TensorFlow's start-up log lines
        from .snap import SnapError, snap_file  # heavy: imports TensorFlow

    try:
        path, stats = snap_file(model, output)
    except (SnapError, EdgesegError) as exc:
        fail(str(exc))
    typer.echo(f"{path}: {stats['kernels']} kernels ({stats['weights']:,} weights) on the per-channel int8 grid;"
               f" largest change {100 * stats['max_change_of_peak']:.2f} % of its channel's peak")


@app.command()
def average(
    models: list[Path] = typer.Argument(..., help="Two or more .keras models of one dataset and input size"
                                        " (e.g. runs/A/last.keras runs/B/last.keras)."),
    output: Path = typer.Option(..., "--output", "-o", help="The averaged model (.keras; labels.json goes beside it)."),
) -> None:
    """Average trained models into one flat graph (the mean of their logits): one file to convert and
    run, more accurate on unseen frames than each member, at the members' summed cost."""
    with native_output_hidden():  # TensorFlow's start-up log lines
        from .ensemble import EnsembleError, average_files  # heavy: imports TensorFlow

    try:
        path, model = average_files(models, output)
    except (EnsembleError, EdgesegError) as exc:
        fail(str(exc))
    typer.echo(f"{path}: the mean of {len(models)} models' logits, {model.count_params():,} parameters in one graph")


@app.command()
def resize(
    model: Path = typer.Argument(..., help="A .keras model from `python -m train` (e.g. runs/NAME/last.keras)."),
    height: int = typer.Option(..., "--height", help="New input height in pixels (a multiple of the network's"
                               " downsampling, 32 for unet-lite)."),
    width: int = typer.Option(..., "--width", help="New input width in pixels."),
    output: Path = typer.Option(..., "--output", "-o", help="The resized model (.keras; labels.json goes beside it)."),
) -> None:
    """Rebuild a trained model for another input size, same weights: networks trained on zoomed crops
    read whole frames better somewhat larger than their training size (configs/lodo/README.md)."""
    with native_output_hidden():  # TensorFlow's start-up log lines
        from .resize import ResizeError, resize_file  # heavy: imports TensorFlow

    try:
        path, resized = resize_file(model, output, height, width)
    except (ResizeError, EdgesegError) as exc:
        fail(str(exc))
    typer.echo(f"{path}: input {height}x{width} (HxW), output {resized.output_shape[1]}x{resized.output_shape[2]},"
               f" the same {resized.count_params():,} parameters")


if __name__ == "__main__":
    sys.exit(run_app(app))
