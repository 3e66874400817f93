"""Per-requester token buckets for writes and workflow executions (429 with Retry-After).

Each requester has, per kind of operation (its scope: Bucket writes, Karma events, executions), a
bucket of `burst` tokens refilled at `per_second`; a write takes one token, a batch one per event.
The buckets live in the function's memory: locally one per service, in the cloud one per Lambda
container, so API Gateway's method throttling (template.yaml) is the limit that holds there.
See docs/security.md.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bhiv.errors import TooManyRequests


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: int

    @staticmethod
    def parse(raw: Any, where: str) -> Limit | None:
        """From requesters.yaml: {per_second, burst}, or null for no limit."""
        if raw is None:
            return None
        if not isinstance(raw, dict) or set(raw) != {"per_second", "burst"}:
            raise ValueError(f"{where}: a rate limit is {{per_second: <number>, burst: <integer>}} or null")
        per_second, burst = raw["per_second"], raw["burst"]
        if not isinstance(per_second, int | float) or isinstance(per_second, bool) or not 0 < per_second < math.inf:
            raise ValueError(f"{where}.per_second must be a positive number")
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ValueError(f"{where}.burst must be a positive integer")
        return Limit(float(per_second), burst)


class RateLimiter:
    """Token buckets keyed by requester; thread-safe (the local servers are threaded)."""

    def __init__(
        self,
        limits: dict[str, Limit | None],
        default: Limit | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._default = default
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (requester, operation) -> (tokens, at)
        self._lock = threading.Lock()

    def limit_for(self, requester_id: str) -> Limit | None:
        return self._limits.get(requester_id, self._default)

    def take(self, requester_id: str, cost: int = 1, operation: str = "") -> None:
        """Spend `cost` tokens of the requester's bucket for `operation` (each kind of write has its
        own: Bucket writes, Karma events, executions), or raise TooManyRequests (429)."""
        limit = self.limit_for(requester_id)
        if limit is None:
            return
        cost = max(1, min(cost, limit.burst))  # a batch larger than the burst waits for a full bucket
        with self._lock:
            now = self._clock()
            key = (requester_id, operation)
            tokens, at = self._buckets.get(key, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - at) * limit.per_second)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                return
            self._buckets[key] = (tokens, now)
        retry_after = max(1, math.ceil((cost - tokens) / limit.per_second))
        raise TooManyRequests(
            f"Requester '{requester_id}' is over its rate limit ({limit.per_second:g}/s, burst {limit.burst}); "
            f"retry after {retry_after} s",
            retry_after_seconds=retry_after,
            limit={"per_second": limit.per_second, "burst": limit.burst},
            headers={"Retry-After": str(retry_after)},
        )
