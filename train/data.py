"""Training datasets in ADE layout as tf.data pipelines, through the shared preprocessing.

Listing, reading and checking files is `edgeseg.dataset` (no TensorFlow there, so `edgeseg eval`
and `convert` read datasets the very same way).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from edgeseg.dataset import DatasetError, Pairs, list_pairs, read_image_rgb, read_mask, resolve_labels, select_pairs
from edgeseg.preprocess import InputSpec, normalize, prepare_pixels, resize_mask

__all__ = ["DatasetError", "Pairs", "list_pairs", "select_pairs", "resolve_labels", "load_pixels", "load_example",
           "make_dataset", "worker_share", "input_rate", "cache_bytes", "source_spec",
           "augment", "other_camera", "camera_warp", "paste_objects", "class_frequencies", "median_frequency_weights",
           "enet_weights"]


def load_pixels(image_path: str, mask_path: str, spec: InputSpec, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One training pair at network size, as uint8: RGB pixels via the shared `prepare_pixels`, mask
    resized NEAREST. This is what the tf.data cache holds (a quarter of the float32 size)."""
    image = read_image_rgb(image_path)
    mask = read_mask(mask_path, num_classes)
    if mask.shape != image.shape[:2]:
        raise DatasetError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is"
                           f" {image.shape[1]}x{image.shape[0]}; masks must match their images")
    return prepare_pixels(image, spec), resize_mask(mask, spec.size_hw)


def load_example(image_path: str, mask_path: str, spec: InputSpec, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One training pair at network size: float32 image via the shared `preprocess`, uint8 mask."""
    pixels, mask = load_pixels(image_path, mask_path, spec, num_classes)
    return normalize(pixels, spec), mask


def cache_bytes(num_examples: int, spec: InputSpec) -> int:
    """Memory an in-memory cache of `num_examples` pairs takes (uint8 pixels + uint8 mask)."""
    return num_examples * spec.height * spec.width * 4


def source_spec(spec: InputSpec, source_scale: float) -> InputSpec:
    """The spec training images are prepared and cached at: `spec` with its size times
    `source_scale` (same normalisation), so zoomed crops come from real pixels."""
    if source_scale == 1.0:
        return spec
    return dataclasses.replace(spec, height=int(round(spec.height * source_scale)),
                               width=int(round(spec.width * source_scale)))


def augment(image: tf.Tensor, mask: tf.Tensor, max_scale: float, seed: tf.Tensor, min_scale: float = 1.0,
            strong_color: bool = False, size_hw: tuple[int, int] | None = None,
            detail_jitter: float = 1.0, camera_jitter: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Random horizontal flip, zoom in [min_scale, max_scale] then crop (image bilinear, mask
    NEAREST; a zoom below 1 pads with grey and label 0, which the loss ignores), colour jitter and,
    with `detail_jitter` > 1, on half the crops a shrink by up to that factor and back (the mask is
    unchanged: only the image loses detail). With `camera_jitter` > 0, `other_camera` then gives
    each crop, with that probability each, another mount's roll and pitch, blur, noise and JPEG.

    `size_hw` is the output (network input) size, zoom 1 = the whole frame at that size; by default
    the image's own. A larger image (`source_spec`) is resized with antialiasing where it shrinks.
    """
    height, width = size_hw or (image.shape[0], image.shape[1])
    antialias = image.shape[0] > height
    seeds = tf.random.experimental.stateless_split(seed, 6)
    mask = mask[..., tf.newaxis]
    flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    mask = tf.cond(flip, lambda: tf.image.flip_left_right(mask), lambda: mask)
    scale = tf.random.stateless_uniform([], seeds[1], min_scale, max_scale)
    new_h = tf.cast(tf.math.ceil(height * scale), tf.int32)
    new_w = tf.cast(tf.math.ceil(width * scale), tf.int32)
    image = tf.image.resize(image, (new_h, new_w), method="bilinear", antialias=antialias)
    mask = tf.image.resize(mask, (new_h, new_w), method="nearest")
    if min_scale < 1.0:
        image, mask = _pad_to(image, mask, height, width, tf.random.experimental.stateless_fold_in(seeds[1], 1))
        new_h, new_w = tf.maximum(new_h, height), tf.maximum(new_w, width)
    top = tf.random.stateless_uniform([], seeds[2], 0, new_h - height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[3], 0, new_w - width + 1, dtype=tf.int32)
    image = image[top : top + height, left : left + width]
    mask = mask[top : top + height, left : left + width]
    brightness = tf.random.stateless_uniform([], seeds[4], -0.1, 0.1)
    contrast = tf.random.stateless_uniform([], seeds[5], 0.8, 1.2)
    mean = tf.reduce_mean(image)
    image = (image - mean) * contrast + mean + brightness
    if strong_color:
        image = _strong_color(image, tf.random.experimental.stateless_fold_in(seeds[5], 1))
    if detail_jitter > 1.0:
        image = _less_detail(image, (height, width), detail_jitter,
                             tf.random.experimental.stateless_fold_in(seeds[4], 1))
    if camera_jitter > 0.0:
        image, mask = tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width, 1))
        image, mask = other_camera(image, mask, camera_jitter, tf.random.experimental.stateless_fold_in(seeds[3], 1))
    image = tf.ensure_shape(image, (height, width, 3))
    return image, tf.ensure_shape(mask[..., 0], (height, width))


