"""Nothing lost: every fault here is performed for real - a full filesystem, a real signal to a real
process, a damaged file, a stream host that never answers - against the real `edgeseg` command."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import resource
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, shared

MODEL = REPO / "models" / "camvid_lite_int8.tflite"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def edgeseg(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def start_edgeseg(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeseg", *map(str, args)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip().startswith("error")]


def one_error(result, *fragments: str) -> str:
    """Non-zero exit, exactly one error line containing every fragment, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def write_video(path: Path, frames: int, fps: float = 10.0) -> bytes:
    capture = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (120, 90))
    for _ in range(frames):
        writer.write(cv2.resize(capture.read()[1], (120, 90)))
    writer.release()
    capture.release()
    return path.read_bytes()


def video_info(path: Path) -> tuple[int, float]:
    capture = cv2.VideoCapture(str(path))
    count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return count, fps


# ---------------------------------------------------------------------------------------------
# Full disks


@pytest.fixture()
def small_disk(tmp_path):
    """A 200 KiB filesystem: a real tmpfs where this process may mount one, else a 200 KiB file-size
    limit (RLIMIT_FSIZE) on the child process. Yields (folder, preexec_fn for the child)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))

    try:
        yield folder, (None if mounted else limit), mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_keeps_the_old_video_and_says_so(small_disk):
    folder, preexec, mounted = small_disk
    target = folder / "o.mp4"
    good = write_video(target, 10)
    result = edgeseg("video", shared("video", "vtest.avi"), "-m", MODEL, "-o", target, "--headless",
                     "--max-frames", 150, preexec_fn=preexec)
    message = one_error(result, str(target))
    if mounted:
        assert "full" in message and "MiB free" in message
    assert "wrote" not in result.stdout
    assert target.read_bytes() == good  # the good file is untouched
    assert hidden_leftovers(folder) == []  # and the partial one removed


def test_a_video_stops_as_soon_as_the_disk_fills(small_disk):
    """OpenCV's writer drops every frame silently once the disk is full (and warns on each): the
    sink must notice within a few frames, not after the whole clip, and print nothing but our line."""
    folder, _, mounted = small_disk
    if not mounted:
        pytest.skip("needs a real full filesystem (mounting a tmpfs was refused here); a file-size limit"
                    " does not fill the disk")
    from edgeseg.errors import OutputError
    from edgeseg.sinks import FULL_CHECK_EVERY, VideoSink

    capture = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    sink = VideoSink(folder / "o.mp4", 10.0, (480, 360))
    written = 0
    with pytest.raises(OutputError, match="is full"):
        while True:
            ok, frame = capture.read()
            assert ok, f"the whole clip ({written} frames) went to a 200 KiB disk without an error"
            sink.write(frame)
            written += 1
    capture.release()
    # 200 KiB hold a few dozen 480x360 frames: the error comes within one check of filling up
    assert written < 100 + FULL_CHECK_EVERY, written
    assert list(folder.iterdir()) == []  # the partial file removed

    result = edgeseg("video", shared("video", "vtest.avi"), "-m", MODEL, "-o", folder / "all.mp4", "--headless")
    one_error(result, "is full")
    assert [line for line in result.stderr.splitlines() if line.strip()] == error_lines(result.stderr), \
        result.stderr[:2000]  # none of OpenCV's per-frame "Failed to write frame" warnings


def test_atomic_writes_keep_the_old_file_when_the_disk_fills(small_disk):
    folder, preexec, _ = small_disk
    target = folder / "report.json"
    target.write_text('{"old": true}')
    code = ("import sys; from pathlib import Path; from edgeseg.atomic import write_bytes\n"
            "from edgeseg.errors import OutputError\n"
            "try:\n    write_bytes(Path(sys.argv[1]), b'x' * 400_000)\n"
            "except OutputError as exc:\n    print(exc); sys.exit(4)\n")
    result = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, capture_output=True, text=True,
                            preexec_fn=preexec, timeout=60)
    assert result.returncode == 4 and str(target) in result.stdout
    assert target.read_text() == '{"old": true}' and hidden_leftovers(folder) == []


def test_atomic_writes_give_files_the_permissions_a_plain_write_would(tmp_path):
    """Not mkstemp's private 0600: a model converted by one user must stay readable by the service
    user that runs it, and rewriting a file keeps the mode it had."""
    from edgeseg.atomic import write_bytes

    fresh = tmp_path / "model.tflite"
    write_bytes(fresh, b"new")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"plain")
    assert fresh.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 != 0o600
    kept = tmp_path / "secret.json"
    kept.write_text("old")
    kept.chmod(0o640)
    write_bytes(kept, b"new")
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() == b"new"


# ---------------------------------------------------------------------------------------------
# Live streams: a real MJPEG server on 127.0.0.1 at 10 frames per second (it claims nothing;
# FFmpeg assumes 25)


class _MJPEGHandler(http.server.BaseHTTPRequestHandler):
    frames: list[bytes] = []
    interval = 0.1

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        index = 0
        with contextlib.suppress(OSError):
            while True:
                jpeg = self.frames[index % len(self.frames)]
                index += 1
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                time.sleep(self.interval)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mjpeg_url():
    capture = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    _MJPEGHandler.frames = [cv2.imencode(".jpg", capture.read()[1])[1].tobytes() for _ in range(60)]
    capture.release()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MJPEGHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_a_live_recording_keeps_it_at_the_real_frame_rate(mjpeg_url, tmp_path, sig):
    out = tmp_path / "rec.mp4"
    process = start_edgeseg("video", mjpeg_url, "-m", MODEL, "-o", out, "--headless")
    time.sleep(6.0)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"stopped by {sig.name}" in stdout and "wrote" in stdout
    frames, fps = video_info(out)
    assert frames >= 25, stdout  # about 50 frames arrive in the 6 s (start-up takes some of it)
    assert 8.0 <= fps <= 12.0, fps  # tagged with the rate the frames arrived at, not FFmpeg's 25
    assert hidden_leftovers(tmp_path) == []


def test_interrupting_a_video_file_run_says_nothing_was_kept(tmp_path):
    out = tmp_path / "o.mp4"
    process = start_edgeseg("video", shared("video", "vtest.avi"), "-m", MODEL, "-o", out, "--headless",
                            "--threads", 1)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".o.*")):
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "interrupted by SIGTERM" in " ".join(error_lines(stderr)) and "nothing was kept" in stderr
    assert not out.exists() and hidden_leftovers(tmp_path) == []


@pytest.fixture()
def silent_host():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/cam"
    stop.set()
    for conn in held:
        conn.close()
    server.close()


def test_a_host_that_never_answers_fails_within_the_timeout(silent_host):
    started = time.time()
    result = edgeseg("video", silent_host, "-m", MODEL, "--headless", timeout=60)
    took = time.time() - started
    one_error(result, "did not open within 5 s")
    assert took < 15, took  # 5 s timeout plus start-up; OpenCV alone waits 30 s


def test_ctrl_c_acts_at_once_while_a_stream_opens(silent_host):
    process = start_edgeseg("video", silent_host, "-m", MODEL, "--headless")
    time.sleep(2.5)  # the model is loaded and the stream is being opened
    sent = time.time()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert time.time() - sent < 1.5, stderr
    assert process.returncode == 130 and "interrupted by SIGINT" in stderr


# ---------------------------------------------------------------------------------------------
# Outputs that would destroy something


def test_output_equal_to_the_input_is_refused_also_through_a_symlink(tmp_path):
    clip = tmp_path / "clip.avi"
    shutil.copy(shared("video", "vtest.avi"), clip)
    link = tmp_path / "link.avi"
    link.symlink_to(clip)
    before = clip.read_bytes()
    for output in (clip, link, tmp_path / "." / "clip.avi"):
        one_error(edgeseg("video", clip, "-m", MODEL, "-o", output, "--headless"), "is the input video itself")
    assert clip.read_bytes() == before


def test_an_output_that_is_a_folder_fails_before_any_frame(tmp_path):
    folder = tmp_path / "existing_dir.mp4"
    folder.mkdir()
    result = edgeseg("video", shared("video", "vtest.avi"), "-m", MODEL, "-o", folder, "--headless")
    one_error(result, "is a folder")
    assert "frames" not in result.stdout  # refused up front, nothing was processed


def test_two_runs_writing_the_same_output_both_finish_whole(tmp_path):
    out = tmp_path / "same.mp4"
    args = ("video", shared("video", "vtest.avi"), "-m", MODEL, "-o", out, "--headless", "--max-frames", 60)
    runs = [start_edgeseg(*args) for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert video_info(out)[0] == 60 and hidden_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Batches: every good item is done, every bad one reported


def test_image_batch_with_colliding_names_and_a_bad_file(tmp_path):
    photos = tmp_path / "in"
    (photos / "c1").mkdir(parents=True)
    (photos / "c2").mkdir()
    dog = cv2.imread(str(shared("images", "dog.jpg")))
    cv2.imwrite(str(photos / "c1" / "photo.jpg"), dog)
    cv2.imwrite(str(photos / "c2" / "photo.jpg"), cv2.flip(dog, 1))
    cv2.imwrite(str(photos / "c2" / "photo.png"), dog[::2, ::2])
    bad = photos / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    good = [photos / "c1" / "photo.jpg", photos / "c2" / "photo.jpg", photos / "c2" / "photo.png",
            shared("images", "kite.jpg")]
    out = tmp_path / "out"
    result = edgeseg("image", good[0], good[1], bad, good[2], good[3], "-m", MODEL, "-o", out)
    one_error(result, "bad.jpg")
    assert result.returncode == 3 and "4 done, 1 failed" in result.stderr
    overlays = sorted(p.name for p in out.glob("*_overlay.png"))
    assert overlays == ["c1_photo_overlay.png", "c2_photo_jpg_overlay.png", "c2_photo_png_overlay.png",
                        "kite_overlay.png"]
    # each result belongs to its own input (the flipped copy and the half-size one differ)
    sizes = {name: cv2.imread(str(out / name)).shape[:2] for name in overlays}
    assert sizes["c2_photo_png_overlay.png"] == dog[::2, ::2].shape[:2]
    assert not np.array_equal(cv2.imread(str(out / "c1_photo_classes.png")),
                              cv2.imread(str(out / "c2_photo_jpg_classes.png")))


def test_image_accepts_a_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("dog.jpg", "horses.jpg"):
        shutil.copy(shared("images", name), folder / name)
    result = edgeseg("image", folder, "-m", MODEL, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*_overlay.png")) == ["dog_overlay.png",
                                                                               "horses_overlay.png"]


def test_a_bad_frame_in_a_folder_video_costs_only_that_frame(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    capture = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    for index in range(8):
        cv2.imwrite(str(frames / f"{index:03d}.jpg"), capture.read()[1])
    capture.release()
    (frames / "004.jpg").write_bytes(b"truncated")
    out = tmp_path / "x.mp4"
    result = edgeseg("video", frames, "-m", MODEL, "-o", out, "--headless")
    one_error(result, "004.jpg")
    assert result.returncode == 3 and "7 done, 1 failed" in result.stderr
    assert video_info(out)[0] == 7


# ---------------------------------------------------------------------------------------------
# Damaged models and missing libraries


def _damaged_models(folder: Path) -> dict[str, Path]:
    from edgeseg.metadata import METADATA_NAME, read_metadata, strip_metadata

    data = MODEL.read_bytes()
    flat = strip_metadata(data)
    good = json.loads(read_metadata(data).to_json())

    def with_archive(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
        path = folder / "archive.zip"
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, content in entries.items():
                archive.writestr(name, content)
        return flat + path.read_bytes()

    def edited(change) -> bytes:
        meta = json.loads(json.dumps(good))
        change(meta)
        return with_archive({METADATA_NAME: json.dumps(meta).encode()})

    deflated = bytearray(with_archive({METADATA_NAME: json.dumps(good).encode()}))
    start = len(flat) + 30 + len(METADATA_NAME)  # the local header, then the deflate stream
    for offset in range(40, 60):
        deflated[start + offset] ^= 0xFF
    stored = bytearray(with_archive({METADATA_NAME: json.dumps(good).encode()}, zipfile.ZIP_STORED))
    stored[len(flat) + 30 + len(METADATA_NAME) + 5] ^= 0x01  # one bit of the JSON: the CRC no longer matches
    cases = {
        "flipped deflate bytes": bytes(deflated),
        "bad CRC": bytes(stored),
        "bad JSON": with_archive({METADATA_NAME: b'{"labels": [1, 2,'}),
        "missing key": edited(lambda m: m.pop("labels")),
        "wrong type": edited(lambda m: m["input"].update(height="tall")),
        "wrong label count": edited(lambda m: m["labels"].update(names=m["labels"]["names"][:5])),
    }
    paths = {}
    for index, (case, content) in enumerate(cases.items()):
        paths[case] = folder / f"damaged{index}.tflite"
        paths[case].write_bytes(content)
    return paths


def test_damaged_metadata_is_one_warning_and_the_model_still_runs(tmp_path):
    for case, model in _damaged_models(tmp_path).items():
        result = edgeseg("image", shared("images", "dog.jpg"), "-m", model, "-o", tmp_path / "out")
        assert result.returncode == 0, f"{case}: {result.stderr}"
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "metadata is damaged" in warnings[0], f"{case}: {result.stderr}"
        assert "Traceback" not in result.stderr and "road" in result.stdout, case  # generic CamVid labels


def test_edgetpu_without_the_library_is_one_clean_line(tmp_path):
    result = edgeseg("image", shared("images", "dog.jpg"), "-m", MODEL, "-o", tmp_path, "--device", "edgetpu")
    one_error(result, "libedgetpu")
    assert result.returncode == 5


@pytest.mark.parametrize("command, fragment", [
    (["edgeseg", "camera", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'edgetpu'; see 'python -m edgeseg camera --help'"),
    (["edgeseg", "video"], "Missing argument 'source'; see 'python -m edgeseg video --help'"),
    (["edgeseg", "segment"], "No such command 'segment'; see 'python -m edgeseg --help'"),
    (["train", "--epochs", "many"], "Invalid value for '--epochs': Input should be a valid integer"),
    (["convert", "--quantize", "int4", "--model", "m.keras"], "'int4' is not one of"),
    (["benchmarks", "--model"], "Option '--model' requires an argument"),
])
def test_usage_mistakes_are_one_line_in_all_four_command_lines(command, fragment):
    """Typos in options get the same one-line error as bad input, with where to look, exit code 2."""
    prefix = [sys.executable, "-m", "edgeseg"] if command[0] == "edgeseg" else [sys.executable, "-m", command[0]]
    result = subprocess.run(prefix + command[1:], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    one_error(result, fragment)
    assert result.returncode == 2 and "Usage:" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Training and download


@pytest.mark.parametrize("line, fragment", [
    ("learning_rate: 1e-3", "learning_rate is '1e-3' (str); expected a number (YAML reads 1e-3"),
    ('augment: "no"', "augment is 'no' (str); expected true or false"),
    ('height: "96"', "height is '96' (str); expected a whole number"),
    ("epochs: three", "epochs is 'three' (str); expected a whole number"),
    ("batch_size: 0", "batch_size is 0; it must be >= 1"),
    ("optimizer: sgd", "optimizer is 'sgd'; choose one of radam, adamw"),
    ("train_prefixes: 0006R0", "train_prefixes is '0006R0' (str); expected a list"),
    ("min_scale: 1.5", "min_scale 1.5 must be <= 1 and <= max_scale"),
    ("image_pooling: false", "image_pooling false applies to unet-lite2 only, not unet-lite"),
    ("distill_weight: 1.5", "distill_weight is 1.5; it must be between 0 and 1"),
    ("teachers: [7]", "teachers is [7]; expected a list of model paths (text)"),
])
def test_config_values_are_checked_when_read(tmp_path, line, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(f"architecture: unet-lite\nrun_dir: {tmp_path / 'run'}\n{line}\n")
    result = subprocess.run([sys.executable, "-m", "train", "--config", config], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=120)
    one_error(result, "bad.yaml", fragment)
    assert not (tmp_path / "run").exists()  # nothing written


def test_http_404_fails_at_once_naming_the_status(tmp_path):
    from train.download import DownloadError, download

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.time()
    try:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(f"http://127.0.0.1:{server.server_address[1]}/ADE.zip", tmp_path / "ADE.zip", "0" * 40,
                     progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert time.time() - started < 5  # no retries with back-off
    assert list(tmp_path.iterdir()) == []


def test_eval_refuses_a_mask_of_another_size(tmp_path):
    data = tmp_path / "data"
    for kind in ("images", "annotations"):
        (data / kind / "validation").mkdir(parents=True)
    camvid = shared("camvid")
    name = sorted((camvid / "images" / "validation").glob("*.jpg"))[0].stem
    shutil.copy(camvid / "images" / "validation" / f"{name}.jpg", data / "images" / "validation")
    mask = cv2.imread(str(camvid / "annotations" / "validation" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(data / "annotations" / "validation" / f"{name}.png"), mask[:180, :240])
    one_error(edgeseg("eval", "-m", MODEL, "--data", data), f"{name}.png is 240x180 but its image is 480x360")


class _SignalInFinaliser:
    """Sends SIGINT to this process from its finaliser, the moment CPython drops the handler's raise
    ("Exception ignored in ..."), as it does when Ctrl-C lands while TensorFlow finalises a tensor."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # Python code after the signal: the handler runs (and its raise is lost) here
            pass


