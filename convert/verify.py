"""Accuracy of an exported model against its Keras source, on held-out real images.

The TFLite side runs through `edgeseg.segmenter.Segmenter`, the very code the device runs, so
what is verified here is what users get.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.dataset import Pairs
from edgeseg.evaluate import Tally, labelled_pairs
from edgeseg.labels import LabelSet
from edgeseg.overlay import class_shares
from edgeseg.preprocess import InputSpec, preprocess
from edgeseg.segmenter import Segmenter, SegmenterOptions, softmax

from .source import SourceModel


def grid_diagnostic(logits: np.ndarray, scale: float, zero_point: int, dtype: str) -> tuple[int, int]:
    """How much of the int8 gap the *output grid alone* explains, for one image's Keras logits.

    Returns ``(kept, close)``: pixels whose argmax survives rounding the Keras logits themselves
    onto the quantised output grid (what a perfect int8 network could at best reproduce), and
    pixels whose top-2 logit margin is below one output step. When ``kept`` is already under the
    agreement threshold, no calibration can pass: the network is too indecisive for 8-bit scores.
    """
    limits = np.iinfo(np.dtype(dtype))
    grid = np.clip(np.round(logits / scale) + zero_point, limits.min, limits.max)
    kept = int(np.count_nonzero(np.argmax(grid, axis=-1) == np.argmax(logits, axis=-1)))
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    close = int(np.count_nonzero(top2[..., 1] - top2[..., 0] < scale))
    return kept, close


@dataclass
class _Tally:
    """What `verify` accumulates over the evaluation images (scored with `edgeseg.evaluate.Tally`,
    like `edgeseg eval`)."""

    n: int
    keras: Tally = None
    tflite: Tally = None
    agree: int = 0
    total: int = 0
    grid_kept: int = 0
    grid_close: int = 0
    prob_errors: list = field(default_factory=list)
    prob_max: float = 0.0
    latencies: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keras, self.tflite = Tally(self.n), Tally(self.n)

    def add(self, truth: np.ndarray, keras_classes: np.ndarray, tflite_classes: np.ndarray) -> None:
        self.agree += int(np.count_nonzero(keras_classes == tflite_classes))
        self.total += keras_classes.size
        self.keras.add(truth, keras_classes)
        self.tflite.add(truth, tflite_classes)


def verify(source: SourceModel, model_path: Path, pairs: Pairs, labels: LabelSet, spec: InputSpec,
           threads: int | None = None, name: str | None = None) -> dict:
    """Compare `model_path` with the Keras model on every pair.

    Returns:
        agreement (share of pixels where both argmaxes agree, at model resolution), mIoU of both
        against the ground truth at annotation resolution and the drop, per-class IoU difference,
        mean/max probability error (models with score outputs), median latency; for quantised
        score outputs also the output step, the grid ceiling and the share of pixels closer to the
        runner-up class than one step (`grid_diagnostic`).
    """
    segmenter = Segmenter(SegmenterOptions(model=model_path, threads=threads, device="cpu"))
    output = segmenter.info.output
    on_grid = segmenter.info.output_kind == "scores" and output.quantized
    tally = _Tally(labels.num_classes)
    for image, truth in labelled_pairs(pairs, labels, desc=f"verify {name or model_path.name}"):
        logits = source.predict(preprocess(image, spec)[np.newaxis])[0]
        started = time.perf_counter()
        raw = segmenter.infer(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        tally.latencies.append((time.perf_counter() - started) * 1000)
        tally.add(truth, np.argmax(logits, axis=-1).astype(np.uint8), segmenter.classes(raw))
        if on_grid:
            kept, close = grid_diagnostic(logits.astype(np.float32), output.scale, output.zero_point, output.dtype)
            tally.grid_kept += kept
            tally.grid_close += close
        if segmenter.info.output_kind == "scores":
            error = np.abs(softmax(segmenter.scores(raw)) - softmax(logits.astype(np.float32)))
            tally.prob_errors.append(float(error.mean()))
            tally.prob_max = max(tally.prob_max, float(error.max()))
    keras_acc, tflite_acc = tally.keras.accuracy(), tally.tflite.accuracy()
    total = max(1, tally.total)
    return {
        "images": len(pairs),
        "agreement": tally.agree / total,
        "miou_keras": keras_acc.miou,
        "miou_tflite": tflite_acc.miou,
        "miou_drop": keras_acc.miou - tflite_acc.miou,
        "pixel_accuracy_keras": keras_acc.pixel_accuracy,
        "pixel_accuracy_tflite": tflite_acc.pixel_accuracy,
        "prob_error_mean": float(np.mean(tally.prob_errors)) if tally.prob_errors else None,
        "prob_error_max": tally.prob_max if tally.prob_errors else None,
        "latency_ms_median": float(np.median(tally.latencies)) if tally.latencies else None,
        "per_class_iou": _per_class(keras_acc, tflite_acc, labels),
        # Quantised score outputs only: the agreement ceiling of the output grid (see grid_diagnostic).
        "output_step": output.scale if on_grid else None,
        "grid_ceiling": tally.grid_kept / total if on_grid else None,
        "below_step_share": tally.grid_close / total if on_grid else None,
        "input_dtype": segmenter.info.input.dtype,
        "output_dtype": segmenter.info.output.dtype,
        "output_kind": segmenter.info.output_kind,
    }


def keras_classes(source: SourceModel, frames_bgr: list[np.ndarray], spec: InputSpec) -> list[np.ndarray]:
    """The Keras model's class map of each frame (computed once, shared by every exported model)."""
    return [np.argmax(source.predict(preprocess(frame, spec, bgr=True)[np.newaxis])[0], axis=-1).astype(np.uint8)
            for frame in frames_bgr]


