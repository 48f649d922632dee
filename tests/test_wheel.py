"""The wheel a Pi user installs: one top-level package, and a demo that needs nothing else."""

import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_holds_only_edgeseg_and_demos_by_itself(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("edgeseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"edgeseg", wheel.name.split("-py3")[0] + ".dist-info"}
    for shipped in ("edgeseg/assets/camvid_lite_int8.tflite", "edgeseg/assets/camvid_lite_fast_int8.tflite",
                    "edgeseg/assets/solidWhiteRight.mp4",
                    "edgeseg/assets/solidWhiteRight.LICENSE", "edgeseg/benchmarks/probes/conv3x3_int8.tflite",
                    "edgeseg/train/__main__.py", "edgeseg/convert/__main__.py", "edgeseg/benchmarks/__main__.py"):
        assert shipped in names, shipped
    assert wheel.stat().st_size < 5_000_000
    # Installed copy (the wheel unpacked), run from a folder far from the checkout.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import edgeseg; print(edgeseg.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    demo = subprocess.run([sys.executable, "-m", "edgeseg", "demo"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "wrote out/demo/demo.mp4 (221 frames" in demo.stdout and (work / "out" / "demo" / "contact_sheet.png").is_file()
    report = subprocess.run([sys.executable, "-m", "edgeseg.benchmarks", "report"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (work / "benchmark-results" / "README.md").is_file()  # results next to the user, not in site-packages
    assert not list(site.rglob("results"))


def test_a_tool_without_its_extra_names_what_to_install():
    import pytest

    from edgeseg.extras import MissingExtra, require

    require("training")  # everything is installed here
    with pytest.raises(MissingExtra) as info:
        require("training", {"yaml": "pyyaml", "no_such_module_for_edgeseg": "tensorflow"})
    message = str(info.value)
    assert "tensorflow" in message and "pyyaml" not in message and "pip install 'edgeseg[train]'" in message
