"""Two models on the same frames of a clip, overlay beside overlay, as one picture.

    python tools/side_by_side.py OLD_int8.tflite models/camvid_lite_int8.tflite \
        --clip edgeseg/assets/solidWhiteRight.mp4 --frames 4 -o models/camvid_lite_previous_vs_new.jpg

Each row is one evenly spaced frame: the first model's overlay on the left, the second's on the right,
drawn by the edge runtime exactly as `edgeseg video` draws them (legend with class shares), and each
column titled with its model's file name. Labels and palettes come from inside the models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMN_PX = 640


def side_by_side(models: list[Path], clip: Path, count: int, titles: list[str] | None = None) -> np.ndarray:
    from edgeseg.errors import InputError
    from edgeseg.overlay import render
    from edgeseg.segmenter import Segmenter, SegmenterOptions
    from edgeseg.sources import spaced_frames

    segmenters = [Segmenter(SegmenterOptions(model=path, device="cpu")) for path in models]
    frames = spaced_frames(clip, count)
    if not frames:
        raise InputError(f"{clip} has no frames to decode; pass a video file")
    rows = []
    for frame in frames:
        scale = COLUMN_PX / frame.shape[1]
        size = (COLUMN_PX, int(round(frame.shape[0] * scale)))
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        cells = []
        for segmenter in segmenters:
            class_map = segmenter.classes(segmenter.infer(small))
            cells.append(render(small, class_map, segmenter.labels, segmenter.palette_bgr))
        rows.append(np.concatenate(cells, axis=1))
    header = np.zeros((32, COLUMN_PX * len(models), 3), np.uint8)
    for column, title in enumerate(titles or [path.name for path in models]):
        cv2.putText(header, title, (column * COLUMN_PX + 10, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([header, *rows], axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help=".tflite models (two or more)")
    parser.add_argument("--clip", type=Path, default=ROOT / "edgeseg/assets/solidWhiteRight.mp4", help="video file")
    parser.add_argument("--frames", type=int, default=4, help="evenly spaced frames (rows)")
    parser.add_argument("--title", action="append", help="column title, one per model in order (default: file names)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="picture to write (.jpg or .png)")
    args = parser.parse_args(argv)
    for path in [*args.models, args.clip]:
        if not path.is_file():
            print(f"error: {path} is not a file; pass an existing file", file=sys.stderr)
            return 2
    if any(path.suffix != ".tflite" for path in args.models):
        print("error: side_by_side draws .tflite models through the edge runtime; convert .keras first "
              "(python -m convert)", file=sys.stderr)
        return 2
    suffix = args.output.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        print(f"error: {args.output} is not a .jpg or .png name; pick one of those", file=sys.stderr)
        return 2
    if args.title and len(args.title) != len(args.models):
        print(f"error: {len(args.title)} --title for {len(args.models)} models; give one per model or none",
              file=sys.stderr)
        return 2
    from edgeseg.errors import EdgesegError

    try:
        picture = side_by_side(args.models, args.clip, max(1, args.frames), args.title)
    except EdgesegError as exc:  # an undecodable clip, a model the runtime refuses: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _, encoded = cv2.imencode(suffix, picture, [cv2.IMWRITE_JPEG_QUALITY, 88] if suffix != ".png" else [])
    from edgeseg import atomic  # temp file beside the target, fsync, rename: no half-written picture

    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(args.output, encoded.tobytes())
    print(f"wrote {args.output} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
