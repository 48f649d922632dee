"""Latency measurements: TFLite models per thread count, the Keras baselines, the whole pipeline."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import InputError
from edgeseg.extras import load_keras_model
from edgeseg.segmenter import Segmenter, SegmenterOptions

from .roofline import model_ops
from .timing import time_calls


def family(model: str | Path) -> str:
    """The Keras model a benchmarked file comes from (the one rule for it): ``camvid_lite_int8.tflite``
    and ``camvid_lite.keras`` are both ``camvid_lite``; a run's ``runs/x/best.keras`` (or last.keras)
    is ``x``. Takes a path or a row's model name."""
    path = Path(str(model).split(" (")[0])
    if path.name in ("best.keras", "last.keras") and path.parent.name:
        return path.parent.name
    name = path.name
    for suffix in (".tflite", "_edgetpu", ".failed", ".keras"):
        name = name.removesuffix(suffix)
    for mode in ("_int8", "_float16", "_float32", "_int16x8"):
        name = name.removesuffix(mode)
    return name


def speedups(rows: list[dict]) -> list[str]:
    """Speed-ups measured in one run, per model family (the TFLite exports of one Keras model):
    int8 vs Keras predict, Keras tf.function, TFLite float32 and float16."""
    out = []
    for name in dict.fromkeys(row.get("family") or family(row["model"]) for row in rows):
        members = [r for r in rows if (r.get("family") or family(r["model"])) == name]

        def best(predicate, members=members):
            candidates = [r for r in members if predicate(r)]
            return min(candidates, key=lambda r: r["p50_ms"]) if candidates else None

        int8 = best(lambda r: r.get("quantization") == "int8")
        for label, other in (("Keras predict", best(lambda r: "predict" in r["model"])),
                             ("Keras tf.function", best(lambda r: "tf.function" in r["model"])),
                             ("TFLite float32", best(lambda r: r.get("quantization") == "float32")),
                             ("TFLite float16", best(lambda r: r.get("quantization") == "float16"))):
            if int8 and other:
                ratio = other["p50_ms"] / int8["p50_ms"]
                verdict = f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"
                out.append(f"{name}: int8 is {verdict} {label}"
                           f" ({int8['p50_ms']:.2f} vs {other['p50_ms']:.2f} ms p50)")
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarize(times_ms: list[float]) -> dict:
    values = np.asarray(times_ms, dtype=np.float64)
    return {
        "mean_ms": float(values.mean()), "std_ms": float(values.std()),
        "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)), "fps": float(1000.0 / values.mean()),
    }


def real_frame(video: Path | None) -> np.ndarray:
    """A real frame (seeded choice: the 10th frame) of the given clip or of the demo clip."""
    from edgeseg.bundled import DEMO_CLIP

    path = video or DEMO_CLIP
    if not path.is_file():
        raise InputError(f"video {path} does not exist; pass a playable --video")
    capture = cv2.VideoCapture(str(path))
    frame = None
    for _ in range(10):
        ok, candidate = capture.read()
        if not ok:
            break
        frame = candidate
    capture.release()
    if frame is None:
        raise InputError(f"cannot read frames from {path}; pass a playable --video")
    return frame


def bench_tflite(model: Path, threads: int, frame: np.ndarray, runs: int, warmup: int) -> dict:
    """Init, first-run and steady-state latency of invoke() (preprocessing excluded)."""
    started = time.perf_counter()
    seg = Segmenter(SegmenterOptions(model=model, threads=threads))
    init_ms = (time.perf_counter() - started) * 1000
    interpreter = seg.interpreter  # timing invoke alone
    tensor = seg.prepare(frame)
    index = seg.input_index
    started = time.perf_counter()
    interpreter.set_tensor(index, tensor)
    interpreter.invoke()
    first_ms = (time.perf_counter() - started) * 1000
    times = time_calls(interpreter.invoke, runs, warmup)
    info = seg.info
    quant = "int8" if info.input.dtype in ("int8", "uint8") else ("float16" if "float16" in model.name else "float32")
    provenance_quant = info.provenance.get("quantization")
    result = {
        "model": model.name, "family": family(model.name), "size_mb": round(model.stat().st_size / 1e6, 3),
        "input": f"{info.input.shape[2]}x{info.input.shape[1]}", "io": f"{info.input.dtype}/{info.output.dtype}",
        "quantization": provenance_quant or quant, "delegate": "edgetpu" if info.edgetpu else "xnnpack",
        "threads": threads, "init_ms": init_ms, "first_ms": first_ms, "runs": runs,
        **summarize(times), "peak_rss_mb": peak_rss_mb(), "gops": model_ops(model.read_bytes()) / 1e9,
    }
    result["achieved_gops_per_s"] = result["gops"] / (result["p50_ms"] / 1000)
    return result


