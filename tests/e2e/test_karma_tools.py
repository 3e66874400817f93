"""`bhiv karma show|rebuild` and `bhiv dlq` against the live local stack."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.stack import BHIV, RunningStack, poll_until, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("tools") / "state")
    yield running
    running.stop()


def _bhiv(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BHIV), *args, "--state-dir", str(stack.state_dir)], capture_output=True, text=True, timeout=60, check=False
    )


def _write(stack: RunningStack, event_data: dict[str, object]) -> str:
    response = requests.post(
        f"{stack.bucket_url}/core/write-event",
        headers=stack.auth("bhiv_core"),
        json={"requester_id": "bhiv_core", "event_data": event_data},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    event_id: str = response.json()["event_id"]
    return event_id


def _karma_status(stack: RunningStack, user: str) -> int:
    return requests.get(
        f"{stack.karma_url}/api/v1/karma/{user}", headers=stack.auth("bhiv_reader"), timeout=5
    ).status_code


def test_poison_event_goes_to_the_dlq_without_blocking_later_events(stack: RunningStack) -> None:
    user = f"p-{uuid.uuid4().hex[:6]}"
    poison = _write(stack, {"event_type": "life_event", "user_id": user, "action": "teleport", "role": "learner"})
    _write(stack, {"event_type": "life_event", "user_id": user, "action": "helping_peers", "role": "learner"})
    poll_until(lambda: _karma_status(stack, user), lambda s: s == 200, timeout=10)
    listing = poll_until(lambda: _bhiv(stack, "dlq", "list"), lambda r: poison in r.stdout, timeout=10)
    assert listing.returncode == 0
    stats = requests.get(f"{stack.karma_url}/v1/stats/system", headers=stack.auth("bhiv_reader"), timeout=5).json()
    assert stats["events"]["failed"] >= 1 and stats["dlq_depth"] >= 1
    redrive = _bhiv(stack, "dlq", "redrive")
    assert "still failing 1" in redrive.stdout  # the policy still rejects it: it stays, visibly
    assert redrive.returncode == 1


def test_rebuild_from_the_log_equals_live_state_and_show_prints_the_grid(stack: RunningStack) -> None:
    user = f"r-{uuid.uuid4().hex[:6]}"
    for action in ("completing_lessons", "cheat", "selfless_service", "helping_peers", "cheat"):
        _write(stack, {"event_type": "life_event", "user_id": user, "action": action, "role": "learner"})
    _write(
        stack,
        {
            "event_type": "workflow_execution",
            "trace_id": f"t-{user}",
            "user_id": user,
            "action_type": "task",
            "status": "failed",
            "execution_result": {},
        },
    )
    poll_until(
        lambda: (
            requests.get(f"{stack.karma_url}/api/v1/karma/{user}", headers=stack.auth("bhiv_reader"), timeout=5)
            .json()
            .get("events_applied")
        ),
        lambda n: n == 6,
        timeout=10,
    )
    rebuild = _bhiv(stack, "karma", "rebuild")
    assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    assert "users differing from live state: 0; Q-table equal: True" in rebuild.stdout
    show = _bhiv(stack, "karma", "show", user)
    assert show.returncode == 0, show.stderr
    assert f"user {user}" in show.stdout and "role volunteer" in show.stdout
    assert "workflow_failure" in show.stdout and "guru" in show.stdout  # the grid's rows and columns
