"""Training pieces on real CamVid images: data, augmentation, optimiser, loss, resume."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, shared
from edgeseg.backend import op_details
from edgeseg.preprocess import InputSpec, normalize, prepare_pixels, resize_image, resize_mask


def test_nearest_mask_resize_keeps_only_original_labels(camvid):
    import cv2

    masks = sorted((camvid / "annotations" / "training").glob("*.png"))[:5]
    for path in masks:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        for size in ((192, 256), (100, 133), (720, 960)):
            assert set(np.unique(resize_mask(mask, size))) <= set(np.unique(mask))
        # What the tutorial did: bilinear resizing invents labels that are in neither neighbour.
        blurred = cv2.resize(mask, (133, 100), interpolation=cv2.INTER_LINEAR)
        assert not set(np.unique(blurred)) <= set(np.unique(mask))


def test_area_resize_gives_opencvs_uint8_bytes_at_every_ratio(camvid, street_frames):
    """resize_image shrinks through float32 for speed; the bytes must stay OpenCV's uint8 INTER_AREA
    (training and the runtime share it), for integer and non-integer ratios and 1/3/4 channels."""
    import cv2

    images = [cv2.imread(str(p)) for p in sorted((camvid / "images" / "validation").glob("*"))[:3]]
    for image in images + street_frames[:3]:
        for source_wh in ((480, 360), (640, 480), (1280, 720), (512, 384), (333, 251)):
            frame = cv2.resize(image, source_wh, interpolation=cv2.INTER_LINEAR)
            for colour_code in (None, cv2.COLOR_BGR2GRAY, cv2.COLOR_BGR2BGRA):
                pixels = frame if colour_code is None else cv2.cvtColor(frame, colour_code)
                for size_hw in ((192, 256), (128, 128), (96, 128)):
                    expected = cv2.resize(pixels, size_hw[::-1], interpolation=cv2.INTER_AREA)
                    np.testing.assert_array_equal(resize_image(pixels, size_hw), expected)


def test_normalize_table_gives_the_arithmetic_to_the_bit(camvid, street_frames):
    """normalize looks uint8 images up in a table of its own float32 arithmetic; the values must be
    exactly (pixel - mean) / std as computed per pixel, for shared and per-channel statistics."""
    import cv2

    images = [cv2.imread(str(p)) for p in sorted((camvid / "images" / "validation").glob("*"))[:2]]
    specs = (InputSpec(192, 256), InputSpec(192, 256, mean=(127.5,) * 3, std=(127.5,) * 3),
             InputSpec(192, 256, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)),
             InputSpec(192, 256, mean=[0.0, 10.0, 20.0], std=[255.0, 128.0, 64.0]))  # lists, as a user may pass
    for image in images + street_frames[:2]:
        for spec in specs:
            pixels = prepare_pixels(image, spec, bgr=True)
            mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
            expected = (pixels.astype(np.float32) - mean) * (np.float32(1.0) / std)
            got = normalize(pixels, spec)
            assert got.dtype == np.float32 and got.shape == pixels.shape
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(normalize(pixels.astype(np.float32), spec), expected)  # no table


@pytest.mark.parametrize("min_scale, strong", [(1.0, False), (0.6, True)])
def test_augmentation_keeps_labels_and_aligns_image_and_mask(camvid, min_scale, strong):
    """Flip, zoom-crop and jitter must move image and mask together: the image here is the mask
    painted in one colour per class, so after augmenting, every class region of the new mask must
    still hold a single colour (an augment that flips or crops only one of them fails this). Zooming
    out (min_scale < 1) pads with label 0, and strong colour jitter acts on every pixel alike."""
    import cv2
    import tensorflow as tf

    from train.data import augment, load_example

    palette = np.random.default_rng(0).uniform(0.2, 0.8, (12, 3)).astype(np.float32)
    pairs = sorted((camvid / "images" / "training").glob("*.jpg"))[:4]
    # seeds [5, 9] and [6, 9] do not flip / flip (both zoom); [7, 9] flips, [1, 9] zooms little
    padded = []
    for seed, image_path in zip((5, 6, 7, 1), pairs):
        mask_path = camvid / "annotations" / "training" / (image_path.stem + ".png")
        _, mask = load_example(str(image_path), str(mask_path), InputSpec(96, 128), 12)
        painted = palette[mask]
        out_image, out_mask = augment(tf.constant(painted), tf.constant(mask), 1.6, tf.constant([seed, 9], tf.int64),
                                      min_scale, strong)
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        assert out_image.shape == (96, 128, 3) and out_mask.shape == (96, 128)
        assert set(np.unique(out_mask)) <= set(np.unique(mask))
        padded.append((out_mask == 0).mean() - (mask == 0).mean())
        checked = 0
        for label in np.unique(out_mask)[1:] if min_scale < 1 else np.unique(out_mask):  # 0: class 0 + padding
            inside = cv2.erode((out_mask == label).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if inside.sum() >= 50:  # away from edges, where bilinear resizing blends neighbours
                assert out_image[inside].std(axis=0).max() < 0.02, (image_path.name, label)
                checked += 1
        assert checked >= 2 and out_image.std() > 0.1
    if min_scale < 1:
        assert max(padded) > 0.05  # some seed zoomed out: a border of ignored label 0
    else:
        assert max(padded) < 0.01


def test_source_scale_zooms_into_real_pixels(camvid):
    """With `source_scale`, training frames are kept larger than the input, so a zoom-in crops real
    detail instead of upsampling the input-size frame, and zoom 1 still gives the input-size frame
    the shared `prepare_pixels` makes (antialiased shrink ~ its area averaging)."""
    import cv2
    import tensorflow as tf

    from edgeseg.preprocess import normalize
    from train.config import ConfigError, TrainConfig
    from train.data import augment, load_pixels, source_spec

    spec = InputSpec(96, 128)
    stored = source_spec(spec, 2.0)
    assert stored.size_hw == (192, 256) and source_spec(spec, 1.0) is spec
    image_path = sorted((camvid / "images" / "training").glob("*.jpg"))[3]
    mask_path = camvid / "annotations" / "training" / (image_path.stem + ".png")
    big, big_mask = load_pixels(str(image_path), str(mask_path), stored, 12)
    small, small_mask = load_pixels(str(image_path), str(mask_path), spec, 12)

    def zoomed(pixels, mask, scale):
        out, out_mask = augment(tf.constant(normalize(pixels, spec)), tf.constant(mask), scale,
                                tf.constant([5, 9], tf.int64), scale, False, spec.size_hw)  # [5, 9]: no flip
        assert out.shape == (96, 128, 3) and out_mask.shape == (96, 128)
        return out.numpy(), out_mask.numpy()

    def detail(image):
        return cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var()

    whole, whole_mask = zoomed(big, big_mask, 1.0)
    reference, _ = zoomed(small, small_mask, 1.0)  # the same seed: the same colour jitter
    assert np.abs(whole - reference).mean() < 0.01  # zoom 1 = the input-size frame
    assert (whole_mask == small_mask).mean() > 0.9
    sharp, _ = zoomed(big, big_mask, 2.0)
    blurred, _ = zoomed(small, small_mask, 2.0)
    assert detail(sharp) > 2 * detail(blurred)  # real pixels, not an upsampled input-size frame
    with pytest.raises(ConfigError, match="source_scale"):
        TrainConfig(source_scale=0.5).validate()


def test_detail_jitter_softens_half_the_crops_and_leaves_masks_alone(camvid):
    """`detail_jitter` shrinks about half the crops by up to its factor and back: those lose fine detail
    (Laplacian variance), keep their colours (mean) and shape; the masks and the other crops are the
    ones the same seeds give without it."""
    import cv2
    import tensorflow as tf

    from edgeseg.preprocess import normalize
    from train.config import ConfigError, TrainConfig
    from train.data import augment, load_pixels

    spec = InputSpec(192, 256)
    image_path = sorted((camvid / "images" / "training").glob("*.jpg"))[3]
    pixels, mask = load_pixels(str(image_path), str(camvid / "annotations" / "training" / (image_path.stem + ".png")),
                               spec, 12)
    image = tf.constant(normalize(pixels, spec))

    def detail(out):
        return cv2.Laplacian(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var()

    softened = 0
    for seed in range(16):
        seeds = tf.constant([seed, 3], tf.int64)
        plain, plain_mask = augment(image, tf.constant(mask), 1.5, seeds, 0.75, True, spec.size_hw)
        soft, soft_mask = augment(image, tf.constant(mask), 1.5, seeds, 0.75, True, spec.size_hw, detail_jitter=3.0)
        plain, soft = plain.numpy(), soft.numpy()
        assert soft.shape == (192, 256, 3) and (soft_mask.numpy() == plain_mask.numpy()).all()
        if np.array_equal(plain, soft):
            continue
        softened += 1
        assert detail(soft) < 0.9 * detail(plain) and abs(soft.mean() - plain.mean()) < 0.01
    assert 4 <= softened <= 12  # about half of 16
    with pytest.raises(ConfigError, match="detail_jitter"):
        TrainConfig(detail_jitter=0.5).validate()


def test_camera_warp_moves_image_and_mask_together(camvid):
    """`camera_warp` rolls and tilts image and mask with one homography: on an image painted from its
    own mask, the warped image still shows the warped mask's labels, and the corners it uncovers are
    grey and label 0 (ignored by the loss)."""
    import tensorflow as tf

    from edgeseg.dataset import read_mask
    from train.data import camera_warp

    spec = InputSpec(256, 320)
    mask = resize_mask(read_mask(sorted((camvid / "annotations" / "training").glob("*.png"))[5], 12), spec.size_hw)
    painted = np.repeat((mask.astype(np.float32) / 12.0)[..., None], 3, axis=2)
    uncovered = []
    for seed in range(6):
        image, warped = camera_warp(tf.constant(painted), tf.constant(mask[..., None]), tf.constant([seed, 1], tf.int64))
        image, warped = image.numpy(), warped.numpy()[..., 0]
        assert image.shape == (256, 320, 3) and warped.dtype == np.uint8
        assert not np.array_equal(warped, mask)
        assert set(np.unique(warped)) <= set(np.unique(mask)) | {0}
        labelled = warped != 0
        inside = labelled & (np.abs(image[..., 0] * 12.0 - warped) < 0.5)
        assert inside.sum() > 0.95 * labelled.sum()  # edges between labels blend (bilinear), the rest match
        ones = camera_warp(tf.ones((256, 320, 3)), tf.ones((256, 320, 1), tf.uint8), tf.constant([seed, 1], tf.int64))
        corners = ones[1].numpy()[..., 0] == 0  # where the same warp of an all-ones crop finds no pixel
        uncovered.append(corners.mean())
        assert (warped[corners] == 0).all()
        assert (np.abs(image[corners] - 0.5) < 0.02).mean() > 0.9  # grey, but for a blended fringe
    assert max(uncovered) > 0.02 and min(uncovered) < 0.2  # a few percent of the crop, never most of it


def test_camera_jitter_changes_about_its_share_of_crops_and_keeps_their_labels(camvid):
    """`camera_jitter` 0 leaves `augment` as it was; at 0.3 most crops (1 - 0.7^4 of them) get at least
    one of roll/pitch, blur, noise and JPEG, the rest are the plain crops of the same seeds; labels stay
    a subset of the crop's own plus 0, pixels stay in [0, 1]. Out-of-range values are config errors."""
    import tensorflow as tf

    from train.config import ConfigError, TrainConfig
    from train.data import augment, load_pixels

    spec = InputSpec(256, 320)
    image_path = sorted((camvid / "images" / "training").glob("*.jpg"))[7]
    pixels, mask = load_pixels(str(image_path), str(camvid / "annotations" / "training" / (image_path.stem + ".png")),
                               spec, 12)
    image = tf.constant(normalize(pixels, spec))
    changed = 0
    for seed in range(20):
        seeds = tf.constant([seed, 9], tf.int64)
        plain, plain_mask = augment(image, tf.constant(mask), 1.75, seeds, 0.75, True, spec.size_hw)
        off, off_mask = augment(image, tf.constant(mask), 1.75, seeds, 0.75, True, spec.size_hw, camera_jitter=0.0)
        out, out_mask = augment(image, tf.constant(mask), 1.75, seeds, 0.75, True, spec.size_hw, camera_jitter=0.3)
        assert np.array_equal(plain.numpy(), off.numpy()) and np.array_equal(plain_mask.numpy(), off_mask.numpy())
        out, out_mask = out.numpy(), out_mask.numpy()
        assert out.shape == (256, 320, 3) and 0.0 <= out.min() and out.max() <= 1.0
        assert set(np.unique(out_mask)) <= set(np.unique(plain_mask.numpy())) | {0}
        changed += not np.array_equal(out, np.clip(plain.numpy(), 0.0, 1.0))
    assert 10 <= changed <= 19  # about 76 % of 20
    with pytest.raises(ConfigError, match="camera_jitter"):
        TrainConfig(camera_jitter=1.5).validate()
    with pytest.raises(ConfigError, match="camera_jitter"):
        TrainConfig(camera_jitter=-0.1).validate()


