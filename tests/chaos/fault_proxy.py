"""An HTTP proxy in front of the Bucket whose behaviour the chaos run switches: forward, refuse
(close without answering), 500, or stall (hold the request without answering)."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("forward", "refuse", "500", "stall")
STALL_LIMIT_S = 30.0


class FaultProxy:
    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self._changed = threading.Event()
        self.counts = dict.fromkeys(MODES, 0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                mode = proxy.mode
                proxy.counts[mode] += 1
                if mode == "refuse":
                    self.close_connection = True
                    return
                if mode == "stall":
                    proxy._changed.wait(STALL_LIMIT_S)
                    self.close_connection = True
                    return
                if mode == "500":
                    self._send(500, b'{"success": false, "error": {"code": "injected", "message": "fault proxy"}}')
                    return
                try:
                    upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    upstream.close()
                except OSError:
                    self.close_connection = True  # the Bucket is down: as if refused
                    return
                self._send(response.status, data)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients dropping connections is what this proxy is for

        self._server = QuietServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode
        self._changed.set()  # release stalled requests
        self._changed = threading.Event()

    def close(self) -> None:
        self.set_mode("forward")
        self._server.shutdown()
        self._server.server_close()
