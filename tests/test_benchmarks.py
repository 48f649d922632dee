"""Benchmark schema, percentiles, fingerprint, tables and chart from stored results."""

import json

import cv2
import pytest
from typer.testing import CliRunner

from benchmarks.__main__ import app
from benchmarks.fingerprint import fingerprint, governor_warning, slug
from benchmarks.measure import summarize
from benchmarks.report import generate
from conftest import REPO, shared

runner = CliRunner()


def test_percentiles_by_hand():
    stats = summarize([float(v) for v in range(1, 101)])
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["fps"] == pytest.approx(1000 / 50.5)


def test_operation_count_matches_the_keras_network_through_upsampling():
    import tensorflow as tf

    from benchmarks.roofline import graph_ops, model_ops
    from edgeseg.backend import make_interpreter
    from train.models import build_model, count_flops

    # The tutorial's U-Net: UpSampling2D exports with dynamic shapes, so the 2x2 convs after it
    # carry placeholder static shapes; counting them as stored under-counted (5.81 of 6.85 GOP at seed size).
    model = build_model("unet", 32, 32, 5, base_filters=4)
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert model_ops(data) == count_flops(model)
    assert graph_ops(make_interpreter(data)[0]) < count_flops(model)  # what the stored shapes say


def test_fingerprint_fields():
    facts = fingerprint("test box")
    for key in ("device", "cpu", "simd", "cores", "arch", "os", "python", "runtime", "pi_model", "governor", "edgetpu"):
        assert key in facts
    flags = open("/proc/cpuinfo").read()
    assert ("avx2" in facts["simd"]) == (" avx2" in flags) and ("asimd" in facts["simd"]) == (" asimd" in flags)
    assert facts["device"] == "test box" and facts["cores"] >= 1 and "ai_edge_litert" in facts["runtime"]
    assert "performance" in governor_warning({"governor": "ondemand"})
    assert governor_warning({"governor": "performance"}) is None
    assert slug("Raspberry Pi 5 Model B Rev 1.0") == "raspberry-pi-5-model-b-rev-1-0"


def test_cpu_facts_read_x86_and_arm_cpuinfo():
    """The SIMD flags that decide int8 speed, from both kinds of /proc/cpuinfo a figure may come from."""
    from edgeseg.machine import cpu_features, cpu_model
    from tools.pi_check import CPUINFO as PI4  # the Cortex-A72 text the aarch64 check serves

    vnni = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
            "flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni amx_int8 xsave\n\nprocessor\t: 1\n")
    assert cpu_model(vnni) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert cpu_features(vnni) == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"]  # avx alone is not listed
    assert cpu_model(PI4) == "Raspberry Pi 4" and cpu_features(PI4) == ["asimd"]
    assert cpu_features("") == [] and cpu_model("") != ""  # no cpuinfo (macOS, a sandbox): platform's name


