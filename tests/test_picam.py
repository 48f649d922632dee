"""The Pi camera adapter, driven by a STAND-IN for picamera2 (no camera hardware exists here): a
small module implementing exactly the picamera2 calls the adapter uses, serving real frames of
vtest.avi in picamera2's RGB888 layout (bytes B, G, R) with sensor timestamps on CLOCK_BOOTTIME."""

import os
import subprocess
import sys
import textwrap

import cv2

from conftest import REPO, shared

STAND_IN = textwrap.dedent('''
    """STAND-IN for picamera2 used by edgeseg's tests: not the real library."""
    import time
    import cv2

    CALLS = []
    CLIP = {clip!r}


    class _Request:
        def __init__(self, frame, stamp):
            self._frame, self._stamp = frame, stamp

        def make_array(self, name):
            CALLS.append(("make_array", name))
            return self._frame

        def get_metadata(self):
            return {{"SensorTimestamp": self._stamp}}

        def release(self):
            CALLS.append(("release",))


    class Picamera2:
        def __init__(self, index=0):
            CALLS.append(("Picamera2", index))
            if index > 0:
                raise IndexError("list index out of range")
            self._capture = cv2.VideoCapture(CLIP)
            self._size = None

        def create_video_configuration(self, main=None, controls=None):
            CALLS.append(("create_video_configuration", main, controls))
            assert main["format"] == "RGB888"
            return {{"main": main, "controls": controls}}

        def configure(self, config):
            self._size = config["main"]["size"]

        def start(self):
            CALLS.append(("start",))

        def capture_request(self):
            time.sleep(1 / 30)
            ok, frame = self._capture.read()
            if not ok:
                raise RuntimeError("camera stopped")
            frame = cv2.resize(frame, self._size)  # RGB888 arrays hold B, G, R bytes, as OpenCV's
            return _Request(frame, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 5_000_000)

        def stop(self):
            CALLS.append(("stop",))

        def close(self):
            CALLS.append(("close",))
''')


def stand_in(tmp_path):
    package = tmp_path / "standin" / "picamera2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(STAND_IN.format(clip=str(shared("video", "vtest.avi"))))
    return package.parent


def test_the_adapter_reads_bgr_frames_with_sensor_timestamps(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(stand_in(tmp_path)))
    sys.modules.pop("picamera2", None)
    import picamera2

    from edgeseg.sources import open_camera

    reference = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    with open_camera("picam") as source:
        frame = source.read()
        captured, _ = source.stamp()
    expected = cv2.resize(reference.read()[1], (640, 480))
    reference.release()
    assert frame.shape == (480, 640, 3) and source.name == "Pi camera 0"
    assert abs(frame.astype(int) - expected.astype(int)).mean() < 8  # same colour order (a frame or two later)
    assert captured < __import__("time").perf_counter()  # stamped by the sensor, before it reached us
    calls = [call[0] for call in picamera2.CALLS]
    assert calls[:3] == ["Picamera2", "create_video_configuration", "start"]
    assert ("create_video_configuration", {"size": (640, 480), "format": "RGB888"}, {"FrameRate": 30.0}) in picamera2.CALLS
    assert calls.count("make_array") == calls.count("release") and calls[-2:] == ["stop", "close"]
    sys.modules.pop("picamera2", None)


def test_camera_picam_records_through_the_cli(tmp_path):
    out = tmp_path / "rec.mp4"
    env = {**os.environ, "PYTHONPATH": str(stand_in(tmp_path))}
    # the fast bundled model keeps inference well above the camera's 30 frames/s even on a busy 2-core
    # machine, so the recording's rate is the camera's (the default model, about 4x slower, fell to 17 there)
    result = subprocess.run([sys.executable, "-m", "edgeseg", "camera", "--camera", "picam", "--headless",
                             "--model", "camvid_lite_fast", "--max-frames", "40", "-o", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 40 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 640
    assert 20 <= capture.get(cv2.CAP_PROP_FPS) <= 40  # measured: the stand-in delivers 30 frames/s
    capture.release()
    second = subprocess.run([sys.executable, "-m", "edgeseg", "camera", "--camera", "picam:1", "--headless",
                             "--max-frames", "5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in second.stderr.splitlines() if line.startswith("error")]
    assert second.returncode == 3 and len(errors) == 1 and "Pi camera 1 cannot be opened" in errors[0]


def test_without_picamera2_the_error_says_how_to_install_it():
    result = subprocess.run([sys.executable, "-m", "edgeseg", "camera", "--camera", "picam", "--headless"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 3 and len(errors) == 1, result.stderr
    assert "sudo apt install python3-picamera2" in errors[0] and "--system-site-packages" in errors[0]
    assert "Traceback" not in result.stderr
