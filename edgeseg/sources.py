"""Frame sources: video files, image folders, cameras and network streams, as context managers.

Live sources (cameras, rtsp/http streams) are read by a background thread that keeps only the
newest frame: when inference is slower than the camera, stale frames are dropped (and counted)
instead of queueing up and making the overlay lag further and further behind reality.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.dataset import list_images, read_image
from edgeseg.errors import InputError

STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
DEFAULT_FPS = 25.0  # assumed when a source does not report its frame rate
# FFmpeg decodes a file on this many threads. One, because the pipeline already decodes on its own
# reader thread beside inference: FFmpeg's frame threading on top costs CPU that inference needs.
# Raise it with --decode-threads for large videos on many cores.
DECODE_THREADS = 1
# A camera or stream that delivers nothing for this long has failed: at open, for the first
# frame, and between frames (OpenCV's own default for network streams is 30 s).
STALL_TIMEOUT_S = 5.0


class FrameSource:
    """Base class: iterate BGR uint8 frames; always used as a context manager."""

    live = False
    name = "source"
    fps = DEFAULT_FPS
    frame_count: int | None = None
    dropped = 0

    def read(self) -> np.ndarray | None:
        """Next frame, or None at the end of the source."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def stamp(self) -> tuple[float, float]:
        """(time.perf_counter(), time.time()) at which the frame last returned by `read` was
        captured; here: now (files are stamped as they are decoded)."""
        return time.perf_counter(), time.time()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def truncated_at(self) -> int | None:
        """Frames read before the source ended early (None = ended normally)."""
        return None


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order (no dropping: offline output must be complete)."""

    def __init__(self, path: Path, decode_threads: int = DECODE_THREADS) -> None:
        """Open `path`; `decode_threads` = FFmpeg decoder threads (0 = FFmpeg's own choice)."""
        self.name = str(path)
        if decode_threads < 0:
            raise InputError(f"--decode-threads must be 0 (automatic) or more, got {decode_threads}; try 1")
        if not path.exists():
            raise InputError(f"video {path} does not exist; check the path")
        if path.stat().st_size == 0:
            raise InputError(f"video {path} is empty (0 bytes); pass a real video file")
        params = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads else []
        self._cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, params)
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise InputError(f"video {path} cannot be decoded (corrupt, truncated or not a video);"
                             " check it plays, or re-encode it with ffmpeg")
        self._first: np.ndarray | None = first
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else DEFAULT_FPS
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self._read = 0
        self._ended_early = False

    @property
    def decoder_threads(self) -> int:
        """The threads FFmpeg decodes this file with (as the backend reports them)."""
        return int(self._cap.get(cv2.CAP_PROP_N_THREADS))

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
            self._read += 1
            return frame
        ok, frame = self._cap.read()
        if not ok:
            # The container promised more frames than could be decoded: the file is truncated.
            # A one-frame shortfall is a common rounding of the declared count, not damage.
            if self.frame_count is not None and self.frame_count - self._read > 1:
                self._ended_early = True
            return None
        self._read += 1
        return frame

    @property
    def truncated_at(self) -> int | None:
        return self._read if self._ended_early else None

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource(FrameSource):
    """The images of a folder, sorted by name, as a video. Unreadable images are skipped and
    listed in `skipped` (one message each), so one bad file does not cost the others."""

    def __init__(self, folder: Path, fps: float = DEFAULT_FPS) -> None:
        self.name = str(folder)
        self._paths = list_images(folder)
        if not self._paths:
            raise InputError(f"folder {folder} holds no images (.jpg/.png/.bmp); pass a folder of frames")
        self.fps = fps
        self.frame_count = len(self._paths)
        self._index = 0
        self._size: tuple[int, int] | None = None
        self.skipped: list[str] = []

    def read(self) -> np.ndarray | None:
        frame = None
        while frame is None:
            if self._index >= len(self._paths):
                return None
            path = self._paths[self._index]
            self._index += 1
            try:
                frame = read_image(path)
            except InputError as exc:
                self.skipped.append(f"{exc} (skipped)")
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            frame = cv2.resize(frame, (self._size[1], self._size[0]), interpolation=cv2.INTER_AREA)
        return frame


