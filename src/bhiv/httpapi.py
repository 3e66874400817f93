"""Glue between Chalice routes and the service layer: JSON responses, the error shape, auth."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from chalice import Chalice, Response

from bhiv.errors import ApiError, StorageUnavailable

ALL_CONTENT_TYPES = ["*/*"]  # bodies are parsed as JSON whatever the client labels them


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=json.dumps(body, ensure_ascii=False),
        status_code=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.to_body())


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
