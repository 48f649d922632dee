"""Temperature, clock and throttling of the device, and a sustained run that watches them.

A Raspberry Pi under sustained load throttles at 80-85 °C; a benchmark that does not look would
report a cool device's first seconds. Read from Linux sysfs (thermal zones, cpufreq) and, on a
Pi, `vcgencmd get_throttled`. A value a machine does not offer is None ("absent"), never 0.

    python -m benchmarks --model M --video CLIP --sustain 600    # ten minutes, sampled every second
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np

SYSFS = Path("/sys")
THROTTLE_TEMP_C = 80.0  # where a Pi 4/5 starts to throttle
# vcgencmd get_throttled bits: 0 under-voltage, 1 arm frequency capped, 2 throttled, 3 soft temp limit
THROTTLED_NOW_MASK = 0b1111


def read_state(sysfs: Path | None = None) -> dict:
    """{"temp_c", "cpu_mhz", "cpu_max_mhz", "throttled"}: each None when this machine lacks it."""
    root = sysfs or SYSFS
    temps = []
    for zone in sorted((root / "class" / "thermal").glob("thermal_zone*")):
        try:
            temps.append(int((zone / "temp").read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    freq = root / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    return {"temp_c": max(temps) if temps else None, "cpu_mhz": _khz_as_mhz(freq / "scaling_cur_freq"),
            "cpu_max_mhz": _khz_as_mhz(freq / "cpuinfo_max_freq"), "throttled": _vcgencmd_throttled()}


def _khz_as_mhz(path: Path) -> float | None:
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def _vcgencmd_throttled() -> int | None:
    if shutil.which("vcgencmd") is None:
        return None
    try:
        output = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        return int(output.strip().split("=")[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def throttling(state: dict) -> list[str]:
    """Why this state looks throttled (empty when it does not, or nothing can tell)."""
    reasons = []
    if state.get("throttled") is not None and state["throttled"] & THROTTLED_NOW_MASK:
        reasons.append(f"vcgencmd get_throttled=0x{state['throttled']:x}")
    if state.get("temp_c") is not None and state["temp_c"] >= THROTTLE_TEMP_C:
        reasons.append(f"{state['temp_c']:.1f} °C")
    mhz, top = state.get("cpu_mhz"), state.get("cpu_max_mhz")
    if mhz is not None and top and mhz < 0.9 * top:
        reasons.append(f"clock {mhz:.0f} of {top:.0f} MHz")
    return reasons


def describe(state: dict) -> str:
    parts = [f"{state['temp_c']:.1f} °C" if state["temp_c"] is not None else "temperature absent",
             f"{state['cpu_mhz']:.0f} MHz" if state["cpu_mhz"] is not None else "clock absent",
             f"throttled=0x{state['throttled']:x}" if state["throttled"] is not None else "vcgencmd absent"]
    return ", ".join(parts)


def sustain(model: Path, video: Path, seconds: float, threads: int | None, out_jsonl: Path, out_png: Path,
            interval: float = 1.0) -> dict:
    """Run the whole pipeline on `video` (looped) for `seconds`, sampling FPS, temperature and
    clock every `interval`; write the samples (JSONL) and a chart (PNG). Returns a summary."""
    from edgeseg.atomic import write_text
    from edgeseg.pipeline import PipelineOptions, run
    from edgeseg.segmenter import Segmenter, SegmenterOptions
    from edgeseg.sources import VideoFileSource

    segmenter = Segmenter(SegmenterOptions(model=model, threads=threads))
    frames = [0]
    samples: list[dict] = []
    stop = threading.Event()
    started = time.perf_counter()

    def sampler() -> None:
        last_time, last_frames = started, 0
        while not stop.wait(interval):
            now = time.perf_counter()
            state = read_state()
            samples.append({"t_s": round(now - started, 2), "fps": round((frames[0] - last_frames) / (now - last_time), 2),
                            **state, "throttling": throttling(state)})
            last_time, last_frames = now, frames[0]

    def count(_result) -> None:
        frames[0] += 1

    thread = threading.Thread(target=sampler, name="thermal sampler", daemon=True)
    thread.start()
    try:
        while time.perf_counter() - started < seconds:
            left = seconds - (time.perf_counter() - started)
            with VideoFileSource(video) as source:
                run(source, segmenter, PipelineOptions(duration=left), progress=False, on_frame=count)
    finally:
        stop.set()
        thread.join()
    write_text(out_jsonl, "".join(json.dumps(sample) + "\n" for sample in samples))
    chart(samples, out_png, f"{model.name} sustained on {video.name}")
    throttled = [s for s in samples if s["throttling"]]
    fps = [s["fps"] for s in samples]
    return {"model": model.name, "seconds": round(time.perf_counter() - started, 1), "samples": len(samples),
            "fps_first": fps[0] if fps else None, "fps_last": fps[-1] if fps else None,
            "throttled_samples": len(throttled), "first_throttled_s": throttled[0]["t_s"] if throttled else None,
            "jsonl": str(out_jsonl), "png": str(out_png)}


def chart(samples: list[dict], out: Path, title: str) -> None:
    """FPS (blue) and temperature (red, when present) over time, as a PNG drawn with OpenCV."""
    from edgeseg.sinks import write_image

    width, height, margin = 900, 360, 50
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, title, (margin, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if samples:
        span = max(samples[-1]["t_s"], 1e-6)

        def plot(key: str, colour: tuple[int, int, int], label: str, row: int) -> None:
            points = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
            if not points:
                cv2.putText(image, f"{label}: absent on this machine", (margin, height - 30 + 14 * row),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)
                return
            top = max(v for _, v in points) * 1.1 or 1.0
            xy = np.array([(margin + (width - 2 * margin) * t / span, height - 2 * margin - (height - 3 * margin) * v / top)
                           for t, v in points], np.int32)
            cv2.polylines(image, [xy], False, colour, 2, cv2.LINE_AA)
            cv2.putText(image, f"{label} (max {top / 1.1:.1f})", (margin, height - 30 + 14 * row),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)

        plot("fps", (180, 90, 20), "FPS", 0)
        plot("temp_c", (30, 30, 200), "temperature °C".replace("°", " deg"), 1)
        for sample in samples:
            if sample["throttling"]:
                x = int(margin + (width - 2 * margin) * sample["t_s"] / span)
                cv2.line(image, (x, 40), (x, height - 2 * margin), (0, 140, 255), 1)
    write_image(out, image)
