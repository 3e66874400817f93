"""The read-only web console of `bhiv up`: static page + JSON reads + a live feed (server-sent events).

Served on loopback only, from the stack's own process; every asset ships in this package (no CDN,
works offline). Requests naming another host are refused (a page on another site cannot reach it
through DNS rebinding), and nothing here writes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from bhiv.console.data import ConsoleData

log = logging.getLogger("bhiv.console")

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
LIVE_INTERVAL_S = 1.0
ACTIVE_FOR_S = 10.0  # keep sampling this long after the last page request


def _asset(name: str) -> bytes | None:
    if "/" in name or name.startswith(".") or not any(name.endswith(ext) for ext in STATIC_TYPES):
        return None
    path = resources.files("bhiv.console").joinpath("static", name)
    return path.read_bytes() if path.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    server: ConsoleHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the console's own requests are not news

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body, default=str).encode(), "application/json")

    def _host_allowed(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return host in ("127.0.0.1", "localhost", "::1")

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._json(403, {"success": False, "error": {"code": "forbidden_host", "message": "loopback only"}})
            return
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        self.server.touch()
        data = self.server.data
        try:
            if path in ("/", "/index.html"):
                self._send(200, _asset("index.html") or b"", STATIC_TYPES[".html"])
            elif path.startswith("/static/"):
                asset = _asset(path.removeprefix("/static/"))
                if asset is None:
                    self._json(404, {"success": False, "error": {"code": "not_found", "message": "no such asset"}})
                else:
                    self._send(200, asset, STATIC_TYPES["." + path.rsplit(".", 1)[-1]])
            elif path == "/api/pipeline":
                self._json(200, self.server.snapshot())
            elif path == "/api/events":
                status, body = data.events(params)
                self._json(status if status else 502, body)
            elif path.startswith("/api/trace/"):
                trace_id = urllib.parse.unquote(path.removeprefix("/api/trace/"))
                self._json(200, data.trace(trace_id))
            elif path == "/api/karma":
                self._json(200, data.karma(params.get("user_id") or None))
            elif path == "/api/stuck":
                self._json(200, data.stuck())
            elif path == "/api/live":
                self._live()
            else:
                self._json(404, {"success": False, "error": {"code": "not_found", "message": f"no route {path}"}})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.exception("console request failed")
            self._json(500, {"success": False, "error": {"code": "console_error", "message": str(exc)[:300]}})

    do_HEAD = do_GET

    def _method_not_allowed(self) -> None:
        self._json(
            405, {"success": False, "error": {"code": "method_not_allowed", "message": "the console is read-only"}}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _live(self) -> None:
        """Server-sent events: the pipeline snapshot once a second, for as long as the page is open."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seen = -1
        while not self.server.stopping.is_set():
            self.server.touch()
            version, snapshot = self.server.wait_snapshot(seen, timeout=LIVE_INTERVAL_S * 2)
            if version == seen:
                self.wfile.write(b": keep-alive\n\n")
            else:
                seen = version
                self.wfile.write(b"event: pipeline\ndata: " + json.dumps(snapshot, default=str).encode() + b"\n\n")
            self.wfile.flush()


class ConsoleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, data: ConsoleData, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.data = data
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        self._snapshot: dict[str, Any] = {}
        self._version = 0
        self._taken_at = 0.0
        self._last_request = 0.0

    def touch(self) -> None:
        self._last_request = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self._changed:
            if self._version and time.monotonic() - self._taken_at < LIVE_INTERVAL_S * 1.5:
                return self._snapshot
        return self.refresh()

    def refresh(self) -> dict[str, Any]:
        snapshot = self.data.pipeline()
        with self._changed:
            self._snapshot, self._version, self._taken_at = snapshot, self._version + 1, time.monotonic()
            self._changed.notify_all()
        return snapshot

    def wait_snapshot(self, seen: int, timeout: float) -> tuple[int, dict[str, Any]]:
        with self._changed:
            if self._version == seen:
                self._changed.wait(timeout)
            return self._version, self._snapshot

    def sample_forever(self) -> None:
        """Refresh the snapshot once a second while someone looks (no load when nobody does)."""
        while not self.stopping.wait(LIVE_INTERVAL_S):
            if time.monotonic() - self._last_request > ACTIVE_FOR_S:
                continue
            try:
                self.refresh()
            except Exception:
                log.exception("console: reading the pipeline failed")


class ConsoleServer:
    """Start/stop of the console next to a LocalStack (see LocalStack.start)."""

    def __init__(self, stack: Any, port: int, host: str = "127.0.0.1") -> None:
        self._httpd = ConsoleHTTPServer(ConsoleData(stack), host, port)
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, name="console-http", daemon=True),
            threading.Thread(target=self._httpd.sample_forever, name="console-sampler", daemon=True),
        ]

    def start(self) -> ConsoleServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._httpd.stopping.set()
        with self._httpd._changed:
            self._httpd._changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


def start_console(stack: Any) -> ConsoleServer:
    return ConsoleServer(stack, stack.config.console_port, stack.config.host).start()
