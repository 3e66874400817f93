"""Serving a Chalice app over HTTP on loopback, like `chalice local` but without its latency stall."""

from __future__ import annotations

import importlib.util
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from chalice import local as chalice_local
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalDevServer, ThreadedHTTPServer

from bhiv.auth import authenticator_from_env
from bhiv.chalice_app import make_request_local
from bhiv.errors import ApiError, BadRequest, PayloadTooLarge
from bhiv.local import http_headers
from bhiv.local.requestlog import REQUESTS

_MODULES: dict[Path, ModuleType] = {}
_LOAD_LOCK = threading.Lock()


_original_create_event = chalice_local.LambdaEventConverter.create_lambda_event


def _create_event_with_decoded_path_parameters(self: Any, *args: Any, **kwargs: Any) -> Any:
    # API Gateway hands handlers percent-decoded path parameters; chalice local does not.
    event = _original_create_event(self, *args, **kwargs)
    params = event.get("pathParameters")
    if params:
        event["pathParameters"] = {name: unquote(value) for name, value in params.items()}
    return event


chalice_local.LambdaEventConverter.create_lambda_event = _create_event_with_decoded_path_parameters  # type: ignore[method-assign]
http_headers.install()


# Limits of the local HTTP servers (issue 9): a backlog that absorbs bursts of connects, deadlines
# that free a thread from a client that sends slowly or not at all, and a bound on connections.
LISTEN_BACKLOG = 1024
MAX_CONNECTIONS = 256  # served at once; more wait in the listen backlog
IDLE_TIMEOUT_S = 30.0  # a kept-alive connection may wait this long before its next request
HEADER_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
BODY_TIMEOUT_S = 30.0  # to read a declared body
WRITE_TIMEOUT_S = 30.0  # for the client to take the response
MAX_BODY_BYTES = 1024 * 1024  # above every function's own limit (the Bucket's batch is 500 KB)
UNAUTHENTICATED_BODY_BYTES = 64 * 1024  # larger bodies are read only with a valid token


class _DeadlineSocketReader(io.RawIOBase):
    """Socket reads that fail with a timeout once a deadline passes, however slowly bytes trickle in."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = time.monotonic() + IDLE_TIMEOUT_S
        self.header_timeout_on_data: float | None = None  # re-arm the deadline at the first byte

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read deadline passed")
        self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        if count and self.header_timeout_on_data is not None:
            self.deadline = time.monotonic() + self.header_timeout_on_data
            self.header_timeout_on_data = None
        return count


class NoDelayRequestHandler(ChaliceRequestHandler):
    # chalice local writes headers and body separately; with Nagle on, each kept-alive request
    # stalls ~43 ms waiting for the peer's delayed ACK (ARCHITECTURE.md 5).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineSocketReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + IDLE_TIMEOUT_S
        self._reader.header_timeout_on_data = HEADER_TIMEOUT_S
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the apps log structured JSON themselves; requestlog prints the short human line

    def parse_request(self) -> bool:
        self._started = time.perf_counter()
        return bool(super().parse_request())

    def _send_http_response(self, code: int, headers: Any, body: Any) -> None:
        super()._send_http_response(code, headers, body)
        REQUESTS.record(
            getattr(self.server, "bhiv_name", "app"),
            self.command,
            self.path,
            code,
            time.perf_counter() - getattr(self, "_started", time.perf_counter()),
            self.headers.get("User-Agent"),
            getattr(self, "_request_body", None),
            body,
        )

    def _refuse(self, error: ApiError) -> None:
        """Answer without reading the body, then close (the unread body makes the connection unusable)."""
        self.close_connection = True
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self._send_http_response(error.status, {"Connection": "close"}, json.dumps(error.to_body()))

    def _parse_payload(self) -> tuple[Any, bytes | None]:
        raw_length = self.headers.get("content-length", "0").strip() or "0"
        if not raw_length.isdigit():
            raise _Refused(BadRequest(f"Invalid Content-Length header: {raw_length[:40]!r}", code="bad_content_length"))
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            raise _Refused(
                PayloadTooLarge(
                    f"Request body is {length} bytes; the limit is {MAX_BODY_BYTES}", limit_bytes=MAX_BODY_BYTES
                )
            )
        if length > UNAUTHENTICATED_BODY_BYTES:
            authenticator = authenticator_from_env()
            if not authenticator.auth_disabled:
                authenticator.authenticate_any(self.headers.get("authorization"))
        self._reader.deadline = time.monotonic() + BODY_TIMEOUT_S
        body = self.rfile.read(length) if length > 0 else None
        if length and (body is None or len(body) < length):
            raise TimeoutError("body cut short")
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self._request_body = body  # for the request log's trace id
        return dict(self.headers), body

    def _generic_handle(self) -> None:
        try:
            super()._generic_handle()
        except _Refused as refused:
            self._refuse(refused.error)
        except ApiError as error:
            self._refuse(error)

    # http.server answers methods it has no do_X for with 501 and an HTML page; API Gateway answers
    # 405 (or 403). Hand every method to Chalice, which answers 405 with an Allow header.
    def do_TRACE(self) -> None:
        self._generic_handle()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE
    do_CONNECT = do_QUERY = do_PROPFIND = do_TRACE


class _Refused(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class BoundedThreadingHTTPServer(ThreadedHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once, with a deep listen backlog."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closing = False
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self._slots.acquire(timeout=0.5):
            if self._closing:
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        self._closing = True
        super().server_close()


def load_function_module(code_uri: str | Path, module: str = "app", root: Path | None = None) -> ModuleType:
    """Import <code_uri>/<module>.py under a unique name (every function's module is called app)."""
    base = (root or Path(__file__).resolve().parents[3]) / str(code_uri)
    path = (base / f"{module}.py").resolve()
    with _LOAD_LOCK:
        if path in _MODULES:
            return _MODULES[path]
        name = f"bhiv_fn_{path.parent.name}_{module}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
        _MODULES[path] = loaded
        return loaded


def resolve_handler(code_uri: str, handler: str, root: Path | None = None) -> Any:
    module, _, attr = handler.rpartition(".")
    return getattr(load_function_module(code_uri, module, root), attr)


class AppServer:
    """One Chalice app on 127.0.0.1:<port>, served from a background thread."""

    def __init__(self, app: Any, port: int, host: str = "127.0.0.1", name: str = "app") -> None:
        self.name = name
        make_request_local(app)
        self._server = LocalDevServer(
            app,
            Config(chalice_stage="local"),
            host,
            port,
            handler_cls=NoDelayRequestHandler,
            server_cls=BoundedThreadingHTTPServer,
        )
        self._server.server.bhiv_name = name  # type: ignore[attr-defined]  # for the request log
        self.port = self._server.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.server.serve_forever, name=f"http-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.server.shutdown()
        self._server.server.server_close()
        self._thread.join(timeout=5)
