"""What each model calls unlabelled clips: the top classes by share of pixels, as a Markdown table.

    python tools/clip_shares.py runs/lodo/robust320_hold_0006R0/last.keras runs/lodo/src15_hold_0006R0/last.keras
    python tools/clip_shares.py models/camvid_lite_int8.tflite runs/camvid_lite_src15_rejected/last.keras --frames 24
    python tools/clip_shares.py --ensemble A.keras B.keras C.keras     # + the mean of their softmax outputs
    python tools/clip_shares.py --tta models/camvid_lite_int8.tflite      # as `edgeseg --tta` runs it
    python tools/clip_shares.py --regions tools/clip_regions.yaml models/camvid_lite_int8.tflite run/last.keras

With `--regions`, a second table scores each model on coarse regions drawn by eye where the class is
not in doubt (`tools/clip_regions.yaml`: a lawn, the sky, an asphalt car park): the share of each
region's pixels given an accepted class, per region, its mean per clip, and the mean over the clips
(each clip, another camera, weighs alike).

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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CLIPS = [ROOT / "edgeseg/assets/solidWhiteRight.mp4", ROOT / "../shared/data/video/vtest.avi",
                 ROOT / "../shared/data/video/car-detection.mp4"]


class RegionError(ValueError):
    """A regions file that does not fit the clips or the model's classes."""


def load_regions(path: Path) -> dict[str, list[dict]]:
    """`tools/clip_regions.yaml`: {clip file name: [{name, polygon ([x, y] in percent), accept}]}."""
    regions = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(regions, dict) or not all(isinstance(v, list) for v in regions.values()):
        raise RegionError(f"{path} must map clip file names to lists of regions")
    return regions


def region_scores(maps: list[np.ndarray], regions: list[dict], names: list[str]) -> dict[str, float]:
    """For each region, the share of its pixels (over all `maps`) given one of its accepted classes.
    Polygons are in percent of the frame, so they fit a class map of any size."""
    import cv2

    scores = {}
    for region in regions:
        unknown = sorted(set(region["accept"]) - set(names))
        if unknown:
            raise RegionError(f"region {region['name']!r} accepts {unknown}, not classes of this model"
                              f" ({', '.join(names)}); fix its accept list")
        accepted = np.isin(np.arange(len(names)), [names.index(name) for name in region["accept"]])
        masks: dict[tuple[int, int], np.ndarray] = {}  # the region rasterised once per map size
        hits = total = 0
        for classes in maps:
            if classes.shape not in masks:
                mask = np.zeros(classes.shape, np.uint8)
                cv2.fillPoly(mask, [polygon_points(region["polygon"], classes.shape[1], classes.shape[0])], 1)
                masks[classes.shape] = mask.astype(bool)
            inside = masks[classes.shape]
            hits += int(accepted[classes[inside]].sum())
            total += int(inside.sum())
        scores[region["name"]] = hits / max(total, 1)
    return scores


def polygon_points(polygon: list, width: int, height: int) -> np.ndarray:
    """A region's polygon ([x, y] in percent of the frame) as int32 pixel points of a width x height picture."""
    return np.round(np.asarray(polygon, np.float64) * [width / 100.0, height / 100.0]).astype(np.int32)


