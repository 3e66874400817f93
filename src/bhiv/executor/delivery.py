"""Delivering events to the Bucket over HTTP: short timeouts, jittered retries inside a time budget,
one pooled connection. The caller learns delivered, rejected (4xx) or unreachable (5xx, timeouts)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import urllib3

REQUESTER = "workflow_executor"


@dataclass(frozen=True)
class DeliveryOutcome:
    state: str  # delivered | rejected | unreachable
    status: int | None = None
    reason: str | None = None
    attempts: int = 0
    duplicate: bool = False


class BucketClient:
    def __init__(
        self, base_url: str, token: str | None, *, connect_timeout: float = 0.25, read_timeout: float = 0.75
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=8, retries=False)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def post_event(self, event_id: str, event_data: dict[str, Any], timeout: float | None = None) -> DeliveryOutcome:
        body = json.dumps({"requester_id": REQUESTER, "event_id": event_id, "event_data": event_data})
        limit = (
            self._timeout
            if timeout is None
            else urllib3.Timeout(
                connect=min(timeout, self._timeout.connect_timeout or timeout),  # type: ignore[type-var]
                read=timeout,
            )
        )
        try:
            response = self._pool.request(
                "POST", f"{self.base_url}/core/write-event", body=body, headers=self._headers(), timeout=limit
            )
        except urllib3.exceptions.HTTPError as exc:
            return DeliveryOutcome("unreachable", reason=f"{type(exc).__name__}: {exc}"[:300], attempts=1)
        try:
            payload = json.loads(response.data or b"null")
        except ValueError:
            payload = None
        if 200 <= response.status < 300 and isinstance(payload, dict) and payload.get("success") is True:
            return DeliveryOutcome("delivered", response.status, attempts=1, duplicate=bool(payload.get("duplicate")))
        reason = _reason(payload) or response.reason or "no reason given"
        if response.status == 429:
            # over the Executor's rate limit: not a verdict on the event, so it waits in the outbox
            return DeliveryOutcome("unreachable", response.status, reason, attempts=1)
        if 400 <= response.status < 500 or 200 <= response.status < 300:
            # 2xx without success: true is a refusal too (the original counted it as delivered)
            return DeliveryOutcome("rejected", response.status, reason, attempts=1)
        return DeliveryOutcome("unreachable", response.status, reason, attempts=1)

    def reachable(self, timeout: float = 0.3) -> bool:
        try:
            response = self._pool.request("GET", f"{self.base_url}/health", timeout=timeout)
        except urllib3.exceptions.HTTPError:
            return False
        return bool(response.status == 200)


def _reason(payload: Any) -> str | None:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return f"{error.get('code')}: {error.get('message')}"
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return str(payload["message"])
    return None


def deliver(
    client: BucketClient,
    event_id: str,
    event_data: dict[str, Any],
    budget_s: float,
    sleep: Any = time.sleep,
    clock: Any = time.monotonic,
) -> DeliveryOutcome:
    """Try until delivered, rejected, or the budget is spent (jittered exponential backoff)."""
    deadline = clock() + budget_s
    attempts = 0
    delay = 0.05
    outcome = DeliveryOutcome("unreachable", reason="no attempt made")
    while True:
        remaining = deadline - clock()
        if remaining <= 0.01:
            break
        attempts += 1
        outcome = client.post_event(event_id, event_data, timeout=min(remaining, 0.75))
        if outcome.state != "unreachable":
            break
        pause = random.uniform(0, delay)
        if clock() + pause >= deadline:
            break
        sleep(pause)
        delay = min(delay * 2, 0.4)
    return DeliveryOutcome(outcome.state, outcome.status, outcome.reason, attempts, outcome.duplicate)
