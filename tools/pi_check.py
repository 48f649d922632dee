"""Run the edge runtime as an aarch64 process (Raspberry Pi OS's Python) and compare it with this machine.

    make pi-check                # or: python tools/pi_check.py [--frames 24] [--cpu cortex-a72 --cpu cortex-a76]

No Pi is needed and nothing is registered with the kernel (no binfmt handlers): `qemu-aarch64-static`
(Debian's qemu-user-static) runs Debian bookworm's arm64 python3.11, unpacked from its .deb packages
into a private sysroot (the Python of Raspberry Pi OS Bookworm), with the aarch64 wheels of the same
numpy / opencv-python-headless / ai-edge-litert versions as here. Both sides segment the *same*
decoded frames (decoders differ slightly between builds, so each decoding the clip itself would
measure FFmpeg, not edgeseg), and the class maps must agree on at least 99.9 % of the pixels.

Two traps, handled here: qemu 7.2 passes the host's x86 /proc/cpuinfo through and XNNPACK's cpuinfo
then crashes in allocate_tensors (an ARM-style proc/cpuinfo inside the sysroot is served first,
since -L looks there first); and QEMU_CPU=max exposes SME paths that give wrong int8 results, so the
CPU is pinned to the Pi 4's Cortex-A72 and the Pi 5's Cortex-A76. Downloads (~80 MB) are cached in
~/.cache/edgeseg-pi-check (or $EDGESEG_PI_CHECK_CACHE). The emulated time per frame is printed as
what it is: an emulator's, not a Pi's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = [REPO / "edgeseg" / "assets" / "camvid_lite_int8.tflite", REPO / "models" / "camvid_lite_float16.tflite"]
CLIP = REPO / "edgeseg" / "assets" / "solidWhiteRight.mp4"
MIN_AGREEMENT = 0.999
MIRRORS = [("http://deb.debian.org/debian", "bookworm"), ("http://deb.debian.org/debian", "bookworm-updates"),
           ("http://deb.debian.org/debian-security", "bookworm-security")]
SKIP_DEBS = {"perl", "perl-base", "perl-modules-5.36", "libperl5.36", "dpkg", "install-info", "tar"}
WHEELS = ["numpy", "opencv-python-headless", "ai-edge-litert"]
PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                  "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                  "CPU revision\t: 3\n\n" for i in range(4)) + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4\n"


class CheckError(RuntimeError):
    pass


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise CheckError(f"{' '.join(map(str, command[:4]))} ... failed: {(result.stderr or result.stdout)[-800:]}")
    return result


def sysroot(cache: Path) -> Path:
    """Debian bookworm's arm64 python3.11 + libstdc++6 and their dependencies, unpacked."""
    root = cache / "sysroot"
    if (root / "usr" / "bin" / "python3.11").is_file():
        return root
    apt = cache / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial", "debs"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text("".join(
        f"deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {url} {suite} main\n"
        for url, suite in MIRRORS))
    options = [f"-oDir::State={apt / 'state'}", f"-oDir::Cache={apt / 'cache'}",
               f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
               "-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64", "-oDebug::NoLocking=1"]
    run(["apt-get", *options, "update", "-qq"])
    listing = run(["apt-cache", *options, "depends", "--recurse", "--no-recommends", "--no-suggests",
                   "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", "--no-pre-depends",
                   "python3.11", "libstdc++6"]).stdout
    packages = sorted({line.strip() for line in listing.splitlines()
                       if line and not line.startswith(" ") and "<" not in line} - SKIP_DEBS)
    run(["apt-get", *options, "download", *packages], cwd=apt / "debs")
    staging = cache / "sysroot.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted((apt / "debs").glob("*.deb")):
        run(["dpkg", "-x", str(deb), str(staging)])
    (staging / "proc").mkdir(exist_ok=True)
    (staging / "proc" / "cpuinfo").write_text(CPUINFO)
    os.replace(staging, root)
    return root