def draw_regions(frames: dict[str, list[np.ndarray]], regions: dict[str, list[dict]], out: Path) -> None:
    """The regions in red on the mean of each clip's frames (what stays put), one 640-wide row per clip."""
    import cv2

    from edgeseg import atomic

    rows = []
    for name, clip_frames in frames.items():
        if not regions.get(name):
            continue
        mean = np.mean([frame.astype(np.float32) for frame in clip_frames], axis=0).astype(np.uint8)
        height, width = mean.shape[:2]
        row = cv2.resize(mean, (640, round(640 * height / width)), interpolation=cv2.INTER_AREA)
        for region in regions[name]:
            points = polygon_points(region["polygon"], row.shape[1], row.shape[0])
            cv2.polylines(row, [points], True, (0, 0, 255), 2, cv2.LINE_AA)
            label = f"{region['name']}: {', '.join(region['accept'])}"
            cv2.putText(row, label, (int(points[:, 0].min()) + 6, int(points[:, 1].min()) + 18),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1, cv2.LINE_AA)
        cv2.putText(row, name, (8, row.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        rows.append(row)
    ok, data = cv2.imencode(out.suffix or ".jpg", np.vstack(rows))
    atomic.write_bytes(out, data.tobytes())


class Model:
    """One model, loaded once: its class maps of frames, and (Keras) its probabilities for --ensemble."""

    def __init__(self, path: Path, tta: bool = False):
        self.path = path
        if path.suffix == ".tflite":
            from edgeseg.segmenter import Segmenter, SegmenterOptions

            self.segmenter = Segmenter(SegmenterOptions(model=path, device="cpu", tta=tta))
            self.names = self.segmenter.labels.names
        else:
            from convert.source import labels_for, load_source
            from edgeseg.preprocess import InputSpec, preprocess
            from edgeseg.segmenter import softmax, with_mirror

            source = load_source(path)
            spec = InputSpec(height=source.height, width=source.width)
            self.names = labels_for(source, None).names
            def logits(frame_bgr: np.ndarray) -> np.ndarray:  # the shared preprocessing, as keras_classes
                tensor = preprocess(frame_bgr, spec, bgr=True)[np.newaxis]
                if not tta:
                    return source.predict(tensor)[0]
                return np.mean(with_mirror(lambda t: source.predict(t)[0], tensor), axis=0)  # as Segmenter.invoke

            self.probabilities = lambda frame_bgr: softmax(logits(frame_bgr))

    def classes(self, frame_bgr: np.ndarray) -> np.ndarray:
        if self.path.suffix == ".tflite":
            return self.segmenter.classes(self.segmenter.infer(frame_bgr))
        return self.probabilities(frame_bgr).argmax(axis=-1).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help=".keras or .tflite models")
    parser.add_argument("--clip", action="append", type=Path, help="video file (repeatable; default: the three check clips)")
    parser.add_argument("--frames", type=int, default=24, help="evenly spaced frames per clip")
    parser.add_argument("--top", type=int, default=4, help="classes listed per clip")
    parser.add_argument("--ensemble", action="store_true", help="add a row for the mean softmax of the (Keras) models")
    parser.add_argument("--regions", type=Path, help="YAML of coarse regions per clip (tools/clip_regions.yaml):"
                        " also score each model on them")
    parser.add_argument("--draw-regions", type=Path, metavar="OUT.jpg", help="also draw the regions on the mean of"
                        " each clip's frames (one row per clip) and write that picture")
    parser.add_argument("--tta", action="store_true", help="run each model on the frame and its mirror, averaged"
                        " (`edgeseg --tta`)")
    args = parser.parse_args(argv)
    if args.ensemble and any(path.suffix != ".keras" for path in args.models):
        print("error: --ensemble averages .keras models only; leave the .tflite ones out", file=sys.stderr)
        return 2
    from edgeseg.sources import spaced_frames

    clips = args.clip or DEFAULT_CLIPS
    for path in [*args.models, *clips]:
        if not path.is_file():
            print(f"error: {path} is not a file; pass an existing model or clip", file=sys.stderr)
            return 2
    regions = {}
    if args.regions:
        try:
            regions = load_regions(args.regions)
        except (OSError, yaml.YAMLError, RegionError) as exc:
            print(f"error: cannot read regions {args.regions} ({exc}); pass a file like tools/clip_regions.yaml",
                  file=sys.stderr)
            return 2
    frames = {clip.name: spaced_frames(clip, args.frames) for clip in clips}
    if args.draw_regions:
        if not regions:
            print("error: --draw-regions needs --regions FILE", file=sys.stderr)
            return 2
        draw_regions(frames, regions, args.draw_regions)
    try:
        return _report(args, frames, regions)
    except RegionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace, frames: dict[str, list[np.ndarray]], regions: dict[str, list[dict]]) -> int:
    from convert.verify import top_classes

    scored = [name for name in frames if regions.get(name)]
    region_rows = []

    def region_row(label: str, maps_per_clip: dict[str, list[np.ndarray]], names: list[str]) -> None:
        cells, per_clip = [], []
        for name in scored:
            scores = region_scores(maps_per_clip[name], regions[name], names)
            per_clip.append(float(np.mean(list(scores.values()))))
            cells.append(f"**{per_clip[-1]:.0%}** ("
                         + ", ".join(f"{region} {share:.0%}" for region, share in scores.items()) + ")")
        region_rows.append(f"| {label} | " + " | ".join(cells) + f" | **{np.mean(per_clip):.1%}** |")

    def cell(maps: list[np.ndarray], names: list[str]) -> str:
        return ", ".join(f"{name} {share:.0%}" for name, share in top_classes(maps, names, top=args.top).items())

    print("| model | " + " | ".join(f"`{name}`" for name in frames) + " |")
    print("|---|" + "---|" * len(frames))
    summed = {name: [0.0] * len(clip_frames) for name, clip_frames in frames.items()}  # --ensemble: per frame
    for path in args.models:
        model, cells, maps_per_clip = Model(path, args.tta), [], {}
        for name, clip_frames in frames.items():
            if args.ensemble:
                probabilities = [model.probabilities(frame) for frame in clip_frames]
                summed[name] = [total + p for total, p in zip(summed[name], probabilities)]
                maps = [p.argmax(axis=-1).astype(np.uint8) for p in probabilities]
            else:
                maps = [model.classes(frame) for frame in clip_frames]
            maps_per_clip[name] = maps
            cells.append(cell(maps, model.names))
        label = f"`{path}`{' --tta' if args.tta else ''}"
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
        if scored:
            region_row(label, maps_per_clip, model.names)
    if args.ensemble:  # the argmax of the summed probabilities is that of their mean
        maps_per_clip = {name: [total.argmax(axis=-1).astype(np.uint8) for total in summed[name]] for name in frames}
        cells = [cell(maps_per_clip[name], model.names) for name in frames]
        print(f"| mean of the {len(args.models)} | " + " | ".join(cells) + " |", flush=True)
        if scored:
            region_row(f"mean of the {len(args.models)}", maps_per_clip, model.names)
    if scored:
        print(f"\nShare of each region read as an accepted class ({args.regions}; a clip: the mean of its regions):\n")
        print("| model | " + " | ".join(f"`{name}`" for name in scored) + " | mean of the clips |")
        print("|---|" + "---|" * (len(scored) + 1))
        print("\n".join(region_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
