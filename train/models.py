"""Segmentation networks: the tutorial's `unet` and the edge-friendly `unet-lite`, `unet-lite2`
and `dilated-lite`.

All output per-pixel *logits* with one channel per class index (channel 0 = not labelled), so
channel k is label k everywhere. Logits, not softmax: argmax is the same, and an int8 logit
keeps far more resolution between close classes than an int8 probability (scale 1/256).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {}

# BatchNorm momentum: 0.9 (not Keras' 0.99) so the moving statistics used at inference keep up
# with small datasets of ~50 steps per epoch; at 0.99 validation lags the weights by epochs.
BN_MOMENTUM = 0.9
# Set by `build_model(synchronized_bn=True)` while it builds: BatchNorm layers then compute their
# batch statistics over all replicas of a distributed run (so every worker keeps the same moving
# statistics, and two replicas of 4 images normalise like one batch of 8). No effect on one device.
_SYNC_BN = False


def _batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=_SYNC_BN, name=name)


def _register(name: str) -> Callable:
    def wrap(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        ARCHITECTURES[name] = builder
        return builder

    return wrap


def required_multiple(architecture: str) -> int:
    """Input height and width must be a multiple of this (the network's total downsampling)."""
    return {"unet": 16, "unet-lite": 32, "unet-lite2": 32, "dilated-lite": 8}[architecture]


def check_input_size(architecture: str, height: int, width: int) -> None:
    """Raise ValueError naming the nearest valid size when H or W do not fit the network."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    check_multiple(height, width, required_multiple(architecture), architecture)


def check_multiple(height: int, width: int, multiple: int, network: str) -> None:
    """Raise ValueError naming the nearest valid size when H or W is not a positive multiple of `multiple`."""

    def nearest(value: int) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise ValueError(
            f"input size {height}x{width} (HxW) does not fit {network}: H and W must be multiples"
            f" of {multiple}; nearest valid size is {nearest(height)}x{nearest(width)}"
        )


def build_model(architecture: str, height: int, width: int, num_classes: int, synchronized_bn: bool = False,
                **kwargs) -> keras.Model:
    """Build `architecture` for a static ``(height, width, 3)`` input and `num_classes` outputs;
    `synchronized_bn` for runs over several replicas.

    Raises:
        ValueError: unknown architecture or an input size the network cannot divide.
    """
    global _SYNC_BN
    check_input_size(architecture, height, width)
    _SYNC_BN = synchronized_bn
    try:
        return ARCHITECTURES[architecture](height, width, num_classes, **kwargs)
    finally:
        _SYNC_BN = False


def _conv_relu(x, filters: int, kernel: int, name: str, batch_norm: bool):
    """Conv + ReLU, or Conv (no bias) + BatchNorm + ReLU; BatchNorm folds into the conv at export."""
    if not batch_norm:
        return layers.Conv2D(
            filters, kernel, padding="same", activation="relu", kernel_initializer="he_normal", name=name
        )(x)
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer="he_normal", name=name)(x)
    x = _batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _double_conv(x, filters: int, name: str, batch_norm: bool = False):
    for index in (1, 2):
        x = _conv_relu(x, filters, 3, f"{name}_conv{index}", batch_norm)
    return x


@_register("unet")
def unet(
    height: int,
    width: int,
    num_classes: int,
    base_filters: int = 64,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> keras.Model:
    """The tutorial's U-Net (64 -> 1024 channels, UpSampling2D + 2x2 conv, skip concatenation).

    Fixed from the tutorial: its ``Conv2D(2, 3)`` squeezed all 64 decoder channels into 2 right
    before the 151-class 1x1 head, so 151 classes had to be read out of 2 numbers per pixel.
    Here the head reads the 64 decoder channels directly.

    ``batch_norm=True`` (not in the tutorial) puts BatchNorm between every 3x3/2x2 conv and its
    ReLU. It costs nothing at inference (folded into the conv by the converter) and keeps
    activation ranges tame, which is what int8 quantisation needs (see MODEL_CARD.md).
    """
    inputs = keras.Input((height, width, 3), name="image")
    skips = []
    x = inputs
    for level in range(4):
        x = _double_conv(x, base_filters * 2**level, f"down{level}", batch_norm)
        if level == 3:
            x = layers.Dropout(dropout, name="down3_dropout")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _double_conv(x, base_filters * 16, "bottom", batch_norm)
    x = layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(4)):
        filters = base_filters * 2**level
        x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = _conv_relu(x, filters, 2, f"up{level}_conv0", batch_norm)
        x = layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = _double_conv(x, filters, f"up{level}", batch_norm)
    logits = layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="unet")


def _separable(x, filters: int, stride: int, name: str, dilation: int = 1):
    """Depthwise 3x3 (at `dilation`) + pointwise 1x1, each with BatchNorm (folded at export) and ReLU6."""
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", dilation_rate=dilation, use_bias=False,
                               name=f"{name}_dw")(x)
    x = _batch_norm(f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = _batch_norm(f"{name}_pw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def _channels(width_multiplier: float) -> Callable[[int], int]:
    """Channel count scaled by `width_multiplier`, a multiple of 8 and at least 8."""
    return lambda channels: max(8, int(round(channels * width_multiplier / 8)) * 8)


def _stem(height: int, width: int, ch: Callable[[int], int]):
    """The input and unet-lite's 1/2-resolution start: 3x3 stride-2 conv, then one separable block."""
    inputs = keras.Input((height, width, 3), name="image")
    x = layers.Conv2D(ch(24), 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _batch_norm("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    return inputs, _separable(x, ch(32), 1, "enc1")


def _encoder(x, stages: list[tuple[int, int]], repeat: Callable):
    """Stride-2 separable block + (repeats - 1) `repeat(x, name)` blocks per stage; returns the
    output and the skips (the stem's output, then each stage's)."""
    skips = [x]
    for level, (filters, repeats) in enumerate(stages, start=2):
        x = _separable(x, filters, 2, f"enc{level}_0")
        for index in range(1, repeats):
            x = repeat(x, f"enc{level}_{index}")
        skips.append(x)
    return x, skips


@_register("unet-lite")
def unet_lite(height: int, width: int, num_classes: int, width_multiplier: float = 1.0) -> keras.Model:
    """A narrow MobileNet-style U-Net for edge devices (~0.5 GFLOP at 256x192).

    Only ops the Edge TPU compiler maps: 3x3 stride-2 conv stem, depthwise-separable blocks,
    ReLU6, nearest-neighbour UpSampling2D (no transposed convolutions), plain concatenation
    (no fused activation), 1x1 head and a final bilinear x2 resize of the logits.
    """

    ch = _channels(width_multiplier)
    inputs, x = _stem(height, width, ch)
    x, skips = _encoder(x, [(ch(48), 2), (ch(96), 2), (ch(160), 3)], _repeat)  # 1/4, 1/8, 1/16
    x = _separable(x, ch(256), 2, "bottom_0")  # 1/32
    x = _separable(x, ch(256), 1, "bottom_1")
    x = _decoder(x, skips, [ch(128), ch(96), ch(64), ch(48)])
    return keras.Model(inputs, _head(x, num_classes), name="unet_lite")


def _decoder(x, skips: list, filters: list[int]):
    """U-Net decoder: per skip (deepest first), nearest x2 upsampling, concatenation and one separable
    block of the next `filters`; levels are named dec<N> down to dec1."""
    for skip, width, level in zip(reversed(skips), filters, range(len(filters), 0, -1)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        x = _separable(x, width, 1, f"dec{level}")
    return x


def _head(x, num_classes: int):
    """1x1 logits and the final bilinear x2 to the input size (float32 under mixed precision)."""
    x = layers.Conv2D(num_classes, 1, name="head", dtype="float32")(x)
    return layers.UpSampling2D(2, interpolation="bilinear", name="logits", dtype="float32")(x)


def _repeat(x, name: str):
    """A separable block that keeps the channel count: a repeat block of unet-lite."""
    return _separable(x, x.shape[-1], 1, name)


def _residual(x, name: str):
    """x + _repeat(x): a repeat block of unet-lite2 (ADD maps to the Edge TPU)."""
    return layers.Add(name=f"{name}_add")([x, _repeat(x, name)])


def _image_pooling(x, filters: int, name: str):
    """Context for every position: the feature map's global mean, projected and broadcast back
    (ParseNet / DeepLab image pooling), concatenated and fused by a 1x1 conv. MEAN and
    RESIZE_NEAREST_NEIGHBOR both map to the Edge TPU."""
    height, width, channels = x.shape[1:]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pool_conv")(pooled)
    pooled = _batch_norm(f"{name}_pool_bn")(pooled)
    pooled = layers.ReLU(6.0, name=f"{name}_pool_relu")(pooled)
    pooled = layers.UpSampling2D((height, width), interpolation="nearest", name=f"{name}_broadcast")(pooled)
    x = layers.Concatenate(name=f"{name}_concat")([x, pooled])
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_fuse")(x)
    x = _batch_norm(f"{name}_fuse_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_fuse_relu")(x)


@_register("unet-lite2")
def unet_lite2(height: int, width: int, num_classes: int, width_multiplier: float = 1.0,
               image_pooling: bool = True) -> keras.Model:
    """unet-lite with its compute moved from the full-resolution decoder into the encoder.

    Same ops as unet-lite plus ADD and MEAN (all Edge-TPU mappable), about the same FLOPs:
    residual repeats in a deeper, wider encoder (1/8: 3 blocks of 96, 1/16: 4 of 192, 1/32: 3 of
    256), image-pooling context at 1/32, and a 1/2-resolution decoder stage of 32 channels fed by
    a 1x1 reduction at 1/4 (in unet-lite that one stage was a third of the FLOPs).
    `image_pooling=False` leaves the context branch out (one global vector steering every pixel
    misled it on footage unlike the training drives; see configs/lodo/README.md).
    """

    ch = _channels(width_multiplier)
    inputs, x = _stem(height, width, ch)
    x, skips = _encoder(x, [(ch(48), 2), (ch(96), 3), (ch(192), 4)], _residual)  # 1/4, 1/8, 1/16
    x = _separable(x, ch(256), 2, "bottom_0")  # 1/32
    for index in (1, 2):
        x = _residual(x, f"bottom_{index}")
    if image_pooling:
        x = _image_pooling(x, ch(128), "context")
    for skip, filters, level in zip(reversed(skips[1:]), [ch(128), ch(96), ch(64)], range(4, 1, -1)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        x = _separable(x, filters, 1, f"dec{level}")
    x = layers.Conv2D(ch(32), 1, use_bias=False, name="dec1_reduce")(x)
    x = _batch_norm("dec1_reduce_bn")(x)
    x = layers.ReLU(6.0, name="dec1_reduce_relu")(x)
    x = layers.UpSampling2D(2, interpolation="nearest", name="dec1_up")(x)
    x = layers.Concatenate(name="dec1_concat")([x, skips[0]])
    x = _separable(x, ch(32), 1, "dec1")
    return keras.Model(inputs, _head(x, num_classes), name="unet_lite2")


# dilated-lite's context blocks at 1/8: ENet's stage-2/3 pattern of growing dilations, twice. The
# receptive field reaches about 500 input pixels without going below 1/8 resolution.
DILATIONS = (1, 2, 4, 8, 1, 2, 4, 8)


def _dilated_residual(x, dilation: int, name: str):
    """x + a separable block at `dilation` that keeps the channel count (`_residual`, dilated)."""
    return layers.Add(name=f"{name}_add")([x, _separable(x, x.shape[-1], 1, name, dilation)])


@_register("dilated-lite")
def dilated_lite(height: int, width: int, num_classes: int, width_multiplier: float = 1.0) -> keras.Model:
    """A resolution-keeping network (ENet / DeepLab style) at unet-lite's cost (~0.8 GFLOP at 320x256).

    unet-lite halves down to 1/32 and spends a third of its FLOPs on a full 1/2-resolution decoder;
    thin objects (poles, signs) are a pixel or two wide at 1/16 and gone at 1/32. This one stops at
    1/8 and buys context with dilated residual blocks there (rates 1-2-4-8, twice, 128 channels),
    then a light decoder with skips at 1/4 and 1/2. Same op set as unet-lite2 (dilation is an
    attribute of DEPTHWISE_CONV_2D); input sides need only be multiples of 8.
    """

    ch = _channels(width_multiplier)
    inputs, x = _stem(height, width, ch)
    x, skips = _encoder(x, [(ch(48), 2)], _repeat)  # 1/4
    x = _separable(x, ch(128), 2, "enc3_0")  # 1/8
    for index, dilation in enumerate(DILATIONS, start=1):
        x = _dilated_residual(x, dilation, f"ctx{index}")
    x = _decoder(x, skips, [ch(64), ch(32)])
    return keras.Model(inputs, _head(x, num_classes), name="dilated_lite")


def count_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolutions and dense layers (what dominates a U-Net)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            out_h, out_w, out_c = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            total += 2 * out_h * out_w * out_c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            out_h, out_w, out_c = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            total += 2 * out_h * out_w * out_c * kh * kw * in_c
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)
