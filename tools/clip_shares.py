"""What each model calls unlabelled clips: the top classes by share of pixels, as a Markdown table.

    python tools/clip_shares.py runs/lodo/robust320_hold_0006R0/last.keras runs/lodo/src15_hold_0006R0/last.keras
    python tools/clip_shares.py models/camvid_lite_int8.tflite runs/camvid_lite_src15_rejected/last.keras --frames 24
    python tools/clip_shares.py --ensemble A.keras B.keras C.keras     # + the mean of their softmax outputs

A held-out CamVid drive is still CamVid (same camera, same city); footage unlike it shows what a
recipe does on frames it never saw, and needs no annotations. The numbers are those of the
`convert --check-video` report (24 evenly spaced frames per clip, `convert.verify.top_classes`):
Keras models through the shared preprocessing, `.tflite` models through the edge runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CLIPS = [ROOT / "edgeseg/assets/solidWhiteRight.mp4", ROOT / "../shared/data/video/vtest.avi",
                 ROOT / "../shared/data/video/car-detection.mp4"]


def class_maps(model: Path, frames_bgr: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """The model's class map of each frame and its class names."""
    if model.suffix == ".tflite":
        from edgeseg.segmenter import Segmenter, SegmenterOptions

        segmenter = Segmenter(SegmenterOptions(model=model, device="cpu"))
        return [segmenter.classes(segmenter.infer(frame)) for frame in frames_bgr], segmenter.labels.names
    from convert.source import labels_for, load_source
    from convert.verify import keras_classes
    from edgeseg.preprocess import InputSpec

    source = load_source(model)
    spec = InputSpec(height=source.height, width=source.width)
    return keras_classes(source, frames_bgr, spec), labels_for(source, None).names


def mean_softmax_maps(models: list[Path], frames_bgr: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """Class maps of the mean softmax of Keras `models` (same input size): what a student distilled
    from them is taught on these frames."""
    from convert.source import labels_for, load_source
    from edgeseg.preprocess import InputSpec, preprocess

    sources = [load_source(model) for model in models]
    spec = InputSpec(height=sources[0].height, width=sources[0].width)
    maps = []
    for frame in frames_bgr:
        batch = preprocess(frame, spec, bgr=True)[np.newaxis]
        probabilities = []
        for source in sources:
            logits = source.predict(batch)[0]
            exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probabilities.append(exp / exp.sum(axis=-1, keepdims=True))
        maps.append(np.mean(probabilities, axis=0).argmax(axis=-1).astype(np.uint8))
    return maps, labels_for(sources[0], None).names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help=".keras or .tflite models")
    parser.add_argument("--clip", action="append", type=Path, help="video file (repeatable; default: the three check clips)")
    parser.add_argument("--frames", type=int, default=24, help="evenly spaced frames per clip")
    parser.add_argument("--top", type=int, default=4, help="classes listed per clip")
    parser.add_argument("--ensemble", action="store_true", help="add a row for the mean softmax of the (Keras) models")
    args = parser.parse_args(argv)
    from convert.verify import top_classes
    from edgeseg.sources import spaced_frames

    clips = args.clip or DEFAULT_CLIPS
    for path in [*args.models, *clips]:
        if not path.is_file():
            print(f"error: {path} is not a file; pass an existing model or clip", file=sys.stderr)
            return 2
    frames = {clip.name: spaced_frames(clip, args.frames) for clip in clips}
    print("| model | " + " | ".join(f"`{name}`" for name in frames) + " |")
    print("|---|" + "---|" * len(frames))
    for model in args.models:
        cells = []
        for clip_frames in frames.values():
            maps, names = class_maps(model, clip_frames)
            shares = top_classes(maps, names, top=args.top)
            cells.append(", ".join(f"{name} {share:.0%}" for name, share in shares.items()))
        print(f"| `{model}` | " + " | ".join(cells) + " |", flush=True)
    if args.ensemble:
        if any(model.suffix != ".keras" for model in args.models):
            print("error: --ensemble averages .keras models only", file=sys.stderr)
            return 2
        cells = []
        for clip_frames in frames.values():
            maps, names = mean_softmax_maps(args.models, clip_frames)
            cells.append(", ".join(f"{name} {share:.0%}" for name, share in top_classes(maps, names, top=args.top).items()))
        print(f"| mean of the {len(args.models)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