def test_copy_paste_moves_the_named_classes_from_the_next_crop(camvid):
    """`copy_paste` gives a crop the image and label pixels of the named classes in the next crop of
    its batch, at the same place, and leaves every other pixel alone; the training pipeline applies
    exactly that to its augmented batches, and about `copy_paste` of the crops receive objects."""
    import tensorflow as tf

    from edgeseg.dataset import resolve_labels, select_pairs
    from train.config import ConfigError, TrainConfig
    from train.data import make_dataset, paste_objects
    from train.run import paste_class_ids

    labels = resolve_labels(camvid, "auto")
    config = TrainConfig(data_dir=str(camvid), copy_paste=1.0, paste_classes=["pole", "signsymbol", "pedestrian"])
    classes = paste_class_ids(config, labels.names)
    assert classes == (3, 7, 10)
    spec = InputSpec(192, 256)
    pairs = select_pairs(camvid, "training", ["0016E5"], max_examples=16)
    common = dict(augment_data=True, max_scale=1.5, min_scale=0.75, strong_color=True, seed=5)
    plain = list(make_dataset(pairs, spec, 12, 4, True, **common))
    pasted = list(make_dataset(pairs, spec, 12, 4, True, copy_paste=1.0, paste_classes=classes, **common))
    assert len(plain) == len(pasted) == 4
    for (images, masks), (out_images, out_masks) in zip(plain, pasted):
        images, masks, out_images, out_masks = (t.numpy() for t in (images, masks, out_images, out_masks))
        partner_images, partner_masks = np.roll(images, -1, axis=0), np.roll(masks, -1, axis=0)
        moved = np.isin(partner_masks, classes)
        assert moved.any(axis=(1, 2)).sum() >= 2  # these street crops do hold poles, signs or people
        assert (out_masks == np.where(moved, partner_masks, masks)).all()
        assert (out_images == np.where(moved[..., None], partner_images, images)).all()
        gained = [np.isin(out_masks[i], classes).sum() >= np.isin(masks[i], classes).sum() for i in range(4)]
        assert all(gained)
    received = 0
    for seed in range(12):
        images, masks = (t for t in plain[seed % 4])
        out_images, out_masks = paste_objects(images, masks, classes, 0.5, tf.constant([seed, 1], tf.int64))
        received += int((out_masks.numpy() != masks.numpy()).any(axis=(1, 2)).sum())
    assert 10 <= received <= 38  # of 48 crops, about half (the ones whose partner holds such classes)
    with pytest.raises(ConfigError, match="paste_classes \\['lamp'\\] are not classes.*sky, building"):
        paste_class_ids(config.replace(paste_classes=["lamp"]), labels.names)
    with pytest.raises(ConfigError, match="paste_classes is empty"):
        TrainConfig(copy_paste=0.5).validate()
    with pytest.raises(ConfigError, match="probability between 0 and 1"):
        TrainConfig(copy_paste=1.5, paste_classes=["pole"]).validate()


