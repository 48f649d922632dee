"""Segmentation accuracy from a confusion matrix: mIoU, pixel accuracy, per-class IoU.

The ADE20K protocol: pixels labelled 0 ("not labelled") are left out entirely; a labelled pixel
predicted as 0 counts as a miss. The mean IoU averages the classes 1..N-1 that occur in the
ground truth or the prediction of the evaluated set (a class absent from both has no IoU).
Shared by `edgeseg eval`, `train` and `convert`, so every number in the project means the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.labels import IGNORE_INDEX


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts, rows = truth, columns = prediction.

    Pixels whose truth is `IGNORE_INDEX` are dropped. Vectorised with one `bincount`.

    Raises:
        ValueError: shapes differ, or a label is outside ``0..num_classes-1``.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    truth = truth.reshape(-1).astype(np.int64)
    prediction = prediction.reshape(-1).astype(np.int64)
    keep = truth != IGNORE_INDEX
    truth, prediction = truth[keep], prediction[keep]
    if truth.size and (truth.max() >= num_classes or prediction.max(initial=0) >= num_classes):
        raise ValueError(
            f"labels go up to {max(truth.max(), prediction.max())} but there are only {num_classes} classes"
        )
    counts = np.bincount(truth * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of one evaluated set (what `accuracy` computes from a confusion matrix).

    Attributes:
        miou: mean IoU over the present classes, 0..1.
        pixel_accuracy: correct / labelled pixels, 0..1.
        per_class_iou: IoU per class index (index 0 and absent classes are NaN).
        pixels: labelled pixels counted.
    """

    miou: float
    pixel_accuracy: float
    per_class_iou: np.ndarray
    pixels: int

    def to_dict(self, names: tuple[str, ...] | None = None) -> dict:
        per_class = {}
        for index, iou in enumerate(self.per_class_iou):
            if index == IGNORE_INDEX or np.isnan(iou):
                continue
            key = names[index] if names is not None else str(index)
            per_class[key] = round(float(iou), 6)
        return {
            "miou": round(self.miou, 6),
            "pixel_accuracy": round(self.pixel_accuracy, 6),
            "per_class": per_class,
            "pixels": self.pixels,
        }


def accuracy(matrix: np.ndarray) -> Accuracy:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix made by `confusion_matrix`
    ('scores' elsewhere means a model's per-class outputs, the logits)."""
    matrix = matrix.astype(np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
    iou[IGNORE_INDEX] = np.nan
    total = matrix.sum()
    present = iou[~np.isnan(iou)]
    return Accuracy(
        miou=float(present.mean()) if present.size else 0.0,
        pixel_accuracy=float(true_positive.sum() / total) if total else 0.0,
        per_class_iou=iou,
        pixels=int(total),
    )
