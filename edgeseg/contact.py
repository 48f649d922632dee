"""Contact sheet: evenly spaced frames of a clip next to their overlays, as one picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeseg.sources import frames_at

SHEET_COLUMN_PX = 480  # width of each (input | overlay) column in the sheet


def contact_sheet(source: Path, overlay: Path, count: int = 4) -> np.ndarray:
    """Rows of (source frame | overlay frame) at `count` evenly spaced positions."""
    capture = cv2.VideoCapture(str(overlay))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    indices = [int(i) for i in np.linspace(0, max(0, total - 1), count)]
    rows = []
    for original, drawn in zip(frames_at(source, indices), frames_at(overlay, indices)):
        scale = SHEET_COLUMN_PX / original.shape[1]
        size = (SHEET_COLUMN_PX, int(round(original.shape[0] * scale)))
        rows.append(np.concatenate([cv2.resize(original, size, interpolation=cv2.INTER_AREA),
                                    cv2.resize(drawn, size, interpolation=cv2.INTER_AREA)], axis=1))
    return np.concatenate(rows, axis=0)
