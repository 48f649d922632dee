"""Score Keras models, and the average of their softmax outputs, on the frames of held-out drives.

    python tools/lodo_ensemble.py --drive 0006R0 runs/lodo/robust320_hold_0006R0/last.keras \\
        runs/lodo/lite2_hold_0006R0/last.keras runs/lodo/src15_hold_0006R0/last.keras

    python tools/lodo_ensemble.py --drive 0006R0 --tta runs/lodo/robust320_hold_0006R0/last.keras

    python tools/lodo_ensemble.py --drive 0006R0 --per-class runs/lodo/pair_e120_hold_0006R0/last.keras

How much an ensemble of leave-one-drive-out models gains over its members on the drive none of them
saw is the most a distilled single model could gain (configs/lodo/README.md). Each model sees the
frame through the shared preprocessing at its own input size; probabilities are averaged at the
first model's output size; every class map is scored like `edgeseg eval` (resized NEAREST to the
full annotation, label 0 ignored); ``--per-class`` adds each one's IoU per class. ``--tta`` also
scores each model as `edgeseg --tta` runs it: its output averaged with that of the mirrored frame,
mirrored back. To score a one-graph average (`python -m train average`, the mean of logits, as the
bundled model computes it), pass the averaged model itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help=".keras models with the dataset's classes")
    parser.add_argument("--data", type=Path, default=ROOT / "../shared/data/camvid", help="dataset root (ADE layout)")
    parser.add_argument("--drive", action="append", required=True, help="file-name prefix of the held-out frames")
    parser.add_argument("--splits", default="training+validation")
    parser.add_argument("--tta", action="store_true", help="also score each model with mirrored-frame averaging")
    parser.add_argument("--per-class", action="store_true", help="also print each model's (and the mean's) IoU per class")
    args = parser.parse_args(argv)
    for path in args.models:
        if not path.is_file():
            print(f"error: {path} is not a file; pass trained .keras models", file=sys.stderr)
            return 2
    from edgeseg.segmenter import softmax
    from edgeseg.dataset import resolve_labels, select_pairs
    from edgeseg.evaluate import Tally, labelled_pairs
    from edgeseg.extras import load_keras_model
    from edgeseg.preprocess import InputSpec, preprocess
    from edgeseg.segmenter import with_mirror

    pairs = select_pairs(args.data, args.splits, args.drive)
    labels = resolve_labels(args.data)
    models = [load_keras_model(path) for path in args.models]
    tallies = [Tally(labels.num_classes) for _ in models]
    mirrored_tallies = [Tally(labels.num_classes) for _ in models]
    together = Tally(labels.num_classes)
    for image, truth in labelled_pairs(pairs, labels, desc="held-out frames"):
        probabilities = []
        for model, tally, mirrored_tally in zip(models, tallies, mirrored_tallies):
            height, width = model.input_shape[1:3]
            tensor = preprocess(image, InputSpec(height=height, width=width))[np.newaxis]

            def predict(batch: np.ndarray, model=model) -> np.ndarray:
                return np.asarray(model(batch, training=False))[0]

            if args.tta:  # as Segmenter.invoke: the mean of the outputs, the mirrored one mirrored back
                logits, mirrored = with_mirror(predict, tensor)
                mirrored_tally.add(truth, ((logits + mirrored) / 2).argmax(axis=-1).astype(np.uint8))
            else:
                logits = predict(tensor)
            tally.add(truth, logits.argmax(axis=-1).astype(np.uint8))
            if probabilities and logits.shape[:2] != probabilities[0].shape[:2]:
                logits = cv2.resize(logits, probabilities[0].shape[1::-1], interpolation=cv2.INTER_LINEAR)
            probabilities.append(softmax(logits))
        together.add(truth, np.mean(probabilities, axis=0).argmax(axis=-1).astype(np.uint8))
    print(f"{len(pairs.images)} frames of {', '.join(args.drive)}; mIoU (label 0 ignored):")
    for path, tally, mirrored_tally in zip(args.models, tallies, mirrored_tallies):
        print(f"  {tally.accuracy().miou:.4f}  {path}"
              + (f"   with --tta {mirrored_tally.accuracy().miou:.4f}" if args.tta else ""))
    if len(models) > 1:
        print(f"  {together.accuracy().miou:.4f}  mean of the {len(models)} softmax outputs")
    if args.per_class:
        rows = [(path.parent.name or str(path), tally) for path, tally in zip(args.models, tallies)]
        if len(models) > 1:
            rows.append(("mean", together))
        print("per-class IoU:")
        for name, tally in rows:
            per_class = tally.accuracy().to_dict(labels.names)["per_class"]
            print(f"  {name}: " + ", ".join(f"{label} {iou:.2f}" for label, iou in per_class.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
