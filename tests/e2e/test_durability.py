"""The local stack keeps every acknowledged write across a kill -9 and a clean restart."""

from __future__ import annotations

import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.stack import RunningStack, poll_until, start_stack, stored_event_ids

pytestmark = pytest.mark.e2e


def _writer(stack: RunningStack, user: str, acknowledged: list[str], stop: threading.Event) -> None:
    session = requests.Session()
    session.headers.update(stack.auth("workflow_executor"))
    i = 0
    while not stop.is_set():
        event_id = f"dur-{user}-{i:05d}"
        try:
            response = session.post(
                f"{stack.bucket_url}/core/write-event",
                json={
                    "requester_id": "workflow_executor",
                    "event_id": event_id,
                    "event_data": {
                        "event_type": "life_event",
                        "user_id": user,
                        "action": "completing_lessons",
                        "role": "learner",
                    },
                },
                timeout=2,
            )
        except requests.RequestException:
            return  # the stack is gone
        if response.status_code == 200:
            acknowledged.append(event_id)
        i += 1


def _karma(stack: RunningStack, user: str) -> dict[str, object]:
    response = requests.get(f"{stack.karma_url}/api/v1/karma/{user}", headers=stack.auth("bhiv_reader"), timeout=5)
    body: dict[str, object] = response.json() if response.status_code == 200 else {}
    return body


def _handled(karma: dict[str, Any]) -> int:
    """Events Karma handled for the user, each once: applied, or recorded as over a daily cap."""
    capped: dict[str, int] = karma.get("capped_stats") or {}
    return int(karma.get("events_applied") or 0) + sum(capped.values())


def test_sigkill_mid_stream_loses_nothing_acknowledged_and_applies_nothing_twice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user = f"k-{uuid.uuid4().hex[:6]}"
    stack = start_stack(state)
    acknowledged: list[str] = []
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(stack, user, acknowledged, stop))
    writer.start()
    poll_until(lambda: len(acknowledged), lambda n: n >= 150, timeout=30)
    stack.stop(signal.SIGKILL)  # mid-stream: writes in flight, consumers behind
    stop.set()
    writer.join()
    count = len(acknowledged)

    restarted = start_stack(state)
    try:
        stored = stored_event_ids(restarted, user)
        assert len(stored) == len(set(stored))  # no duplicates ...
        assert set(acknowledged) <= set(stored)  # ... and every acknowledged one is there
        applied = poll_until(lambda: _karma(restarted, user), lambda k: _handled(k) == len(stored), timeout=30)
        credited = int(applied["events_applied"])  # type: ignore[call-overload]
        assert applied["balances"] == {"DharmaPoints": 5 * credited, "SevaPoints": 0, "PunyaTokens": 0}
        assert count >= 150
    finally:
        assert restarted.stop() == 0

    again = start_stack(state)  # after a clean stop: restored from the compacted snapshot
    try:
        assert len(stored_event_ids(again, user)) == len(stored)
        assert _handled(_karma(again, user)) == len(stored)
        assert "from the snapshot" in again.output()
    finally:
        again.stop()
