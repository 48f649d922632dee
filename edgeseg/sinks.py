"""Outputs written so that nothing half-written ever looks complete.

Everything goes to a hidden temporary name in the destination folder and is renamed into place
only when complete (`os.replace` is atomic on one filesystem). A failed run removes its partial
file; a truncated input still finishes a valid video of the frames that were read.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import OutputError

# Container -> FourCC that OpenCV's bundled FFmpeg writes everywhere without extra codecs.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


def check_writable_dir(folder: Path) -> None:
    """Raise OutputError unless `folder` exists (or can be created) and is writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output folder {folder} cannot be created ({exc.strerror}); choose another --output") from exc
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another --output")


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode and write an image atomically (PNG/JPEG chosen by suffix)."""
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OutputError(f"cannot encode {path.name}; use a .png or .jpg output name")
    tmp = partial_path(path)
    try:
        tmp.write_bytes(encoded.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({exc.strerror}); choose another --output") from exc


class VideoSink:
    """A video file written under a temporary name and renamed when `finish` is called."""

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]) -> None:
        suffix = path.suffix.lower()
        if suffix not in FOURCC:
            raise OutputError(f"output {path.name}: unsupported video type {suffix or '(none)'};"
                              f" use one of {', '.join(sorted(FOURCC))}")
        check_writable_dir(path.parent)
        self.path = path
        self.tmp = partial_path(path)
        self.frames = 0
        self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC[suffix]), fps, size_wh)
        if not self._writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot open {path} for writing; check the folder is writable and the name ends in .mp4")

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(frame)
        self.frames += 1

    def finish(self) -> Path:
        """Close the file and move it to its final name."""
        self._writer.release()
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"no frame was written to {self.path}; the source gave no frames")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._writer.release()
        self.tmp.unlink(missing_ok=True)
