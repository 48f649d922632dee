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

    ``lovasz_weight`` > 0 adds that multiple of `lovasz_softmax` (a surrogate of the mean IoU, on the
    labels only, unweighted: it already weighs every class present alike).

    Online hard example mining (``ohem_threshold`` > 0, as BiSeNet and HRNet train on CamVid and
    Cityscapes): only the labelled pixels whose true class gets a probability below ``ohem_threshold``
    count, and never fewer than the ``ohem_min_kept`` share of the labelled pixels (the hardest ones),
    so that confident pixels, mostly the insides of road, sky and buildings, stop diluting the
    gradient of thin objects and edges. Each kept pixel keeps its class weight.
    """

    def __init__(self, class_weights: list[float] | None = None, distill_weight: float = 0.0,
                 lovasz_weight: float = 0.0, ohem_threshold: float = 0.0, ohem_min_kept: float = 0.0625,
                 name: str = "masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.distill_weight = float(distill_weight)
        self.lovasz_weight = float(lovasz_weight)
        self.ohem_threshold = float(ohem_threshold)
        self.ohem_min_kept = float(ohem_min_kept)

    def call(self, y_true, y_pred):
        labels, teachers = split_targets(y_true)
        logits = ops.cast(y_pred, "float32")
        per_pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        hard = per_pixel
        if teachers is not None and self.distill_weight > 0:
            soft = -ops.sum(ops.cast(teachers, "float32") * ops.log_softmax(logits, axis=-1), axis=-1)
            per_pixel = (1.0 - self.distill_weight) * per_pixel + self.distill_weight * soft
        if self.class_weights is None:
            weights = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        else:
            table = ops.convert_to_tensor(np.asarray(self.class_weights, np.float32))
            weights = ops.take(table, labels) * ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        if self.ohem_threshold > 0:
            weights = weights * ohem_mask(hard, ops.not_equal(labels, IGNORE_INDEX), self.ohem_threshold,
                                          self.ohem_min_kept)
        loss = ops.sum(per_pixel * weights) / ops.maximum(ops.sum(weights), 1e-6)
        if self.lovasz_weight > 0:
            loss = loss + self.lovasz_weight * lovasz_softmax(labels, logits)
        return loss / _replicas_in_sync()

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights, "distill_weight": self.distill_weight,
                "lovasz_weight": self.lovasz_weight, "ohem_threshold": self.ohem_threshold,
                "ohem_min_kept": self.ohem_min_kept}


def ohem_mask(cross_entropy, labelled, threshold: float, min_kept: float):
    """1 for the pixels online hard example mining keeps, else 0 (same shape as ``cross_entropy``).

    Kept: labelled pixels whose true-class probability ``exp(-cross_entropy)`` is below ``threshold``;
    where fewer than ``min_kept`` (a share of the labelled pixels) are, the ``min_kept`` share with the
    largest cross-entropy instead (ties at the cut are kept too).
    """
    labelled = ops.cast(labelled, "float32")
    flat = ops.reshape(ops.where(labelled > 0, cross_entropy, -1.0), (-1,))
    count = ops.sum(labelled)
    k = ops.cast(ops.maximum(ops.ceil(count * min_kept), 1.0), "int32")
    descending = -ops.sort(-flat)
    kth = ops.take(descending, ops.minimum(k, ops.shape(flat)[0]) - 1)
    cut = ops.minimum(ops.convert_to_tensor(-np.log(threshold), "float32"), kth)
    return ops.cast(cross_entropy >= cut, "float32") * labelled


def lovasz_softmax(labels, logits, num_bins: int = 1024):
    """The Lovász-softmax loss (Berman et al., CVPR 2018) over a batch: the mean, over the classes
    1..N-1 present in ``labels``, of the Lovász extension of that class's Jaccard loss, applied to
    the per-pixel errors ``|[label == c] - p_c|``. Label 0 is ignored.

    The exact loss sorts every class's errors (an O(P log P) sort of all batch pixels per class, about
    0.3 s a step on 2 CPU cores at batch 8 x 320x256). Here the errors are sorted into `num_bins`
    equal bins instead, O(P): every pixel of a bin gets the bin's mean Lovász gradient, computed
    exactly from the bins' cumulative label counts. The value differs from the exact one by at most
    1/num_bins, the order of pixels within a bin being the only thing lost.
    """
    num_classes = logits.shape[-1]
    probabilities = ops.reshape(ops.softmax(ops.cast(logits, "float32"), axis=-1), (-1, num_classes))[:, 1:]
    labels = ops.reshape(labels, (-1,))
    valid = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")[:, None]
    foreground = ops.one_hot(labels, num_classes)[:, 1:]  # label 0 (ignored) is column 0, dropped
    errors = ops.abs(foreground - probabilities) * valid
    # bin 0 holds the largest errors: the bins in the order of the exact loss's descending sort
    bins = ops.clip(ops.cast(ops.floor((1.0 - ops.stop_gradient(errors)) * num_bins), "int32"), 0, num_bins - 1)
    index = ops.reshape(bins + ops.arange(num_classes - 1, dtype="int32")[None, :] * num_bins, (-1,))
    segments = (num_classes - 1) * num_bins

    def per_bin(values):
        return ops.reshape(ops.segment_sum(ops.reshape(values, (-1,)), index, num_segments=segments),
                           (num_classes - 1, num_bins))

    in_bin_fg, in_bin_bg = per_bin(foreground), per_bin(valid * (1.0 - foreground))
    truth = ops.sum(in_bin_fg, axis=1, keepdims=True)
    jaccard = 1.0 - (truth - ops.cumsum(in_bin_fg, axis=1)) / ops.maximum(truth + ops.cumsum(in_bin_bg, axis=1), 1e-6)
    steps = jaccard - ops.pad(jaccard[:, :-1], ((0, 0), (1, 0)))  # the Jaccard loss's rise over each bin
    gradient = ops.stop_gradient(steps / ops.maximum(in_bin_fg + in_bin_bg, 1.0))
    pixel_gradient = ops.reshape(ops.take(ops.reshape(gradient, (-1,)), index), (-1, num_classes - 1))
    per_class = ops.sum(errors * pixel_gradient, axis=0)
    present = ops.cast(ops.reshape(truth, (-1,)) > 0, "float32")
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


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
