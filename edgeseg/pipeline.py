"""capture -> infer -> draw -> write, threaded so host work overlaps inference.

The caller's thread invokes the interpreter (`_infer_loop`); for live sources it also prepares
each frame, and it takes over the argmax on frames where it is the less busy side (`_Balancer`).
Host work runs beside it (`_Host`): decoding a file's frames ahead and preparing the model input
(resize, colour order, normalise/quantise), then the argmax (or smoothed argmax), the overlay, the
encoding of the output and the `on_frame` consumers. On 2-core devices one host thread does all of
it; with more cores a reader and a drawer each get a thread (`separate_reader`). Live sources have
their own newest-frame-only capture thread instead of a reader, so nothing stale queues up. At most
QUEUE_FRAMES frames are in flight. The window, when shown, is refreshed from the caller's thread
(GUI toolkits want one thread). docs/architecture.md draws the whole path."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from edgeseg.errors import EdgesegError, StreamError, raise_if_interrupted
from edgeseg.overlay import class_shares, render
from edgeseg.segmenter import Segmenter
from edgeseg.sinks import VideoSink
from edgeseg.sources import FrameSource

QUEUE_FRAMES = 4  # frames decoded ahead / waiting to be drawn; small to bound memory and latency
# Per-frame timings kept for the end-of-run percentiles: the newest this many frames (an hour at
# 30 FPS), so a camera left running for days does not grow memory without bound.
STATS_WINDOW = 100_000
_END = object()
# Inference threads when --threads is not given (`_ThreadTuner`): the run starts on one, times it
# over at least AUTO_WINDOW frames and AUTO_SECONDS, then all cores (at most AUTO_MAX_THREADS) the
# same way, and keeps the more threads only when they deliver AUTO_GAIN times the frames per second.
# Each timing starts AUTO_SKIP frames after its interpreter was built (XNNPACK sets up on the first
# invokes); 30-frame windows alone varied by +-10 % here. Measured, because it depends on the
# model's cost against the host work per frame: on 2 cores the three-network bundled model runs
# about 55 % faster end to end on two threads, the single network 10-25 % faster on AVX2-only x86
# and 25 % slower on a VNNI CPU (docs/performance.md).
AUTO_SKIP = 8
AUTO_WINDOW = 30
AUTO_SECONDS = 2.0
AUTO_MAX_THREADS = 4
AUTO_GAIN = 1.05


def separate_reader() -> bool:
    """Whether video files get a reader thread of their own, apart from the drawer.

    With 2 cores, one runs inference and one does all host work, and a third busy thread only makes
    the two preempt each other (docs/performance.md). With more cores, decoding and drawing each get
    a thread.
    """
    return (os.cpu_count() or 1) > 2


@dataclass(frozen=True)
class PipelineOptions:
    """Options of one pipeline run (1:1 with the CLI flags).

    Attributes:
        alpha: mask opacity in the overlay.
        legend: draw the legend of present classes.
        hud: draw FPS and inference time.
        smooth: temporal smoothing factor 0..1 (0 = off): weight of the past in an exponential
            moving average of the class scores.
        max_frames: stop after this many frames (0 = no limit).
        duration: stop after this many seconds (0 = no limit).
    """

    alpha: float = 0.5
    legend: bool = True
    hud: bool = True
    smooth: float = 0.0
    max_frames: int = 0
    duration: float = 0.0


@dataclass
class FrameResult:
    """One processed frame, as `run` hands it to `on_frame` (on the drawing thread).

    Attributes:
        index: 0-based count of processed frames.
        captured: wall-clock time (time.time()) the frame was captured or decoded.
        latency_ms: capture -> overlay ready (and written, when there is a sink).
        inference_ms: the model's invoke time.
        class_map: class indices at model resolution (uint8).
        image: the overlaid BGR frame.
        labels: the model's labels.
        frame: the source's BGR frame.
        raw: the model's raw output for the frame (before `--smooth`; `Segmenter.probabilities` reads it).
    """

    index: int
    captured: float
    latency_ms: float
    inference_ms: float
    class_map: np.ndarray
    image: np.ndarray
    labels: object
    frame: np.ndarray | None = None
    raw: np.ndarray | None = None
    _shares: dict[str, float] | None = field(default=None, repr=False)

    def shares(self) -> dict[str, float]:
        """Share of the labelled pixels (class 0 left out) per class present, by name (computed
        once, however many consumers ask)."""
        if self._shares is None:
            self._shares = label_shares(self.class_map, self.labels)
        return self._shares


def label_shares(class_map: np.ndarray, labels) -> dict[str, float]:
    """{class name: fraction of the labelled pixels} for the classes present; sums to 1."""
    counts = class_shares(class_map, labels.num_classes)
    counts[0] = 0.0
    total = counts.sum()
    if total <= 0:
        return {}
    return {labels.names[i]: round(float(counts[i] / total), 6) for i in np.flatnonzero(counts)}


@dataclass(frozen=True)
class RunStats:
    """What a run did and how fast."""

    frames: int
    dropped: int
    seconds: float
    fps: float
    inference_p50_ms: float
    inference_p90_ms: float
    inference_fps: float
    flicker: float
    stage_ms: dict[str, float] = field(default_factory=dict)
    argmax_on_inference_thread: int = 0  # frames whose argmax the inference thread took over
    cpu_ms_per_frame: float = 0.0  # CPU time of the whole process (every thread) per frame
    stopped_by: str = ""  # "SIGINT" / "SIGTERM" when a live run was stopped by a signal (its normal end)
    latency_ms: dict[str, float] = field(default_factory=dict)  # capture -> overlay delivered: p50/p90/p99
    threads: str = ""  # the inference threads and, when chosen by the run, the rates that chose them

    def summary(self) -> str:
        stages = ", ".join(f"{name} {ms:.2f}" for name, ms in self.stage_ms.items())
        return (f"frames {self.frames}, dropped {self.dropped}, end-to-end {self.fps:.1f} FPS"
                f" ({self.seconds:.2f} s), inference p50 {self.inference_p50_ms:.2f} ms"
                f" p90 {self.inference_p90_ms:.2f} ms (limit {self.inference_fps:.1f} FPS),"
                f" flicker {100 * self.flicker:.2f}% of pixels/frame"
                + (f"; CPU {self.cpu_ms_per_frame:.2f} ms/frame over all threads" if self.cpu_ms_per_frame else "")
                + (f"; host stages p50 ms: {stages}" if stages else "")
                + (f"; argmax on the inference thread for {self.argmax_on_inference_thread} frames"
                   if self.argmax_on_inference_thread else "")
                + (f"; latency (capture to overlay) p50 {self.latency_ms['p50']:.1f} p90 {self.latency_ms['p90']:.1f}"
                   f" p99 {self.latency_ms['p99']:.1f} ms" if self.latency_ms else "")
                + (f"; inference threads {self.threads}" if self.threads else "")
                + (f"; stopped by {self.stopped_by}" if self.stopped_by else ""))


class TemporalSmoother:
    """Exponential moving average of class scores across frames, to steady flickering labels."""

    def __init__(self, segmenter: Segmenter, factor: float) -> None:
        if not 0.0 <= factor < 1.0:
            raise EdgesegError(f"--smooth must be in [0, 1), got {factor}; try 0.5")
        if factor and segmenter.info.output_kind == "class_map":
            raise EdgesegError("--smooth needs a model that outputs class scores; this one outputs an ArgMax"
                               " class map (export without --argmax)")
        self.segmenter, self.factor = segmenter, factor
        self._state: np.ndarray | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if not self.factor:
            return self.segmenter.classes(raw)
        current = self.segmenter.scores(raw)
        if self._state is None:
            self._state = current.copy()
        else:
            self._state *= self.factor
            self._state += (1.0 - self.factor) * current
        return np.argmax(self._state, axis=-1).astype(np.uint8)


def run(
    source: FrameSource,
    segmenter: Segmenter,
    options: PipelineOptions,
    sink: VideoSink | None = None,
    show: Callable[[np.ndarray], bool] | None = None,
    progress: bool = True,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> RunStats:
    """Segment every frame of `source` (or the newest ones, for live sources).

    Args:
        source: an open frame source.
        segmenter: the model.
        options: overlay and stopping options.
        sink: where overlaid frames go (None = nowhere).
        show: called with each overlaid frame from this thread; returns False to stop.
        progress: show a progress bar for sources of known length.
        on_frame: called on the drawing thread with each processed frame, in order (live page,
            per-frame data, triggers, the Python API); it should return quickly.

    Ctrl-C (KeyboardInterrupt, or `Interrupted` for SIGTERM) ends a *live* run normally: the frames
    so far are drawn and the sink finished (`RunStats.stopped_by` says so). A file run re-raises
    it after removing the sink's partial file.

    Raises:
        StreamError: the source ended early (the sink is still finished with the frames read).
        EdgesegError: anything else; the sink's partial file is removed.
        KeyboardInterrupt: a file run was interrupted.
    """
    # Host stages already run on their own threads beside the interpreter's; OpenCV's internal
    # thread pool on top of that oversubscribes small CPUs. Restored afterwards: it is process-wide.
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return _run(source, segmenter, options, sink, show, progress, on_frame)
    finally:
        cv2.setNumThreads(previous_threads)


class _Timings:
    """Per-frame measurements of one run, in bounded windows (a camera left running for days must
    not grow memory); `to_stats` turns them into RunStats."""

    STAGES = ("decode", "prepare", "argmax", "draw", "encode")

    def __init__(self) -> None:
        self.inference: deque[float] = deque(maxlen=STATS_WINDOW)
        self.latency: deque[float] = deque(maxlen=STATS_WINDOW)
        self.changed: deque[float] = deque(maxlen=STATS_WINDOW)  # share of pixels whose class changed
        # Live sources decode on their own capture thread and prepare on the inference thread.
        self.stage_ms = {name: deque(maxlen=STATS_WINDOW) for name in self.STAGES}
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def stage(self, name: str, ms: float) -> None:
        self.stage_ms[name].append(ms)

    def to_stats(self, frames: int, dropped: int, argmax_moved: int, stopped_by: str, threads: str) -> RunStats:
        seconds, cpu_seconds = time.perf_counter() - self.started, time.process_time() - self.cpu_started
        times = np.asarray(self.inference) if self.inference else np.zeros(1)
        return RunStats(
            frames=frames, dropped=dropped, seconds=seconds, fps=frames / seconds if seconds > 0 else 0.0,
            inference_p50_ms=float(np.percentile(times, 50)), inference_p90_ms=float(np.percentile(times, 90)),
            inference_fps=1000.0 / float(times.mean()) if times.mean() > 0 else 0.0,
            flicker=float(np.mean(self.changed)) if self.changed else 0.0,
            stage_ms={name: float(np.median(values)) for name, values in self.stage_ms.items() if values},
            argmax_on_inference_thread=argmax_moved,
            cpu_ms_per_frame=1000.0 * cpu_seconds / frames if frames else 0.0, stopped_by=stopped_by,
            latency_ms=percentiles(self.latency), threads=threads,
        )


class _ThreadTuner:
    """Picks the inference threads on the stream itself when the caller left them open.

    One thread leaves the other cores to the host work (decode, prepare, draw, encode); more
    threads make inference faster but take those cores from it. Which wins depends on the model's
    cost against the host work per frame on this device and this source, so the run measures both:
    frames per second on one thread, then on all cores (up to AUTO_MAX_THREADS), each over at
    least AUTO_WINDOW frames and AUTO_SECONDS, and keeps the second only if it is AUTO_GAIN times
    faster. The interpreter is rebuilt between frames on the inference thread (about a model
    load's time, once). A run that ends before both are timed leaves the choice to the next one.
    """

    def __init__(self, segmenter: Segmenter, cores: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.segmenter, self.clock = segmenter, clock
        self.many = min(cores, AUTO_MAX_THREADS)
        self.earlier = segmenter.threads  # set by the caller or by an earlier run of this segmenter
        self.active = self.earlier is None and not segmenter.info.edgetpu and self.many > 1
        self.rates: dict[int, float] = {}  # threads -> frames per second over its window
        self._window: tuple[int, float] | None = None  # (frames inferred, time) at the window's start
        self._skip_until = AUTO_SKIP  # the next window starts after this many frames (warm-up)

    def after_frame(self, inferred: int) -> None:
        """Called on the inference thread after each frame, with the frames inferred so far."""
        if not self.active:
            return
        if self._window is None:
            if inferred == self._skip_until:
                self._window = (inferred, self.clock())
            return
        start, started = self._window
        elapsed = self.clock() - started
        if inferred - start < AUTO_WINDOW or elapsed < AUTO_SECONDS:
            return
        self.rates[self.segmenter.threads or 1] = (inferred - start) / elapsed
        if len(self.rates) == 1:
            self.segmenter.set_threads(self.many)
            # the new interpreter's first invokes set XNNPACK up: not part of its rate
            self._window, self._skip_until = None, inferred + AUTO_SKIP
            return
        if self.rates[self.many] < AUTO_GAIN * self.rates[1]:
            self.segmenter.set_threads(1)
        self.active = False

    def finish(self) -> None:
        """At the end of a run: one cut short in the middle of the timing goes back to one thread
        and leaves the choice open, so the segmenter's next stream times both again."""
        if self.active and self.rates:
            self.segmenter.set_threads(None)

    def describe(self) -> str:
        """How many threads inference ran on, and why: '2 (chosen on this stream: 24.6 FPS against
        19.1 on 1)'; '' on the Edge TPU."""
        if self.segmenter.info.edgetpu:
            return ""
        threads = self.segmenter.threads or 1
        if len(self.rates) == 2:
            other = self.many if threads == 1 else 1
            return (f"{threads} (chosen on this stream: {self.rates[threads]:.1f} FPS against"
                    f" {self.rates[other]:.1f} on {other})")
        if self.segmenter.options.threads:
            return f"{threads} (given)"
        if self.earlier:
            return f"{threads} (chosen on an earlier stream)"
        if self.many == 1:
            return f"{threads} (one core)"
        if self.rates:
            return f"{threads} (the run ended before {self.many} threads were timed against 1)"
        return f"{threads} (the run was too short to time {self.many} threads against 1)"


class _Balancer:
    """Where each frame's argmax runs. It may run on either side of the inference queue: on the
    inference thread when that thread's own work (prepare for live sources, invoke) took less than
    the host thread's work without it (decode, prepare, draw, encode), so the slower side gets
    lighter. A stateful smoother must see frames in order, so with smoothing it stays on the host."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.busy = {"inference": 0.0, "host": 0.0}  # moving averages, ms per frame
        self.last_draw_ms = 0.0  # the host's latest draw + encode, without the argmax
        self.moved = 0

    def average(self, side: str, ms: float) -> None:
        self.busy[side] = ms if not self.busy[side] else 0.9 * self.busy[side] + 0.1 * ms

    def argmax_on_inference_thread(self) -> bool:
        take = self.enabled and 0 < self.busy["inference"] < self.busy["host"]
        self.moved += take
        return take


class _Host:
    """The host side of a run: reads ahead (decode + prepare) and draws each result (argmax,
    overlay, sink, on_frame), on one thread (2 cores) or two (`separate`).

    Frames in flight (read and not yet drawn) each hold one of QUEUE_FRAMES slots, which bounds both
    queues: no put ever blocks, and shutting down needs no draining. The queues are C SimpleQueues
    (queue.Queue and threading.Semaphore run Python code on every call); `slots` holds tokens.
    """

    def __init__(self, source: FrameSource, segmenter: Segmenter, options: PipelineOptions, sink: VideoSink | None,
                 on_frame: Callable[[FrameResult], None] | None, timings: _Timings, balancer: _Balancer,
                 separate: bool) -> None:
        self.source, self.segmenter, self.options, self.sink = source, segmenter, options, sink
        self.on_frame, self.timings, self.balancer = on_frame, timings, balancer
        self.smoother = TemporalSmoother(segmenter, options.smooth)
        self.slots: "queue.SimpleQueue" = queue.SimpleQueue()
        for _ in range(QUEUE_FRAMES):
            self.slots.put(None)
        self.results: "queue.SimpleQueue" = queue.SimpleQueue()  # inferred, waiting to be drawn
        self.frames_in: "queue.SimpleQueue" = queue.SimpleQueue()  # read and prepared, waiting for inference
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.latest: np.ndarray | None = None  # the newest overlay (the window shows it)
        self.drawn = 0
        self.inferred = 0
        self.tuner = _ThreadTuner(segmenter, os.cpu_count() or 1)
        self._previous: np.ndarray | None = None
        self._fps = (time.perf_counter(), 0.0)
        loops = [self._read_loop, self._draw_loop] if separate else [self._host_loop]
        self.threads = [threading.Thread(target=loop, name=loop.__name__.strip("_"), daemon=True) for loop in loops]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def shutdown(self) -> None:
        """Stop and join the host threads before the caller releases the source or the sink
        (releasing a capture while a thread is inside read() crashes the decoder). They draw every
        frame already inferred first, so the output holds each frame that went through the model."""
        self.stop.set()
        self.results.put(_END)
        for thread in self.threads:
            thread.join()

    def argmax(self, raw: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        class_map = self.smoother(raw)
        self.timings.stage("argmax", (time.perf_counter() - t0) * 1000)
        return class_map

    def read_one(self) -> bool:
        """Decode and prepare the next frame into `frames_in`; False at the end of the source."""
        t0 = time.perf_counter()
        frame = self.source.read()
        if frame is None:
            return False
        t1 = time.perf_counter()
        stamp = (t1, time.time())
        tensor = self.segmenter.prepare(frame)
        t2 = time.perf_counter()
        self.timings.stage("decode", (t1 - t0) * 1000)
        self.timings.stage("prepare", (t2 - t1) * 1000)
        self.frames_in.put((frame, tensor, stamp))
        self.balancer.average("host", (t2 - t0) * 1000 + self.balancer.last_draw_ms)
        return True

    def draw_one(self, item: tuple) -> None:
        """Argmax (unless the inference thread did it), overlay, sink, on_frame."""
        frame, raw, class_map, infer_ms, stamp = item
        if class_map is None:
            class_map = self.argmax(raw)
        t0 = time.perf_counter()
        if self._previous is not None:
            self.timings.changed.append(float(np.count_nonzero(class_map != self._previous)) / class_map.size)
        self._previous = class_map
        last, fps = self._fps
        dt = t0 - last
        self._fps = (t0, 0.9 * fps + 0.1 * (1.0 / dt if dt > 0 else 0.0))
        hud = [f"{self._fps[1]:.1f} FPS", f"inference {infer_ms:.1f} ms"] if self.options.hud else None
        image = render(frame, class_map, self.segmenter.labels, self.segmenter.palette_bgr, self.options.alpha,
                       self.options.legend, hud)
        t1 = t2 = time.perf_counter()
        self.timings.stage("draw", (t1 - t0) * 1000)
        if self.sink is not None:
            self.sink.write(image)
            t2 = time.perf_counter()
            self.timings.stage("encode", (t2 - t1) * 1000)
        self.balancer.last_draw_ms = (t2 - t0) * 1000
        if self.source.live:
            self.balancer.average("host", self.balancer.last_draw_ms)
        latency = (time.perf_counter() - stamp[0]) * 1000
        self.timings.latency.append(latency)
        self.latest = image
        if self.on_frame is not None:
            self.on_frame(FrameResult(self.drawn, stamp[1], latency, infer_ms, class_map, image,
                                      self.segmenter.labels, frame, raw))
        self.drawn += 1

    def _fail(self, exc: BaseException) -> None:
        self.errors.append(exc)  # re-raised in the caller's thread
        self.stop.set()

    def _draw_loop(self) -> None:
        """The drawer of a separate reader: draws each result as it comes back."""
        try:
            while (item := self.results.get()) is not _END:
                self.draw_one(item)
                self.slots.put(None)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _read_loop(self) -> None:
        """A separate reader (devices with cores to spare): decodes and prepares ahead."""
        try:
            while not self.stop.is_set():
                try:
                    self.slots.get(timeout=0.05)
                except queue.Empty:
                    continue
                if not self.read_one():
                    return
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self.frames_in.put(_END)  # unblock the inference thread waiting for a frame

    def _host_loop(self) -> None:
        """Reader and drawer on one thread (2-core devices): decodes and prepares ahead while a
        frame slot is free, and draws each result as it comes back."""
        reading = not self.source.live
        try:
            while True:
                if reading and not self.stop.is_set() and _take(self.slots):
                    if not self.read_one():
                        reading = False
                        self.frames_in.put(_END)
                    try:  # draw a finished frame if there is one, without waiting for it
                        item = self.results.get_nowait()
                    except queue.Empty:
                        continue
                else:
                    item = self.results.get()
                if item is _END:
                    return
                self.draw_one(item)
                self.slots.put(None)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            if reading:
                self.frames_in.put(_END)


def _infer_loop(host: _Host, show: Callable[[np.ndarray], bool] | None, bar: tqdm) -> None:
    """The caller's thread: take each prepared frame (live sources: read and prepare it here),
    invoke, hand the result to the host side, refresh the window; counts `host.inferred`."""
    source, segmenter, options, timings = host.source, host.segmenter, host.options, host.timings
    while not host.stop.is_set():
        raise_if_interrupted()  # a Ctrl-C whose first raise CPython dropped (it came during a finaliser)
        prepare_ms = 0.0
        if source.live:
            frame = source.read()
            if frame is None:
                break
            stamp = source.stamp()
            t0 = time.perf_counter()
            tensor = segmenter.prepare(frame)
            prepare_ms = (time.perf_counter() - t0) * 1000
            timings.stage("prepare", prepare_ms)
        else:
            item = host.frames_in.get()
            if item is _END:
                break
            frame, tensor, stamp = item
        t0 = time.perf_counter()
        raw = segmenter.invoke(tensor)
        timings.inference.append(segmenter.last_inference_ms)
        class_map = host.argmax(raw) if host.balancer.argmax_on_inference_thread() else None
        host.balancer.average("inference", prepare_ms + (time.perf_counter() - t0) * 1000)
        host.results.put((frame, raw, class_map, segmenter.last_inference_ms, stamp))
        host.inferred += 1
        host.tuner.after_frame(host.inferred)
        bar.update(1)
        if show is not None and host.latest is not None and not show(host.latest):
            break
        if options.max_frames and host.inferred >= options.max_frames:
            break
        if options.duration and time.perf_counter() - timings.started >= options.duration:
            break


def _run(source: FrameSource, segmenter: Segmenter, options: PipelineOptions, sink: VideoSink | None,
         show: Callable[[np.ndarray], bool] | None, progress: bool,
         on_frame: Callable[[FrameResult], None] | None) -> RunStats:
    separate = not source.live and separate_reader()
    timings = _Timings()
    balancer = _Balancer(enabled=not options.smooth and not separate)
    host = _Host(source, segmenter, options, sink, on_frame, timings, balancer, separate)
    host.start()
    total = source.frame_count if not source.live else None
    if options.max_frames and total:
        total = min(total, options.max_frames)
    # disable=None: tqdm draws only on a terminal (a log file gets no redraws)
    bar = tqdm(total=total, unit="frame", desc="segment", disable=None if progress and total is not None else True,
               leave=False)
    stopped_by = ""
    try:
        _infer_loop(host, show, bar)
    except KeyboardInterrupt as exc:
        if not source.live:
            _abort(host, sink)
            raise
        stopped_by = getattr(exc, "signal_name", "SIGINT")
    except BaseException:
        _abort(host, sink)
        raise
    finally:
        bar.close()
    host.shutdown()
    if host.errors:
        if sink is not None:
            sink.abort()
        error = host.errors[0]
        raise error if isinstance(error, EdgesegError) else EdgesegError(f"pipeline failed: {error}") from error
    truncated_at = source.truncated_at
    stats = timings.to_stats(host.inferred, source.dropped, balancer.moved, stopped_by, host.tuner.describe())
    host.tuner.finish()
    if sink is not None:
        sink.finish()
    if truncated_at is not None:
        where = f"; {sink.frames} frames saved to {sink.path}" if sink is not None else ""
        raise StreamError(f"{source.name} ended early after {truncated_at} frames (truncated file or lost"
                          f" stream){where}; check the source", frames_done=host.inferred)
    return stats


def _abort(host: _Host, sink: VideoSink | None) -> None:
    host.shutdown()
    if sink is not None:
        sink.abort()


def _take(tokens: "queue.SimpleQueue") -> bool:
    """Take a token if one is free, without waiting."""
    try:
        tokens.get_nowait()
    except queue.Empty:
        return False
    return True


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 of `values` (ms), or {} when there are none."""
    if not values:
        return {}
    p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2)}
