"""Results kept per device (results/<device>.jsonl), a generated Markdown table and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edgeseg.atomic import write_text
from edgeseg.sinks import write_image

RESULTS = Path(__file__).parent / "results"


def append_results(record: dict, results_dir: Path = RESULTS) -> Path:
    """Append one run (fingerprint + rows) as a JSON line to results/<device slug>.jsonl."""
    from .fingerprint import slug

    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{slug(record['fingerprint']['device'])}.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return path


def load_latest(results_dir: Path = RESULTS) -> dict[str, dict]:
    """The newest run of every device."""
    latest = {}
    for path in sorted(results_dir.glob("*.jsonl")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        record = json.loads(lines[-1]) if lines else {}
        if "fingerprint" in record and "rows" in record:  # training-*.jsonl (train throughput) is another schema
            latest[path.stem] = record
    return latest


def accuracy_for(model_name: str, reports_dir: Path, input_wxh: str | None = None) -> float | None:
    """int8/float16 mIoU from convert's report beside the model (None when unknown). With
    `input_wxh` (a benchmark row's "320x256") the report must be of a model with that input, so an
    older row of a since-replaced model of the same file name gets no figure rather than a wrong one."""
    for report in reports_dir.glob("*_report.json"):
        data = json.loads(report.read_text())
        source = data.get("source", {})
        if input_wxh is not None and f"{source.get('width')}x{source.get('height')}" != input_wxh:
            continue
        for row in data.get("models", []):
            if Path(row["path"]).name == model_name:
                return row["verification"]["miou_tflite"]
    return None


def markdown_table(latest: dict[str, dict], reports_dir: Path) -> str:
    lines = ["| device | model | quantization | threads | p50 ms | p90 ms | FPS | size MB | mIoU (its convert report) | GOP/s (% of peak) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for record in latest.values():
        device = record["fingerprint"]["device"]
        peaks = record.get("peak_gops", {})
        for row in record["rows"]:
            miou = accuracy_for(row["model"], reports_dir, row.get("input"))
            peak = peaks.get("int8" if row.get("quantization") == "int8" else "float32")
            roof = "-"
            if row.get("achieved_gops_per_s") and peak:
                roof = f"{row['achieved_gops_per_s']:.1f} ({100 * row['achieved_gops_per_s'] / peak:.0f}%)"
            label = row["model"]
            if label.startswith("best.keras") and row.get("family"):
                label = f"{row['family']}/{label}"  # runs/<family>/best.keras
            lines.append(f"| {device} | {label} | {row.get('quantization', '-')} | {row.get('threads') or '-'}"
                         f" | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['fps']:.1f} | {row['size_mb']:.2f}"
                         f" | {'-' if miou is None else f'{miou:.3f}'} | {roof} |")
        for pipe in record.get("pipeline", []):
            lines.append(f"| {device} | {pipe['model']}, whole pipeline on {pipe['video']} | | {pipe['threads']} | | |"
                         f" {pipe['end_to_end_fps']:.1f} ({100 * pipe['ratio']:.0f}% of {pipe['inference_only_fps']:.1f}"
                         " inference-only"
                         + (f", ceiling {100 * pipe['ratio_ceiling']:.0f}% at {pipe['cpu_ms_per_frame']:.1f} ms CPU/frame"
                            f" on {pipe['cores']} cores" if "ratio_ceiling" in pipe else "")
                         + (f" ({pipe['one_thread_cpu_ms_per_frame']:.1f} on one thread)"
                            if "one_thread_cpu_ms_per_frame" in pipe else "")
                         + (f"; host alone {pipe['host_only_fps']:.0f}" if "host_only_fps" in pipe else "")
                         + ") | | | |")
    from .measure import speedups

    lines += ["", "Devices:", ""]
    for record in latest.values():
        f = record["fingerprint"]
        simd = f.get("simd")
        lines.append(f"- {f['device']}: {f['cpu']}, {f['cores']} cores, {f['arch']}"
                     + (f", SIMD {' '.join(simd) or '-'}" if simd is not None else "")
                     + f", {f['runtime']}, Python {f['python']}")
    notes = [f"- {record['fingerprint']['device']}: {text}" for record in latest.values()
             for text in speedups(record["rows"])]
    if notes:
        lines += ["", "Speed-ups measured within one run:", "", *notes]
    return "\n".join(lines) + "\n"


def chart(latest: dict[str, dict], out: Path) -> None:
    """Horizontal bars: p50 latency per model and thread count, grouped by device (OpenCV only)."""
    bars = [(f"{r['fingerprint']['device'][:18]} | {row['model'][:34]} x{row.get('threads') or '-'}", row["p50_ms"])
            for r in latest.values() for row in r["rows"]]
    if not bars:
        return
    row_h, label_w, plot_w = 26, 470, 420
    height = row_h * len(bars) + 60
    image = np.full((height, label_w + plot_w + 80, 3), 255, np.uint8)
    longest = max(v for _, v in bars)
    cv2.putText(image, "p50 latency per frame (ms, lower is better)", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (0, 0, 0), 1, cv2.LINE_AA)
    for i, (label, value) in enumerate(bars):
        y = 44 + i * row_h
        width = max(1, int(plot_w * value / longest))
        colour = (180, 120, 60) if "keras" not in label else (90, 90, 200)
        cv2.rectangle(image, (label_w, y), (label_w + width, y + row_h - 8), colour, -1)
        cv2.putText(image, label, (8, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, f"{value:.1f}", (label_w + width + 6, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 0, 0), 1, cv2.LINE_AA)
    write_image(out, image)


def generate(results_dir: Path = RESULTS, reports_dir: Path | None = None) -> str:
    """Write results/README.md and results/latency.png from every device's newest run."""
    latest = load_latest(results_dir)
    reports_dir = reports_dir or results_dir.parent.parent / "models"
    table = markdown_table(latest, reports_dir)
    write_text(results_dir / "README.md", "# Benchmark results (generated by `python -m benchmarks report`)\n\n"
               + table + "\n![latency chart](latency.png)\n")
    chart(latest, results_dir / "latency.png")
    return table