def _pad_to(image: tf.Tensor, mask: tf.Tensor, height: int, width: int, seed: tf.Tensor):
    """Pad a shrunk image (grey) and mask (label 0) at a random place to at least height x width."""
    shape = tf.shape(image)
    target_h, target_w = tf.maximum(shape[0], height), tf.maximum(shape[1], width)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform([], seeds[0], 0, target_h - shape[0] + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, target_w - shape[1] + 1, dtype=tf.int32)
    image = tf.image.pad_to_bounding_box(image - 0.5, top, left, target_h, target_w) + 0.5
    return image, tf.image.pad_to_bounding_box(mask, top, left, target_h, target_w)


def _less_detail(image: tf.Tensor, size_hw: tuple[int, int], max_factor: float, seed: tf.Tensor) -> tf.Tensor:
    """On half the crops: shrink (antialiased) by a random factor in [1, max_factor], resize back."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    factor = tf.random.stateless_uniform([], seeds[1], 1.0, max_factor)
    height, width = size_hw
    small = (tf.cast(tf.math.ceil(height / factor), tf.int32), tf.cast(tf.math.ceil(width / factor), tf.int32))

    def soften():
        shrunk = tf.image.resize(image, small, method="bilinear", antialias=True)
        return tf.image.resize(shrunk, (height, width), method="bilinear")

    return tf.cond(tf.random.stateless_uniform([], seeds[0]) < 0.5, soften, lambda: image)


MAX_ROLL_DEGREES = 10.0  # camera_jitter's geometry: a roll up to this either way,
MAX_PITCH = 0.25  # and a keystone that scales the top and bottom rows by up to 1 -+ this


def other_camera(image: tf.Tensor, mask: tf.Tensor, probability: float,
                 seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Frames as another camera on another mount takes them: each of four effects, independently
    with `probability`, on one ``(H, W, 3)`` [0, 1] crop and its ``(H, W, 1)`` uint8 mask.

    - `camera_warp`: a roll of up to 10 degrees and a pitch keystone (image and mask alike; the
      uncovered corners are grey and label 0, which the loss ignores);
    - a Gaussian blur, sigma 0.5-1.5 pixels (a softer lens, focus, motion);
    - sensor noise, sigma 0.01-0.04;
    - JPEG re-compression at quality 25-85 (streamed and stored footage).
    """
    seeds = tf.random.experimental.stateless_split(seed, 8)

    def maybe(index: int, effect, *values):
        return tf.cond(tf.random.stateless_uniform([], seeds[index]) < probability,
                       lambda: effect(*values), lambda: values if len(values) > 1 else values[0])

    image, mask = maybe(0, lambda i, m: camera_warp(i, m, seeds[1]), image, mask)
    image = maybe(2, lambda i: _blur(i, tf.random.stateless_uniform([], seeds[3], 0.5, 1.5)), image)
    noise_sigma = tf.random.stateless_uniform([], seeds[3] + 1, 0.01, 0.04)  # seeds[3] + 1: a seed of its own
    image = maybe(4, lambda i: tf.clip_by_value(i + tf.random.stateless_normal(tf.shape(i), seeds[5]) * noise_sigma,
                                                0.0, 1.0), image)
    image = maybe(6, lambda i: tf.image.stateless_random_jpeg_quality(tf.clip_by_value(i, 0.0, 1.0), 25, 85, seeds[7]),
                  image)
    return image, mask


