"""The Python API: segmentation in three lines, in the style of pycoral and Ultralytics.

    import edgeseg
    seg = edgeseg.load("camvid_lite_int8.tflite")      # or no argument: the bundled model
    result = seg(frame_bgr)                             # numpy HxWx3 uint8, any size
    result.classes   # HxW uint8 class map at the frame's size
    result.shares    # {"road": 0.41, "sky": 0.2, ...} of the labelled pixels
    result.overlay() # the picture the CLI draws
    result.confidence  # HxW float32: the probability of each pixel's class (MediaPipe's confidence mask)
    for result in edgeseg.stream("rtsp://...", seg):    # the threaded pipeline, newest frame only
        ...
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from edgeseg.bundled import BUNDLED_MODEL
from edgeseg.errors import ModelError
from edgeseg.labels import LabelSet
from edgeseg.overlay import render
from edgeseg.pipeline import FrameResult, PipelineOptions, label_shares, run
from edgeseg.segmenter import Segmenter, SegmenterOptions, upscale



class Result:
    """The segmentation of one frame."""

    def __init__(self, frame: np.ndarray, class_map: np.ndarray, labels: LabelSet, palette_bgr: np.ndarray,
                 inference_ms: float, index: int = 0, latency_ms: float | None = None,
                 raw: np.ndarray | None = None, segmenter: Segmenter | None = None) -> None:
        self.frame, self.class_map, self.labels = frame, class_map, labels
        self._palette = palette_bgr
        self.inference_ms, self.index, self.latency_ms = inference_ms, index, latency_ms
        self._raw, self._segmenter = raw, segmenter

    @cached_property
    def classes(self) -> np.ndarray:
        """HxW uint8 class indices at the frame's size (0 = not labelled)."""
        return upscale(self.class_map, self.frame.shape[:2])

    @cached_property
    def shares(self) -> dict[str, float]:
        """{class name: fraction of the labelled pixels} for the classes present (sums to 1)."""
        return label_shares(self.class_map, self.labels)

    def mask(self, name: str) -> np.ndarray:
        """HxW bool mask of one class, by name, at the frame's size."""
        return self.classes == self._index(name)

    def _index(self, name: str) -> int:
        if name not in self.labels.names:
            raise KeyError(f"no class {name!r}; classes: {', '.join(self.labels.names)}")
        return self.labels.names.index(name)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """(h, w, C) float32 class probabilities at the model's output resolution (index = class; each
        pixel sums to 1), of this frame's own model output (before any ``smooth``). Computed on first
        use, so frames that never ask cost nothing. A model exported with ``--argmax`` has none
        (ValueError)."""
        if self._raw is None or self._segmenter is None:
            raise ValueError("this result carries no model output, so no probabilities")
        try:
            return self._segmenter.probabilities(self._raw)
        except ModelError as exc:
            raise ValueError(str(exc)) from None

    @cached_property
    def confidence(self) -> np.ndarray:
        """HxW float32 in [1/C, 1] at the frame's size: the model's probability for the class it chose,
        interpolated from its output resolution (low where it hesitates: where classes meet, thin objects,
        scenes unlike its training). MediaPipe's confidence mask; threshold it to keep only sure pixels."""
        return self._at_frame_size(self.probabilities.max(axis=-1))

    def probability(self, name: str) -> np.ndarray:
        """HxW float32 probability of one class, by name, at the frame's size (a soft `mask`)."""
        return self._at_frame_size(np.ascontiguousarray(self.probabilities[..., self._index(name)]))

    def _at_frame_size(self, values: np.ndarray) -> np.ndarray:
        height, width = self.frame.shape[:2]
        if values.shape == (height, width):
            return values
        return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)

    def overlay(self, alpha: float = 0.5, legend: bool = True) -> np.ndarray:
        """The overlaid BGR picture, as the CLI draws it."""
        return render(self.frame, self.class_map, self.labels, self._palette, alpha, legend)

    def __repr__(self) -> str:
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.shares.items(), key=lambda kv: -kv[1])[:3])
        return f"Result({self.frame.shape[1]}x{self.frame.shape[0]}, {self.inference_ms:.1f} ms, {top})"


class Model:
    """A loaded model: call it on BGR frames."""

    def __init__(self, model: str | Path | None = None, threads: int | None = None, device: str = "auto",
                 tta: bool = False) -> None:
        self.segmenter = Segmenter(SegmenterOptions(model=Path(model or BUNDLED_MODEL), threads=threads,
                                                    device=device, tta=tta))
        self.labels: LabelSet = self.segmenter.labels
        self.warnings = self.segmenter.warnings

    def __call__(self, frame_bgr: np.ndarray) -> Result:
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError("pass an HxWx3 uint8 BGR image (as cv2.imread returns)")
        raw = self.segmenter.infer(frame_bgr)
        return Result(frame_bgr, self.segmenter.classes(raw), self.labels, self.segmenter.palette_bgr,
                      self.segmenter.last_inference_ms, raw=raw, segmenter=self.segmenter)

    def __repr__(self) -> str:
        return f"Model({self.segmenter.info.path}, {self.labels.name}: {self.labels.num_classes} classes)"


def load(model: str | Path | None = None, threads: int | None = None, device: str = "auto",
         tta: bool = False) -> Model:
    """Load a .tflite (labels and input spec come from inside it); no argument: the bundled model
    (``"camvid_lite_fast"``: the faster bundled one).
    ``tta=True`` also segments each mirrored frame and averages the two (half the rate, a little
    more accurate on unseen streets). ``threads=None``: one CPU thread, and the first `stream`
    times all cores (up to 4) against it and keeps the faster for this model."""
    return Model(model, threads, device, tta)


def stream(source: str | int | Path, model: Model | str | Path | None = None, smooth: float = 0.0,
           max_frames: int = 0, duration: float = 0.0) -> Iterator[Result]:
    """Results of a video file, folder of images, URL or camera (an int, or "/dev/videoN") through
    the threaded pipeline. A file yields every frame in order; a live source yields the newest
    frame only (results the loop did not take in time are dropped, like stale frames).
    Leaving the loop stops the pipeline and releases the source."""
    from edgeseg.sources import open_camera, open_source, wait_for_first_frame

    seg = model if isinstance(model, Model) else load(model)
    if isinstance(source, int) or str(source).startswith("/dev/video"):
        opened = open_camera(str(source))
        wait_for_first_frame(opened)
    else:
        opened = open_source(str(source))
    results: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    failure: list[BaseException] = []
    end = object()

    def deliver(frame: FrameResult) -> None:
        item = Result(frame.frame, frame.class_map, seg.labels, seg.segmenter.palette_bgr, frame.inference_ms,
                      frame.index, frame.latency_ms, frame.raw, seg.segmenter)
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                if opened.live:  # newest only: drop the oldest waiting result
                    try:
                        results.get_nowait()
                    except queue.Empty:
                        pass

    def work() -> None:
        try:
            with opened:
                run(opened, seg.segmenter, PipelineOptions(smooth=smooth, max_frames=max_frames, duration=duration,
                                                           hud=False), show=lambda _image: not stop.is_set(),
                    progress=False, on_frame=deliver)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's loop
            failure.append(exc)
        finally:
            while True:
                try:
                    results.put(end, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    worker = threading.Thread(target=work, name="edgeseg stream", daemon=True)
    worker.start()
    try:
        while (item := results.get()) is not end:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        worker.join(timeout=10)
