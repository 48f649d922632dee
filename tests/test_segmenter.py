"""The runtime's model handling, checked against Keras on real frames."""

import cv2
import numpy as np
import pytest

from edgeseg.backend import find_runtime, INTERPRETER_MODULES
from edgeseg.errors import BackendError, ModelError
from edgeseg.metadata import attach_metadata, read_metadata, strip_metadata
from edgeseg.preprocess import InputSpec, cv_lut, prepare_pixels, preprocess
from edgeseg.segmenter import Segmenter, SegmenterOptions, TensorInfo, byte_offset, quantize_lut, upscale


def keras_classes(model, frame_bgr, spec):
    logits = np.asarray(model(preprocess(frame_bgr, spec, bgr=True)[np.newaxis], training=False))[0]
    return np.argmax(logits, axis=-1)


@pytest.mark.parametrize("variant,min_agreement", [
    # The tiny model's logits are close together (one minute of training), so int8 flips more
    # pixels than on a trained model; the bundled model's agreement is checked in test_bundled.
    ("float32", 0.999), ("float16", 0.98), ("int8", 0.8), ("uint8", 0.8), ("argmax", 0.8),
])
def test_every_variant_agrees_with_keras_on_real_frames(tiny_tflite, tiny_keras, street_frames, variant, min_agreement):
    seg = Segmenter(SegmenterOptions(tiny_tflite[variant], threads=2))
    agreements = []
    for frame in street_frames:
        ours = seg.segment(frame)
        assert ours.dtype == np.uint8 and ours.shape == (seg.spec.height, seg.spec.width)
        agreements.append(np.mean(ours == keras_classes(tiny_keras, frame, seg.spec)))
    assert np.mean(agreements) >= min_agreement, agreements


def test_io_dtypes_and_output_kind_are_read_from_the_model(tiny_tflite):
    expected = {"float32": ("float32", "float32", "scores"), "float16": ("float32", "float32", "scores"),
                "int8": ("int8", "int8", "scores"), "uint8": ("uint8", "uint8", "scores"),
                "argmax": ("int8", "uint8", "class_map")}
    for variant, (in_dtype, out_dtype, kind) in expected.items():
        info = Segmenter(SegmenterOptions(tiny_tflite[variant])).info
        assert (info.input.dtype, info.output.dtype, info.output_kind) == (in_dtype, out_dtype, kind), variant
        assert info.metadata_embedded and info.labels.name == "camvid"


def test_quantised_input_lut_matches_normalise_then_quantise(tiny_tflite, street_frames):
    for variant in ("int8", "uint8"):
        seg = Segmenter(SegmenterOptions(tiny_tflite[variant]))
        frame = street_frames[0]
        tensor = seg.prepare(frame)[0]
        real = preprocess(frame, seg.spec, bgr=True)
        info = seg.info.input
        limits = np.iinfo(np.dtype(info.dtype))
        expected = np.clip(np.round(real / info.scale + info.zero_point), limits.min, limits.max)
        assert tensor.dtype == np.dtype(info.dtype)
        assert np.abs(tensor.astype(int) - expected.astype(int)).max() <= 1  # rounding of x.5 only


def test_byte_shift_fast_path_equals_the_table_lookup(tiny_tflite, street_frames):
    """int8 input (zero point -128) is each byte + 128, uint8 input (zero point 0) each byte as is:
    the 8-bit add gives the table's bytes exactly; other tables keep the lookup."""
    for variant, offset in (("int8", 128), ("uint8", 0)):
        seg = Segmenter(SegmenterOptions(tiny_tflite[variant]))
        table = quantize_lut(seg.spec, seg.info.input)
        assert byte_offset(table) == offset, variant
        for frame in street_frames[:3]:
            fast = seg.prepare(frame)
            looked_up = cv2.LUT(prepare_pixels(frame, seg.spec, bgr=True), cv_lut(table))[np.newaxis]
            assert fast.dtype == looked_up.dtype and fast.flags.c_contiguous
            np.testing.assert_array_equal(fast, looked_up)
    int8 = TensorInfo("x", (1, 8, 8, 3), "int8", 1 / 255, -128)
    imagenet = InputSpec(8, 8, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))
    assert byte_offset(quantize_lut(InputSpec(8, 8), int8)) == 128
    assert byte_offset(quantize_lut(imagenet, TensorInfo("x", (1, 8, 8, 3), "int8", 0.0186, -14))) is None
    assert byte_offset(quantize_lut(InputSpec(8, 8), TensorInfo("x", (1, 8, 8, 3), "int8", 2 / 255, -128))) is None


