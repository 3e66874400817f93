"""Restarts, crashes and a second start on the same state dir (issue 9, items 2 to 6)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.stack import BHIV, ROOT, RunningStack, free_port, poll_until, stored_event_ids
from tests.e2e.stack import start_stack as _start_stack

pytestmark = pytest.mark.e2e

ACTIONS = ("completing_lessons", "helping_peers", "solving_doubts", "selfless_service")


def start_stack(state: Path, *extra: str, **kwargs: Any) -> RunningStack:
    """These tests read the stack's runtime log records from its console: ask for JSON there."""
    return _start_stack(state, "--log-format", "json", *extra, **kwargs)


def _write(stack: RunningStack, user: str, event_id: str, action: str = "completing_lessons") -> int:
    response = requests.post(
        f"{stack.bucket_url}/core/write-event",
        json={
            "requester_id": "workflow_executor",
            "event_id": event_id,
            "event_data": {"event_type": "life_event", "user_id": user, "action": action, "role": "learner"},
        },
        headers=stack.auth("workflow_executor"),
        timeout=10,
    )
    return response.status_code


def _applied(stack: RunningStack, user: str) -> int:
    """Events Karma handled for the user, each once: applied, or recorded as over a daily cap."""
    response = requests.get(f"{stack.karma_url}/api/v1/karma/{user}", headers=stack.auth("bhiv_reader"), timeout=5)
    if response.status_code != 200:
        return 0
    body = response.json()
    return int(body.get("events_applied", 0)) + int(sum(body.get("capped_stats", {}).values()))


def _log_records(stack: RunningStack, message: str) -> list[dict[str, Any]]:
    found = []
    for line in stack.output().splitlines():
        if line.startswith("{") and f'"message":"{message}"' in line.replace(": ", ":"):
            found.append(json.loads(line))
    return found