def site_packages(cache: Path) -> Path:
    """The aarch64 wheels of the versions installed here, unpacked."""
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    site = cache / ("site-" + "-".join(pin.replace("==", "") for pin in pins))
    if site.is_dir():
        return site
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
         *[arg for platform in PLATFORMS for arg in ("--platform", platform)], "-d", str(wheels), *pins])
    staging = Path(str(site) + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for wheel in wheels.glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(staging)
    os.replace(staging, site)
    return site


def decode_frames(count: int) -> np.ndarray:
    """`count` frames spread over the demo clip, decoded once, here (the runtime's own reader)."""
    sys.path.insert(0, str(REPO))
    from edgeseg.sources import spaced_frames

    return np.stack(spaced_frames(CLIP, count))


def segment_all(frames_path: str, out_path: str, threads: int) -> None:
    """Both sides run this: every model on every frame -> class maps, raw outputs, ms per frame."""
    sys.path.insert(0, str(REPO))
    from edgeseg.segmenter import Segmenter, SegmenterOptions

    frames = np.load(frames_path)["frames"]
    results = {}
    for model in MODELS:
        seg = Segmenter(SegmenterOptions(model, threads=threads, device="cpu"))
        maps, raws, times = [], [], []
        for frame in frames:
            started = time.perf_counter()
            raw = seg.invoke(seg.prepare(frame))
            maps.append(seg.classes(raw))
            times.append((time.perf_counter() - started) * 1000)
            raws.append(np.array(raw, copy=True))
        results[f"{model.stem}_maps"] = np.stack(maps)
        results[f"{model.stem}_raw"] = np.stack(raws)
        results[f"{model.stem}_ms"] = np.asarray(times)
    np.savez(out_path, **results)


def emulate(root: Path, site: Path, cpu: str, frames_path: str, out_path: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "QEMU_CPU": cpu, "PYTHONPATH": f"{site}:{REPO}", "PYTHONNOUSERSITE": "1",
           "LANG": "C.UTF-8"}
    code = f"import sys; sys.path.insert(0, {str(REPO / 'tools')!r}); import pi_check; " \
           f"pi_check.segment_all({frames_path!r}, {out_path!r}, 1)"
    started = time.time()
    run(["qemu-aarch64-static", "-L", str(root), str(root / "usr" / "bin" / "python3.11"), "-c", code], env=env,
        timeout=1800)
    machine = run(["qemu-aarch64-static", "-L", str(root), str(root / "usr" / "bin" / "python3.11"), "-c",
                   "import platform; print(platform.machine())"], env=env).stdout.strip()
    if machine != "aarch64":
        raise CheckError(f"the emulated Python reports {machine!r}, not aarch64")
    return time.time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12, help="frames of the demo clip to compare")
    parser.add_argument("--cpu", action="append", help="QEMU CPU (default: cortex-a72 = Pi 4, cortex-a76 = Pi 5)")
    parser.add_argument("-o", "--output", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    cpus = args.cpu or ["cortex-a72", "cortex-a76"]
    if shutil.which("qemu-aarch64-static") is None:
        print("error: qemu-aarch64-static is missing; install Debian's qemu-user-static"
              " (apt-get install qemu-user-static)", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("EDGESEG_PI_CHECK_CACHE", Path.home() / ".cache" / "edgeseg-pi-check"))
    report: dict = {"models": [m.name for m in MODELS], "frames": args.frames, "cpus": {}}
    try:
        root, site = sysroot(cache), site_packages(cache)
        with tempfile.TemporaryDirectory() as tmp:
            frames_path, host_path = f"{tmp}/frames.npz", f"{tmp}/host.npz"
            np.savez(frames_path, frames=decode_frames(args.frames))
            segment_all(frames_path, host_path, 1)
            host = np.load(host_path)
            failed = False
            # Each emulated Python runs one thread: the CPUs run side by side, one core each.
            with ThreadPoolExecutor(max(1, min(len(cpus), os.cpu_count() or 1))) as pool:
                seconds = dict(zip(cpus, pool.map(lambda cpu: emulate(root, site, cpu, frames_path,
                                                                       f"{tmp}/{cpu}.npz"), cpus)))
            for cpu in cpus:
                arm = np.load(f"{tmp}/{cpu}.npz")
                rows = {}
                for model in MODELS:
                    key = model.stem
                    agreement = float(np.mean(arm[f"{key}_maps"] == host[f"{key}_maps"]))
                    identical = bool(np.array_equal(arm[f"{key}_raw"], host[f"{key}_raw"]))
                    rows[model.name] = {"agreement": agreement, "raw_identical": identical,
                                        "emulated_ms_per_frame": float(np.median(arm[f"{key}_ms"])),
                                        "host_ms_per_frame": float(np.median(host[f"{key}_ms"]))}
                    ok = agreement >= MIN_AGREEMENT
                    failed |= not ok
                    print(f"{cpu:<11} {model.name:<28} class maps agree {100 * agreement:.3f}% with x86"
                          f" ({'raw outputs bit-identical' if identical else 'raw outputs differ'}):"
                          f" {'ok' if ok else f'FAIL (< {100 * MIN_AGREEMENT:.1f}%)'}; emulated"
                          f" {rows[model.name]['emulated_ms_per_frame']:.0f} ms/frame under qemu (not a Pi figure)")
                report["cpus"][cpu] = {"models": rows, "seconds": round(seconds[cpu], 1)}
    except (CheckError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: pi-check could not run: {exc}", file=sys.stderr)
        return 1
    if args.output:
        sys.path.insert(0, str(REPO))
        from edgeseg import atomic

        atomic.write_text(args.output, json.dumps(report, indent=1))
    print("pi-check: " + ("FAILED" if failed else f"aarch64 agrees with x86 on {args.frames} frames of {CLIP.name}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
