"""The on-screen window of `edgeseg camera` / `video` (OpenCV HighGUI), when there is a display."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np

WINDOW = "edgeseg"


def open_window(headless: bool) -> Callable[[np.ndarray], bool] | None:
    """A function that shows a frame and returns False once q or Esc is pressed, or None when
    `headless`, when no display exists or when OpenCV was built without a GUI (said on stderr)."""
    if headless:
        return None
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("no display found: running headless (pass --headless to silence this)", file=sys.stderr)
        return None
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        print("OpenCV has no GUI support here (headless build): running headless", file=sys.stderr)
        return None

    def show(image: np.ndarray) -> bool:
        cv2.imshow(WINDOW, image)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    return show
