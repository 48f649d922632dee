"""A live page of a running pipeline, for a device without a screen (standard library only).

    edgeseg camera --serve 8080                 # http://127.0.0.1:8080/ on the device itself
    edgeseg camera --serve 0.0.0.0:8080         # on the LAN: a token is required (printed at start)

Routes: ``/`` the page (live overlay, FPS, inference ms, latency, class shares, drops, uptime),
``/stream.mjpg`` (multipart MJPEG), ``/snapshot.jpg``, ``/stats.json``.

The pipeline's drawing thread hands over each overlay (`LiveServer.publish`); it is JPEG-encoded
there once per frame and only while somebody watches. Every viewer thread sends the newest JPEG
when it is ready for one, so a slow or stalled viewer skips frames and never slows the pipeline.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import secrets
import socketserver
import threading
import time
from collections import deque
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from edgeseg.errors import InputError
from edgeseg.pipeline import FrameResult

JPEG_QUALITY = 80
# A viewer counts as watching until this long after its last request (the page polls stats.json
# every second; the MJPEG stream keeps its connection).
WATCH_HOLD_S = 3.0
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edgeseg live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{margin:0;font:14px system-ui,sans-serif;background:#111;color:#eee;display:flex;flex-wrap:wrap}
#view{flex:1 1 640px;padding:8px}#view img{width:100%;max-width:960px;background:#222}
#side{flex:0 0 260px;padding:8px}h1{font-size:16px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}td{padding:2px 4px}.num{text-align:right}
.bar{height:10px;display:inline-block;vertical-align:middle}
#shares div{margin:3px 0;white-space:nowrap}
</style></head><body>
<div id="view"><img id="live" alt="live overlay"></div>
<div id="side"><h1>edgeseg live</h1>
<table id="stats"></table><h1>classes</h1><div id="shares"></div></div>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
document.getElementById("live").src = "stream.mjpg" + q;
const rows = [["fps", "FPS", 1], ["inference_ms", "inference ms (p50)", 2], ["latency_ms", "latency ms (p50)", 1],
  ["frames", "frames", 0], ["dropped", "dropped", 0], ["uptime_s", "uptime s", 0], ["viewers", "viewers", 0]];
async function tick() {
  try {
    const s = await (await fetch("stats.json" + q, {cache: "no-store"})).json();
    document.getElementById("stats").innerHTML = rows.map(([k, name, d]) =>
      `<tr><td>${name}</td><td class="num" id="stat-${k}">${Number(s[k] ?? 0).toFixed(d)}</td></tr>`).join("");
    document.getElementById("shares").innerHTML = Object.entries(s.shares).sort((a, b) => b[1] - a[1]).map(([name, v]) =>
      `<div class="share" data-name="${name}" data-share="${v}"><span class="bar" style="width:${Math.max(2, 150 * v)}px;` +
      `background:${s.palette[name]}"></span> ${name} ${(100 * v).toFixed(1)}%</div>`).join("");
  } catch (e) {}
  setTimeout(tick, 1000);
}
tick();
</script></body></html>
"""