def frames_at(path: Path, indices) -> list[np.ndarray]:
    """The frames of a video file at `indices`, decoded in one pass; only the chosen frames are
    kept, not the clip.

    Raises:
        InputError: the file is missing or undecodable, or it ends before the last index.
    """
    wanted = set(int(i) for i in indices)
    frames: dict[int, np.ndarray] = {}
    index = 0
    with VideoFileSource(Path(path)) as source:
        while len(frames) < len(wanted) and (frame := source.read()) is not None:
            if index in wanted:
                frames[index] = frame
            index += 1
    if len(frames) < len(wanted):
        raise InputError(f"{path} ended after {index} frames, before frame {max(wanted)}; it may be truncated")
    return [frames[int(i)] for i in indices]


def spaced_frames(path: Path, count: int) -> list[np.ndarray]:
    """`count` evenly spaced frames of a video file, the first and the last included (fewer when
    the clip is shorter)."""
    with VideoFileSource(Path(path)) as source:
        total = source.frame_count
        if total is None:  # the container does not say: count by decoding
            total = 0
            while source.read() is not None:
                total += 1
    indices = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
    return frames_at(path, indices.tolist())


class Prepended:
    """A source with one already-read frame put back in front (read to size a video writer)."""

    def __init__(self, source, frame: np.ndarray) -> None:
        self._source, self._frame = source, frame

    def __getattr__(self, name):
        return getattr(self._source, name)

    def read(self) -> np.ndarray | None:
        if self._frame is not None:
            frame, self._frame = self._frame, None
            return frame
        return self._source.read()


class LiveSource(FrameSource):
    """A camera or network stream read by a thread that keeps only the newest frame."""

    live = True

    def __init__(self, capture: cv2.VideoCapture, name: str, finite: bool = False) -> None:
        self.name = name
        self.finite = finite  # a paced file: its end is the normal end, not a lost stream
        self._cap = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else DEFAULT_FPS
        self._lock = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_stamp = self._read_stamp = (time.perf_counter(), time.time())
        self._fresh = False
        self._stopped = False
        self._failed = False
        self.captured = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name=f"capture {name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped:
            ok, frame = self._cap.read()
            with self._lock:
                if not ok:
                    self._failed = True
                    self._lock.notify_all()
                    return
                if self._fresh:
                    self.dropped += 1  # the previous frame was never consumed: stale, dropped
                self._frame, self._fresh = frame, True
                # a capture that knows when the sensor took the frame says so (picamera2)
                self._frame_stamp = getattr(self._cap, "captured_at", None) or (time.perf_counter(), time.time())
                self.captured += 1
                self._lock.notify_all()

    def read(self) -> np.ndarray | None:
        with self._lock:
            while not self._fresh and not self._failed and not self._stopped:
                self._lock.wait(timeout=STALL_TIMEOUT_S)
                if not self._fresh and not self._failed:
                    self._failed = True
            if not self._fresh:
                return None
            self._fresh = False
            self._read_stamp = self._frame_stamp
            return self._frame

    def stamp(self) -> tuple[float, float]:
        return self._read_stamp

    @property
    def truncated_at(self) -> int | None:
        return self.captured if self._failed and not self.finite else None

    def close(self) -> None:
        self._stopped = True
        self._thread.join(timeout=2.0)
        self._cap.release()


