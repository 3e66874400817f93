"""Serving a Chalice app over HTTP on loopback, like `chalice local` but without its latency stall."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from chalice import local as chalice_local
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalDevServer

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


class NoDelayRequestHandler(ChaliceRequestHandler):
    # chalice local writes headers and body separately; with Nagle on, each kept-alive request
    # stalls ~43 ms waiting for the peer's delayed ACK (ARCHITECTURE.md 5).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the apps log structured JSON themselves; requestlog prints the short human line

    def parse_request(self) -> bool:
        self._started = time.perf_counter()
        return bool(super().parse_request())

    def _parse_payload(self) -> Any:
        headers, self._request_body = super()._parse_payload()
        return headers, self._request_body

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

    # http.server answers methods it has no do_X for with 501 and an HTML page; API Gateway answers
    # 405 (or 403). Hand every method to Chalice, which answers 405 with an Allow header.
    def do_TRACE(self) -> None:
        self._generic_handle()

    do_CONNECT = do_QUERY = do_PROPFIND = do_TRACE


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
        self._server = LocalDevServer(app, Config(chalice_stage="local"), host, port, handler_cls=NoDelayRequestHandler)
        self._server.server.daemon_threads = True
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
