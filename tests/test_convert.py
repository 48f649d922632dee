"""`python -m convert` on a tiny model trained on real CamVid images."""

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared
from edgeseg.backend import op_details
from edgeseg.metadata import read_metadata
from edgeseg.segmenter import Segmenter, SegmenterOptions

runner = CliRunner()
# The tiny test model is trained for one minute and its logits are close together, so int8
# flips more pixels than on the real bundled model (whose numbers are in models/MODEL_CARD.md).
TINY_THRESHOLDS = ("--min-agreement", 0.8, "--max-miou-drop", 0.03)


def convert_cli(*args):
    from convert.__main__ import app

    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [p.strip() for p in re.split(r"[\r\n]", result.stderr) if p.strip().startswith("error")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def exported(tiny_run, camvid, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = convert_cli("--model", tiny_run / "best.keras", "--quantize", "all", "--calib-data", camvid,
                         "--eval-data", camvid, "--num-calib", 16, "--num-eval", 8, "--out-dir", out, "--name", "tiny",
                         "--check-video", shared("video", "vtest.avi"), "--check-frames", 6, *TINY_THRESHOLDS)
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_all_writes_float16_int8_and_reports(exported):
    report = json.loads((exported / "tiny_report.json").read_text())
    modes = {row["mode"]: row for row in report["models"]}
    assert set(modes) == {"float16", "int8"}
    assert (exported / "tiny_float16.tflite").is_file() and (exported / "tiny_int8.tflite").is_file()
    assert modes["int8"]["size_bytes"] < modes["float16"]["size_bytes"]
    v8, v16 = modes["int8"]["verification"], modes["float16"]["verification"]
    assert (v8["input_dtype"], v8["output_dtype"]) == ("int8", "int8")
    assert (v16["input_dtype"], v16["output_dtype"]) == ("float32", "float32")
    assert v16["agreement"] > 0.98 and v16["prob_error_mean"] < 0.01
    assert v8["agreement"] > 0.8 and abs(v8["miou_drop"]) < 0.03
    assert report["calibration"]["count"] == 16 and report["evaluation"]["images"] == 8
    # unlabelled frames of a clip neither model saw: agreement measured there too
    assert v8["unseen_frames"] == v16["unseen_frames"] == 6
    assert v16["agreement_unseen"] > 0.98 and 0.5 < v8["agreement_unseen"] <= v16["agreement_unseen"] + 0.01
    md = (exported / "tiny_report.md").read_text()
    assert "| `tiny_int8.tflite` |" in md and "Per-class IoU" in md and "Unseen clips: 6 evenly spaced frames" in md
    # and what the Keras model calls those frames: the top classes by pixel share, largest first
    shares = report["unseen_clips"]["keras_class_shares"]["vtest.avi"]
    assert 0 < len(shares) <= 5 and list(shares.values()) == sorted(shares.values(), reverse=True)
    names = Segmenter(SegmenterOptions(exported / "tiny_int8.tflite")).labels.names
    assert set(shares) <= set(names) and 0.2 < sum(shares.values()) <= 1.0
    assert "- `vtest.avi`: " in md


def test_top_classes_rank_the_classes_of_the_maps():
    from convert.verify import top_classes

    maps = [np.array([[1, 1, 2], [2, 2, 3]], np.uint8), np.array([[2, 0, 0]], np.uint8)]
    names = ["unlabelled", "sky", "road", "car", "tree"]
    assert top_classes(maps, names) == {"road": 0.4444, "sky": 0.2222, "unlabelled": 0.2222, "car": 0.1111}
    assert list(top_classes(maps, names, top=1)) == ["road"]


def test_agreement_on_unseen_frames_is_gated_like_the_agreement():
    from convert.pipeline import ConvertOptions, _check

    options = ConvertOptions(model=Path("m.keras"), modes=("int8",), eval_data=Path("."), out_dir=Path("."),
                             name="m", min_agreement=0.98)
    measured = {"agreement": 0.99, "miou_drop": 0.0, "agreement_unseen": 0.975, "unseen_frames": 48}
    passed, reason = _check(measured, options)
    assert not passed and reason == "agreement on 48 unseen clip frames 97.50% < 98.0%"
    assert _check({**measured, "agreement_unseen": 0.985}, options) == (True, "")
    assert _check({"agreement": 0.99, "miou_drop": 0.0}, options) == (True, "")  # no clip given


def test_metadata_travels_and_the_runtime_reads_it(exported):
    meta = read_metadata((exported / "tiny_int8.tflite").read_bytes())
    assert meta.labels.name == "camvid" and meta.input.size_hw == (64, 96) and meta.output == "logits"
    assert meta.provenance["quantization"] == "int8" and "16 images" in meta.provenance["calibration"]
    seg = Segmenter(SegmenterOptions(exported / "tiny_int8.tflite"))
    assert seg.labels.names[4] == "road"


def test_uint8_io_and_argmax(tiny_run, camvid, tmp_path):
    result = convert_cli("--model", tiny_run / "best.keras", "--quantize", "int8", "--io-type", "uint8", "--argmax",
                         "--calib-data", camvid, "--eval-data", camvid, "--num-calib", 8, "--num-eval", 4,
                         "--out-dir", tmp_path, "--name", "cm", *TINY_THRESHOLDS)
    assert result.exit_code == 0, result.output + result.stderr
    seg = Segmenter(SegmenterOptions(tmp_path / "cm_int8.tflite"))
    assert seg.info.input.dtype == "uint8" and seg.info.output_kind == "class_map"
    report = json.loads((tmp_path / "cm_report.json").read_text())
    assert report["argmax"]["invoke_ms_with_argmax"] > 0 and report["argmax"]["host_argmax_ms"] > 0


def test_broken_calibration_trips_the_thresholds(tiny_run, camvid, tmp_path):
    constant = tmp_path / "constant"
    constant.mkdir()
    for index in range(8):
        cv2.imwrite(str(constant / f"{index}.png"), np.full((360, 480, 3), 10 * index, np.uint8))
    out = tmp_path / "out"
    result = convert_cli("--model", tiny_run / "best.keras", "--quantize", "int8", "--calib-data", constant,
                         "--eval-data", camvid, "--num-calib", 8, "--num-eval", 6, "--out-dir", out, "--name", "bad",
                         "--fallback", "int16x8", *TINY_THRESHOLDS)
    message = one_error_line(result)
    assert "bad_int8.failed.tflite" in message and ("agreement" in message or "mIoU drop" in message)
    assert not (out / "bad_int8.tflite").exists()  # nothing deployable-looking is left
    report = json.loads((out / "bad_report.json").read_text())
    int8 = report["models"][0]
    assert not int8["passed"] and int8["worst_layers"]  # the quantisation debugger named layers
    assert all(row["layer"] and ";" not in row["layer"] for row in int8["worst_layers"])
    assert report["models"][1]["mode"] == "int16x8"


def test_a_failed_conversion_keeps_the_deployed_model(exported, tiny_run, camvid, tmp_path):
    """The new int8 model is verified under a temporary name: when it fails, the model already
    deployed under the final name stays byte for byte, and the rejected one sits beside it."""
    deployed = tmp_path / "tiny_int8.tflite"
    shutil.copy(exported / "tiny_int8.tflite", deployed)
    before = deployed.read_bytes()
    result = convert_cli("--model", tiny_run / "best.keras", "--quantize", "int8", "--calib-data", camvid,
                         "--eval-data", camvid, "--num-calib", 16, "--num-eval", 8, "--out-dir", tmp_path, "--name",
                         "tiny", "--min-agreement", 0.9999)
    assert "tiny_int8.failed.tflite" in one_error_line(result)
    assert deployed.read_bytes() == before
    assert (tmp_path / "tiny_int8.failed.tflite").stat().st_size > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_refused_without_leaving_models(tiny_run, camvid, tmp_path):
    import keras

    not_keras = tmp_path / "model.keras"
    not_keras.write_text("not a model")
    dynamic = tmp_path / "dynamic.keras"
    x = keras.Input((None, None, 3))
    keras.Model(x, keras.layers.Conv2D(4, 1)(x)).save(dynamic)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_annotations = tmp_path / "noann"
    (no_annotations / "images" / "validation").mkdir(parents=True)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    model = tiny_run / "best.keras"
    corrupt_run = tmp_path / "corrupt_run"  # a run whose labels.json was cut short
    corrupt_run.mkdir()
    (corrupt_run / "best.keras").write_bytes(model.read_bytes())
    (corrupt_run / "labels.json").write_text('{"names": ')
    common = ["--eval-data", camvid, "--num-eval", 2]
    cases = [
        (["--model", not_keras, "--calib-data", camvid, "--out-dir", tmp_path / "o1", *common], "could not be loaded"),
        (["--model", dynamic, "--calib-data", camvid, "--out-dir", tmp_path / "o2", *common], "dynamic spatial"),
        (["--model", model, "--calib-data", empty, "--out-dir", tmp_path / "o3", *common], "holds no images"),
        (["--model", model, "--calib-data", camvid, "--calib-split", "validation", "--num-calib", 500,
          "--out-dir", tmp_path / "o4", *common], "lower --num-calib"),
        (["--model", model, "--calib-data", camvid, "--eval-data", no_annotations, "--out-dir", tmp_path / "o5"],
         "annotations"),
        (["--model", model, "--calib-data", camvid, "--out-dir", blocker / "sub", *common], "cannot be created"),
        (["--model", model, "--edgetpu", "--io-type", "float32", "--calib-data", camvid, "--out-dir", tmp_path / "o6",
          *common], "--edgetpu"),
        (["--model", model, "--quantize", "int8", "--out-dir", tmp_path / "o7", *common], "--calib-data"),
        (["--model", model, "--edgetpu", "--fallback", "float-head", "--calib-data", camvid, "--out-dir",
          tmp_path / "o8", *common], "Edge TPU cannot run"),
        (["--model", corrupt_run / "best.keras", "--calib-data", camvid, "--out-dir", tmp_path / "o9", *common],
         "labels.json cannot be read as a run's labels"),
    ]
    for args, fragment in cases:
        message = one_error_line(convert_cli(*args))
        assert fragment in message, message
    assert not list(tmp_path.rglob("*.tflite")) and not list(tmp_path.rglob("*.partial"))


def test_edgetpu_export_prints_the_compiler_command(tiny_run, camvid, tmp_path):
    result = convert_cli("--model", tiny_run / "best.keras", "--quantize", "int8", "--edgetpu", "--calib-data", camvid,
                         "--eval-data", camvid, "--num-calib", 8, "--num-eval", 4, "--out-dir", tmp_path,
                         "--name", "tpu", *TINY_THRESHOLDS)
    assert result.exit_code == 0, result.output + result.stderr
    assert "edgetpu_compiler --out_dir" in result.stdout
    assert Segmenter(SegmenterOptions(tmp_path / "tpu_int8.tflite", device="cpu")).info.input.dtype == "uint8"
    # Nearest upsampling is exported as RESIZE_NEAREST_NEIGHBOR with static shapes, not Keras 3's
    # TILE/SHAPE/dynamic RESHAPE, which the Edge TPU compiler would leave on the CPU.
    from convert.export import ops_outside_edgetpu

    data = (tmp_path / "tpu_int8.tflite").read_bytes()
    assert ops_outside_edgetpu(data) == {}
    assert "every op is one the Edge TPU compiler maps" in result.stdout
    report = json.loads((tmp_path / "tpu_report.json").read_text())
    assert report["models"][0]["verification"]["agreement"] > 0.8  # the rewrite keeps the values


def test_a_savedmodel_folder_converts_like_the_keras_file(tiny_run, camvid, tmp_path):
    import keras

    saved = tmp_path / "tiny_savedmodel"
    keras.models.load_model(tiny_run / "best.keras", compile=False).export(str(saved), verbose=False)
    result = convert_cli("--model", saved, "--quantize", "float32", "--quantize", "all", "--calib-data", camvid,
                         "--eval-data", camvid,
                         "--num-calib", 8, "--num-eval", 4, "--out-dir", tmp_path / "out", "--name", "sm",
                         *TINY_THRESHOLDS)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((tmp_path / "out" / "sm_report.json").read_text())
    modes = {row["mode"]: row["verification"] for row in report["models"]}
    assert set(modes) == {"float32", "float16", "int8"}  # --quantize repeated: the union of the modes
    assert modes["float32"]["agreement"] > 0.999 and modes["float16"]["agreement"] > 0.98
    assert modes["int8"]["agreement"] > 0.8
    seg = Segmenter(SegmenterOptions(tmp_path / "out" / "sm_int8.tflite"))
    assert seg.info.spec.size_hw == (64, 96) and seg.info.metadata_embedded and seg.labels.names[4] == "road"


def test_static_upsampling_is_exact_and_the_plain_export_is_not_edgetpu_ready(tiny_keras, tiny_run, camvid):
    from convert.export import convert, ops_outside_edgetpu, with_static_upsampling
    from convert.source import load_source

    frames = np.random.default_rng(0).random((2, 64, 96, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(with_static_upsampling(tiny_keras)(frames)),
                                  np.asarray(tiny_keras(frames)))
    plain = convert(load_source(tiny_run / "best.keras"), "float32")
    assert {"TILE", "SHAPE"} <= set(ops_outside_edgetpu(plain))  # what Keras 3 gives without the rewrite


@pytest.mark.parametrize("architecture", ["unet-lite2", "dilated-lite"])
def test_other_networks_export_edgetpu_ready_with_float32_equal_to_keras(tmp_path, architecture):
    from convert.export import convert, ops_outside_edgetpu
    from convert.source import load_source
    from edgeseg.backend import make_plain_interpreter, op_details
    from train.models import build_model

    # unet-lite2 adds ADD (residual repeats) and MEAN + a 1x1 -> 2x3 nearest broadcast (image
    # pooling) to unet-lite's ops; dilated-lite adds dilated depthwise convolutions, which the
    # converter lowers to SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND (not Edge TPU ops) unless the batch is
    # fixed. Random weights and BatchNorm statistics so no branch is a constant: float32 must give
    # Keras' logits, the Edge TPU export must map every op.
    model = build_model(architecture, 64, 96, 12, width_multiplier=0.5)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if "_bn" in layer.name:
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    frames = rng.random((1, 64, 96, 3)).astype(np.float32)
    model.save(tmp_path / "net.keras")
    source = load_source(tmp_path / "net.keras")
    interpreter = make_plain_interpreter(convert(source, "float32", edgetpu=True))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frames)
    interpreter.invoke()
    tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite, np.asarray(model(frames)), atol=1e-3, rtol=1e-3)

    def representative():
        for _ in range(4):
            yield [rng.random((1, 64, 96, 3)).astype(np.float32)]

    int8 = convert(source, "int8", io_type="uint8", representative=representative, edgetpu=True)
    assert ops_outside_edgetpu(int8) == {}
    if architecture == "dilated-lite":  # one convolution per dilated block, its BatchNorm folded in
        ops = [op["op_name"] for op in op_details(make_plain_interpreter(convert(source, "int8", representative=representative)))]
        assert "SPACE_TO_BATCH_ND" not in ops and "MUL" not in ops, ops


def test_output_grid_diagnostic_on_a_hand_made_case():
    from convert.verify import grid_diagnostic

    # Pixel 0: classes 1 and 0 are 0.05 apart, under one step of 0.1: on the grid both become 10 and
    # argmax falls back to class 0 (lost, close). Pixel 1: a clear winner (kept, not close).
    logits = np.array([[[1.0, 1.05, 0.0], [2.0, 0.0, -1.0]]], np.float32)
    assert grid_diagnostic(logits, 0.1, 0, "int8") == (1, 1)
    # Clipping: logits beyond the int8 range saturate and tie at 127 (scale 0.01 covers only +-1.27).
    assert grid_diagnostic(np.array([[[3.0, 2.0]]], np.float32), 0.01, 0, "int8") == (1, 0)
    assert grid_diagnostic(np.array([[[2.0, 3.0]]], np.float32), 0.01, 0, "int8") == (0, 0)


def test_float_head_fallback_keeps_the_last_conv_float(tiny_run, camvid, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    result = convert_cli("--model", tiny_run / "best.keras", "--quantize", "int8", "--calib-data", camvid,
                         "--eval-data", camvid, "--num-calib", 8, "--num-eval", 4, "--out-dir", tmp_path,
                         "--name", "fh", "--min-agreement", 0.9999, "--fallback", "float-head")
    message = one_error_line(result)  # 99.99 % is out of reach for int8 of this indecisive tiny model
    report = json.loads((tmp_path / "fh_report.json").read_text())
    int8, head = report["models"]
    v8 = int8["verification"]
    assert 0 < v8["output_step"] and 0.5 < v8["grid_ceiling"] <= 1 and 0 < v8["below_step_share"] < 0.5
    assert ("keep only" in message) == (v8["grid_ceiling"] < 0.9999)
    assert head["mode"] == "float-head" and head["path"].endswith("fh_float_head.failed.tflite")
    assert (head["verification"]["input_dtype"], head["verification"]["output_dtype"]) == ("float32", "float32")
    assert head["verification"]["agreement"] > 0.8
    interpreter = Interpreter(model_path=head["path"])
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    convs = [op for op in op_details(interpreter) if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert [dtypes[op["outputs"][0]] for op in convs[:-1]] == [np.int8] * (len(convs) - 1)  # int8 body
    assert dtypes[convs[-1]["outputs"][0]] == np.float32  # the head


def test_the_tutorial_unet_converts_with_a_non_square_input(camvid, tmp_path):
    from train.models import build_model

    # The other architecture (unet; the fixtures use unet-lite), BatchNorm on, 64x96 input. Untrained,
    # so int8 agreement is not the point here: float32 must match Keras exactly, int8 must exist.
    model = build_model("unet", 64, 96, 12, base_filters=4, batch_norm=True)
    path = tmp_path / "unet.keras"
    model.save(path)
    result = convert_cli("--model", path, "--quantize", "float32", "--quantize", "int8", "--calib-data", camvid,
                         "--eval-data", camvid, "--num-calib", 8, "--num-eval", 3, "--out-dir", tmp_path / "out",
                         "--min-agreement", 0, "--max-miou-drop", 1)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((tmp_path / "out" / "unet_report.json").read_text())
    modes = {row["mode"]: row["verification"] for row in report["models"]}
    assert modes["float32"]["agreement"] > 0.999 and modes["int8"]["input_dtype"] == "int8"
    seg = Segmenter(SegmenterOptions(tmp_path / "out" / "unet_int8.tflite"))
    assert seg.info.spec.size_hw == (64, 96) and seg.labels.names[4] == "road"