def open_camera(camera: str) -> LiveSource:
    """Open a camera by index (``0``), device path (``/dev/video0``) or ``picam[:N]`` (the Pi's CSI
    camera through picamera2).

    Raises:
        InputError: no such camera, or it delivers no frame.
    """
    from edgeseg.picam import PicameraCapture, parse_picam

    index = parse_picam(camera)
    if index is not None:
        return LiveSource(PicameraCapture(index), f"Pi camera {index}")
    device: int | str = int(camera) if re.fullmatch(r"\d+", camera) else camera
    if isinstance(device, str) and not os.path.exists(device):
        raise InputError(f"camera {camera} does not exist; list cameras with `ls /dev/video*` or pass an index like 0")
    capture = cv2.VideoCapture(device)
    if not capture.isOpened():
        capture.release()
        raise InputError(f"camera {camera} cannot be opened; check it is connected and not used by another"
                         " program (`ls /dev/video*`)")
    return LiveSource(capture, f"camera {camera}")


def open_stream(url: str, timeout_s: float = STALL_TIMEOUT_S) -> LiveSource:
    """Open an rtsp/http stream as a live source; a host that does not answer fails within
    `timeout_s` (open and each read), and Ctrl-C stops the wait at once.

    Raises:
        InputError: the stream does not open in time.
    """
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC,
              int(timeout_s * 1000)]
    capture = _off_main_thread(lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params), timeout_s + 2.0)
    if capture is None or not capture.isOpened():
        if capture is not None:
            capture.release()
        raise InputError(f"stream {url} did not open within {timeout_s:.0f} s; check the URL plays in a media"
                         " player and the host answers")
    return LiveSource(capture, url)


def _off_main_thread(call, timeout_s: float):
    """Run a blocking OpenCV call on a daemon thread and wait for it here in short steps, so a signal
    (Ctrl-C, SIGTERM) is handled at once instead of after the call returns. None on timeout."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(call()), name="open stream", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.05)
    return result[0] if result else None


class PacedCapture:
    """A video file delivered like a camera: each frame at its due time by the file's frame rate."""

    def __init__(self, path: Path, decode_threads: int = DECODE_THREADS, fps: float | None = None) -> None:
        with VideoFileSource(path, decode_threads) as probe:  # the same checks and messages as a file
            rate = fps or probe.fps
        params = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads else []
        self._capture = cv2.VideoCapture(str(path), cv2.CAP_ANY, params)
        self._interval = 1.0 / rate
        self._fps = rate
        self._due: float | None = None

    def read(self):
        now = time.perf_counter()
        self._due = now if self._due is None else self._due + self._interval
        if self._due > now:
            time.sleep(self._due - now)
        return self._capture.read()

    def get(self, prop):
        return self._fps if prop == cv2.CAP_PROP_FPS else self._capture.get(prop)

    def release(self) -> None:
        self._capture.release()


def open_realtime(path: Path, decode_threads: int = DECODE_THREADS, fps: float | None = None) -> LiveSource:
    """A video file read at its own frame rate (or `fps`), as a camera would deliver it: a live
    source, so frames the pipeline cannot keep up with are dropped, and latency is what a viewer of
    a camera would see."""
    return LiveSource(PacedCapture(path, decode_threads, fps), f"{path} (real time)", finite=True)


def open_source(source: str, decode_threads: int = DECODE_THREADS) -> FrameSource:
    """A video file, a folder of images, or an rtsp/http URL (`decode_threads`: files only)."""
    if source.lower().startswith(STREAM_PREFIXES):
        return open_stream(source)
    path = Path(source)
    if path.is_dir():
        return ImageFolderSource(path)
    return VideoFileSource(path, decode_threads)


def wait_for_first_frame(source: FrameSource, timeout_s: float = STALL_TIMEOUT_S) -> None:
    """Used by live sources at start: raise when no frame arrives in time."""
    deadline = time.monotonic() + timeout_s
    while isinstance(source, LiveSource) and source.captured == 0 and time.monotonic() < deadline:
        if source._failed:
            break
        time.sleep(0.01)
    if isinstance(source, LiveSource) and source.captured == 0:
        raise InputError(f"{source.name} delivered no frame within {timeout_s:.0f} s; check the device or URL")