def bench_pipeline(model: Path, threads: int, video: Path, max_frames: int = 300) -> dict:
    """Whole pipeline on a real clip (decode -> infer -> overlay -> encode) vs inference alone,
    and the same pipeline with inference taken out (the host stages' own ceiling).

    Inference-only is measured first, alone, with the same interpreter and threads on the clip's
    own frames (nothing else running); the ratio divides the pipeline's FPS by it, so host work
    that is not hidden behind inference shows up as a ratio below 1.

    The pipeline's CPU time per frame (every thread) bounds it: with `cores` cores it cannot run
    faster than ``cores * 1000 / cpu_ms_per_frame`` FPS, so the ratio cannot exceed
    ``ratio_ceiling = cores * inference ms / cpu_ms_per_frame`` (capped at 1). A ratio close to
    its ceiling means the threads hide all they can; a low ceiling means the device has too few
    cores for the host work next to this model, however it is scheduled.
    """
    import tempfile

    from edgeseg.pipeline import PipelineOptions, run
    from edgeseg.sinks import VideoSink
    from edgeseg.sources import VideoFileSource

    seg = Segmenter(SegmenterOptions(model=model, threads=threads))
    with VideoFileSource(video) as source:
        tensors = []
        while len(tensors) < 30:
            frame = source.read()
            if frame is None:
                break
            tensors.append(seg.prepare(frame))
    if not tensors:
        raise InputError(f"{video} has no frames; pass a playable --video")
    for tensor in tensors[:10]:  # warm-up
        seg.invoke(tensor)
    alone = []
    for _ in range(max(1, 150 // len(tensors))):
        for tensor in tensors:
            seg.invoke(tensor)
            alone.append(seg.last_inference_ms)
    alone_fps = 1000.0 / float(np.median(alone))

    def whole_pipeline(segmenter):
        with tempfile.TemporaryDirectory() as tmp, VideoFileSource(video) as source:
            first = source.read()
            sink = VideoSink(Path(tmp) / "bench.mp4", source.fps, (first.shape[1], first.shape[0]))
            sink.write(first)
            return run(source, segmenter, PipelineOptions(max_frames=max_frames), sink=sink, progress=False)

    stats = whole_pipeline(seg)
    host = whole_pipeline(_HostOnly(seg, [seg.invoke(tensor) for tensor in tensors]))
    one_thread = one_thread_cpu_ms(seg, video, stats.frames)
    cores = os.cpu_count() or 1  # as the device fingerprint and the pipeline's thread layout count them
    ceiling = min(1.0, cores * float(np.median(alone)) / stats.cpu_ms_per_frame) if stats.cpu_ms_per_frame else 1.0
    return {"model": model.name, "threads": threads, "video": video.name, "frames": stats.frames,
            "end_to_end_fps": stats.fps, "inference_only_fps": alone_fps,
            "ratio": stats.fps / alone_fps, "cores": cores, "cpu_ms_per_frame": stats.cpu_ms_per_frame,
            "ratio_ceiling": ceiling, "one_thread_cpu_ms_per_frame": one_thread,
            "inference_only_p50_ms": float(np.median(alone)),
            "in_pipeline_inference_p50_ms": stats.inference_p50_ms,
            "host_stage_p50_ms": {name: round(ms, 3) for name, ms in stats.stage_ms.items()},
            "host_only_fps": host.fps}


def one_thread_cpu_ms(segmenter: Segmenter, video: Path, max_frames: int) -> float:
    """CPU ms per frame of the pipeline's stages run one after another on one thread (decode,
    prepare, invoke, argmax, overlay with legend and HUD, encode) over the frames the pipeline ran:
    the work the pipeline's threads share out. Compared with the pipeline's own CPU per frame it
    shows what threading costs."""
    import tempfile

    from edgeseg.overlay import render
    from edgeseg.pipeline import PipelineOptions
    from edgeseg.sinks import VideoSink
    from edgeseg.sources import VideoFileSource

    options = PipelineOptions()
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in the pipeline
    try:
        with tempfile.TemporaryDirectory() as tmp, VideoFileSource(video) as source:
            first = source.read()
            sink = VideoSink(Path(tmp) / "one_thread.mp4", source.fps, (first.shape[1], first.shape[0]))
            sink.write(first)
            frames, started = 0, time.process_time()
            while frames < max_frames and (frame := source.read()) is not None:
                class_map = segmenter.segment(frame)
                hud = [f"{0.0:.1f} FPS", f"inference {segmenter.last_inference_ms:.1f} ms"]
                sink.write(render(frame, class_map, segmenter.labels, segmenter.palette_bgr, options.alpha,
                                  options.legend, hud))
                frames += 1
            cpu_seconds = time.process_time() - started
            sink.finish()
    finally:
        cv2.setNumThreads(previous_threads)
    return 1000.0 * cpu_seconds / max(frames, 1)


class _HostOnly:
    """The segmenter with inference taken out: invoke returns the model's real outputs for the
    clip's first frames, in turn, so the overlay changes from frame to frame as it does with the
    model (encoding a still overlay costs a quarter less). The pipeline's FPS with it is what
    decode, prepare, argmax, draw and encode alone allow on this device."""

    def __init__(self, segmenter: Segmenter, outputs: list[np.ndarray]) -> None:
        self._segmenter, self._outputs, self._next = segmenter, outputs, 0
        self.last_inference_ms = 0.0

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        raw = self._outputs[self._next % len(self._outputs)]
        self._next += 1
        return raw

    def __getattr__(self, name: str):
        return getattr(self._segmenter, name)


def bench_keras(keras_path: Path, frame: np.ndarray, runs: int, warmup: int) -> list[dict]:
    """The tutorial's way (model.predict per frame) and a compiled tf.function call."""
    from edgeseg.preprocess import InputSpec, preprocess
    from edgeseg.quiet import native_output_hidden

    with native_output_hidden():  # TensorFlow's start-up log lines
        import tensorflow as tf

        model = load_keras_model(keras_path)
    keras_family = family(keras_path)
    height, width = model.inputs[0].shape[1:3]
    batch = preprocess(frame, InputSpec(height, width), bgr=True)[np.newaxis]
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=False)
    rows = []
    for name, call in (("keras predict", lambda: model.predict(batch, verbose=0)),
                       ("keras tf.function", lambda: compiled(batch).numpy())):
        times = time_calls(call, runs, warmup)
        rows.append({"model": f"{keras_path.name} ({name})", "family": keras_family, "size_mb": round(keras_path.stat().st_size / 1e6, 3),
                     "input": f"{width}x{height}", "quantization": "float32 (Keras)", "delegate": "tensorflow",
                     "threads": None, "runs": runs, **summarize(times), "peak_rss_mb": peak_rss_mb()})
    return rows


def bench_realtime(model: Path, threads: int, video: Path, fps: float, seconds: float = 10.0) -> dict:
    """Latency as a camera user feels it: `video` delivered at `fps` like a camera (newest frame
    only), overlay drawn, for `seconds`. Latency is capture -> overlay ready; the target is a p50
    of at most the in-pipeline inference p50 plus one frame interval."""
    from edgeseg.pipeline import PipelineOptions, run
    from edgeseg.sources import open_realtime

    seg = Segmenter(SegmenterOptions(model=model, threads=threads))
    with open_realtime(video, fps=fps) as source:
        stats = run(source, seg, PipelineOptions(duration=seconds), progress=False)
    budget = stats.inference_p50_ms + 1000.0 / fps
    return {"model": model.name, "threads": threads, "video": video.name, "source_fps": fps,
            "frames": stats.frames, "dropped": stats.dropped, "fps": stats.fps,
            "inference_p50_ms": stats.inference_p50_ms, "latency_ms": stats.latency_ms,
            "latency_budget_ms": round(budget, 2), "latency_target_met": stats.latency_ms.get("p50", 1e9) <= budget}
