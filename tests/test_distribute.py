"""Distributed training with real processes: two workers over 127.0.0.1 (MultiWorkerMirroredStrategy),
two logical CPU devices (MirroredStrategy), and mixed precision through to the TFLite export."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, shared

WORKER_ARGS = ["--architecture", "unet-lite", "--height", "64", "--width", "96", "--batch-size", "4",
               "--max-examples", "12", "--learning-rate", "0.01"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_workers(run_dir: Path, epochs: int, ports: list[int], scratch: Path, logs: Path) -> list[subprocess.Popen]:
    """`python -m train` once per worker, as the README shows, each with its own TF_CONFIG."""
    workers = []
    cluster = [f"127.0.0.1:{port}" for port in ports]
    for index in range(len(ports)):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})}
        log = open(logs / f"worker{index}.log", "a")  # noqa: SIM115 - closed when the process ends
        command = [sys.executable, "-m", "train", "--data-dir", str(shared("camvid")), "--run-dir", str(run_dir),
                   "--epochs", str(epochs), *WORKER_ARGS]
        workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return workers


def wait_all(workers: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for worker in workers:
        try:
            codes.append(worker.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail(f"workers still running after {timeout} s (a hang)")
    return codes


def digests(log: Path) -> list[str]:
    return re.findall(r"final weights ([0-9a-f]{16})", log.read_text(errors="replace"))


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.fixture()
def cluster_dirs(tmp_path):
    scratch, logs = tmp_path / "tmp", tmp_path / "logs"  # scratch: the workers' TMPDIR
    scratch.mkdir()
    logs.mkdir()
    return tmp_path / "run", scratch, logs


@pytest.mark.slow
def test_two_workers_train_in_sync_and_a_killed_one_stops_the_other_and_both_resume(cluster_dirs):
    """Two `python -m train` processes over 127.0.0.1 (MultiWorkerMirroredStrategy): one is killed after
    epoch 2, the other stops with one line, the same two commands resume, and the run ends with one set of
    artefacts written by the chief only and both workers holding the very same weights."""
    run_dir, scratch, logs = cluster_dirs
    workers = start_workers(run_dir, 6, free_ports(2), scratch, logs)
    history = run_dir / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (history.is_file() and len(history_epochs(run_dir)) >= 2):
        time.sleep(0.2)
    assert len(history_epochs(run_dir)) >= 2, (logs / "worker0.log").read_text(errors="replace")[-3000:]
    workers[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        code = workers[0].wait(timeout=90)  # bounded: the health check notices a lost peer within ~10-30 s
    except subprocess.TimeoutExpired:
        workers[0].kill()
        pytest.fail("the surviving worker hung after its peer was killed")
    waited = time.time() - killed_at
    chief_log = (logs / "worker0.log").read_text(errors="replace")
    errors = [line for line in chief_log.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, chief_log[-3000:]
    assert "lost contact with another worker" in errors[0] and "resume" in errors[0]
    assert "Traceback" not in chief_log
    finished = history_epochs(run_dir)
    assert 2 <= len(finished) < 6, f"{finished} after {waited:.0f} s"

    workers = start_workers(run_dir, 6, free_ports(2), scratch, logs)
    codes = wait_all(workers, 400)
    chief_log = (logs / "worker0.log").read_text(errors="replace")
    assert codes == [0, 0], chief_log[-3000:]
    # A peer killed while saving epoch N holds only N - 1: the group then steps back one epoch.
    resumed = re.findall(r"resuming from the backup of epoch (\d+)", chief_log)
    assert resumed and int(resumed[0]) in (len(finished) - 1, len(finished)), chief_log[-3000:]
    assert history_epochs(run_dir) == list(range(1, 7))  # nothing repeated, nothing skipped
    assert not (run_dir / "backup").exists() and list(scratch.glob("edgeseg-*")) == []
    # Synchronous training: both workers end with the very same weights (BatchNorm statistics included).
    first, second = digests(logs / "worker0.log"), digests(logs / "worker1.log")
    assert first and first[-1] == second[-1]
    other_log = (logs / "worker1.log").read_text(errors="replace")
    assert "worker 0 of 2 (chief)" in chief_log and "worker 1 of 2 (worker)" in other_log
    # The chief's run dir holds every artefact; the other worker left nothing anywhere.
    for name in ("best.keras", "history.csv", "training_curves.png", "eval.json", "config.yaml", "labels.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "samples").glob("epoch_*.png")) and (run_dir / "tensorboard").is_dir()


MIRRORED_SCRIPT = """
import csv, json, sys
import tensorflow as tf
devices = int(sys.argv[1])
if devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
from train.config import TrainConfig
from train.run import fit
config = TrainConfig(data_dir=sys.argv[2], run_dir=sys.argv[3], architecture="unet-lite", height=64, width=96,
                     width_multiplier=0.5, epochs=1, batch_size=8, max_examples=16, learning_rate=0.01, seed=3,
                     sample_images=1)