def test_a_ctrl_c_dropped_inside_a_finaliser_still_stops_the_run():
    from edgeseg.errors import Interrupted, raise_if_interrupted, signals_interrupt

    raise_if_interrupted()  # outside a block: nothing
    with signals_interrupt():
        raise_if_interrupted()  # nothing received yet
        _SignalInFinaliser()  # created and finalised at once: the raise is dropped
        with pytest.raises(Interrupted, match="SIGINT"):
            raise_if_interrupted()
    raise_if_interrupted()  # the block is over: its signal no longer counts


def test_training_stops_within_a_step_when_ctrl_c_is_dropped_inside_a_finaliser():
    import keras

    from edgeseg.errors import Interrupted, signals_interrupt
    from train.callbacks import DeliverInterrupt

    steps = []

    class DropOne(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)
            if batch == 2:
                _SignalInFinaliser()

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((64, 4), np.float32), np.zeros((64, 2), np.float32)
    with signals_interrupt(), pytest.raises(Interrupted, match="SIGINT"):
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[DropOne(), DeliverInterrupt()])
    assert steps == [0, 1, 2]  # without DeliverInterrupt the run would have gone on to 3 epochs x 16 steps


@pytest.mark.slow
def test_training_rerun_and_interrupt_keep_every_record(tmp_path, camvid):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "train", "--data-dir", camvid, "--run-dir", run_dir, "--architecture", "unet-lite",
            "--height", "64", "--width", "96", "--batch-size", "8", "--max-examples", "16"]
    finished = subprocess.run([*map(str, args), "--epochs", "1"], cwd=REPO, env=ENV, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    # A longer run in the finished run's folder starts afresh (nothing to resume): it must keep the
    # finished run's record, and Ctrl-C must stop it after a whole epoch with a resume hint.
    process = subprocess.Popen([*map(str, args), "--epochs", "50"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    history, previous = run_dir / "history.csv", run_dir / "history.previous.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (previous.is_file() and history.is_file()
                                          and history.read_text().count("\n") >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "held a finished run's epochs: kept as history.previous.csv" in stdout
    assert previous.read_text().count("\n") == 2  # header + the finished run's one epoch
    epochs = [int(row.split(",")[0]) for row in history.read_text().splitlines()[1:]]
    assert len(epochs) >= 2 and epochs == list(range(1, len(epochs) + 1))  # its own epochs, from 1
    line = one_error(subprocess.CompletedProcess([], 130, "", stderr), "stopped by SIGINT after finishing epoch")
    assert "run the same command again to resume" in line
