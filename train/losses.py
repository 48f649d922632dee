"""Loss and streaming metrics that ignore label 0 ("not labelled"), as the ADE20K protocol does."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from edgeseg.labels import IGNORE_INDEX


@keras.saving.register_keras_serializable(package="edgeseg")
class MaskedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on logits over labelled pixels only, optionally class-weighted.

    The weighted sum is divided by the summed weights of the labelled pixels, so the loss scale
    does not depend on how much of a batch is not labelled. Under a distribution strategy each
    replica's value is divided by the replica count, as Keras does for its own mean-reduced losses
    (the replicas' gradients are summed); Keras undoes that for the logged loss.
    """

    def __init__(self, class_weights: list[float] | None = None, name: str = "masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        logits = ops.cast(y_pred, "float32")
        per_pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        if self.class_weights is None:
            weights = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        else:
            table = ops.convert_to_tensor(np.asarray(self.class_weights, np.float32))
            weights = ops.take(table, labels) * ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        loss = ops.sum(per_pixel * weights) / ops.maximum(ops.sum(weights), 1e-6)
        return loss / _replicas_in_sync()

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


def _replicas_in_sync() -> float:
    if keras.backend.backend() != "tensorflow":
        return 1.0
    import tensorflow as tf

    return float(tf.distribute.get_strategy().num_replicas_in_sync)


@keras.saving.register_keras_serializable(package="edgeseg")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Streaming confusion matrix over labelled pixels; subclasses read a score off it.

    Same definitions as `edgeseg.metrics.accuracy` (checked against it in the tests).
    """

    def __init__(self, num_classes: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", name="matrix",
                                        dtype="float64")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        predicted = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
        keep = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float64")
        index = labels * self.num_classes + predicted
        counts = ops.segment_sum(keep, index, num_segments=self.num_classes * self.num_classes)
        self.matrix.assign_add(ops.reshape(counts, (self.num_classes, self.num_classes)))

    def reset_state(self):
        self.matrix.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float64"))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="edgeseg")
class MeanIoU(ConfusionMatrixMetric):
    """Mean IoU over classes 1..N-1 that occur in truth or prediction."""

    def __init__(self, num_classes: int, name: str = "miou", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        tp = ops.diagonal(self.matrix)
        union = ops.sum(self.matrix, axis=0) + ops.sum(self.matrix, axis=1) - tp
        present = ops.cast(union > 0, "float64") * ops.cast(ops.arange(self.num_classes) != IGNORE_INDEX, "float64")
        iou = tp / ops.maximum(union, 1.0)
        return ops.cast(ops.sum(iou * present) / ops.maximum(ops.sum(present), 1.0), "float32")


@keras.saving.register_keras_serializable(package="edgeseg")
class PixelAccuracy(ConfusionMatrixMetric):
    """Correct labelled pixels / labelled pixels."""

    def __init__(self, num_classes: int, name: str = "pixel_accuracy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        total = ops.sum(self.matrix)
        return ops.cast(ops.sum(ops.diagonal(self.matrix)) / ops.maximum(total, 1.0), "float32")