def test_argmax_on_raw_int8_equals_argmax_of_dequantised_scores(tiny_tflite, street_frames):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    for frame in street_frames[:3]:
        raw = seg.infer(frame)
        assert raw.dtype == np.int8
        np.testing.assert_array_equal(seg.classes(raw), np.argmax(seg.scores(raw), axis=-1))


def test_packed_key_argmax_equals_numpy_argmax_ties_and_extremes_included(tiny_tflite, street_frames):
    from edgeseg.segmenter import argmax_channels

    rng = np.random.default_rng(1)
    for dtype in (np.int8, np.uint8, np.int16):  # int16: the sums of two 8-bit outputs (tta)
        limits = np.iinfo(dtype)
        for channels in (1, 2, 12, 16, 17, 151):
            for low, high in ((limits.min, limits.max + 1), (0, 2), (limits.max - 1, limits.max + 1)):
                scores = rng.integers(low, high, (37, 53, channels)).astype(dtype)  # narrow ranges: ties everywhere
                got = argmax_channels(scores)
                assert got.dtype == np.uint8
                np.testing.assert_array_equal(got, np.argmax(scores, axis=-1))
            np.testing.assert_array_equal(argmax_channels(np.full((5, 7, channels), limits.min, dtype)), 0)
    for variant in ("int8", "uint8"):  # real outputs
        seg = Segmenter(SegmenterOptions(tiny_tflite[variant]))
        for frame in street_frames[:3]:
            raw = seg.infer(frame)
            np.testing.assert_array_equal(seg.classes(raw), np.argmax(raw, axis=-1))


@pytest.mark.parametrize("variant", ["int8", "uint8", "float32", "float16"])
def test_tta_averages_the_frame_and_its_mirror_and_is_mirror_symmetric(tiny_tflite, street_frames, variant):
    plain = Segmenter(SegmenterOptions(tiny_tflite[variant]))
    tta = Segmenter(SegmenterOptions(tiny_tflite[variant], tta=True))
    changed = 0
    for frame in street_frames[::2]:
        frame = cv2.resize(frame, (plain.spec.width, plain.spec.height), interpolation=cv2.INTER_AREA)
        mirror = np.ascontiguousarray(frame[:, ::-1])
        raw, raw_mirror = plain.infer(frame), plain.infer(mirror)[:, ::-1]
        averaged = tta.infer(frame)
        expected = (plain.scores(raw) + plain.scores(raw_mirror)) / 2
        np.testing.assert_allclose(tta.scores(averaged), expected, rtol=1e-5, atol=1e-5)
        exact_sum = raw.astype(np.float64) + raw_mirror  # integer sums are exact: argmax ties resolve alike
        np.testing.assert_array_equal(tta.classes(averaged), np.argmax(exact_sum, axis=-1))
        # The same frame mirrored gives the same map mirrored (plain inference does not, quite).
        np.testing.assert_array_equal(tta.segment(mirror), tta.segment(frame)[:, ::-1])
        changed += int(np.count_nonzero(tta.classes(averaged) != plain.classes(raw)))
    assert changed > 0  # the mirrored view does change pixels of this model


def test_tta_needs_class_scores(tiny_tflite):
    with pytest.raises(ModelError, match="without --argmax"):
        Segmenter(SegmenterOptions(tiny_tflite["argmax"], tta=True))


def test_argmax_in_graph_equals_host_argmax(tiny_tflite, street_frames):
    in_graph = Segmenter(SegmenterOptions(tiny_tflite["argmax"]))
    host = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    for frame in street_frames[:4]:
        np.testing.assert_array_equal(in_graph.segment(frame), host.segment(frame))


