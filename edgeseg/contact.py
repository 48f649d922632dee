"""Contact sheet: evenly spaced frames of a clip next to their overlays, as one picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import InputError

SHEET_COLUMN_PX = 480  # width of each (input | overlay) column in the sheet


def _frames_at(path: Path, indices: list[int]) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames, wanted, index = [], set(indices), 0
    try:
        while len(frames) < len(indices):
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                frames.append(frame)
            index += 1
    finally:
        capture.release()
    if len(frames) < len(indices):
        raise InputError(f"{path} has fewer frames than expected; it may be truncated")
    return frames


def contact_sheet(source: Path, overlay: Path, count: int = 4) -> np.ndarray:
    """Rows of (source frame | overlay frame) at `count` evenly spaced positions."""
    capture = cv2.VideoCapture(str(overlay))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    indices = [int(i) for i in np.linspace(0, max(0, total - 1), count)]
    rows = []
    for original, drawn in zip(_frames_at(source, indices), _frames_at(overlay, indices)):
        scale = SHEET_COLUMN_PX / original.shape[1]
        size = (SHEET_COLUMN_PX, int(round(original.shape[0] * scale)))
        rows.append(np.concatenate([cv2.resize(original, size, interpolation=cv2.INTER_AREA),
                                    cv2.resize(drawn, size, interpolation=cv2.INTER_AREA)], axis=1))
    return np.concatenate(rows, axis=0)