def camera_warp(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Roll (up to `MAX_ROLL_DEGREES`) and pitch keystone (`MAX_PITCH`) about the crop's centre: one
    homography for the ``(H, W, 3)`` image (bilinear, grey outside) and ``(H, W, 1)`` uint8 mask
    (nearest, label 0 outside)."""
    height, width = image.shape[0], image.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    angle = tf.random.stateless_uniform([], seeds[0], -MAX_ROLL_DEGREES, MAX_ROLL_DEGREES) * (np.pi / 180.0)
    pitch = tf.random.stateless_uniform([], seeds[1], -MAX_PITCH, MAX_PITCH) / (height / 2.0)
    cos, sin, zero, one = tf.cos(angle), tf.sin(angle), tf.constant(0.0), tf.constant(1.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    to_centre = tf.constant([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    back = tf.constant([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    roll = tf.stack([tf.stack([cos, -sin, zero]), tf.stack([sin, cos, zero]), tf.stack([zero, zero, one])])
    keystone = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, one, zero]), tf.stack([zero, pitch, one])])
    matrix = back @ keystone @ roll @ to_centre  # output pixel -> the input pixel it samples
    transform = tf.reshape(matrix / matrix[2, 2], [9])[:8][tf.newaxis]

    def warp(values, fill, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=values[tf.newaxis], transforms=transform, output_shape=[height, width],
            fill_value=fill, interpolation=interpolation, fill_mode="CONSTANT")[0]

    return warp(image, 0.5, "BILINEAR"), warp(mask, 0.0, "NEAREST")


def _blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur of an ``(H, W, 3)`` image (7 taps, edges reflected)."""
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-taps * taps / (2.0 * sigma * sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[tf.newaxis], [[0, 0], [3, 3], [3, 3], [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(kernel, [7, 1, 1, 1]), [1, 1, 3, 1])
    cols = tf.tile(tf.reshape(kernel, [1, 7, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")[0]


def _strong_color(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Saturation 0.6-1.4, hue +-0.04, gamma 0.7-1.4 and a per-channel gain 0.9-1.1 (white balance),
    on [0, 1] pixels: the light and cameras of drives the model never saw."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.image.stateless_random_saturation(image, 0.6, 1.4, seeds[0])
    image = tf.image.stateless_random_hue(image, 0.04, seeds[1])
    gamma = tf.random.stateless_uniform([], seeds[2], 0.7, 1.4)
    gain = tf.random.stateless_uniform([3], seeds[3], 0.9, 1.1)
    return tf.clip_by_value(tf.pow(tf.clip_by_value(image, 0.0, 1.0), gamma) * gain, 0.0, 1.0)


def make_dataset(
    pairs: Pairs,
    spec: InputSpec,
    num_classes: int,
    batch_size: int,
    training: bool,
    augment_data: bool = False,
    max_scale: float = 1.5,
    min_scale: float = 1.0,
    strong_color: bool = False,
    detail_jitter: float = 1.0,
    camera_jitter: float = 0.0,
    cache: str = "memory",
    seed: int = 0,
    repeat: bool = False,
    source_scale: float = 1.0,
    copy_paste: float = 0.0,
    paste_classes: tuple[int, ...] = (),
) -> tf.data.Dataset:
    """Decode -> shared prepare (uint8) -> cache -> (shuffle) -> shared normalize -> (augment) ->
    batch -> prefetch. `batch_size` is the batch this dataset yields (per replica when the caller
    distributes it itself); `repeat` makes a training set endless (the caller gives the steps). With
    augmentation, images are prepared and cached at `source_scale` x the input size (`source_spec`)
    and the zoomed crop brings them to the input size; with `copy_paste` > 0, each batch goes through `paste_objects`."""
    stored = source_spec(spec, source_scale) if training and augment_data else spec

    def load(image_path, mask_path):
        return load_pixels(image_path.decode(), mask_path.decode(), stored, num_classes)

    def load_tf(image_path, mask_path):
        pixels, mask = tf.numpy_function(load, [image_path, mask_path], (tf.uint8, tf.uint8), stateful=False)
        pixels = tf.ensure_shape(pixels, (stored.height, stored.width, 3))
        return pixels, tf.ensure_shape(mask, (stored.height, stored.width))

    def normalize_tf(pixels, mask):
        image = tf.numpy_function(lambda p: normalize(p, stored), [pixels], tf.float32, stateful=False)
        return tf.ensure_shape(image, (stored.height, stored.width, 3)), mask

    dataset = tf.data.Dataset.from_tensor_slices((list(pairs.images), list(pairs.masks)))
    dataset = dataset.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache == "memory":
        dataset = dataset.cache()
    elif cache != "none":
        dataset = dataset.cache(cache)
    if training:
        dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    dataset = dataset.map(normalize_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training and augment_data:
        counter = tf.data.Dataset.random(seed=seed).map(lambda x: tf.stack([x, x // 7]))
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda pair, s: augment(pair[0], pair[1], max_scale, s, min_scale, strong_color, spec.size_hw,
                                    detail_jitter, camera_jitter),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    if training and augment_data and copy_paste > 0 and paste_classes:
        dataset = _with_pasted_objects(dataset, paste_classes, copy_paste, seed)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _with_pasted_objects(batches: tf.data.Dataset, classes: tuple[int, ...], probability: float,
                         seed: int) -> tf.data.Dataset:
    """`paste_objects` on every batch, with its own stream of seeds."""
    batch_seeds = tf.data.Dataset.random(seed=seed + 1).map(lambda x: tf.stack([x, x // 5]))
    return tf.data.Dataset.zip((batches, batch_seeds)).map(
        lambda pair, s: paste_objects(pair[0], pair[1], classes, probability, s),
        num_parallel_calls=tf.data.AUTOTUNE)


def paste_objects(images: tf.Tensor, masks: tf.Tensor, classes: tuple[int, ...], probability: float,
                  seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Copy-paste of small objects within a batch of augmented crops: with `probability`, a crop
    receives the pixels (image and label) of the `classes` found in the next crop of the batch, at
    the same place (the crops share a camera's geometry, so a pedestrian stays at pedestrian height).
    Thin and rare classes (pole, sign, pedestrian, bicyclist) are then seen more often and in front
    of other scenes' backgrounds, instead of beside the same drive's street furniture.
    """
    partner_images = tf.roll(images, shift=-1, axis=0)
    partner_masks = tf.roll(masks, shift=-1, axis=0)
    chosen = tf.random.stateless_uniform(tf.shape(masks)[:1], seed) < probability
    wanted = tf.reduce_any(partner_masks[..., tf.newaxis] == tf.constant(classes, masks.dtype), axis=-1)
    paste = wanted & chosen[:, tf.newaxis, tf.newaxis]
    images = tf.where(paste[..., tf.newaxis], partner_images, images)
    return images, tf.where(paste, partner_masks, masks)


def worker_share(pairs: Pairs, num_workers: int, index: int) -> Pairs:
    """Worker `index`'s part of the training pairs: every `num_workers`-th pair, all parts the same
    length (so every worker runs the same number of steps, as synchronous training needs)."""
    per_worker = len(pairs) // num_workers
    return pairs.select(range(index, per_worker * num_workers, num_workers))


def input_rate(pairs: Pairs, spec: InputSpec, num_classes: int, count: int = 32) -> float:
    """Images/s the input pipeline decodes and prepares (the first epoch's, uncached rate), measured
    on up to `count` pairs with the same parallel map as training."""
    sample = pairs.select(range(min(count, len(pairs))))
    dataset = make_dataset(sample, spec, num_classes, batch_size=1, training=False, cache="none")
    started = time.perf_counter()
    seen = sum(1 for _ in dataset)
    return seen / max(time.perf_counter() - started, 1e-9)


def class_frequencies(pairs: Pairs, num_classes: int) -> np.ndarray:
    """Pixel count per class over the masks (for median-frequency class weights)."""
    counts = np.zeros(num_classes, np.int64)
    for path in pairs.masks:
        counts += np.bincount(read_mask(path, num_classes).reshape(-1), minlength=num_classes)
    return counts


def _labelled_shares(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's share of the labelled pixels, and which classes to weigh (present, not 0)."""
    freq = counts.astype(np.float64) / max(1, counts[1:].sum())
    present = freq > 0
    present[0] = False
    return freq, present


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """w_c = median(f) / f_c over labelled classes present; class 0 and absent classes get 0."""
    freq, present = _labelled_shares(counts)
    weights = np.zeros_like(freq)
    if present.any():
        weights[present] = np.median(freq[present]) / freq[present]
    return weights.astype(np.float32)


def enet_weights(counts: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet's w_c = 1 / ln(c + p_c), p_c the class's share of labelled pixels, scaled so the median
    present class weighs 1 (only the ratios matter); class 0 and absent classes get 0. Bounded by
    1 / ln(c) (~50), so a rare class cannot dominate the loss the way median frequency lets it."""
    freq, present = _labelled_shares(counts)
    weights = np.zeros_like(freq)
    if present.any():
        raw = 1.0 / np.log(c + freq[present])
        weights[present] = raw / np.median(raw)
    return weights.astype(np.float32)
