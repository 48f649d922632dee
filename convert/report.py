"""Conversion report: JSON for machines, Markdown for people."""

from __future__ import annotations

import json
from pathlib import Path

from edgeseg.atomic import write_bytes


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_markdown(report: dict) -> str:
    lines = [
        f"# Conversion report: {report['name']}",
        "",
        f"Source: `{report['source']['path']}` (sha256 `{report['source']['sha256'][:12]}…`), input"
        f" {report['source']['height']}x{report['source']['width']} (HxW), {report['source']['num_classes']} classes.",
        f"Calibration: {report['calibration'].get('count', 0)} images from `{report['calibration'].get('folder', '-')}`"
        f" (seed {report['calibration'].get('seed', '-')}). Evaluation: {report['evaluation']['images']} images of"
        f" `{report['evaluation']['folder']}` split `{report['evaluation'].get('split', '-')}` (never used for"
        " calibration).",
        *([f"Unseen clips: {report['unseen_clips']['frames']} evenly spaced frames of each of"
           f" {', '.join(f'`{Path(v).name}`' for v in report['unseen_clips']['videos'])} (no annotations: only the"
           " agreement with Keras is measured there, and gated like the agreement above)."]
          if report.get("unseen_clips") else []),
        f"Thresholds: agreement ≥ {_pct(report['thresholds']['min_agreement'])},"
        f" mIoU drop ≤ {report['thresholds']['max_miou_drop'] * 100:.1f} points.",
        "",
        "| model | size | I/O | agreement with Keras | agreement, unseen clips | mIoU Keras | mIoU TFLite | drop (points) | mean / max prob. error | latency (ms, verify loop) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["models"]:
        v = row["verification"]
        lines.append(
            f"| `{Path(row['path']).name}` | {row['size_bytes'] / 1e6:.2f} MB | {v['input_dtype']} → {v['output_dtype']}"
            f" ({v['output_kind']}) | {_pct(v['agreement'])} | {_pct(v.get('agreement_unseen'))}"
            f" | {_num(v['miou_keras'])} | {_num(v['miou_tflite'])}"
            f" | {100 * v['miou_drop']:+.2f} | {_num(v['prob_error_mean'], 5)} / {_num(v['prob_error_max'], 3)}"
            f" | {_num(v['latency_ms_median'], 2)} | {'pass' if row['passed'] else 'FAIL: ' + row['reason']} |"
        )
    for row in report["models"]:
        v = row["verification"]
        if v.get("grid_ceiling") is not None:
            lines += ["", f"Output grid of `{Path(row['path']).name}`: step {v['output_step']:.4g}; the Keras logits"
                      f" themselves, rounded to it, keep {_pct(v['grid_ceiling'])} of the argmaxes (the best any"
                      f" calibration could reach); {_pct(v['below_step_share'])} of pixels have their top two"
                      " classes closer than one step."]
    for row in report["models"]:
        if row.get("worst_layers"):
            lines += ["", f"Layers that lose most in `{Path(row['path']).name}` (RMSE / quantisation step):", ""]
            lines += [f"- `{r.get('layer', r['tensor'])}`: {r['rmse_over_scale']:.3f}" for r in row["worst_layers"]]
    if report.get("argmax"):
        a = report["argmax"]
        lines += ["", "ArgMax inside the model (`--argmax`):",
                  f"invoke {a['invoke_ms_with_argmax']:.2f} ms with ArgMax vs {a['invoke_ms_scores']:.2f} ms"
                  f" without, plus {a['host_argmax_ms']:.2f} ms of host-side argmax that it saves."]
    if report.get("edgetpu"):
        lines += ["", f"Edge TPU: {report['edgetpu']}"]
    shares = (report.get("unseen_clips") or {}).get("keras_class_shares")
    if shares:
        lines += ["", "What the Keras model calls the unseen clips (share of pixels; agreement cannot show a"
                  " scene both models get wrong, this can; compare candidate models here):", ""]
        lines += [f"- `{clip}`: " + ", ".join(f"{name} {100 * share:.0f} %" for name, share in top.items())
                  for clip, top in shares.items()]
    per_class = {r["path"]: r["verification"]["per_class_iou"] for r in report["models"]}
    for path, table in per_class.items():
        lines += ["", f"Per-class IoU, `{Path(path).name}`:", "", "| class | Keras | TFLite | diff |", "|---|---|---|---|"]
        lines += [f"| {name} | {_num(c['keras'], 3)} | {_num(c['tflite'], 3)} | {_num(c['diff'], 3)} |"
                  for name, c in table.items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    json_path, md_path = out_dir / f"{name}_report.json", out_dir / f"{name}_report.md"
    write_bytes(json_path, json.dumps(report, indent=1).encode())
    write_bytes(md_path, to_markdown(report).encode())
    return json_path, md_path