def test_splits_join_and_prefixes_pick_drives(camvid):
    """A leave-one-drive-out check selects CamVid frames by drive (file-name prefix) across splits."""
    from edgeseg.dataset import DatasetError, select_pairs

    both = select_pairs(camvid, "training+validation")
    assert len(both) == 367 + 101 and len(set(both.images)) == len(both)
    held_out = select_pairs(camvid, "training", ["0006R0"])
    rest = select_pairs(camvid, "training+validation", ["0016E5", "0001TP"])
    assert len(held_out) == 101 and len(rest) == 367
    assert all(os.path.basename(p).startswith("0006R0") for p in held_out.images + held_out.masks)
    assert not set(held_out.images) & set(rest.images)
    assert [os.path.basename(p)[:-4] for p in rest.images] == [os.path.basename(p)[:-4] for p in rest.masks]
    assert len(select_pairs(camvid, "training", ["0006R0"], max_examples=5)) == 5
    with pytest.raises(DatasetError, match="no training file name starts with Seq05VD.*0001TP, 0006R0, 0016E5"):
        select_pairs(camvid, "training", ["Seq05VD"])


def test_enet_class_weights_follow_the_formula_and_stay_bounded(camvid):
    from edgeseg.dataset import select_pairs
    from train.data import class_frequencies, enet_weights, median_frequency_weights

    counts = class_frequencies(select_pairs(camvid, "training", max_examples=60), 12)
    weights = enet_weights(counts)
    share = counts[1:] / counts[1:].sum()
    raw = 1 / np.log(1.02 + share)
    np.testing.assert_allclose(weights[1:], raw / np.median(raw), rtol=1e-5)
    assert weights[0] == 0 and np.median(weights[1:]) == pytest.approx(1.0)
    order = np.argsort(share)
    assert np.all(np.diff(weights[1:][order]) <= 0)  # rarer class, larger weight
    spread = weights[1:].max() / weights[1:].min()
    assert spread < median_frequency_weights(counts)[1:].max() / median_frequency_weights(counts)[1:].min()
    assert spread < 1 / np.log(1.02)


def test_class_weight_power_softens_the_rule_weights(camvid, capsys):
    from edgeseg.dataset import resolve_labels, select_pairs
    from train.config import ConfigError, TrainConfig
    from train.data import class_frequencies, enet_weights
    from train.run import compute_class_weights

    pairs = select_pairs(camvid, "training", max_examples=40)
    labels = resolve_labels(camvid)
    rule = enet_weights(class_frequencies(pairs, labels.num_classes))
    plain = compute_class_weights(TrainConfig(class_weighting="enet"), pairs, labels)
    np.testing.assert_allclose(plain, rule, rtol=1e-6)
    soft = np.array(compute_class_weights(TrainConfig(class_weighting="enet", class_weight_power=0.5), pairs, labels))
    np.testing.assert_allclose(soft[1:], np.sqrt(rule[1:]), rtol=1e-6)
    assert soft[0] == 0 and soft[1:].max() / soft[1:].min() < rule[1:].max() / rule[1:].min()
    flat = compute_class_weights(TrainConfig(class_weighting="enet", class_weight_power=0.0), pairs, labels)
    assert flat[0] == 0 and set(flat[1:]) == {1.0}
    assert "class weights:" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="class_weight_power 0.5 has no weights to act on"):
        TrainConfig(class_weight_power=0.5).validate()
    with pytest.raises(ConfigError, match="class_weight_power"):
        TrainConfig(class_weighting="enet", class_weight_power=-1.0).validate()


def test_dataset_errors_name_the_problem(tmp_path, camvid):
    from edgeseg.dataset import DatasetError, list_pairs, read_mask

    with pytest.raises(DatasetError, match="does not exist"):
        list_pairs(tmp_path, "training")
    (tmp_path / "images" / "training").mkdir(parents=True)
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        list_pairs(tmp_path, "training")
    image = next((camvid / "images" / "training").glob("*.jpg"))
    (tmp_path / "images" / "training" / "a.jpg").write_bytes(image.read_bytes())
    (tmp_path / "images" / "training" / "b.jpg").write_bytes(image.read_bytes())
    mask = (camvid / "annotations" / "training" / (image.stem + ".png")).read_bytes()
    (tmp_path / "annotations" / "training" / "a.png").write_bytes(mask)
    with pytest.raises(DatasetError, match=r"1 training files have no partner.*\bb\b"):
        list_pairs(tmp_path, "training")
    with pytest.raises(DatasetError, match="holds label 11 but the label table has only 5"):
        read_mask(tmp_path / "annotations" / "training" / "a.png", 5)


def test_input_size_errors_name_the_nearest_valid_size():
    from train.models import check_input_size

    check_input_size("unet-lite", 192, 256)
    check_input_size("unet", 128, 176)
    with pytest.raises(ValueError, match="nearest valid size is 192x256"):
        check_input_size("unet-lite", 200, 250)
    with pytest.raises(ValueError, match="choose one of"):
        check_input_size("segformer", 128, 128)


