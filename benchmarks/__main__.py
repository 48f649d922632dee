"""Benchmark TFLite models on this device and keep the results per device.

    python -m benchmarks --model models/camvid_lite_int8.tflite --threads 1,2 --video ../shared/data/video/vtest.avi
    python -m benchmarks report        # regenerate the tables, the chart and the README section
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402

from edgeseg.bundled import BUNDLED_MODELS, resolve_model  # noqa: E402
from edgeseg.cliapp import make_app, run_app  # noqa: E402
from edgeseg.errors import EdgesegError, fail  # noqa: E402

app = make_app("Latency per model, thread count and device; `report` regenerates tables and charts.")
REPO = Path(__file__).resolve().parents[1]


def default_results_dir() -> Path:
    """benchmarks/results in a checkout; ./benchmark-results when installed (never site-packages)."""
    here = Path(__file__).resolve().parent / "results"
    if (REPO / "pyproject.toml").is_file() and here.is_dir():
        return here
    return Path.cwd() / "benchmark-results"



def parse_threads(given: list[str] | str) -> list[int]:
    """Thread counts from repeated and/or comma-separated --threads values ("1", "2" or "1,2")."""
    text = ",".join([given] if isinstance(given, str) else given)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--threads {text!r} is not a list of positive integers; use e.g. 1,2,4")
    return values


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    model: Optional[list[Path]] = typer.Option(None, "--model", "-m", help="TFLite model (repeat for several), or a"
                                               " bundled model's name: camvid_lite, camvid_lite_fast."),
    threads: list[str] = typer.Option(["1", "2"], "--threads", "-t", help="Inference thread counts: repeat"
                                      " (--threads 1 --threads 2) or separate with commas (--threads 1,2)."),
    runs: int = typer.Option(200, "--runs", help="Timed runs per model and thread count."),
    warmup: int = typer.Option(20, "--warmup", help="Untimed runs first."),
    video: Optional[Path] = typer.Option(None, "--video", help="Real clip: input frame and whole-pipeline FPS."),
    keras_model: Optional[list[Path]] = typer.Option(None, "--keras",
                                                     help="Keras model for the TensorFlow baselines (repeat for several;"
                                                          " paired with the TFLite models of the same name)."),
    as_json: bool = typer.Option(False, "--json", help="Print this run's record as JSON on stdout (the other"
                                 " lines go to stderr)."),
    device_name: Optional[str] = typer.Option(None, "--device-name", help="Name of this device in the tables."),
    save: bool = typer.Option(True, "--save/--no-save", help="Append to RESULTS/<device>.jsonl."),
    results_dir: Optional[Path] = typer.Option(None, "--output", "-o", "--results-dir", help="Where results go (default:"
                                               " benchmarks/results in a checkout, ./benchmark-results when installed)."),
    sustain: float = typer.Option(0.0, "--sustain", min=0.0, help="Also run the whole pipeline on --video for this"
                                  " many seconds, recording FPS, temperature and clock (JSONL + PNG); 0 = skip."),
    realtime: float = typer.Option(0.0, "--realtime", min=0.0, help="Also measure capture-to-overlay latency with"
                                   " --video delivered like a camera at this many FPS (e.g. 30); 0 = skip."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    model = [resolve_model(path) for path in model or []]
    thread_counts = check_options(model, threads, runs, warmup, keras_model, sustain, video)
    out = results_dir or default_results_dir()
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():  # --json: stdout = JSON
        record = run_all(model, thread_counts, video, runs, warmup, keras_model, device_name, sustain, realtime, out,
                         save)
    if as_json:
        typer.echo(json.dumps(record, indent=1))


def run_all(model, thread_counts, video, runs, warmup, keras_model, device_name, sustain, realtime, out,
            save) -> dict:
    """Every measurement the options ask for, printed as it comes, saved as one record (returned)."""
    from . import measure
    from .fingerprint import fingerprint, governor_warning
    from .report import append_results, generate
    from .roofline import measure_peak

    try:
        facts = fingerprint(device_name)
        warning = governor_warning(facts)
        if warning:
            typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
        peaks = measure_peak(max(thread_counts))
        rows, pipeline = measure_models(model, thread_counts, video, runs, warmup)
        latency = measure_latency(model, thread_counts[0], video, realtime) if realtime and video else []
        sustained = measure_sustained(model, thread_counts[0], video, sustain, facts, out) if sustain else []
        rows += measure_keras(keras_model or [], video, runs, warmup)
    except EdgesegError as exc:
        fail(str(exc), exc.exit_code)
    ratios = measure.speedups(rows)
    for text in ratios:
        typer.echo(text)
    typer.echo("peak: " + ", ".join(f"{k} {v:.1f} GOP/s" for k, v in peaks.items()))
    record = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "fingerprint": facts,
              "peak_gops": peaks, "rows": rows, "pipeline": pipeline, "ratios": ratios, "latency": latency,
              "sustained": sustained}
    if save:
        path = append_results(record, out)
        generate(out)
        typer.echo(f"appended to {path}; tables and chart regenerated")
    return record


def check_options(model, threads: list[str], runs: int, warmup: int, keras_model, sustain: float, video) -> list[int]:
    """The thread counts, after every option has been checked (one error line otherwise)."""
    if not model:
        fail("no model given; pass --model path/to/model.tflite (repeat --model for several)")
    try:
        thread_counts = parse_threads(threads)
    except ValueError as exc:
        fail(str(exc))
    if runs < 1 or warmup < 0:
        fail(f"--runs must be at least 1 and --warmup at least 0 (got {runs} and {warmup})")
    for path in model:
        if not path.is_file():
            fail(f"model {path} does not exist; pass the path of a .tflite file or a bundled model's name"
                 f" ({', '.join(BUNDLED_MODELS)})")
    for path in keras_model or []:
        if not path.exists():
            fail(f"Keras model {path} does not exist; pass RUN/best.keras or drop --keras")
    if sustain and video is None:
        fail("--sustain needs --video CLIP (the pipeline runs on it, looped)")
    return thread_counts


def measure_models(models: list[Path], thread_counts: list[int], video: Path | None, runs: int,
                   warmup: int) -> tuple[list[dict], list[dict]]:
    """Invoke latency per model and thread count (with temperature and clock around each), and the
    whole pipeline on `video`."""
    from . import measure, thermal

    frame = measure.real_frame(video)
    rows, pipeline = [], []
    for path in models:
        for count in thread_counts:
            before = thermal.read_state()
            row = measure.bench_tflite(path, count, frame, runs, warmup)
            row.update(thermal_before=before, thermal_after=thermal.read_state())
            rows.append(row)
            typer.echo(f"{row['model']:<34} x{count}: p50 {row['p50_ms']:.2f} ms, p90 {row['p90_ms']:.2f},"
                       f" p99 {row['p99_ms']:.2f}, {row['fps']:.1f} FPS, {row['gops']:.2f} GOP,"
                       f" {row['achieved_gops_per_s']:.1f} GOP/s")
        for count in thread_counts if video is not None else ():
            pipe = measure.bench_pipeline(path, count, video)
            pipeline.append(pipe)
            typer.echo(f"{pipe['model']:<34} x{count} pipeline on {pipe['video']}: {pipe['end_to_end_fps']:.1f}"
                       f" FPS end-to-end vs {pipe['inference_only_fps']:.1f} inference-only and"
                       f" {pipe['host_only_fps']:.1f} host-only"
                       f" (ratio {pipe['ratio']:.2f}, ceiling {pipe['ratio_ceiling']:.2f} at"
                       f" {pipe['cpu_ms_per_frame']:.2f} ms CPU/frame on {pipe['cores']} cores,"
                       f" {pipe['one_thread_cpu_ms_per_frame']:.2f} on one thread; in-pipeline inference p50"
                       f" {pipe['in_pipeline_inference_p50_ms']:.2f} ms, host stages p50 ms: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in pipe["host_stage_p50_ms"].items()) + ")")
    return rows, pipeline


def measure_latency(models: list[Path], threads: int, video: Path, fps: float) -> list[dict]:
    """Capture-to-overlay latency with `video` delivered like a camera at `fps`."""
    from . import measure

    results = []
    for path in models:
        result = measure.bench_realtime(path, threads, video, fps)
        results.append(result)
        lat = result["latency_ms"]
        typer.echo(f"{result['model']:<34} x{result['threads']} live at {fps:g} FPS: latency p50"
                   f" {lat.get('p50', 0):.1f} p90 {lat.get('p90', 0):.1f} p99 {lat.get('p99', 0):.1f} ms"
                   f" (target p50 <= inference {result['inference_p50_ms']:.1f} + one frame"
                   f" {1000 / fps:.1f} = {result['latency_budget_ms']:.1f} ms:"
                   f" {'met' if result['latency_target_met'] else 'NOT met'}), {result['fps']:.1f} FPS,"
                   f" {result['dropped']} dropped")
    return results


def measure_sustained(models: list[Path], threads: int, video: Path, seconds: float, facts: dict,
                      out: Path) -> list[dict]:
    """The pipeline under sustained load, FPS / temperature / clock over time (JSONL + PNG in `out`)."""
    from . import thermal
    from .fingerprint import slug

    results = []
    for path in models:
        name = f"sustain-{slug(facts['device'])}-{path.stem}"
        result = thermal.sustain(path, video, seconds, threads, out / f"{name}.jsonl", out / f"{name}.png")
        results.append(result)
        flag = (f"THROTTLED in {result['throttled_samples']} of {result['samples']} samples (first at"
                f" {result['first_throttled_s']} s)") if result["throttled_samples"] else "no throttling seen"
        typer.echo(f"{result['model']:<34} sustained {result['seconds']} s: FPS {result['fps_first']} at start,"
                   f" {result['fps_last']} at the end; {flag}; now {thermal.describe(thermal.read_state())};"
                   f" {result['jsonl']}, {result['png']}")
    return results


def measure_keras(keras_models: list[Path], video: Path | None, runs: int, warmup: int) -> list[dict]:
    """Keras baselines (TensorFlow predict and a direct call) on the same frame."""
    from . import measure

    rows = []
    frame = measure.real_frame(video) if keras_models else None
    for path in keras_models:
        for row in measure.bench_keras(path, frame, max(10, runs // 10), min(3, warmup)):
            rows.append(row)
            typer.echo(f"{row['model']:<34}: p50 {row['p50_ms']:.2f} ms, {row['fps']:.1f} FPS")
    return rows


@app.command()
def report(results_dir: Optional[Path] = typer.Option(None, "--output", "-o", "--results-dir",
                                                     help="Folder of <device>.jsonl files.")
           ) -> None:
    """Regenerate RESULTS/README.md and RESULTS/latency.png from the stored results."""
    from .report import generate

    typer.echo(generate(results_dir or default_results_dir()))


if __name__ == "__main__":
    sys.exit(run_app(app))