def top_classes(maps: list[np.ndarray], names: list[str], top: int = 5) -> dict[str, float]:
    """The `top` classes by share of all the pixels of `maps` (the runtime's `overlay.class_shares`
    per map, weighted by its size), largest first ({name: share}). On unlabelled footage unlike the
    training data, an implausible mix (a car park called building) shows what agreement with Keras
    cannot: that both are wrong."""
    shares = np.average([class_shares(classes, len(names)) for classes in maps], axis=0,
                        weights=[classes.size for classes in maps])
    return {names[i]: round(float(shares[i]), 4) for i in np.argsort(-shares, kind="stable")[:top] if shares[i] > 0}


def agreement_on_frames(model_path: Path, frames_bgr: list[np.ndarray], keras_maps: list[np.ndarray]) -> float:
    """Share of pixels where `model_path` (through the runtime's Segmenter) and the Keras model pick
    the same class, on unlabelled frames: fidelity on footage neither model was trained or
    calibrated on, which needs no annotations."""
    segmenter = Segmenter(SegmenterOptions(model=model_path, device="cpu"))
    agree = sum(int(np.count_nonzero(segmenter.classes(segmenter.infer(frame)) == expected))
                for frame, expected in zip(frames_bgr, keras_maps))
    return agree / max(1, sum(expected.size for expected in keras_maps))


def _per_class(keras_acc, tflite_acc, labels: LabelSet) -> dict:
    """{class: {keras, tflite, diff}} IoU for the classes either model scored."""
    per_class = {}
    for index in range(1, labels.num_classes):
        k, t = keras_acc.per_class_iou[index], tflite_acc.per_class_iou[index]
        if not (np.isnan(k) and np.isnan(t)):
            per_class[labels.names[index]] = {
                "keras": None if np.isnan(k) else round(float(k), 4),
                "tflite": None if np.isnan(t) else round(float(t), 4),
                "diff": None if np.isnan(k) or np.isnan(t) else round(float(t - k), 4),
            }
    return per_class


def host_argmax_ms(model_path: Path, runs: int = 30) -> tuple[float, float]:
    """Median ms of invoke() and of the host-side argmax of its output (what --argmax saves)."""
    segmenter = Segmenter(SegmenterOptions(model=model_path, device="cpu"))
    frame = np.random.default_rng(0).integers(0, 256, (segmenter.spec.height, segmenter.spec.width, 3), np.uint8)
    invoke, argmax = [], []
    for _ in range(runs):
        raw = segmenter.infer(frame)
        invoke.append(segmenter.last_inference_ms)
        started = time.perf_counter()
        segmenter.classes(raw)
        argmax.append((time.perf_counter() - started) * 1000)
    return float(np.median(invoke)), float(np.median(argmax))


def layer_name(tensor: str) -> str:
    """The Keras layer behind a debugger tensor name, e.g. ``NumericVerify/unet_1/down0_conv1_1/Relu;...``
    -> ``down0_conv1``; names without that structure come back unchanged (minus the prefix)."""
    first = tensor.split(";")[0].removeprefix("NumericVerify/")
    parts = first.split("/")
    if len(parts) >= 3:
        layer = parts[1]
        base, _, suffix = layer.rpartition("_")
        return base if base and suffix.isdigit() else layer
    name = first.split(":")[0]
    return "model output (logits)" if name.startswith("StatefulPartitionedCall") else name


def layer_errors(converter_factory, representative, top: int = 5) -> list[dict]:
    """Layers that lose most in int8 (TF's quantisation debugger): RMSE / scale, worst first."""
    import tensorflow as tf

    converter = converter_factory()
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative)
    debugger.run()
    rows = []
    for name, stats in debugger.layer_statistics.items():
        details = next((d for d in debugger._quant_interpreter.get_tensor_details() if d["name"] == name), None)
        scale = details["quantization_parameters"]["scales"][0] if details is not None and len(
            details["quantization_parameters"]["scales"]) else None
        mse = stats.get("mean_squared_error")
        if scale and mse is not None:
            rows.append({"layer": layer_name(name), "tensor": name, "rmse_over_scale": float(np.sqrt(mse) / scale)})
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows[:top]