def test_unet_has_no_two_channel_bottleneck_and_lite_is_under_a_gigaflop():
    import keras

    from train.models import build_model, count_flops

    unet = build_model("unet", 128, 128, 151, base_filters=16)
    convs = [layer for layer in unet.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[-1].filters == 151 and convs[-2].filters == 16  # head reads the 16 (64 at full size) channels
    for architecture in ("unet-lite", "unet-lite2", "dilated-lite"):
        lite = build_model(architecture, 192, 256, 12)
        assert count_flops(lite) < 1e9, architecture
        assert not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in lite.layers)
        assert lite.output.shape[1:] == (192, 256, 12)
    # unet-lite2 keeps unet-lite's FLOPs at 320x256 (within 5 %): it moves compute, it does not add it
    ratio = count_flops(build_model("unet-lite2", 256, 320, 12)) / count_flops(build_model("unet-lite", 256, 320, 12))
    assert 0.95 < ratio < 1.05
    # without its image-pooling branch unet-lite2 has no global op left, and costs a little less
    plain = build_model("unet-lite2", 256, 320, 12, image_pooling=False)
    assert not any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in plain.layers)
    assert any(isinstance(layer, keras.layers.GlobalAveragePooling2D)
               for layer in build_model("unet-lite2", 256, 320, 12).layers)
    assert 0.9 < count_flops(plain) / count_flops(build_model("unet-lite2", 256, 320, 12)) < 1.0
    # dilated-lite never goes below 1/8 and stays within 25 % of unet-lite's FLOPs at 320x256; its
    # context blocks grow their dilation so a 1/8 position sees far beyond its 3x3 neighbours
    dilated = build_model("dilated-lite", 256, 320, 12)
    assert min(layer.output.shape[1] for layer in dilated.layers) == 256 // 8
    assert 1.0 < count_flops(dilated) / count_flops(build_model("unet-lite", 256, 320, 12)) < 1.25
    assert sorted({layer.dilation_rate[0] for layer in dilated.layers
                   if isinstance(layer, keras.layers.DepthwiseConv2D)}) == [1, 2, 4, 8]
    build_model("dilated-lite", 200, 264, 12)  # multiples of 8 are enough
    with pytest.raises(ValueError, match="multiples of 8"):
        build_model("dilated-lite", 196, 264, 12)


