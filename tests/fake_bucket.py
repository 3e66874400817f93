"""A controllable stand-in for the Bucket's write endpoint, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeBucket:
    def __init__(self) -> None:
        self.mode = "ok"  # ok | reject | error | hang | throttle
        self.received: list[dict[str, Any]] = []
        self.stored: dict[str, dict[str, Any]] = {}
        self.release = threading.Event()  # ends a hang: the held request is then stored and answered
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._send(200, {"status": "healthy"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.mode == "hang":
                    fake.release.wait(120)
                fake.received.append({"body": body, "authorization": self.headers.get("Authorization")})
                if fake.mode == "reject":
                    return self._send(403, {"success": False, "error": {"code": "forbidden", "message": "nope"}})
                if fake.mode == "throttle":
                    return self._send(429, {"success": False, "error": {"code": "rate_limited", "message": "slow"}})
                if fake.mode == "error":
                    return self._send(500, {"success": False, "error": {"code": "internal", "message": "boom"}})
                duplicate = body["event_id"] in fake.stored
                fake.stored.setdefault(body["event_id"], body)
                return self._send(
                    200 if duplicate else 201, {"success": True, "event_id": body["event_id"], "duplicate": duplicate}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
