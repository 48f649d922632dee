"""`make pi-check` in the suite: the runtime as a real aarch64 process under qemu user mode."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_runtime_agrees_on_aarch64(tmp_path):
    report = tmp_path / "pi.json"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "pi_check.py"), "--frames", "3", "--output",
                             str(report)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert set(figures["cpus"]) == {"cortex-a72", "cortex-a76"}
    for cpu in figures["cpus"].values():
        int8 = cpu["models"]["camvid_lite_int8.tflite"]
        assert int8["agreement"] >= 0.999 and int8["raw_identical"]  # same int8 kernels' arithmetic
        assert cpu["models"]["camvid_lite_float16.tflite"]["agreement"] >= 0.999
        assert int8["emulated_ms_per_frame"] > 0
    assert "not a Pi figure" in result.stdout
