"""Evaluate any predictor on a dataset in ADE layout with the shared metrics.

The prediction at network resolution is upscaled to each annotation's own size with nearest
neighbour, so accuracy is measured on the original labels (the benchmark protocol) and a
Keras model, a float TFLite model and an int8 TFLite model are all scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from edgeseg.dataset import DatasetError, Pairs, read_image_rgb, read_mask
from edgeseg.labels import LabelSet
from edgeseg.metrics import Accuracy, accuracy, confusion_matrix
from edgeseg.preprocess import resize_mask

Predictor = Callable[[np.ndarray], np.ndarray]
"""RGB uint8 image -> class-index map (any size; it is resized to the annotation)."""


def labelled_pairs(pairs: Pairs, labels: LabelSet, desc: str = "evaluate", progress: bool = True):
    """Yield ``(RGB image, truth mask)`` for every pair, with a progress bar; a mask whose size
    differs from its image is an error (it cannot be scored fairly)."""
    for image_path, mask_path in tqdm(list(zip(pairs.images, pairs.masks)), desc=desc, unit="img",
                                      disable=None if progress else True, leave=False):
        truth = read_mask(mask_path, labels.num_classes)
        image = read_image_rgb(image_path)
        if truth.shape != image.shape[:2]:
            raise DatasetError(f"{mask_path} is {truth.shape[1]}x{truth.shape[0]} but its image is"
                               f" {image.shape[1]}x{image.shape[0]}; masks must match their images")
        yield image, truth


class Tally:
    """The confusion matrix of predictions against truths: each class map (any resolution) is
    resized NEAREST to its annotation's size first, the benchmark protocol."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def add(self, truth: np.ndarray, classes: np.ndarray) -> None:
        self.matrix += confusion_matrix(truth, resize_mask(classes, truth.shape), len(self.matrix))

    def accuracy(self) -> Accuracy:
        return accuracy(self.matrix)


def evaluate(predict: Predictor, pairs: Pairs, labels: LabelSet, progress: bool = True,
             desc: str = "evaluate") -> tuple[Accuracy, np.ndarray]:
    """Run `predict` on every pair and score it.

    Returns:
        The accuracy and the confusion matrix (rows = truth, columns = prediction).
    """
    tally = Tally(labels.num_classes)
    for image, truth in labelled_pairs(pairs, labels, desc, progress):
        tally.add(truth, predict(image))
    return tally.accuracy(), tally.matrix
