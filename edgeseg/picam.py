"""The Raspberry Pi's own camera (CSI camera modules) through picamera2.

On Raspberry Pi OS Bookworm the camera module is driven by libcamera, which OpenCV's VideoCapture
cannot open (opencv/opencv#22820, raspberrypi/picamera2#617). `PicameraCapture` reads it through
picamera2 and looks like a VideoCapture to `LiveSource` (read / get / release), so the newest-frame
thread, the dropping of stale frames and everything downstream are the same as for a USB camera.

    edgeseg camera --camera picam        # first camera;  picam:1 for the second

It uses only these picamera2 calls: ``Picamera2(index)``, ``create_video_configuration(main=...,
controls=...)``, ``configure``, ``start``, ``capture_request`` (``make_array("main")``,
``get_metadata()``, ``release()``), ``stop`` and ``close``. Not run on camera hardware here: the
tests drive it with a stand-in that implements exactly those calls.
"""

from __future__ import annotations

import importlib
import time

import cv2
import numpy as np

from edgeseg.errors import InputError

# The main stream: near a display size, far above any model input (the pipeline shrinks it once).
# "RGB888" is picamera2's 24-bit format whose bytes are in B, G, R order: what OpenCV expects.
SIZE = (640, 480)
FPS = 30.0
FORMAT = "RGB888"
INSTALL = ("the Pi camera needs picamera2: run `sudo apt install python3-picamera2` and create the venv with"
           " `python3 -m venv --system-site-packages` so it can see it")


class PicameraCapture:
    """A CSI camera, shaped like cv2.VideoCapture. `captured_at` is the (perf_counter, time) of the
    last frame, from the sensor's own timestamp when the driver gives one."""

    def __init__(self, index: int = 0, size: tuple[int, int] = SIZE, fps: float = FPS) -> None:
        try:
            module = importlib.import_module("picamera2")
        except ImportError as exc:
            raise InputError(INSTALL) from exc
        try:
            self._camera = module.Picamera2(index)
            config = self._camera.create_video_configuration(main={"size": size, "format": FORMAT},
                                                             controls={"FrameRate": fps})
            self._camera.configure(config)
            self._camera.start()
        except (IndexError, RuntimeError, OSError) as exc:
            raise InputError(f"Pi camera {index} cannot be opened ({exc}); check the ribbon cable and"
                             " `rpicam-hello --list-cameras`") from exc
        self._fps = fps
        self.captured_at: tuple[float, float] | None = None

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            request = self._camera.capture_request()
        except RuntimeError:
            return False, None
        try:
            frame = np.ascontiguousarray(request.make_array("main")[:, :, :3])
            sensor_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        now_perf, now_wall = time.perf_counter(), time.time()
        age = 0.0
        if sensor_ns is not None:  # nanoseconds on CLOCK_BOOTTIME, as libcamera stamps frames
            age = max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - sensor_ns / 1e9)
        self.captured_at = (now_perf - age, now_wall - age)
        return True, frame

    def get(self, prop: int) -> float:
        return self._fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        try:
            self._camera.stop()
        finally:
            self._camera.close()


def parse_picam(camera: str) -> int | None:
    """``picam`` -> 0, ``picam:1`` -> 1; anything else -> None."""
    if camera == "picam":
        return 0
    if camera.startswith("picam:") and camera[6:].isdigit():
        return int(camera[6:])
    return None