def parse_address(text: str) -> tuple[str, int]:
    """``8080`` -> 127.0.0.1:8080; ``0.0.0.0:8080``; ``[::1]:8080``.

    Raises:
        InputError: not a port or host:port.
    """
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise InputError(f"--serve {text!r} is not [HOST:]PORT; use e.g. 8080 or 0.0.0.0:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LiveServer:
    """HTTP server beside a pipeline; `publish` is its `on_frame` callback.

    Args:
        address: ``[HOST:]PORT`` (default host 127.0.0.1; port 0 picks a free one).
        token: required from clients when bound beyond loopback; None there makes a random one.
        palette: {class name: "#rrggbb"} for the page's share bars.
    """

    def __init__(self, address: str, token: str | None = None, palette: dict[str, str] | None = None) -> None:
        host, port = parse_address(address)
        self.token = token if token else (None if is_loopback(host) else secrets.token_urlsafe(16))
        self.palette = palette or {}
        self._condition = threading.Condition()
        self._jpeg: bytes | None = None
        self._sequence = 0
        self._watched_until = 0.0
        self._viewers = 0
        self._started = time.monotonic()
        self.stats: dict = {"frames": 0, "dropped": 0, "fps": 0.0, "inference_ms": 0.0, "latency_ms": 0.0,
                            "latency_p50_ms": None, "latency_p90_ms": None, "latency_p99_ms": None, "shares": {}}
        # The newest 100 frames' times and the newest frame: summarised when /stats.json is asked
        # for (about once a second), not on every frame.
        self._inference: deque[float] = deque(maxlen=100)
        self._latency: deque[float] = deque(maxlen=100)
        self._last: FrameResult | None = None
        self._last_time: float | None = None
        self.encoded = 0  # JPEGs made (only while someone watches)
        try:
            self._httpd = _Server((host, port), _Handler)
            self._httpd.live = self
        except OSError as exc:
            raise InputError(f"--serve {address}: cannot listen there ({exc.strerror}); pick another port") from exc
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="serve", daemon=True)

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._condition:
            self._sequence = -1  # wakes every stream handler, which then ends
            self._condition.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- pipeline side -------------------------------------------------------------------------
    def watching(self) -> bool:
        return self._viewers > 0 or time.monotonic() < self._watched_until

    def publish(self, result: FrameResult, dropped: int = 0) -> None:
        """Take one processed frame (drawing thread); encode it only if someone watches."""
        now = time.monotonic()
        if self._last_time is not None and now > self._last_time:
            instant = 1.0 / (now - self._last_time)
            self.stats["fps"] = instant if not self.stats["fps"] else 0.9 * self.stats["fps"] + 0.1 * instant
        self._last_time = now
        self._inference.append(result.inference_ms)
        self._latency.append(result.latency_ms)
        self._last = result
        self.stats.update(frames=result.index + 1, dropped=dropped)
        if not self.watching():
            return
        ok, encoded = cv2.imencode(".jpg", result.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        self.encoded += 1
        with self._condition:
            self._jpeg = encoded.tobytes()
            self._sequence += 1
            self._condition.notify_all()

    # -- viewer side ---------------------------------------------------------------------------
    def snapshot_stats(self) -> dict:
        stats = {**self.stats, "uptime_s": round(time.monotonic() - self._started, 1), "viewers": self._viewers,
                 "palette": self.palette, "encoded": self.encoded}
        latency, inference, last = list(self._latency), list(self._inference), self._last
        if latency:
            p50, p90, p99 = np.percentile(latency, [50, 90, 99])
            stats.update(inference_ms=float(np.median(inference)), latency_ms=float(p50), latency_p50_ms=float(p50),
                         latency_p90_ms=float(p90), latency_p99_ms=float(p99))
        if last is not None:
            stats["shares"] = last.shares()
        return stats

    @property
    def sequence(self) -> int:
        return self._sequence

    def touch(self) -> None:
        self._watched_until = time.monotonic() + WATCH_HOLD_S

    def next_jpeg(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        """The newest JPEG newer than sequence `after` (waits for one); (-1, None) when closing."""
        with self._condition:
            self._condition.wait_for(lambda: self._sequence != after or self._sequence < 0, timeout)
            return self._sequence, self._jpeg

    def authorised(self, query: dict, headers) -> bool:
        if self.token is None:
            return True
        given = (query.get("token") or [""])[0] or headers.get("X-Edgeseg-Token", "")
        bearer = headers.get("Authorization", "")
        if bearer.startswith("Bearer "):
            given = given or bearer[7:]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def viewer(self, delta: int) -> None:
        with self._condition:
            self._viewers += delta


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        if ":" in self.server_address[0]:
            import socket

            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request of one viewer, on its own thread; `self.server.live` is the LiveServer."""

    server_version = "edgeseg"

    @property
    def live(self) -> LiveServer:
        return self.server.live

    def log_message(self, *args):  # quiet: the terminal belongs to the pipeline's summary
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if not self.live.authorised(parse_qs(url.query), self.headers):
            self.send_error(403, "token required: open the URL printed at start (...?token=...)")
            return
        self.live.touch()
        routes = {"/": self.page, "/index.html": self.page, "/stats.json": self.stats,
                  "/snapshot.jpg": self.snapshot, "/stream.mjpg": self.stream}
        route = routes.get(url.path)
        if route is None:
            self.send_error(404)
            return
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_body(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def page(self):
        self.send_body(PAGE.encode(), "text/html; charset=utf-8")

    def stats(self):
        self.send_body(json.dumps(self.live.snapshot_stats()).encode(), "application/json")

    def snapshot(self):
        sequence, jpeg = self.live.next_jpeg(self.live.sequence, timeout=5.0)  # a frame drawn from now on
        if jpeg is None:
            self.send_error(503, "no frame yet")
            return
        self.send_body(jpeg, "image/jpeg")

    def stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.live.viewer(+1)
        try:
            sequence = 0
            while True:
                sequence, jpeg = self.live.next_jpeg(sequence)
                if sequence < 0:
                    return
                if jpeg is None:
                    continue
                self.live.touch()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
        finally:
            self.live.viewer(-1)


def palette_hex(labels, palette_bgr: np.ndarray) -> dict[str, str]:
    return {name: "#{2:02x}{1:02x}{0:02x}".format(*map(int, palette_bgr[i])) for i, name in enumerate(labels.names)}


__all__ = ["LiveServer", "parse_address", "is_loopback", "palette_hex"]
