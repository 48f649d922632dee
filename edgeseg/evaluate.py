"""Evaluate any predictor on a dataset in ADE layout with the shared metrics.

The prediction at network resolution is upscaled to each annotation's own size with nearest
neighbour, so scores are measured on the original labels (the benchmark protocol) and a
Keras model, a float TFLite model and an int8 TFLite model are all scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from edgeseg.dataset import DatasetError, Pairs, read_image_rgb, read_mask
from edgeseg.labels import LabelSet
from edgeseg.metrics import Scores, confusion_matrix, scores
from edgeseg.preprocess import resize_mask

Predictor = Callable[[np.ndarray], np.ndarray]
"""RGB uint8 image -> class-index map (any size; it is resized to the annotation)."""


def evaluate(predict: Predictor, pairs: Pairs, labels: LabelSet, progress: bool = True,
             desc: str = "evaluate") -> tuple[Scores, np.ndarray]:
    """Run `predict` on every pair and score it.

    Returns:
        The scores and the confusion matrix (rows = truth, columns = prediction).
    """
    matrix = np.zeros((labels.num_classes, labels.num_classes), np.int64)
    for image_path, mask_path in tqdm(list(zip(pairs.images, pairs.masks)), desc=desc, unit="img",
                                      disable=None if progress else True, leave=False):
        truth = read_mask(mask_path, labels.num_classes)
        image = read_image_rgb(image_path)
        if truth.shape != image.shape[:2]:
            raise DatasetError(f"{mask_path} is {truth.shape[1]}x{truth.shape[0]} but its image is"
                               f" {image.shape[1]}x{image.shape[0]}; masks must match their images")
        prediction = resize_mask(predict(image), truth.shape)
        matrix += confusion_matrix(truth, prediction, labels.num_classes)
    return scores(matrix), matrix
