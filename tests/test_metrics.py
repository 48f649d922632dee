"""mIoU and pixel accuracy: hand-computed cases, and the Keras metric equals the numpy one."""

import numpy as np
import pytest

from edgeseg.metrics import accuracy, confusion_matrix


def test_confusion_matrix_and_accuracy_by_hand():
    truth = np.array([[0, 1, 1], [2, 2, 2], [1, 0, 2]])
    pred = np.array([[2, 1, 2], [2, 2, 1], [1, 1, 0]])
    matrix = confusion_matrix(truth, pred, 3)
    # Labelled pixels (truth != 0): 7. Class 1 truth at (0,1),(0,2),(2,0) -> pred 1,2,1.
    # Class 2 truth at (1,0),(1,1),(1,2),(2,2) -> pred 2,2,1,0.
    expected = np.array([[0, 0, 0], [0, 2, 1], [1, 1, 2]])
    np.testing.assert_array_equal(matrix, expected)
    result = accuracy(matrix)
    # IoU1 = 2 / (2 + 1 + 1) = 0.5 ; IoU2 = 2 / (2 + 2 + 1) = 0.4 ; class 0 never scored.
    assert result.per_class_iou[1] == pytest.approx(0.5)
    assert result.per_class_iou[2] == pytest.approx(0.4)
    assert np.isnan(result.per_class_iou[0])
    assert result.miou == pytest.approx(0.45)
    assert result.pixel_accuracy == pytest.approx(4 / 7)
    assert result.pixels == 7


def test_absent_classes_do_not_count_and_bad_labels_are_refused():
    truth = np.array([1, 1, 3, 3])
    result = accuracy(confusion_matrix(truth, truth, 5))
    assert result.miou == 1.0 and np.isnan(result.per_class_iou[2]) and np.isnan(result.per_class_iou[4])
    with pytest.raises(ValueError, match="only 3 classes"):
        confusion_matrix(np.array([1, 5]), np.array([1, 1]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_keras_streaming_metrics_equal_the_numpy_ones():
    from train.losses import MeanIoU, PixelAccuracy

    rng = np.random.default_rng(3)
    miou, pixel_accuracy = MeanIoU(6), PixelAccuracy(6)
    total = np.zeros((6, 6), np.int64)
    for _ in range(3):
        truth = rng.integers(0, 6, (2, 16, 24))
        logits = rng.normal(size=(2, 16, 24, 6)).astype(np.float32)
        logits[..., 2] += 0.7  # a bias so the classes are not uniform
        miou.update_state(truth, logits)
        pixel_accuracy.update_state(truth, logits)
        total += confusion_matrix(truth, logits.argmax(-1), 6)
    reference = accuracy(total)
    assert float(miou.result()) == pytest.approx(reference.miou, abs=1e-6)
    assert float(pixel_accuracy.result()) == pytest.approx(reference.pixel_accuracy, abs=1e-6)


def test_masked_loss_ignores_unlabelled_pixels_and_weights_classes():
    from train.losses import MaskedCrossEntropy

    logits = np.zeros((1, 2, 2, 3), np.float32)
    logits[0, 0, 0] = [0, 5, 0]  # confident class 1
    truth = np.array([[[1, 2], [0, 0]]])
    loss = float(MaskedCrossEntropy()(truth, logits))
    ce1 = -np.log(np.exp(5) / (np.exp(5) + 2))
    ce2 = -np.log(1 / 3)
    assert loss == pytest.approx((ce1 + ce2) / 2, rel=1e-5)  # the two 0-labelled pixels ignored
    weighted = float(MaskedCrossEntropy([0.0, 1.0, 3.0])(truth, logits))
    assert weighted == pytest.approx((ce1 + 3 * ce2) / 4, rel=1e-5)
