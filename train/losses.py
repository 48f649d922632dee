"""Loss and streaming metrics that ignore label 0 ("not labelled"), as the ADE20K protocol does."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from edgeseg.labels import IGNORE_INDEX


def pack_targets(masks, teacher_probabilities):
    """One target tensor for distillation: channel 0 the label mask, channels 1.. the teachers'
    class probabilities (Keras passes a model with one output one target)."""
    masks = ops.cast(masks, "float32")[..., None]
    return ops.concatenate([masks, ops.cast(teacher_probabilities, "float32")], axis=-1)


def split_targets(y_true):
    """(label mask, teacher probabilities or None) of a plain mask or a `pack_targets` tensor."""
    if len(y_true.shape) == 4:
        return ops.cast(y_true[..., 0], "int32"), y_true[..., 1:]
    return ops.cast(y_true, "int32"), None


@keras.saving.register_keras_serializable(package="edgeseg")
class MaskedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on logits over labelled pixels only, optionally class-weighted.

    The weighted sum is divided by the summed weights of the labelled pixels, so the loss scale
    does not depend on how much of a batch is not labelled. Under a distribution strategy each
    replica's value is divided by the replica count, as Keras does for its own mean-reduced losses
    (the replicas' gradients are summed); Keras undoes that for the logged loss.

    Distillation (Hinton et al. 2015): when the target carries teacher probabilities
    (`pack_targets`), each labelled pixel's target is ``(1 - distill_weight) * one_hot(label) +
    distill_weight * teachers``, weighted by its label's class weight as before.
    """

    def __init__(self, class_weights: list[float] | None = None, distill_weight: float = 0.0,
                 name: str = "masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.distill_weight = float(distill_weight)

    def call(self, y_true, y_pred):
        labels, teachers = split_targets(y_true)
        logits = ops.cast(y_pred, "float32")
        per_pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        if teachers is not None and self.distill_weight > 0:
            soft = -ops.sum(ops.cast(teachers, "float32") * ops.log_softmax(logits, axis=-1), axis=-1)
            per_pixel = (1.0 - self.distill_weight) * per_pixel + self.distill_weight * soft
        if self.class_weights is None:
            weights = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        else:
            table = ops.convert_to_tensor(np.asarray(self.class_weights, np.float32))
            weights = ops.take(table, labels) * ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        loss = ops.sum(per_pixel * weights) / ops.maximum(ops.sum(weights), 1e-6)
        return loss / _replicas_in_sync()

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights, "distill_weight": self.distill_weight}


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
        labels = ops.reshape(split_targets(y_true)[0], (-1,))
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
