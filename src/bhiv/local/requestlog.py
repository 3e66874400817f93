"""One short human line per HTTP request on `bhiv up`'s console, and per-service request counts.

The services' own JSON log lines go to <state-dir>/logs/; the console gets this instead:
``12:00:01 bucket   POST /core/write-event   201   2.1 ms  trace=t-1``. The web console reads the
counts for its rates. Neither printed nor counted: the console's own requests (User-Agent
``bhiv-console``) and successful health checks (probes, e.g. the Executor's of the Bucket, are not news).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

import orjson

CONSOLE_USER_AGENT = "bhiv-console"
_MAX_PARSED_BODY = 16 * 1024
HEALTH_PATHS = frozenset({"/health", "/healthz"})


def _parsed(raw: Any) -> Any:
    if not raw or len(raw) > _MAX_PARSED_BODY:
        return None
    try:
        return orjson.loads(raw)
    except (ValueError, TypeError):
        return None


def _field(value: Any, *path: str) -> str | None:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


class RequestLog:
    def __init__(self, out: IO[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.print_lines = False  # `bhiv up` turns this on (unless --log-format json)
        self.paused = False  # while the demo talks
        self._out = out

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def record(
        self,
        service: str,
        method: str,
        path: str,
        status: int,
        seconds: float,
        user_agent: str | None,
        request_body: bytes | None,
        response_body: Any,
    ) -> None:
        if user_agent == CONSOLE_USER_AGENT or (status == 200 and path in HEALTH_PATHS):
            return
        with self._lock:
            self._counts[service] = self._counts.get(service, 0) + 1
        if not self.print_lines or self.paused:
            return
        shown = path if len(path) <= 60 else path[:57] + "..."
        line = f"{time.strftime('%H:%M:%S')} {service:<8} {method:<5} {shown:<40} {status}  {seconds * 1000:6.1f} ms"
        request = _parsed(request_body)
        trace = _field(request, "trace_id") or _field(request, "event_data", "trace_id")
        if trace:
            line += f"  trace={trace}"
        if status >= 400:
            code = _field(_parsed(response_body), "error", "code")
            if code:
                line += f"  {code}"
        out = self._out or sys.stdout
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass


REQUESTS = RequestLog()