def test_upscale_is_nearest_and_keeps_only_existing_labels():
    small = np.array([[1, 5], [7, 11]], np.uint8)
    big = upscale(small, (360, 480))
    assert big.shape == (360, 480)
    assert set(np.unique(big)) == {1, 5, 7, 11}
    assert big[0, 0] == 1 and big[-1, -1] == 11


def test_metadata_round_trip_and_every_installed_interpreter_loads_it(tiny_tflite):
    data = tiny_tflite["int8"].read_bytes()
    meta = read_metadata(data)
    assert meta is not None and meta.labels.num_classes == 12 and meta.input.size_hw == (64, 96)
    assert meta.provenance["quantization"] == "int8"
    # Re-attaching replaces, never stacks, the archive.
    again = attach_metadata(data, meta)
    assert len(again) == len(data) and strip_metadata(again) == strip_metadata(data)
    import importlib.util

    installed = [m for m in INTERPRETER_MODULES if importlib.util.find_spec(m.split(".")[0]) is not None]
    assert installed, "no interpreter installed"
    for module in installed:  # every runtime this machine has must load and run the model
        runtime = find_runtime(module)
        interpreter = runtime.interpreter_class(model_content=data)
        interpreter.allocate_tensors()
        interpreter.invoke()


def test_model_without_metadata_gets_builtin_labels(tiny_tflite, tmp_path):
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(strip_metadata(tiny_tflite["int8"].read_bytes()))
    seg = Segmenter(SegmenterOptions(bare))
    assert not seg.info.metadata_embedded
    assert seg.labels.name == "camvid"  # guessed from 12 output channels


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\x00" * 64, "not a TFLite flatbuffer"),
    (b"PK\x03\x04 this is a zip, not a model", "not a TFLite flatbuffer"),
])
def test_bad_model_files_are_rejected_clearly(tmp_path, content, message):
    path = tmp_path / "model.tflite"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        Segmenter(SegmenterOptions(path))


def test_corrupt_flatbuffer_is_rejected(tmp_path, tiny_tflite):
    data = bytearray(strip_metadata(tiny_tflite["float32"].read_bytes()))
    data = data[:8] + bytes(len(data) // 3)  # keep the identifier, destroy the rest
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        Segmenter(SegmenterOptions(path))


def _convert_keras(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def test_two_input_model_is_rejected(tmp_path):
    import keras

    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    model = keras.Model([a, b], keras.layers.Conv2D(4, 1)(keras.layers.Add()([a, b])))
    path = tmp_path / "two.tflite"
    path.write_bytes(_convert_keras(model))
    with pytest.raises(ModelError, match="2 inputs"):
        Segmenter(SegmenterOptions(path))


def test_non_image_input_is_rejected(tmp_path):
    import keras

    x = keras.Input((16,))
    path = tmp_path / "vector.tflite"
    path.write_bytes(_convert_keras(keras.Model(x, keras.layers.Dense(4)(x))))
    with pytest.raises(ModelError, match="image input"):
        Segmenter(SegmenterOptions(path))


def test_edgetpu_without_libedgetpu_names_the_fix(tiny_tflite, tmp_path):
    import ctypes
    import platform

    from edgeseg.backend import EDGETPU_LIBRARIES

    try:
        ctypes.CDLL(EDGETPU_LIBRARIES[platform.system()])
        pytest.skip("libedgetpu is installed on this machine: its absence cannot be tested here")
    except OSError:
        pass
    with pytest.raises(BackendError, match="libedgetpu"):
        Segmenter(SegmenterOptions(tiny_tflite["uint8"], device="edgetpu"))
    named = tmp_path / "tiny_edgetpu.tflite"  # the *_edgetpu.tflite convention selects the TPU
    named.write_bytes(tiny_tflite["uint8"].read_bytes())
    with pytest.raises(BackendError, match="libedgetpu"):
        Segmenter(SegmenterOptions(named))