def test_benchmark_run_schema_tables_and_chart(tiny_tflite, tmp_path, monkeypatch):
    import benchmarks.report as report

    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    result = runner.invoke(app, ["--model", str(tiny_tflite["int8"]), "--model", str(tiny_tflite["float32"]),
                                 "--threads", "1", "-t", "2", "--runs", "5", "--warmup", "1", "--json",
                                 "--video", str(shared("video", "vtest.avi")), "--device-name", "ci box", "--no-save"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # --json: the record alone on stdout, the ratio lines on stderr
    assert record["ratios"] and record["ratios"][0] in result.stderr
    assert len(record["rows"]) == 4 and len(record["pipeline"]) == 4  # per model and thread count
    row = record["rows"][0]
    for key in ("size_mb", "input", "quantization", "delegate", "init_ms", "first_ms", "mean_ms", "std_ms",
                "p50_ms", "p90_ms", "p99_ms", "fps", "peak_rss_mb", "gops", "achieved_gops_per_s"):
        assert key in row, key
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["input"] == "96x64"
    assert record["peak_gops"]["int8"] > 0 and record["peak_gops"]["float32"] > 0
    pipe = record["pipeline"][0]
    assert 0 < pipe["ratio"] <= 1.5 and pipe["inference_only_p50_ms"] > 0 and pipe["frames"] == 300
    assert pipe["host_only_fps"] > 0 and set(pipe["host_stage_p50_ms"]) == {"decode", "prepare", "argmax", "draw", "encode"}
    # CPU per frame over all threads: no more than the cores can give in the run's wall time, and the
    # ceiling is what that CPU cost allows next to inference alone.
    wall_ms_per_frame = 1000 / pipe["end_to_end_fps"]
    assert 0 < pipe["cpu_ms_per_frame"] <= 1.1 * pipe["cores"] * wall_ms_per_frame
    # the same stages on one thread: at least the inference, and in the pipeline's range (threads share
    # out the work, they do not multiply it)
    assert pipe["inference_only_p50_ms"] * 0.5 < pipe["one_thread_cpu_ms_per_frame"] < 3 * pipe["cpu_ms_per_frame"]
    assert pipe["ratio_ceiling"] == pytest.approx(
        min(1.0, pipe["cores"] * pipe["inference_only_p50_ms"] / pipe["cpu_ms_per_frame"]))
    # The speed-up line says what the rows measured (which way round is timing noise on this CPU).
    best = {q: min(r["p50_ms"] for r in record["rows"] if r["quantization"] == q) for q in ("int8", "float32")}
    line = next(text for text in record["ratios"] if "than TFLite float32" in text)
    word = "faster" if best["int8"] < best["float32"] else "slower"
    ratio = max(best.values()) / min(best.values())
    assert f"int8 is {ratio:.1f}x {word} than TFLite float32" in line, (line, best)

    report.append_results(record, tmp_path / "results")
    # `python -m train throughput -o` keeps its own schema beside the device files: not a device.
    (tmp_path / "results" / "training-ci-box.jsonl").write_text(json.dumps({"images_per_second": 3.1}) + "\n")
    table = generate(tmp_path / "results", reports_dir=tmp_path)
    assert "| ci box | tiny_int8.tflite | int8 | 1 |" in table and "tiny: int8 is" in table
    assert f"ceiling {100 * pipe['ratio_ceiling']:.0f}% at {pipe['cpu_ms_per_frame']:.1f} ms CPU/frame" in table
    assert f"({pipe['one_thread_cpu_ms_per_frame']:.1f} on one thread)" in table
    assert "- ci box: " in table and "cores" in table  # the device list under the table
    assert "ci box" in (tmp_path / "results" / "README.md").read_text()
    chart = cv2.imread(str(tmp_path / "results" / "latency.png"))
    assert chart is not None and chart.shape[0] > 100 and (chart < 250).any()


@pytest.mark.parametrize("args,fragment", [
    (["--model", "missing.tflite"], "does not exist"),
    (["--threads", "two"], "positive integers"),
    (["--threads", "0"], "positive integers"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--video", "/nonexistent.mp4"], "does not exist"),
    ([], "no model given"),
])
def test_bad_input(tiny_tflite, args, fragment):
    base = [] if not args or args[0] == "--model" else ["--model", str(tiny_tflite["int8"])]
    result = runner.invoke(app, base + args + ["--no-save", "--runs", "1"] if "--runs" not in args else base + args + ["--no-save"])
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_speedups_pair_each_int8_model_with_its_own_family():
    from benchmarks.measure import family, speedups

    assert family("camvid_lite_int8.tflite") == family("camvid_lite.keras (keras predict)") == "camvid_lite"
    rows = [{"model": "a_int8.tflite", "quantization": "int8", "p50_ms": 2.0},
            {"model": "a_float32.tflite", "quantization": "float32", "p50_ms": 6.0},
            {"model": "b_int8.tflite", "quantization": "int8", "p50_ms": 40.0},
            {"model": "b_float32.tflite", "quantization": "float32", "p50_ms": 120.0},
            {"model": "best.keras (keras predict)", "family": "b", "p50_ms": 400.0}]
    assert speedups(rows) == [
        "a: int8 is 3.0x faster than TFLite float32 (2.00 vs 6.00 ms p50)",
        "b: int8 is 10.0x faster than Keras predict (40.00 vs 400.00 ms p50)",
        "b: int8 is 3.0x faster than TFLite float32 (40.00 vs 120.00 ms p50)",
    ]


def test_thermal_state_reads_sysfs_and_reports_absent_fields_as_none(tmp_path):
    from benchmarks.thermal import read_state, throttling

    # A Pi 5's sysfs layout, written out: one thermal zone at 81.2 °C, the clock at half its maximum.
    zone = tmp_path / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("81234\n")
    freq = tmp_path / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_cur_freq").write_text("1200000\n")
    (freq / "cpuinfo_max_freq").write_text("2400000\n")
    state = read_state(tmp_path)
    assert state["temp_c"] == pytest.approx(81.234) and state["cpu_mhz"] == 1200 and state["cpu_max_mhz"] == 2400
    assert any("°C" in r for r in throttling(state)) and any("clock 1200 of 2400" in r for r in throttling(state))
    empty = read_state(tmp_path / "nothing")  # a machine without thermal zones or cpufreq
    assert empty["temp_c"] is None and empty["cpu_mhz"] is None and throttling(empty) == []
    here = read_state()  # this machine: numbers where it has them, None (not 0) where not
    assert all(value is None or value > 0 for key, value in here.items() if key != "throttled")


def test_sustained_run_writes_samples_and_a_chart(tmp_path):
    result = runner.invoke(app, ["--model", str(REPO / "models" / "camvid_lite_fast_int8.tflite"), "--threads", "1",
                                 "--runs", "5", "--warmup", "1", "--video", str(shared("video", "vtest.avi")),
                                 "--sustain", "3", "--no-save", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "sustained" in result.stdout and ("no throttling seen" in result.stdout or "THROTTLED" in result.stdout)
    jsonl = next(tmp_path.glob("sustain-*-camvid_lite_fast_int8.jsonl"))
    samples = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert 2 <= len(samples) <= 4 and all(s["fps"] > 0 for s in samples)
    assert all({"t_s", "fps", "temp_c", "cpu_mhz", "throttled", "throttling"} <= set(s) for s in samples)
    chart = cv2.imread(str(jsonl.with_suffix(".png")))
    assert chart is not None and chart.shape == (360, 900, 3)


def test_a_replaced_model_does_not_borrow_the_new_ones_accuracy(tmp_path):
    """Rows of an older model with the same file name (other input size) get no mIoU, not the new one's."""
    from benchmarks.report import accuracy_for

    report = {"source": {"height": 256, "width": 320},
              "models": [{"path": "models/m_int8.tflite", "verification": {"miou_tflite": 0.61}}]}
    (tmp_path / "m_report.json").write_text(json.dumps(report))
    assert accuracy_for("m_int8.tflite", tmp_path, "320x256") == 0.61
    assert accuracy_for("m_int8.tflite", tmp_path, "256x192") is None
    assert accuracy_for("other_int8.tflite", tmp_path, "320x256") is None
