"""Watching a headless device and building on edgeseg: the live page in a real browser (Debian's
chromium), many and stalled viewers, the token, per-frame JSON lines, triggers on a real clip, the
Python API on real frames, and latency."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, shared

MODEL = REPO / "models" / "camvid_lite_int8.tflite"
FAST_MODEL = REPO / "edgeseg" / "assets" / "camvid_lite_fast_int8.tflite"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10.0, **headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} never answered")


@pytest.fixture()
def served(tmp_path):
    """`edgeseg video vtest.avi --realtime --serve 127.0.0.1:PORT` as a user starts it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "edgeseg", "video", shared("video", "vtest.avi"), "--realtime",
                                "--headless", "--serve", f"127.0.0.1:{port}"], cwd=REPO, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for(base + "stats.json")
        yield base
    finally:
        process.terminate()
        process.communicate(timeout=30)


def chromium(*args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is missing: `apt-get install chromium` (.ci/run installs it)")
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1280,720", *args], capture_output=True, text=True, timeout=120)


def test_the_live_page_in_a_real_browser(served, tmp_path):
    shots = []
    for index in range(2):
        path = tmp_path / f"page{index}.png"
        chromium("--virtual-time-budget=4000", f"--screenshot={path}", served)
        shots.append(cv2.imread(str(path)))
        time.sleep(1.5)
    for shot in shots:
        assert shot is not None and shot.shape[:2] == (720, 1280)
        view = shot[:, :960]
        assert view.std() > 20  # the overlay is there, not a blank page
    assert np.mean(np.abs(shots[0].astype(int) - shots[1].astype(int))) > 1  # and it is live
    # The class list the page shows is one that /stats.json served while the page loaded: the stream
    # moves on meanwhile, so every answer of that time is kept (polled from a thread), not two ends only.
    served_shares, loading = [], threading.Event()

    def poll() -> None:
        while not loading.is_set() or not served_shares:
            served_shares.append(json.loads(get(served + "stats.json")[1])["shares"])
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        dom = chromium("--virtual-time-budget=4000", "--dump-dom", served).stdout
    finally:
        loading.set()
        poller.join(timeout=30)
    shown = {name: float(share) for name, share in
             re.findall(r'<div class="share" data-name="([^"$]+)" data-share="([0-9.e-]+)"', dom)}
    assert shown and any(set(shown) <= set(shares) for shares in served_shares)
    top = max(shown, key=shown.get)
    assert any(top in sorted(shares, key=shares.get)[-3:] for shares in served_shares)
    assert abs(sum(shown.values()) - 1) < 0.01


def test_stats_json_reports_latency_percentiles(served):
    deadline = time.time() + 30
    while (stats := json.loads(get(served + "stats.json")[1]))["frames"] < 5 and time.time() < deadline:
        time.sleep(0.2)
    assert 0 < stats["latency_p50_ms"] <= stats["latency_p90_ms"] <= stats["latency_p99_ms"]
    assert stats["frames"] > 0 and stats["fps"] > 0 and set(stats["palette"]) >= set(stats["shares"])


def test_snapshot_and_stream_serve_real_jpegs(served):
    status, body = get(served + "snapshot.jpg")
    assert status == 200
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 480, 3)
    with urllib.request.urlopen(served + "stream.mjpg", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = b""
        while data.count(b"\xff\xd9") < 3:  # three whole JPEGs
            data += response.read(4096)
    assert data.startswith(b"--frame")


def _frames(count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    frames = [capture.read()[1] for _ in range(count)]
    capture.release()
    return frames


def test_many_viewers_and_a_stalled_one_never_slow_the_pipeline():
    """The real pipeline on a clip paced like a 30 FPS camera, publishing to a live server: with
    four reading viewers and one that never reads, FPS is that of no viewers, each frame is
    encoded once (not once per viewer), and nothing is encoded while nobody watches."""
    from edgeseg.pipeline import PipelineOptions, run
    from edgeseg.segmenter import Segmenter, SegmenterOptions
    from edgeseg.serve import LiveServer
    from edgeseg.sources import open_realtime

    # The fast network on one thread keeps well ahead of the 30 FPS pacing on any CPU, so the rate
    # measures what viewers cost the pipeline, not how the default model shares a 2-core machine with
    # the JPEG encoder (the bundled model runs at about 26 FPS on AVX2-only CPUs: CPU-bound, not paced).
    seg = Segmenter(SegmenterOptions(FAST_MODEL, threads=1))

    def session(viewers: int, stalled: bool) -> tuple[float, int, int]:
        with LiveServer("127.0.0.1:0") as live:
            sockets = []
            for _ in range(viewers):
                sock = socket.create_connection(("127.0.0.1", live.port))
                sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
                sockets.append(sock)
            if stalled:  # connects, asks for the stream, never reads a byte
                sock = socket.create_connection(("127.0.0.1", live.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            readers = [_drain(s) for s in sockets]
            with open_realtime(shared("video", "vtest.avi"), fps=30) as source:
                stats = run(source, seg, PipelineOptions(duration=6.0), progress=False,
                            on_frame=lambda result: live.publish(result, source.dropped))
            received = sum(reader() for reader in readers)
            return stats.fps, live.encoded, received

    alone_fps, alone_encoded, _ = session(0, stalled=False)
    busy_fps, busy_encoded, received = session(4, stalled=True)
    assert alone_encoded == 0  # nobody watched: no JPEG made
    assert busy_fps > 0.9 * alone_fps, (busy_fps, alone_fps)
    assert busy_encoded <= busy_fps * 6.5  # one JPEG per frame, whatever the number of viewers
    assert received > 4 * 100_000  # and the four readers really got the stream


def _drain(sock: socket.socket):
    """Read a socket on a thread; the returned function stops it and gives the bytes read."""
    import threading

    total = [0]
    stop = threading.Event()

    def loop():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            total[0] += len(chunk)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def finish() -> int:
        stop.set()
        thread.join(5)
        sock.close()
        return total[0]

    return finish


def test_beyond_loopback_a_token_is_required():
    from edgeseg.serve import LiveServer

    with LiveServer("0.0.0.0:0") as live:
        assert live.token and f"token={live.token}" in live.url
        base = f"http://127.0.0.1:{live.port}/stats.json"
        assert get(base)[0] == 403
        assert get(base + "?token=wrong")[0] == 403
        assert get(base + f"?token={live.token}")[0] == 200
        assert get(base, **{"X-Edgeseg-Token": live.token})[0] == 200
        assert get(base, Authorization=f"Bearer {live.token}")[0] == 200
    with LiveServer("127.0.0.1:0") as local:  # loopback: no token unless one is given
        assert local.token is None and get(f"http://127.0.0.1:{local.port}/stats.json")[0] == 200


def test_bad_serve_and_trigger_options_are_one_line_errors(tmp_path):
    from edgeseg.cli import app
    from typer.testing import CliRunner

    clip = shared("video", "vtest.avi")
    for args, fragment in [
        (["--serve", "localhost:http"], "is not [HOST:]PORT"),
        (["--on", "pedestrian>>0.1", "--exec", "true"], "is not NAME>SHARE"),
        (["--on", "person>0.1", "--exec", "true"], "has no class 'person'"),
        (["--on", "car>1.5", "--exec", "true"], "between 0 and 1"),
        (["--on", "car>0.1"], "has no action"),
        (["--exec", "true"], "--exec needs an --on"),
    ]:
        result = CliRunner().invoke(app, ["video", str(clip), "--headless", "--max-frames", "5", *args])
        lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert result.exit_code != 0 and len(lines) == 1 and fragment in lines[0], (args, result.stderr)


def test_jsonl_and_triggers_on_a_real_clip(tmp_path):
    """People walk in and out of vtest.avi: each crossing of the pedestrian share fires the
    command exactly once (checked against the JSON lines with the same hysteresis rule). The
    thresholds come from a first pass over the clip (its upper and middle quartile of the share),
    so the test holds for any model that sees the people at all."""
    probe = tmp_path / "probe.jsonl"
    # The fast bundled network: the clip runs twice.
    fast = ["--model", "camvid_lite_fast"]
    first = subprocess.run([sys.executable, "-m", "edgeseg", "video", shared("video", "vtest.avi"), "--headless",
                            *fast, "--jsonl", probe], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    shares = [json.loads(line)["shares"].get("pedestrian", 0.0) for line in probe.read_text().splitlines()]
    high, low = (round(float(np.percentile(shares, q)), 4) for q in (75, 50))
    assert high > low > 0, (high, low)

    lines, fired = tmp_path / "frames.jsonl", tmp_path / "fired"
    fired.mkdir()
    command = f"{sys.executable} -c \"import json,os,sys; d=json.load(sys.stdin);" \
              f" open(os.path.join(r'{fired}', str(d['frame'])), 'w').write(os.environ['EDGESEG_CLASS'])\""
    result = subprocess.run([sys.executable, "-m", "edgeseg", "video", shared("video", "vtest.avi"), "--headless",
                             *fast, "--jsonl", lines, "--on", f"pedestrian>{high}", "--on-clear", str(low), "--min-interval",
                             "0", "--exec", command], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(records) == 795 and [r["frame"] for r in records] == list(range(795))
    for record in records:
        assert set(record) == {"frame", "time", "wall_time", "inference_ms", "latency_ms", "shares"}
        assert abs(sum(record["shares"].values()) - 1) < 1e-3
    expected, armed = [], True
    for record in records:
        share = record["shares"].get("pedestrian", 0.0)
        if armed and share > high:
            expected.append(record["frame"])
            armed = False
        elif not armed and share < low:
            armed = True
    assert 2 <= len(expected) <= 60, expected  # a real clip with people coming and going
    assert sorted(int(p.name) for p in fired.iterdir()) == expected
    assert all(p.read_text() == "pedestrian" for p in fired.iterdir())
    assert f"trigger pedestrian: fired {len(expected)} times" in result.stderr


def test_snapshot_trigger_saves_the_overlaid_frame(tmp_path):
    shots = tmp_path / "shots"
    result = subprocess.run([sys.executable, "-m", "edgeseg", "video", shared("video", "vtest.avi"), "--headless",
                             "--max-frames", "100", "--on", "car>0.01", "--snapshot", shots], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = sorted(shots.glob("car_*.jpg"))
    assert len(saved) == 1 and cv2.imread(str(saved[0])).shape == (360, 480, 3)  # fired once, stayed above


def test_image_json_gives_the_schema_per_image(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgeseg", "image", shared("images", "dog.jpg"),
                             shared("images", "kite.jpg"), "--json", "-o", tmp_path], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["image"]).name for r in rows] == ["dog.jpg", "kite.jpg"]
    for row in rows:
        assert abs(sum(row["shares"].values()) - 1) < 1e-3 and Path(row["overlay"]).is_file()


def test_python_api_on_real_frames():
    import edgeseg
    from edgeseg.overlay import render
    from edgeseg.segmenter import upscale

    seg = edgeseg.load()  # the bundled model
    assert seg.labels.name == "camvid" and "road" in seg.labels.names
    frame = cv2.imread(str(shared("images", "dog.jpg")))
    result = seg(frame)
    assert result.classes.shape == frame.shape[:2] and result.classes.dtype == np.uint8
    assert np.array_equal(result.classes, upscale(seg.segmenter.segment(frame), frame.shape[:2]))
    assert abs(sum(result.shares.values()) - 1) < 1e-3 and "road" in result.shares
    road = result.mask("road")
    share = road.sum() / max(1, (result.classes > 0).sum())
    assert abs(share - result.shares["road"]) < 0.02  # shares are measured at model resolution
    expected = render(frame, result.class_map, seg.labels, seg.segmenter.palette_bgr, 0.5, True)
    assert np.array_equal(result.overlay(), expected)  # the picture the CLI draws
    assert result.inference_ms > 0 and "road" in repr(result)
    with pytest.raises(ValueError):
        seg(np.zeros((10, 10), np.uint8))
    with pytest.raises(KeyError):
        result.mask("person")


def test_python_api_gives_class_probabilities_and_a_confidence_map(tiny_tflite):
    """result.probabilities / .confidence / .probability(name): MediaPipe's confidence masks, from the
    same model output as the class map, for single frames and the stream alike."""
    import edgeseg
    from edgeseg.segmenter import to_probabilities

    seg = edgeseg.load(FAST_MODEL)
    frame = cv2.imread(str(shared("images", "dog.jpg")))  # not the model's size: maps come back at the frame's
    result = seg(frame)
    probabilities = result.probabilities
    assert probabilities.shape == (*result.class_map.shape, seg.labels.num_classes)
    assert probabilities.dtype == np.float32 and probabilities.min() >= 0 and probabilities.max() <= 1
    assert np.abs(probabilities.sum(axis=-1) - 1).max() < 1e-5
    assert np.array_equal(probabilities.argmax(axis=-1), result.class_map)  # the same output as the classes
    confidence = result.confidence
    assert confidence.shape == frame.shape[:2] and confidence.min() >= 1 / seg.labels.num_classes - 1e-6
    # The model hesitates where classes meet, not inside regions: the map says where to trust it.
    classes = result.classes
    edge = np.zeros(classes.shape, bool)
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:, :] |= classes[1:, :] != classes[:-1, :]
    assert confidence[edge].mean() < confidence[~edge].mean() - 0.1 and confidence[~edge].mean() > 0.7
    total = sum(result.probability(name) for name in seg.labels.names)
    assert total.shape == frame.shape[:2] and np.abs(total - 1).max() < 1e-4
    road, is_road = result.probability("road"), result.classes == seg.labels.names.index("road")
    assert is_road.any() and road[is_road].mean() > 0.5 > road[~is_road].mean()
    with pytest.raises(KeyError):
        result.probability("person")
    # An int8 softmax output (scale 1/256) is read as probabilities, not put through a second softmax.
    rounded = np.round(probabilities * 256) / 256
    assert np.abs(to_probabilities(rounded) - probabilities).max() < 0.03  # a second softmax: peaks near 0.2
    assert np.abs(to_probabilities(rounded).sum(axis=-1) - 1).max() < 1e-5
    assert np.abs(to_probabilities(probabilities) - probabilities).max() < 1e-6
    # The stream's results carry the same probabilities as a single call on the same frame.
    first = next(iter(edgeseg.stream(shared("video", "vtest.avi"), seg, max_frames=1)))
    assert np.array_equal(first.probabilities, seg(first.frame).probabilities)
    # A model with the ArgMax inside keeps no scores: one clear error.
    argmax_result = edgeseg.load(tiny_tflite["argmax"])(frame)
    assert argmax_result.classes.shape == frame.shape[:2]
    with pytest.raises(ValueError, match="--argmax"):
        argmax_result.confidence


def test_python_stream_keeps_order_for_files_and_stops_when_left():
    import edgeseg

    seg = edgeseg.load(MODEL)
    indexes = [result.index for result in edgeseg.stream(shared("video", "vtest.avi"), seg, max_frames=40)]
    assert indexes == list(range(40))
    frames = _frames(3)
    for result, frame in zip(edgeseg.stream(shared("video", "vtest.avi"), seg), frames):
        assert np.array_equal(result.frame, frame) and result.latency_ms > 0
    started = time.time()
    for result in edgeseg.stream(shared("video", "vtest.avi"), seg):
        if result.index == 5:
            break  # leaving the loop stops the pipeline at once
    assert time.time() - started < 10


def test_run_summary_reports_latency_percentiles(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgeseg", "video", shared("video", "vtest.avi"), "--realtime",
                             "--headless", "--duration", "4"], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    summary = result.stdout
    p50 = float(summary.split("latency (capture to overlay) p50 ")[1].split()[0])
    inference = float(summary.split("inference p50 ")[1].split()[0])
    assert 0 < p50 < inference + 100  # one frame interval at 10 FPS


def test_serve_and_output_together(tmp_path):
    """The live page and a recording in one run: both get every frame's overlay."""
    port = free_port()
    out = tmp_path / "rec.mp4"
    process = subprocess.Popen([sys.executable, "-m", "edgeseg", "video", shared("video", "vtest.avi"), "--realtime",
                                "--headless", "--duration", "5", "--serve", f"127.0.0.1:{port}", "-o", out], cwd=REPO,
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(f"http://127.0.0.1:{port}/stats.json")
    status, body = get(f"http://127.0.0.1:{port}/snapshot.jpg")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert status == 200 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (360, 480, 3)
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) >= 30 and "wrote" in stdout
    capture.release()