def test_a_second_start_on_a_running_state_dir_exits_at_once_and_touches_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user = f"lock-{uuid.uuid4().hex[:6]}"
    stack = start_stack(state)
    try:
        acknowledged = [f"lock-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
        assert all(_write(stack, user, event_id) == 200 for event_id in acknowledged)
        poll_until(lambda: _applied(stack, user), lambda n: n == 5, timeout=30)
        journal = (state / "journal.jsonl").read_bytes()
        stack_file = (state / "stack.json").read_text(encoding="utf-8")
        second = subprocess.run(
            [
                str(BHIV),
                "up",
                "--state-dir",
                str(state),
                *("--bucket-port", str(free_port()), "--karma-port", str(free_port())),
                *("--executor-port", str(free_port()), "--moto-port", str(free_port())),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert second.returncode != 0
        assert "in use by a running stack" in second.stderr
        assert f"pid {stack.process.pid}" in second.stderr
        assert stack.bucket_url in second.stderr
        assert "Traceback" not in second.stderr + second.stdout
        # the running stack may still be journaling its consumers' writes: only ever appended to
        assert (state / "journal.jsonl").read_bytes().startswith(journal)
        assert (state / "stack.json").read_text(encoding="utf-8") == stack_file
        assert requests.get(f"{stack.bucket_url}/health", timeout=5).status_code == 200
    finally:
        stack.stop(signal.SIGKILL)
    restarted = start_stack(state)  # the first stack's acknowledged writes survived its kill
    try:
        assert sorted(stored_event_ids(restarted, user)) == sorted(acknowledged)
    finally:
        restarted.stop()


def test_a_torn_journal_tail_is_cut_and_every_later_start_works(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user = f"torn-{uuid.uuid4().hex[:6]}"
    acknowledged: list[str] = []
    stack = start_stack(state)
    for i in range(10):
        event_id = f"torn-a{i}-{uuid.uuid4().hex[:6]}"
        assert _write(stack, user, event_id) == 200
        acknowledged.append(event_id)
    stack.stop(signal.SIGKILL)
    with open(state / "journal.jsonl", "ab") as journal:  # a multi-page write cut short by the kill
        journal.write(b'{"g": 0, "a": "PutItem", "b": "{\\"TableName\\": \\"EventsTable\\", \\"Item\\": {\\"pk')

    second = start_stack(state)
    assert _log_records(second, "Journal tail truncated")
    for i in range(10):
        event_id = f"torn-b{i}-{uuid.uuid4().hex[:6]}"
        assert _write(second, user, event_id) == 200
        acknowledged.append(event_id)
    second.stop(signal.SIGKILL)

    third = start_stack(state)
    try:
        assert sorted(stored_event_ids(third, user)) == sorted(acknowledged)
        poll_until(lambda: _applied(third, user), lambda n: n == len(acknowledged), timeout=30)
    finally:
        assert third.stop() == 0


def _checkpoint(state: Path, function: str) -> str | None:
    path = state / "checkpoints" / f"{function}.json"
    if not path.exists():
        return None
    tables = json.loads(path.read_text(encoding="utf-8")).get("tables", {})
    positions = [entry.get("sequence_number") for shards in tables.values() for entry in shards.values()]
    return positions[0] if positions else None


def _wait_for_consumers(state: Path) -> None:
    """Both consumers have checkpointed the same record, and it is still the last a moment later."""

    def positions() -> tuple[str | None, str | None]:
        return _checkpoint(state, "KarmaStreamFunction"), _checkpoint(state, "BucketStatsFunction")

    settled = poll_until(positions, lambda p: p[0] is not None and p[0] == p[1], timeout=30)
    time.sleep(0.5)  # ten poll intervals: a write still in flight would show by now
    poll_until(positions, lambda p: p[0] == p[1] and p[0] is not None and p[0] >= settled[0], timeout=30)


def test_after_kill_9_no_stream_record_is_delivered_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user = f"redeliver-{uuid.uuid4().hex[:6]}"
    stack = start_stack(state)
    for i in range(30):
        assert _write(stack, user, f"rd-{i}-{uuid.uuid4().hex[:6]}") == 200
    poll_until(lambda: _applied(stack, user), lambda n: n == 30, timeout=30)
    _wait_for_consumers(state)
    stack.stop(signal.SIGKILL)

    restarted = start_stack(state)
    assert restarted.stop() == 0
    stopped = _log_records(restarted, "Stream mapping stopped")
    assert {r["function"] for r in stopped} == {"KarmaStreamFunction", "BucketStatsFunction"}
    assert all(r["records_handled"] == 0 for r in stopped), stopped


def test_compaction_while_running_bounds_the_replay_and_loses_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user = f"compact-{uuid.uuid4().hex[:6]}"
    stack = start_stack(state, "--compact-every", "40")
    acknowledged = []
    for i in range(120):
        event_id = f"cp-{i}-{uuid.uuid4().hex[:6]}"
        assert _write(stack, user, event_id) == 200
        acknowledged.append(event_id)
    poll_until(lambda: _log_records(stack, "State compacted"), bool, timeout=30)
    poll_until(lambda: _applied(stack, user), lambda n: n == 120, timeout=30)
    _wait_for_consumers(state)
    stack.stop(signal.SIGKILL)  # no clean stop: only the running compactions made the snapshot

    restarted = start_stack(state)
    try:
        (restored,) = _log_records(restarted, "State restored")
        assert restored["snapshot_items"] > 0
        assert sorted(stored_event_ids(restarted, user)) == sorted(acknowledged)
        assert _applied(restarted, user) == 120
    finally:
        assert restarted.stop() == 0
    stopped = _log_records(restarted, "Stream mapping stopped")
    assert stopped and all(r["records_handled"] == 0 for r in stopped), stopped


def test_rebuild_equals_live_state_after_concurrent_writers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stack = start_stack(state)
    try:
        users = [f"order-{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]
        count = 0
        lock = threading.Lock()

        def writer(n: int) -> None:
            nonlocal count
            for i in range(60):
                action = ACTIONS[(i + n) % len(ACTIONS)]
                if _write(stack, users[(i + n) % len(users)], f"ord-{n}-{i}-{uuid.uuid4().hex[:6]}", action) == 200:
                    with lock:
                        count += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        poll_until(lambda: sum(_applied(stack, u) for u in users), lambda n: n == count, timeout=60)
        rebuild = subprocess.run(
            [str(BHIV), "karma", "rebuild", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
        assert "Q-table equal: True" in rebuild.stdout
    finally:
        stack.stop()