def test_unet_batch_norm_option_folds_away_at_export():
    import collections

    import keras
    import tensorflow as tf

    from train.config import TrainConfig
    from train.models import count_flops
    from train.run import build_from_config

    plain = build_from_config(TrainConfig(architecture="unet", height=64, width=64, base_filters=8), 12)
    normed = build_from_config(TrainConfig(architecture="unet", height=64, width=64, base_filters=8,
                                           batch_norm=True), 12)
    convs = [layer for layer in normed.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in normed.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == len(convs) - 1 == 22  # every conv but the logits head; none in the tutorial's
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    assert count_flops(normed) == count_flops(plain) and normed.output.shape == plain.output.shape

    def op_counts(model):
        data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        interpreter = tf.lite.Interpreter(model_content=data)
        return collections.Counter(op["op_name"] for op in op_details(interpreter))

    assert op_counts(normed) == op_counts(plain)  # BatchNorm folded into the convs: free at inference


def _radam_reference(grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7, threshold=5.0):
    """Liu et al. 2020, Algorithm 2, written out in plain numpy."""
    theta, m, v = 1.0, 0.0, 0.0
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            theta -= lr * r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            theta -= lr * m_hat
    return theta


def test_rectified_adam_matches_the_paper():
    import keras

    from train.optim import RectifiedAdam

    grads = np.random.default_rng(0).normal(size=20)
    variable = keras.Variable(np.array([1.0], np.float32))
    optimizer = RectifiedAdam(learning_rate=1e-3)
    for g in grads:
        optimizer.apply_gradients([(np.array([g], np.float32), variable)])
    assert float(variable.numpy()[0]) == pytest.approx(_radam_reference(grads), abs=1e-6)


@pytest.mark.parametrize("lovasz_weight", [0.0, 1.0])
def test_loss_decreases_on_a_repeated_real_batch(camvid, lovasz_weight):
    import keras

    from edgeseg.dataset import list_pairs
    from train.data import load_example
    from train.losses import MaskedCrossEntropy, lovasz_softmax
    from train.models import build_model
    from train.optim import RectifiedAdam

    keras.utils.set_random_seed(0)
    pairs = list_pairs(camvid, "training", 4)
    batch = [load_example(i, m, InputSpec(64, 96), 12) for i, m in zip(pairs.images, pairs.masks)]
    x, y = np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
    model = build_model("unet-lite", 64, 96, 12, width_multiplier=0.5)
    model.compile(optimizer=RectifiedAdam(1e-2), loss=MaskedCrossEntropy(lovasz_weight=lovasz_weight))

    def both_terms():  # (cross-entropy, Lovász) of the model as it trains (batch statistics)
        logits = model(x, training=True)
        return float(MaskedCrossEntropy()(y, logits)), float(lovasz_softmax(y, logits))

    before = both_terms()
    losses = [float(model.train_on_batch(x, y)) for _ in range(25)]
    after = both_terms()
    assert losses[-1] < losses[0], losses
    assert after[0] < 0.7 * before[0], (before, after)
    assert after[1] < before[1] - 0.05, (before, after)  # the mean IoU rises (Lovász: 1 - mIoU, relaxed)


def _real_masks(camvid, count=4, hw=(72, 96)):
    from edgeseg.dataset import list_pairs
    from train.data import load_example

    pairs = list_pairs(camvid, "validation", count)
    return np.stack([load_example(i, m, InputSpec(*hw), 12)[1] for i, m in zip(pairs.images, pairs.masks)]).astype(np.int32)


def _exact_lovasz(labels, logits):
    """Berman et al.'s reference: sort each class's errors, dot them with the Jaccard loss's steps."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    p, labels = p[labels > 0], labels[labels > 0]
    losses = []
    for c in range(1, logits.shape[-1]):
        fg = (labels == c).astype(np.float64)
        if fg.any():
            order = np.argsort(-np.abs(fg - p[:, c]), kind="stable")
            errors, fg = np.abs(fg - p[:, c])[order], fg[order]
            jaccard = 1 - (fg.sum() - np.cumsum(fg)) / (fg.sum() + np.cumsum(1 - fg))
            losses.append(errors @ np.diff(jaccard, prepend=0.0))
    return float(np.mean(losses))


def test_lovasz_term_is_one_minus_the_mean_iou_on_hard_predictions(camvid):
    from edgeseg.metrics import accuracy, confusion_matrix
    from train.losses import lovasz_softmax

    masks = _real_masks(camvid)
    predicted = np.roll(masks, (3, 5), axis=(1, 2))  # a realistic mistake: the scene shifted a few pixels
    predicted[:, :10] = 1  # and the top read as sky
    predicted = np.where(predicted == 0, 3, predicted)
    per_class = accuracy(confusion_matrix(masks, predicted, 12)).per_class_iou
    ious = [per_class[c] for c in range(1, 12) if np.any(masks == c)]  # the Lovász loss's classes: present in truth
    assert 0.3 < np.mean(ious) < 0.95
    logits = 40.0 * np.eye(12, dtype=np.float32)[predicted]  # softmax one-hot: errors exactly 0 or 1
    got = float(lovasz_softmax(masks, logits))
    assert got == pytest.approx(1 - np.mean(ious), abs=1e-5)  # the Lovász extension meets the Jaccard loss
    assert float(lovasz_softmax(masks, 40.0 * np.eye(12, dtype=np.float32)[masks])) == pytest.approx(0, abs=1e-6)


def _ohem_reference(labels, logits, weights, threshold, min_kept):
    """mmsegmentation's OHEMPixelSampler, written out: keep labelled pixels whose true-class probability
    is below max(threshold, the probability of the k-th hardest), k = ceil(min_kept * labelled)."""
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0].astype(np.float64)
    labelled = labels > 0
    k = int(np.ceil(labelled.sum() * min_kept))
    prob = np.exp(-ce[labelled])
    cut = max(threshold, np.sort(prob)[k - 1])
    keep = labelled & (np.exp(-ce) <= cut)
    w = np.asarray(weights)[labels] * keep
    return float((ce * w).sum() / w.sum()), keep


@pytest.mark.parametrize("scale", [0.3, 4.0])  # unsure predictions (all pixels hard), confident ones (min_kept rules)
def test_ohem_keeps_only_the_hard_labelled_pixels(camvid, scale):
    from train.losses import MaskedCrossEntropy, ohem_mask

    masks = _real_masks(camvid)
    rng = np.random.default_rng(1)
    predicted = np.where(rng.random(masks.shape) < 0.15, rng.integers(1, 12, masks.shape), masks)
    logits = (scale * np.eye(12, dtype=np.float32)[predicted] + rng.normal(0, 0.5, masks.shape + (12,))).astype(np.float32)
    weights = list(np.linspace(0.5, 3.0, 12))
    want, keep = _ohem_reference(masks, logits, weights, 0.7, 0.0625)
    got = float(MaskedCrossEntropy(weights, ohem_threshold=0.7)(masks, logits))
    assert got == pytest.approx(want, rel=1e-4)
    ce = -np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), masks[..., None], -1)[..., 0]
    kept = np.asarray(ohem_mask(ce, masks > 0, 0.7, 0.0625)) > 0
    assert not kept[masks == 0].any()  # unlabelled pixels never count
    assert abs(int(kept.sum()) - int(keep.sum())) <= 2  # float ties at the cut
    share = kept.sum() / (masks > 0).sum()
    if scale > 1:  # confident: the wrong 15 % and the hardest of the rest, at least min_kept
        assert 0.0625 <= share < 0.5
        assert got > 2 * float(MaskedCrossEntropy(weights)(masks, logits))  # the easy majority no longer dilutes
    else:  # every true class below 0.7: all labelled pixels kept, the plain weighted loss
        assert share == 1.0
        assert got == pytest.approx(float(MaskedCrossEntropy(weights)(masks, logits)), rel=1e-5)


@pytest.mark.parametrize("key, value", [("ohem_threshold", 1.0), ("ohem_threshold", -0.2), ("ohem_min_kept", 0.0),
                                        ("ohem_min_kept", 1.5)])
def test_ohem_settings_out_of_range_are_config_errors(key, value):
    from train.config import ConfigError, TrainConfig

    TrainConfig(ohem_threshold=0.7, ohem_min_kept=0.1).validate()
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value}).validate()


def test_every_committed_config_loads_and_writes_to_its_own_run_dir():
    """Each config in configs/ is a record of a run (the figures in configs/lodo/README.md quote them): a renamed
    or retired option must not leave one unloadable, and two configs sharing a run_dir would resume or overwrite
    each other's checkpoints."""
    from train.config import load_config

    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(paths) > 60
    run_dirs = {}
    for path in paths:
        config = load_config(path)
        assert config.run_dir not in run_dirs, f"{path.name} and {run_dirs[config.run_dir]} share {config.run_dir}"
        run_dirs[config.run_dir] = path.name
        if "camvid" in config.data_dir:
            assert (REPO / config.data_dir).is_dir(), path  # ../shared/data/camvid, resolved from the repo root


def test_binned_lovasz_matches_the_exact_sorted_loss_on_soft_predictions(camvid):
    import keras

    from train.losses import MaskedCrossEntropy, lovasz_softmax

    masks = _real_masks(camvid)
    rng = np.random.default_rng(4)
    for scale in (0.5, 2.0, 6.0):
        logits = (rng.normal(size=(*masks.shape, 12)) * scale).astype(np.float32)
        logits += 2.0 * np.eye(12, dtype=np.float32)[masks]  # better than chance, not perfect
        exact = _exact_lovasz(masks, logits)
        assert float(lovasz_softmax(masks, logits)) == pytest.approx(exact, abs=1.0 / 1024), scale
        plain = float(MaskedCrossEntropy()(masks, logits))
        assert float(MaskedCrossEntropy(lovasz_weight=0.5)(masks, logits)) == pytest.approx(plain + 0.5 * exact, abs=1e-3)
    better = keras.ops.convert_to_tensor(logits + 3.0 * np.eye(12, dtype=np.float32)[masks])
    assert float(lovasz_softmax(masks, better)) < float(lovasz_softmax(masks, logits))


def test_short_real_training_run_writes_everything(tiny_run):
    import json

    for name in ("config.yaml", "best.keras", "best.keras.json", "last.keras", "history.csv",
                 "training_curves.png", "eval.json", "labels.json"):
        assert (tiny_run / name).is_file(), name
    assert json.loads((tiny_run / "eval.json").read_text())["checkpoint"] == str(tiny_run / "best.keras")
    assert len(list((tiny_run / "samples").glob("epoch_*.png"))) >= 1
    assert list((tiny_run / "tensorboard").rglob("*"))
    with open(tiny_run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_snapshots_keep_the_weights_of_every_nth_epoch(tiny_run):
    """snapshot_every: 5 over 10 epochs saves epochs 5 and 10; epoch 10 is the final model (last.keras),
    epoch 5 an earlier point of the same schedule."""
    import keras

    import train.losses  # noqa: F401
    import train.optim  # noqa: F401

    snapshots = sorted(p.name for p in (tiny_run / "snapshots").iterdir())
    assert snapshots == ["epoch_005.keras", "epoch_010.keras"]

    def weights(path):
        return keras.models.load_model(path, compile=False).get_weights()

    last, tenth, fifth = weights(tiny_run / "last.keras"), *(weights(tiny_run / "snapshots" / n) for n in snapshots[::-1])
    assert all(np.array_equal(a, b) for a, b in zip(last, tenth))
    assert not all(np.array_equal(a, b) for a, b in zip(last, fifth))


def test_a_fixed_schedule_delivers_the_last_epoch(tiny_run, tiny_keras, tmp_path, camvid):
    """checkpoint: last (the final model on train + val) scores and names last.keras and stops no
    run early; checkpoint: best delivers best.keras even when the last weights differ."""
    import keras

    from edgeseg.dataset import resolve_labels, select_pairs
    from train.config import TrainConfig
    from train.run import deliver, input_spec

    labels = resolve_labels(camvid)
    val = select_pairs(camvid, "validation", max_examples=6)
    config = TrainConfig(architecture="unet-lite", height=tiny_keras.input_shape[1], width=tiny_keras.input_shape[2])
    fresh = keras.models.clone_model(tiny_keras)  # random weights: worse than the tiny run's best
    (tmp_path / "best.keras").write_bytes((tiny_run / "best.keras").read_bytes())
    best = deliver(config, fresh, tmp_path, input_spec(config), val, labels)
    last = deliver(config.replace(checkpoint="last"), fresh, tmp_path, input_spec(config), val, labels)
    assert best["checkpoint"].endswith("best.keras") and last["checkpoint"].endswith("last.keras")
    assert (tmp_path / "last.keras").is_file()
    assert best["miou"] > last["miou"] + 0.05


def test_best_checkpoint_is_never_replaced_by_a_worse_one(tmp_path):
    import keras

    from train.callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "best.keras"
    first = BestCheckpoint(path)
    first.set_model(model)
    first.on_epoch_end(0, {"val_miou": 0.5})
    saved = path.read_bytes()
    # A new run (or a resumed one) in the same folder remembers 0.5 and refuses worse models.
    second = BestCheckpoint(path)
    second.set_model(model)
    second.on_epoch_end(0, {"val_miou": 0.4})
    assert path.read_bytes() == saved and second.best == 0.5
    second.on_epoch_end(1, {"val_miou": 0.6})
    assert second.best == 0.6 and '"value": 0.6' in (tmp_path / "best.keras.json").read_text()


@pytest.mark.slow
def test_training_killed_mid_run_resumes_where_it_stopped(tmp_path, camvid):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "train", "--data-dir", str(camvid), "--run-dir", str(run_dir),
               "--architecture", "unet-lite", "--height", "64", "--width", "96", "--epochs", "4",
               "--batch-size", "8", "--max-examples", "24"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run_dir / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(history.read_text().strip().splitlines()) - 1
    assert 2 <= done < 4
    assert (run_dir / "backup").is_dir()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(history) as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [1, 2, 3, 4], epochs  # counted from 1; no epoch repeated or skipped: at most the running one lost
    assert not (run_dir / "backup").exists()  # removed after a completed run


def test_a_resume_from_an_older_backup_drops_the_epochs_it_trains_again(tmp_path):
    import keras

    from train.callbacks import EpochLog

    history = tmp_path / "history.csv"
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def run(initial_epoch: int, epochs: range) -> None:
        model._initial_epoch = initial_epoch  # what BackupAndRestore sets on resume
        log = EpochLog(str(history), append=True)
        log.set_model(model)
        log.on_train_begin()
        for epoch in epochs:  # Keras counts from 0; the log from 1
            log.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_miou": 0.1 * epoch})
        log.on_train_end()

    run(0, range(0, 3))
    run(2, range(2, 4))  # the group stepped back to the backup of epoch 2: epoch 3 is trained again
    with open(history) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert [float(row["val_miou"]) for row in rows] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    run(4, range(4, 5))  # an ordinary resume keeps every row
    with open(history) as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4, 5]


def test_train_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cases = [
        (["--config", str(tmp_path / "missing.yaml")], "not found"),
        (["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r")], "does not exist"),
        (["--data-dir", str(shared("camvid")), "--architecture", "unet-lite", "--height", "100"], "nearest valid size"),
        (["--data-dir", str(shared("camvid")), "--architecture", "resnet"], "'resnet' is not one of 'unet', 'unet-lite'"),
    ]
    # A dataset whose classes.csv lists 5 classes while its masks hold labels up to 11.
    small = tmp_path / "small"
    camvid = shared("camvid")
    for split in ("training", "validation"):
        (small / "images" / split).mkdir(parents=True)
        (small / "annotations" / split).mkdir(parents=True)
        for image in sorted((camvid / "images" / split).glob("*.jpg"))[:8]:
            (small / "images" / split / image.name).write_bytes(image.read_bytes())
            mask = camvid / "annotations" / split / (image.stem + ".png")
            (small / "annotations" / split / mask.name).write_bytes(mask.read_bytes())
    (small / "classes.csv").write_text("index,name\n0,void\n1,a\n2,b\n3,c\n4,d\n")
    cases.append((["--data-dir", str(small), "--run-dir", str(tmp_path / "r2"), "--architecture", "unet-lite",
                   "--height", "64", "--width", "96", "--epochs", "1", "--batch-size", "4"], "only 5 classes"))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: 3\nepoch: 4\n")
    cases.append((["--config", str(bad_yaml)], "unknown keys ['epoch']"))
    bad_paste = tmp_path / "paste.yaml"
    bad_paste.write_text(f"data_dir: {camvid}\nrun_dir: {tmp_path / 'r3'}\ncopy_paste: 0.5\npaste_classes: [lamp]\n")
    cases.append((["--config", str(bad_paste)], "paste_classes ['lamp'] are not classes"))
    for args, fragment in cases:
        result = subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and fragment in errors[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr


def test_init_from_copies_matching_weights_and_refuses_a_different_network(tiny_run, tiny_keras, tmp_path):
    from conftest import TINY_HW
    from train.models import build_model
    from train.run import init_weights

    same = build_model("unet-lite", *TINY_HW, tiny_keras.outputs[0].shape[-1], width_multiplier=0.5)
    init_weights(same, tiny_run / "best.keras")
    assert all(np.array_equal(a, b) for a, b in zip(same.get_weights(), tiny_keras.get_weights()))
    wider = build_model("unet-lite", *TINY_HW, tiny_keras.outputs[0].shape[-1], width_multiplier=1.0)
    with pytest.raises(ValueError, match="does not match"):
        init_weights(wider, tiny_run / "best.keras")
    with pytest.raises(ValueError, match="not found"):
        init_weights(same, tmp_path / "missing.keras")


def test_distillation_targets_carry_the_teachers_softmax_and_the_loss_blends_them(tiny_run, tiny_keras, camvid):
    import keras

    from conftest import TINY_HW
    from train.config import TrainConfig
    from train.data import make_dataset, select_pairs
    from train.losses import MaskedCrossEntropy, MeanIoU
    from train.run import input_spec, load_teachers, with_teachers

    teacher = str(tiny_run / "best.keras")
    config = TrainConfig(architecture="unet-lite", height=TINY_HW[0], width=TINY_HW[1], teachers=[teacher, teacher])
    spec = input_spec(config)
    pairs = select_pairs(camvid, "training", max_examples=8)
    batches = make_dataset(pairs, spec, 12, 4, training=True, augment_data=True, max_scale=1.5, seed=3)
    images, packed = next(iter(with_teachers(batches, load_teachers(config, spec, 12))))
    images, packed = np.asarray(images), np.asarray(packed)
    assert packed.shape == (4, *TINY_HW, 13)
    masks, soft = packed[..., 0], packed[..., 1:]
    assert np.array_equal(masks, masks.round()) and masks.max() <= 11 and (masks > 0).any()
    logits = np.asarray(tiny_keras(images, training=False))
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(soft, expected, atol=1e-5)  # two copies of one teacher: its own softmax

    # loss: per labelled pixel (1 - w) * CE(label) + w * CE(teachers), weighted by the label's class weight
    student = np.random.default_rng(0).normal(size=logits.shape).astype(np.float32)
    log_p = student - student.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    labels = masks.astype(int)
    hard = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    distilled = -(soft * log_p).sum(-1)
    class_weights = np.linspace(0.0, 2.0, 12)
    weight = class_weights[labels] * (labels > 0)
    for share in (0.0, 0.3, 1.0):
        want = ((1 - share) * hard + share * distilled)[weight > 0] @ weight[weight > 0] / weight.sum()
        got = float(MaskedCrossEntropy(class_weights.tolist(), distill_weight=share)(packed, student))
        assert got == pytest.approx(want, rel=1e-4), share
    got = float(MaskedCrossEntropy(class_weights.tolist(), distill_weight=0.7)(masks.astype(np.uint8), student))
    assert got == pytest.approx((hard[weight > 0] @ weight[weight > 0]) / weight.sum(), rel=1e-4)  # plain masks: labels only
    metric = MeanIoU(12)
    metric.update_state(packed, keras.ops.convert_to_tensor(logits))
    plain = MeanIoU(12)
    plain.update_state(masks.astype(np.uint8), keras.ops.convert_to_tensor(logits))
    assert float(metric.result()) == float(plain.result()) > 0  # metrics read the mask channel


@pytest.mark.slow
def test_a_distilled_run_trains_and_refuses_teachers_that_do_not_fit(tiny_run, tmp_path, camvid):
    import csv

    from conftest import TINY_HW
    from train.config import TrainConfig
    from train.run import fit, input_spec, load_teachers

    config = TrainConfig(data_dir=str(camvid), run_dir=str(tmp_path / "student"), architecture="unet-lite2",
                         height=TINY_HW[0], width=TINY_HW[1], width_multiplier=0.5, batch_size=8, epochs=2,
                         max_examples=16, sample_images=0, seed=2, teachers=[str(tiny_run / "best.keras")],
                         distill_weight=0.5)
    result = fit(config)
    assert 0 <= result["miou"] <= 1
    rows = list(csv.DictReader(open(tmp_path / "student" / "history.csv")))
    assert len(rows) == 2 and all(np.isfinite(float(row["loss"])) for row in rows)
    bigger = config.replace(height=96, width=128)
    with pytest.raises(ValueError, match=r"takes 96x64 input with 12 classes; this run needs 128x96"):
        load_teachers(bigger, input_spec(bigger), 12)
    with pytest.raises(ValueError, match="not found"):
        load_teachers(config.replace(teachers=[str(tmp_path / "nope.keras")]), input_spec(config), 12)


def test_validation_every_validates_only_those_epochs_and_still_records_them(tmp_path, camvid):
    """validation_every 2 on 3 epochs: val columns filled on epoch 2 only ("NA" elsewhere), best.keras
    from epoch 2, the curves still drawn, the delivered model still scored; 0 is a config error."""
    import csv
    import json

    from conftest import TINY_HW
    from train.config import ConfigError, TrainConfig
    from train.run import fit

    run_dir = tmp_path / "run"
    config = TrainConfig(data_dir=str(camvid), run_dir=str(run_dir), architecture="unet-lite", height=TINY_HW[0],
                         width=TINY_HW[1], width_multiplier=0.5, batch_size=8, epochs=3, max_examples=16,
                         sample_images=0, seed=2, validation_every=2, early_stop_patience=1)
    result = fit(config)
    rows = list(csv.DictReader(open(run_dir / "history.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert [row["val_miou"] for row in rows][::2] == ["NA", "NA"] and 0 <= float(rows[1]["val_miou"]) <= 1
    assert all(np.isfinite(float(row["loss"])) for row in rows)  # trained every epoch (patience 1 counts validations)
    assert json.loads((run_dir / "best.keras.json").read_text())["epoch"] == 2
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    assert 0 <= result["miou"] <= 1
    with pytest.raises(ConfigError, match="validation_every"):
        TrainConfig(validation_every=0).validate()


@pytest.mark.slow
def test_throughput_command_measures_real_training_steps(camvid, tmp_path):
    import json

    from typer.testing import CliRunner

    from train.__main__ import app

    out = tmp_path / "throughput.jsonl"
    args = ["throughput", "--data-dir", str(camvid), "--architecture", "unet-lite", "--height", "64", "--width", "96",
            "--batch-size", "2", "--steps", "2", "--warmup", "1", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert row["images_per_second"] > 0 and row["input_hw"] == [64, 96] and row["gflops_forward"] > 0
    from edgeseg.machine import cpu_features

    assert row["simd"] and row["simd"] == cpu_features()  # x86-64: avx2 at least; ARM: asimd
    assert " ".join(row["simd"]) in result.output and row["date"].startswith("20")  # a figure names its CPU kind
    assert f"{row['images_per_second']} images/s" in result.output
    # The bundled config trains on "training+validation": the command reads such joined splits too.
    bundled = ["--config", str(REPO / "configs" / "camvid_lite.yaml")]
    printed = CliRunner().invoke(app, [args[0], *bundled, *args[1:-2], "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["input_hw"] == [64, 96]
    bad = CliRunner().invoke(app, args[:-2] + ["--steps", "0"])
    assert bad.exit_code == 2 and "steps must be >= 1" in bad.output


def test_snap_weights_puts_kernels_on_the_converters_int8_grid(tiny_run, tiny_keras, tmp_path, camvid):
    """`python -m train snap-weights`: every kernel on its per-channel int8 grid, the model's reading
    barely changed, and its int16x8 export (weights int8, activations nearly exact) reproduces the
    snapped model far more closely than the original's export reproduces the original."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from conftest import TINY_HW
    from convert.calibration import calibration_images, representative_dataset
    from convert.export import convert
    from convert.source import load_source
    from edgeseg.extras import load_keras_model
    from edgeseg.preprocess import InputSpec, preprocess
    from train.snap import channel_axes, snap_weights

    out = tmp_path / "snapped" / "last.keras"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "train", "snap-weights", str(tiny_run / "last.keras"), "-o", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "kernels" in result.stdout and (out.parent / "labels.json").read_text() == (tiny_run / "labels.json").read_text()
    original, snapped = load_keras_model(tiny_run / "last.keras"), load_keras_model(out)
    convs = [layer for layer in snapped.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    assert len(convs) >= 10
    for layer in convs:
        kernel = np.asarray(layer.kernel)
        step = np.abs(kernel).max(axis=channel_axes(layer), keepdims=True) / 127
        levels = kernel / np.where(step > 0, step, 1)
        assert np.allclose(levels, np.round(levels), atol=1e-3) and np.abs(levels).max() <= 127 + 1e-3, layer.name
    assert snap_weights(snapped)["max_change_of_peak"] < 1e-5  # already on the grid: nothing moves

    spec = InputSpec(*TINY_HW)
    images = calibration_images(camvid, "validation", 6, 0, set())
    frames = np.stack([batch[0][0] for batch in representative_dataset(images, spec, progress=False)])
    calib = calibration_images(camvid, "training", 24, 0, set())
    errors = {}
    for name, path, model in (("original", tiny_run / "last.keras", original), ("snapped", out, snapped)):
        expected = np.asarray(model(frames, training=False))
        flat = convert(load_source(path), "int16x8", representative=lambda: representative_dataset(calib, spec, progress=False))
        interpreter = Interpreter(model_content=flat)
        interpreter.allocate_tensors()
        got = []
        for frame in frames:
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frame[np.newaxis])
            interpreter.invoke()
            got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
        errors[name] = float(np.abs(np.stack(got) - expected).mean() / np.abs(expected).mean())
        if name == "snapped":
            agree = np.mean(expected.argmax(-1) == np.asarray(original(frames, training=False)).argmax(-1))
            # each weight moves by at most half a step; the 10-epoch tiny model's margins are thin (a real
            # model's reading does not change: configs/lodo/README.md), a wrong grid scrambles it
            assert agree > 0.9, agree
    assert errors["snapped"] < errors["original"] / 3, errors


def test_snap_weights_refuses_bad_paths_in_one_line(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last = tiny_run / "last.keras"
    for args, fragment in (([str(tmp_path / "missing.keras")], "does not exist"),
                           ([str(last), "-o", str(last)], "is the model itself"),
                           ([str(tiny_run / "labels.json")], "is not a .keras model")):
        result = subprocess.run([sys.executable, "-m", "train", "snap-weights", *args], cwd=REPO, env=env,
                                capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr
    assert not list(tiny_run.glob(".*partial*"))


@pytest.mark.slow
def test_average_builds_one_flat_graph_whose_output_is_the_members_mean(tiny_run, tmp_path, camvid):
    """`python -m train average`: the mean of two real models' logits on real frames, as one flat graph
    (no nested models), whose int8 Edge TPU export maps every op; a nested average would not."""
    import keras

    from conftest import TINY_HW
    from convert.calibration import calibration_images, representative_dataset
    from convert.export import convert, ops_outside_edgetpu
    from convert.source import load_source
    from edgeseg.extras import load_keras_model
    from edgeseg.preprocess import InputSpec
    from train.ensemble import average_models

    members = [tiny_run / "snapshots" / "epoch_005.keras", tiny_run / "last.keras"]
    out = tmp_path / "pair" / "last.keras"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "train", "average", *map(str, members), "-o", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "mean of 2 models" in result.stdout
    assert (out.parent / "labels.json").read_text() == (tiny_run / "labels.json").read_text()
    averaged = load_keras_model(out)
    assert not [layer for layer in averaged.layers if isinstance(layer, keras.Model)]
    calib = calibration_images(camvid, "validation", 4, 0, set())
    frames = np.stack([batch[0][0] for batch in representative_dataset(calib, InputSpec(*TINY_HW), progress=False)])
    outputs = [np.asarray(load_keras_model(path)(frames, training=False)) for path in members]
    np.testing.assert_allclose(np.asarray(averaged(frames, training=False)), np.mean(outputs, axis=0), atol=1e-5)
    assert np.mean(outputs[0].argmax(-1) != outputs[1].argmax(-1)) > 0.01  # two different members, not one twice

    def representative():
        return representative_dataset(calib, InputSpec(*TINY_HW), progress=False)

    flat = convert(load_source(out), "int8", io_type="uint8", representative=representative, edgetpu=True)
    assert ops_outside_edgetpu(flat) == {}
    image = keras.Input(shape=averaged.input_shape[1:])
    loaded = [load_keras_model(path) for path in members]
    wrapped = [keras.Model(member.inputs, member.outputs[0], name=f"member{i}") for i, member in enumerate(loaded)]
    nested = keras.Model(image, keras.layers.Average()([member(image) for member in wrapped]))
    nested_path = tmp_path / "nested.keras"
    nested.save(nested_path)
    nested_int8 = convert(load_source(nested_path), "int8", io_type="uint8", representative=representative, edgetpu=True)
    assert {"TILE", "SHAPE"} <= set(ops_outside_edgetpu(nested_int8))  # why the members are flattened
    with pytest.raises(ValueError, match="at least two"):
        average_models(loaded[:1])


@pytest.mark.slow
def test_average_refuses_models_that_do_not_fit_together_in_one_line(tiny_run, tmp_path):
    from conftest import TINY_HW
    from train.models import build_model

    other = tmp_path / "other" / "last.keras"
    other.parent.mkdir()
    build_model("unet-lite", TINY_HW[0] * 2, TINY_HW[1] * 2, 12, width_multiplier=0.5).save(other)
    broken = tmp_path / "broken" / "last.keras"  # a run whose labels.json was cut short
    broken.parent.mkdir()
    broken.write_bytes((tiny_run / "last.keras").read_bytes())
    (broken.parent / "labels.json").write_text('{"name": "camvid", "names": ["unlab')
    last = str(tiny_run / "last.keras")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, fragment in (([last, str(other), "-o", str(tmp_path / "o" / "last.keras")], "one input size"),
                           ([last, str(broken), "-o", str(tmp_path / "o" / "last.keras")], "cannot be read as a run's labels"),
                           ([last, str(tmp_path / "missing.keras"), "-o", str(tmp_path / "o" / "last.keras")],
                            "not found"),
                           ([last, str(tiny_run / "best.keras"), "-o", last], "is one of the models"),
                           ([last, str(tiny_run / "best.keras"), "-o", str(tmp_path / "o.h5")], "not a .keras file")):
        result = subprocess.run([sys.executable, "-m", "train", "average", *args], cwd=REPO, env=env,
                                capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_resize_rebuilds_a_trained_model_for_another_input_with_its_weights(tiny_run, tmp_path, camvid):
    """`python -m train resize`: the same weights in a graph for a larger input. At the training size the
    rebuilt graph computes exactly what the original does; at the larger one, exactly what the network
    built for that size (train.models) computes with the trained weights loaded."""
    import cv2

    from conftest import TINY_HW
    from edgeseg.extras import load_keras_model
    from edgeseg.preprocess import InputSpec, preprocess
    from train.models import build_model
    from train.resize import resize_model

    height, width = TINY_HW[0] + 32, TINY_HW[1] + 32
    out = tmp_path / "resized" / "last.keras"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "train", "resize", str(tiny_run / "last.keras"), "--height",
                             str(height), "--width", str(width), "-o", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
    assert f"input {height}x{width} (HxW), output {height}x{width}" in result.stdout
    assert (out.parent / "labels.json").read_text() == (tiny_run / "labels.json").read_text()
    original, resized = load_keras_model(tiny_run / "last.keras"), load_keras_model(out)
    assert resized.input_shape == (None, height, width, 3) and resized.output_shape[1:3] == (height, width)
    assert all(np.array_equal(a, b) for a, b in zip(original.get_weights(), resized.get_weights()))
    frames = [cv2.imread(str(path)) for path in sorted((camvid / "images" / "validation").glob("*"))[:4]]
    small = np.stack([preprocess(frame, InputSpec(*TINY_HW)) for frame in frames])
    assert np.allclose(resize_model(original, *TINY_HW)(small, training=False), original(small, training=False),
                       atol=1e-5)
    built = build_model("unet-lite", height, width, original.output_shape[-1], width_multiplier=0.5)
    built.set_weights(original.get_weights())
    large = np.stack([preprocess(frame, InputSpec(height, width)) for frame in frames])
    logits = np.asarray(resized(large, training=False))
    assert np.allclose(logits, built(large, training=False), atol=1e-5)
    assert len(np.unique(logits.argmax(-1))) > 2  # a trained reading, not a constant map


def test_resize_refuses_bad_sizes_and_paths_in_one_line(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last = tiny_run / "last.keras"
    size = ["--height", "96", "--width", "128"]
    for args, fragment in (([str(last), "--height", "100", "--width", "128", "-o", str(tmp_path / "a.keras")],
                            "must be multiples of 32; nearest valid size is 96x128"),
                           ([str(tmp_path / "missing.keras"), *size, "-o", str(tmp_path / "b.keras")], "does not exist"),
                           ([str(last), *size, "-o", str(last)], "is the model itself"),
                           ([str(last), *size, "-o", str(tmp_path / "c.h5")], "is not a .keras file")):
        result = subprocess.run([sys.executable, "-m", "train", "resize", *args], cwd=REPO, env=env,
                                capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.keras")) and not list(tiny_run.glob(".*partial*"))


def test_resize_names_the_layer_kind_that_cannot_follow_a_new_size():
    """unet-lite2's image pooling upsamples by a factor fixed at build time: a resize is refused in one
    line that says so; without that branch the same architecture resizes and computes what the network
    built for the new size computes."""
    from train.models import build_model
    from train.resize import ResizeError, downsampling, resize_model

    pooled = build_model("unet-lite2", 64, 96, 5)
    assert downsampling(pooled) == 32  # the 1-pixel global pool does not count
    with pytest.raises(ResizeError, match="fixed to the training size .unet-lite2's image pooling") as caught:
        resize_model(pooled, 96, 128)
    assert "\n" not in str(caught.value)
    plain = build_model("unet-lite2", 64, 96, 5, image_pooling=False)
    resized, built = resize_model(plain, 96, 128), build_model("unet-lite2", 96, 128, 5, image_pooling=False)
    built.set_weights(plain.get_weights())
    frame = np.random.default_rng(0).random((1, 96, 128, 3), dtype=np.float32)
    assert np.allclose(resized(frame), built(frame), atol=1e-5)
