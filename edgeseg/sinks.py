"""Outputs written so that nothing half-written ever looks complete (through `edgeseg.atomic`).

A video goes to a unique hidden temporary file beside its target and replaces the target only
when it is finished *and* reads back as a video with the frames written: OpenCV's writer reports
no errors, so a full disk shows up only there. A failed or aborted run removes its temporary file
and leaves any older file of that name untouched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.atomic import check_target, commit, disk_full_message, output_error, temp_path, write_bytes
from edgeseg.errors import OutputError

# Container -> FourCC that OpenCV's bundled FFmpeg writes everywhere without extra codecs.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
# A live recording's frame rate is measured on its first frames (held in memory until then): the
# rate at which overlaid frames really arrive, not what the camera or stream claims.
MEASURE_SECONDS = 2.0
MEASURE_MAX_FRAMES = 60
DEFAULT_FPS = 25.0
# While writing, the free space of the output's disk is looked at every FULL_CHECK_EVERY frames (one
# statvfs call); under FULL_MARGIN bytes, less than FFmpeg's write buffer, the next packets cannot land.
FULL_CHECK_EVERY = 10
FULL_MARGIN = 64 << 10


def check_writable_dir(folder: Path) -> None:
    """Raise OutputError unless `folder` exists (or can be created) and is writable."""
    check_target(Path(folder) / ".edgeseg-probe")


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode and write an image atomically (PNG/JPEG chosen by suffix)."""
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OutputError(f"cannot encode {path.name}; use a .png or .jpg output name")
    write_bytes(path, encoded.tobytes())


def check_video_output(path: Path) -> None:
    """Raise OutputError now (before any frame is processed) when `path` cannot take a video."""
    suffix = path.suffix.lower()
    if suffix not in FOURCC:
        raise OutputError(f"output {path.name}: unsupported video type {suffix or '(none)'};"
                          f" use one of {', '.join(sorted(FOURCC))}")
    check_target(path)


class VideoSink:
    """A video file written under a temporary name and renamed when `finish` is called.

    Args:
        path: the final file (.mp4, .avi, ...).
        fps: frame rate to tag the file with; None measures it from the first frames written
            (live sources: a 10 FPS stream recorded for 6 s then plays for 6 s).
        size_wh: frame size.
    """

    def __init__(self, path: Path, fps: float | None, size_wh: tuple[int, int]) -> None:
        check_video_output(path)
        self.path = Path(path)
        self.size_wh = size_wh
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._pending: list[tuple[float, np.ndarray]] = []
        try:
            self.tmp = temp_path(self.path)
        except OSError as exc:
            raise output_error(self.path, exc) from exc
        if fps is not None:
            self._open(fps)

    def _open(self, fps: float) -> None:
        self.fps = fps
        fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
        self._writer = cv2.VideoWriter(str(self.tmp), fourcc, fps, self.size_wh)
        if not self._writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot open {self.path} for writing; check the folder is writable and the name"
                              " ends in .mp4")
        for _, frame in self._pending:
            self._writer.write(frame)
        self._pending.clear()

    def measured_fps(self) -> float:
        """Frames per second of the frames held so far (DEFAULT_FPS with fewer than two)."""
        if len(self._pending) < 2:
            return self.fps or DEFAULT_FPS
        span = self._pending[-1][0] - self._pending[0][0]
        return (len(self._pending) - 1) / span if span > 0 else DEFAULT_FPS

    def write(self, frame: np.ndarray) -> None:
        """Add a frame. Raises OutputError (the partial file removed) once the disk has filled:
        OpenCV's writer drops frames silently then, and the rest of the run would be wasted."""
        self.frames += 1
        if self._writer is not None:
            if self.frames % FULL_CHECK_EVERY == 0 and _disk_nearly_full(self.path.parent, FULL_MARGIN):
                message = disk_full_message(self.path)  # the room left before the partial file goes
                self.abort()
                raise OutputError(message)
            self._writer.write(frame)
            return
        self._pending.append((time.monotonic(), frame))
        span = self._pending[-1][0] - self._pending[0][0]
        if span >= MEASURE_SECONDS or len(self._pending) >= MEASURE_MAX_FRAMES:
            self._open(round(self.measured_fps(), 2))

    def finish(self) -> Path:
        """Close the file, check it reads back whole, and move it to its final name.

        Raises:
            OutputError: nothing was written, or the file did not come out whole (a full disk).
        """
        if self._writer is None:
            if not self._pending:
                self.abort()
                raise OutputError(f"no frame was written to {self.path}; the source gave no frames")
            self._open(round(self.measured_fps(), 2))
        self._writer.release()
        if self.frames == 0:
            self.abort()
            raise OutputError(f"no frame was written to {self.path}; the source gave no frames")
        readable = _frames_in(self.tmp)
        if readable < self.frames:
            full = _disk_nearly_full(self.path.parent)  # before the partial file frees its space
            message = disk_full_message(self.path)
            self.abort()
            if full:
                raise OutputError(message)
            raise OutputError(f"writing {self.path} failed: only {readable} of {self.frames} frames read back;"
                              " check the disk, or choose another output (any older file there was kept)")
        try:
            commit(self.tmp, self.path)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise output_error(self.path, exc) from exc
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._writer is not None:
            self._writer.release()
        self._pending.clear()
        self.tmp.unlink(missing_ok=True)


def _frames_in(path: Path) -> int:
    """Frames OpenCV reads back from a just-written video (0 when it does not open)."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 0
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def _disk_nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < margin