result = fit(config)
row = list(csv.DictReader(open(sys.argv[3] + "/history.csv")))[-1]
print("RESULT", json.dumps({"loss": float(row["loss"]), "val_loss": float(row["val_loss"]), "miou": result["miou"]}))
"""


@pytest.mark.slow
def test_two_local_devices_match_one_device_with_the_same_global_batch(tmp_path):
    """The MirroredStrategy path (several GPUs) on two logical CPU devices: with the same global
    batch of 8 (4 per replica), seed and data, the first epoch's loss matches one device within 2 %
    (synchronised BatchNorm sees all 8 images; what differs is float summation order and each
    replica's loss being a mean over its own labelled pixels)."""
    results = {}
    for devices in (1, 2):
        run = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(devices), str(shared("camvid")),
                              str(tmp_path / f"run{devices}")], cwd=REPO, capture_output=True, text=True,
                             timeout=400, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert run.returncode == 0, run.stderr[-3000:]
        expected = "mirrored over 2 local devices" if devices == 2 else "one device"
        assert f"training on {expected}" in run.stdout
        results[devices] = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    one, two = results[1], results[2]
    assert abs(two["loss"] - one["loss"]) / one["loss"] < 0.02, results
    assert abs(two["val_loss"] - one["val_loss"]) / one["val_loss"] < 0.02, results


@pytest.mark.slow
def test_mixed_precision_trains_and_exports_like_float32(tmp_path, camvid):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "train", "--data-dir", str(camvid), "--run-dir", str(run_dir), "--architecture",
         "unet-lite", "--height", "64", "--width", "96", "--epochs", "8", "--batch-size", "8", "--max-examples", "48",
         "--learning-rate", "0.01", "--mixed-precision"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    import keras

    import train.losses  # noqa: F401
    import train.optim  # noqa: F401
    from convert.source import as_float32
    from edgeseg.backend import make_plain_interpreter, op_details
    from edgeseg.metadata import read_metadata

    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    assert model.get_layer("stem_conv").dtype_policy.compute_dtype == "float16"  # it really ran mixed
    assert model.get_layer("logits").dtype_policy.name == "float32" and model.outputs[0].dtype == "float32"
    assert all(layer.dtype_policy.name == "float32" for layer in as_float32(model).layers)

    from test_convert import TINY_THRESHOLDS, convert_cli

    out = tmp_path / "export"
    converted = convert_cli("--model", run_dir / "best.keras", "--quantize", "all", "--calib-data", camvid,
                            "--eval-data", camvid, "--num-calib", 16, "--num-eval", 8, "--out-dir", out, "--name", "mp",
                            *TINY_THRESHOLDS)
    assert converted.exit_code == 0, converted.output + converted.stderr
    report = {row["mode"]: row["verification"] for row in json.loads((out / "mp_report.json").read_text())["models"]}
    assert (report["int8"]["input_dtype"], report["int8"]["output_dtype"]) == ("int8", "int8")
    assert (report["float16"]["input_dtype"], report["float16"]["output_dtype"]) == ("float32", "float32")
    assert report["float16"]["agreement"] > 0.98
    for mode in ("int8", "float16"):
        data = (out / f"mp_{mode}.tflite").read_bytes()
        assert read_metadata(data).input.size_hw == (64, 96)
        ops = {op["op_name"] for op in op_details(make_plain_interpreter(data))}
        assert "CAST" not in ops and "CONV_2D" in ops  # builtin float32/int8 kernels, no float16 compute left
