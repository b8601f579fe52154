"""A hostile image server on loopback: a test double for URL manifests (not a real image host).

Each path plays one thing a downloader meets on the web:

| path | answers |
|---|---|
| `/ok.jpg` | a JPEG, `image/jpeg` |
| `/bare.jpg` | a JPEG without Content-Type |
| `/sound.wav` | a short WAV, `audio/wav` |
| `/huge.jpg` | announces 1 GB (Content-Length) and sends a little |
| `/endless.jpg` | a JPEG header, then bytes until the connection closes, no Content-Length |
| `/page.html` | an HTML page, `text/html` |
| `/liar.jpg` | an HTML page labelled `image/jpeg` |
| `/noai.jpg` | a JPEG with `X-Robots-Tag: noai` |
| `/agent.jpg` | a JPEG with `X-Robots-Tag: capmill: noimageai` |
| `/other-agent.jpg` | a JPEG with `X-Robots-Tag: otherbot: noai` (not for capmill) |
| `/slow.jpg` | waits `slow_seconds` before answering |
| `/trickle.jpg` | sends a JPEG a few bytes at a time, forever |
| `/flaky.jpg` | 503 the first `flaky_failures` times, then the JPEG |
| `/missing.jpg` | 404 |
| `/redirect?to=URL` | 302 to URL |

`server.hits` counts requests per path, so a test can assert what was (not) fetched.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from capmill.testing.shards import encode, generated

HTML = b"<!doctype html><html><body><h1>Not an image</h1></body></html>"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ImageServer
    protocol_version = "HTTP/1.0"  # one request per connection; a body without length ends at close

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str | None = "image/jpeg", headers: dict | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        parts = urlsplit(self.path)
        path = parts.path
        srv = self.server
        with srv.lock:
            srv.hits[path] += 1
            hits = srv.hits[path]
        jpeg = srv.jpeg
        if path == "/ok.jpg":
            self._send(200, jpeg)
        elif path == "/bare.jpg":
            self._send(200, jpeg, ctype=None)
        elif path == "/sound.wav":
            self._send(200, srv.wav, ctype="audio/wav")
        elif path == "/huge.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(jpeg[:1024])
        elif path == "/endless.jpg":
            self._send(200, b"", length=False)
            block = jpeg[:4] + b"\0" * 65532
            try:
                for _ in range(2000):  # bounded: 128 MB at most, the client stops far earlier
                    self.wfile.write(block)
            except OSError:
                pass
        elif path == "/page.html":
            self._send(200, HTML, ctype="text/html; charset=utf-8")
        elif path == "/liar.jpg":
            self._send(200, HTML)
        elif path == "/noai.jpg":
            self._send(200, jpeg, headers={"X-Robots-Tag": "noai"})
        elif path == "/agent.jpg":
            self._send(200, jpeg, headers={"X-Robots-Tag": "capmill: noimageai"})
        elif path == "/other-agent.jpg":
            self._send(200, jpeg, headers={"X-Robots-Tag": "otherbot: noai, noindex"})
        elif path == "/slow.jpg":
            time.sleep(srv.slow_seconds)
            try:
                self._send(200, jpeg)
            except OSError:
                pass
        elif path == "/trickle.jpg":
            self._send(200, b"", length=False)
            try:
                for i in range(0, 2000):  # bounded: stops by itself after ~2000 × 0.05 s
                    self.wfile.write(jpeg[i % len(jpeg):i % len(jpeg) + 4])
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif path == "/flaky.jpg":
            if hits <= srv.flaky_failures:
                self._send(503, b"busy", ctype="text/plain")
            else:
                self._send(200, jpeg)
        elif path == "/redirect":
            target = parse_qs(parts.query).get("to", ["/ok.jpg"])[0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"not found", ctype="text/plain")


class ImageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", slow_seconds: float = 3.0, flaky_failures: int = 1):
        super().__init__((host, 0), _Handler)
        self.lock = threading.Lock()
        self.hits: Counter = Counter()
        self.slow_seconds = slow_seconds
        self.flaky_failures = flaky_failures
        self.jpeg = encode(generated(11, (64, 48)), "JPEG")
        self.wav = _wav_bytes()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def __enter__(self) -> ImageServer:
        # A short poll so that leaving the block does not wait out serve_forever's default 0.5 s.
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="image-server",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def _wav_bytes(seconds: float = 0.1, rate: int = 8000) -> bytes:
    """A silent mono 16-bit WAV, written with the standard library."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return buf.getvalue()
