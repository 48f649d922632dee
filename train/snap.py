"""Put a model's convolution kernels on the int8 grid the TFLite converter will give them.

The converter quantises each convolution's weights per output channel, symmetric, to the integers
-127..127 times ``max |w| / 127`` of that channel (after folding BatchNorm into the kernel; the fold
scales each output channel by one factor, so the grid of the folded kernel is the grid of the
kernel scaled alike, and a snapped kernel stays exactly representable). A model whose kernels
already lie on that grid loses nothing to weight quantisation: its int8 export differs from it only
in the activations. That makes the Keras model the faithful reference of the int8 one (the
converter's agreement check then measures activation rounding alone), at the cost of the weights'
rounding, which the Keras figures of the snapped model include.

    python -m train snap-weights runs/camvid_lite/last.keras    # -> runs/camvid_lite/last_w8.keras
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from edgeseg.errors import UsageError

LEVELS = 127  # symmetric int8 weights: -127..127 (TFLite never uses -128 for weights)


class SnapError(UsageError, ValueError):
    """Bad input to `snap-weights`; the message says how to fix it."""


def channel_axes(layer: keras.layers.Layer) -> tuple[int, ...]:
    """The kernel axes one quantisation scale spans: all but the output-channel axis. A depthwise
    kernel (h, w, in, multiplier) has one output channel per (in, multiplier) pair."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (0, 1)
    return tuple(range(len(layer.kernel.shape) - 1))


def grid_step(kernel: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The int8 step of each output channel, ``max |w| / 127`` (1 for a channel of zeros, which stays zeros)."""
    peak = np.abs(kernel).max(axis=axes, keepdims=True)
    return np.where(peak > 0, peak / LEVELS, 1.0)


def snap_weights(model: keras.Model) -> dict:
    """Snap every Conv2D/DepthwiseConv2D kernel of `model` in place (nested models included; other
    kernels, e.g. transposed convolutions, are left as they are); returns how many kernels and weights
    it touched and the largest change relative to its channel's peak."""
    kernels = weights = 0
    worst = 0.0
    for layer in _conv_layers(model):
        kernel = np.asarray(layer.kernel)
        step = grid_step(kernel, channel_axes(layer))
        levels = kernel / step
        worst = max(worst, float(np.abs(np.round(levels) - levels).max()) / LEVELS)  # steps -> share of the peak
        layer.kernel.assign((np.round(levels) * step).astype(kernel.dtype))
        kernels += 1
        weights += kernel.size
    return {"kernels": kernels, "weights": weights, "max_change_of_peak": worst}


def _conv_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _conv_layers(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            yield layer


def default_output(source: Path) -> Path:
    return source.with_name(f"{source.stem}_w8{source.suffix}")


def snap_file(source: Path, output: Path | None = None) -> tuple[Path, dict]:
    """Load `source` (.keras), snap it and save it to `output` (default ``<stem>_w8.keras`` beside
    it), atomically; the run's ``labels.json`` goes along when `output` is in another folder.

    Raises:
        SnapError: missing or unloadable source, output equal to the source, no convolution found.
        OutputError: the output cannot be written (nothing half-written is left).
    """
    from .run import load_for_derived, save_derived

    source = Path(source)
    output = Path(output) if output is not None else default_output(source)
    try:
        model = load_for_derived(source, output, "snap-weights", f" (default {default_output(source).name})")
    except ValueError as exc:
        raise SnapError(str(exc)) from exc
    stats = snap_weights(model)
    if not stats["kernels"]:
        raise SnapError(f"{source} has no Conv2D or DepthwiseConv2D layer; nothing to snap")
    save_derived(model, output, source.parent / "labels.json")
    return output, stats
