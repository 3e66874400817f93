"""Glue between Chalice routes and the service layer: JSON responses, the error shape, auth."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from chalice import Chalice, Response

from bhiv.auth import authenticator_from_env
from bhiv.errors import ApiError, Forbidden, StorageUnavailable, UnsupportedMediaType

ALL_CONTENT_TYPES = ["*/*"]  # bodies are parsed as JSON whatever the client labels them


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=json.dumps(body, ensure_ascii=False),
        status_code=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.to_body(), error.headers)


def api_view(app: Chalice, logger: Logger) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Wrap a route: client errors become their 4xx JSON, storage faults 503, nothing else leaks."""

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            request = app.current_request
            trace_id = (request.headers or {}).get("x-trace-id") if request is not None else None
            # per thread: the local servers run requests side by side
            logger.thread_safe_remove_keys(["trace_id"])
            if trace_id:
                logger.thread_safe_append_keys(trace_id=trace_id)
            try:
                if request is not None and authenticator_from_env().auth_disabled:
                    guard_unauthenticated(request.method, request.headers or {})
                return view(*args, **kwargs)
            except ApiError as exc:
                logger.info("Request refused", status=exc.status, code=exc.code, reason=exc.message)
                return error_response(exc)
            except StorageUnavailable as exc:
                logger.error("Storage unavailable", reason=str(exc))
                return json_response(
                    503,
                    {
                        "success": False,
                        "error": {"code": "storage_unavailable", "message": "Storage is unreachable; retry later"},
                    },
                )
            except Exception:
                logger.exception("Unhandled error")
                return json_response(
                    500, {"success": False, "error": {"code": "internal_error", "message": "Internal error"}}
                )

        return wrapper

    return decorate


def query_params(app: Chalice) -> dict[str, str]:
    request = app.current_request
    return dict(request.query_params or {}) if request is not None else {}


def header(app: Chalice, name: str) -> str | None:
    request = app.current_request
    if request is None:
        return None
    value: str | None = request.headers.get(name)
    return value


def raw_body(app: Chalice) -> bytes:
    request = app.current_request
    return request.raw_body if request is not None and request.raw_body else b""


# --- auth off (`bhiv up --no-auth`, for legacy clients) ----------------------------------------
# Without tokens, the only thing between a web page in the user's browser and these APIs is the
# browser's same-origin policy, which does not stop "simple" cross-site POSTs (text/plain, no
# preflight) nor DNS rebinding (a page whose host name resolves to 127.0.0.1). So with auth off:
# only loopback Host values, and write routes take JSON from the stack's own origin or a non-browser.


def _host_name(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_host(host: str) -> bool:
    name = _host_name(host).rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _allowed_origins(host: str) -> set[str]:
    extra = {o.strip().rstrip("/") for o in os.environ.get("BHIV_ALLOWED_ORIGINS", "").split(",") if o.strip()}
    return {f"http://{host}", *extra}


def guard_unauthenticated(method: str, headers: Any) -> None:
    """Refuse what only a hostile web page would send when auth is off (403 / 415)."""
    host = headers.get("host")
    if host is not None and not is_loopback_host(host):
        raise Forbidden(
            f"Host {host!r} is not a loopback name; with auth off only localhost/127.0.0.1 are served",
            code="host_not_allowed",
        )
    if method.upper() != "POST":
        return
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/") not in _allowed_origins(host or ""):
        raise Forbidden(
            f"Cross-origin write from {origin!r} refused (auth is off; only the stack's own origin may write)",
            code="cross_origin_refused",
        )
    content_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"Write routes take 'Content-Type: application/json' (got {content_type or 'none'!r})",
            code="unsupported_media_type",
        )
