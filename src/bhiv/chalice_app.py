"""A Chalice app whose per-request state belongs to the thread serving the request.

Chalice keeps `current_request` and `lambda_context` as plain attributes of the app. In Lambda a
container serves one request at a time, so that is harmless; a threaded HTTP server (`bhiv up`,
`chalice local`) runs requests side by side, and one view would read another request's headers
and body (measured: writes answered with another request's event id, ARCHITECTURE.md 5). Here
both attributes live in a `threading.local`, so every request sees only its own.
"""

from __future__ import annotations

import threading
from typing import Any

from chalice import Chalice

_PER_REQUEST = ("current_request", "lambda_context")


class _RequestLocal(threading.local):
    current_request: Any = None
    lambda_context: Any = None


class _PerRequest:
    """A data descriptor: the attribute lives in the app's thread-local state. (Not an override of
    `__getattribute__`, which would put a Python call in front of every attribute the app reads.)"""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, app: Any, owner: type | None = None) -> Any:
        if app is None:
            return self
        return getattr(_state(app), self._name)

    def __set__(self, app: Any, value: Any) -> None:
        setattr(_state(app), self._name, value)


class RequestLocalChalice(Chalice):
    """`Chalice` with `current_request` and `lambda_context` kept per thread."""

    current_request = _PerRequest()
    lambda_context = _PerRequest()


def _state(app: Chalice) -> _RequestLocal:
    state: _RequestLocal | None = app.__dict__.get("_bhiv_request_local")
    if state is None:
        state = app.__dict__.setdefault("_bhiv_request_local", _RequestLocal())
    return state


def make_request_local(app: Chalice) -> Chalice:
    """Turn an existing Chalice app into a RequestLocalChalice in place (idempotent)."""
    if not isinstance(app, RequestLocalChalice):
        values = {name: app.__dict__.pop(name, None) for name in _PER_REQUEST}
        app.__class__ = type("RequestLocal" + type(app).__name__, (RequestLocalChalice, type(app)), {})
        for name, value in values.items():
            setattr(app, name, value)
    return app
