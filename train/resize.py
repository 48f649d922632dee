"""Rebuild a trained model for another input size, with the same weights.

The edge networks are convolutional throughout (their resizes are by fixed factors), so a trained
model's weights fit any input whose sides divide by its total downsampling. Why run at a size other
than the training one: trained on crops zoomed 0.75-1.75x, a network learns objects larger than they
look in a whole frame at its training size; a larger input brings them back to the scale it learned
(the train-test resolution discrepancy, Touvron et al. 2019, "FixRes"). For the bundled recipe,
trained at 320x256, 384x288 gains on both held-out drives and on the clips (configs/lodo/README.md).

    python -m train resize runs/camvid_lite_pair/last.keras --height 288 --width 384 \\
        -o runs/camvid_lite_pair/last_384x288.keras
"""

from __future__ import annotations

from pathlib import Path

import keras

from edgeseg.errors import UsageError

from .models import check_multiple


class ResizeError(UsageError, ValueError):
    """Bad input to `resize`; the message says how to fix it."""


def downsampling(model: keras.Model) -> int:
    """The network's total downsampling: its input height over its smallest feature map's height
    (global poolings, 1 pixel high, aside)."""
    height = model.input_shape[1]
    heights = [layer.output.shape[1] for layer in model.layers if len(layer.output.shape) == 4]
    return max(1, height // min((h for h in heights if h and h > 1), default=height))  # 1: a global pool


def resize_model(model: keras.Model, height: int, width: int) -> keras.Model:
    """`model`'s graph and weights for a ``(height, width, 3)`` input.

    Raises:
        ResizeError: a size the network cannot divide (the message names the nearest valid one), or a
            graph that does not rebuild at that size.
    """
    try:
        check_multiple(height, width, downsampling(model), "this network")
    except ValueError as exc:
        raise ResizeError(str(exc)) from exc
    channels = model.input_shape[-1]
    image = keras.Input(shape=(height, width, channels), name=model.layers[0].name)
    try:
        resized = keras.models.clone_model(model, input_tensors=image)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a graph that does not rebuild
        raise ResizeError(f"this network does not rebuild at {height}x{width} ({exc.__class__.__name__}): one of its"
                          " layers is fixed to the training size (unet-lite2's image pooling is); train at that size,"
                          " or use a network without such a layer (unet-lite, unet, unet-lite2 with image_pooling:"
                          " false)") from exc
    resized.set_weights(model.get_weights())
    return resized


def resize_file(source: Path, output: Path, height: int, width: int) -> tuple[Path, keras.Model]:
    """Load `source` (.keras), rebuild it for ``height x width`` and save it to `output` atomically;
    the run's ``labels.json`` goes along when `output` is in another folder.

    Raises:
        ResizeError: missing or unloadable source, output equal to the source, a size that does not fit.
        OutputError: the output cannot be written (nothing half-written is left).
    """
    from .run import load_for_derived, save_derived

    source, output = Path(source), Path(output)
    try:
        model = load_for_derived(source, output, "resize")
    except ValueError as exc:
        raise ResizeError(str(exc)) from exc
    resized = resize_model(model, height, width)
    save_derived(resized, output, source.parent / "labels.json")
    return output, resized
