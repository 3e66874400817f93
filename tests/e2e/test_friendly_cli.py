"""What a first-time user sees: `bhiv up --demo` (what `make run` runs) and the tools' answers."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tests.e2e.stack import BHIV, RunningStack, poll_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(demo_stack: RunningStack) -> RunningStack:
    return demo_stack  # tests/conftest.py: one `bhiv up --demo` for this module and its sibling


def _bhiv(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BHIV), *args, "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=60, check=False
    )


def _json_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("{") and '"level"' in line]


def test_demo_shows_a_banner_short_steps_and_no_json_log_line(stack: RunningStack) -> None:
    out = stack.output()
    assert f"console    {stack.console_url}" in out  # the banner lists every URL, the console too
    assert str(stack.state_dir / "credentials.json") in out
    for step in ("[demo] 1.", "[demo] 2.", "[demo] 3.", "[demo] 4.", "[demo] 5.", "SUCCESS"):
        assert step in out
    assert "FAILED" not in out
    assert _json_lines(out) == []
    assert "Event details" not in out  # the demo's steps are short lines, not JSON dumps
    # the services' JSON lines went to the state dir instead
    bucket_log = (stack.state_dir / "logs" / "bucket.log").read_text(encoding="utf-8").splitlines()
    assert bucket_log and all(json.loads(line)["service"] == "bucket" for line in bucket_log)


def test_after_the_demo_each_request_is_one_short_human_line(stack: RunningStack) -> None:
    trace = f"human-{uuid.uuid4().hex[:8]}"
    requests.get(f"{stack.bucket_url}/core/events", params={"trace_id": trace}, headers=stack.auth("bhiv_reader"))
    line = poll_until(
        lambda: next((ln for ln in stack.output().splitlines() if f"trace_id={trace}" in ln), None),
        lambda found: found is not None,
    )
    assert "bucket" in line and "GET" in line and " 200 " in line and "ms" in line
    refused = requests.get(f"{stack.karma_url}/api/v1/karma/nobody-{trace}", headers=stack.auth("bhiv_reader"))
    assert refused.status_code == 404
    line = poll_until(
        lambda: next((ln for ln in stack.output().splitlines() if f"nobody-{trace}" in ln), None),
        lambda found: found is not None,
    )
    assert "404" in line and "user_not_found" in line and not line.startswith("{")


def test_status_with_no_stack_says_so(tmp_path: Path) -> None:
    result = _bhiv("status", state_dir=tmp_path)
    assert result.returncode == 1 and "no stack running" in result.stdout
    # a stack.json left behind by a killed stack is not a running stack
    (tmp_path / "stack.json").write_text(
        json.dumps({"pid": _dead_pid(), "urls": {"bucket": "http://127.0.0.1:9"}}), encoding="utf-8"
    )
    result = _bhiv("status", state_dir=tmp_path)
    assert result.returncode == 1 and "no stack running" in result.stdout and "DOWN" not in result.stdout


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_status_lists_each_service_and_mapping(stack: RunningStack) -> None:
    result = _bhiv("status", state_dir=stack.state_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    for fragment in ("bucket    up", "executor  up", "karma     up", "KarmaStreamFunction", "BucketStatsFunction"):
        assert fragment in result.stdout


def test_karma_show_of_an_unknown_user_exits_non_zero(stack: RunningStack) -> None:
    result = _bhiv("karma", "show", f"nobody-{uuid.uuid4().hex[:6]}", state_dir=stack.state_dir)
    assert result.returncode == 1
    assert "no karma recorded" in result.stderr


def test_dlq_list_is_one_line_per_message_with_the_reason_and_redrive_prints_no_log_lines(
    stack: RunningStack,
) -> None:
    response = requests.post(
        f"{stack.bucket_url}/core/write-event",
        headers=stack.auth("bhiv_core"),
        json={
            "requester_id": "bhiv_core",
            "event_data": {"event_type": "life_event", "user_id": "u-dlq", "action": "levitate", "role": "learner"},
        },
        timeout=5,
    )
    poison = response.json()["event_id"]
    listing = poll_until(
        lambda: _bhiv("dlq", "list", state_dir=stack.state_dir), lambda r: poison in r.stdout, timeout=20
    )
    line = next(ln for ln in listing.stdout.splitlines() if poison in ln)
    assert "reason: unknown action 'levitate'" in line and "attempts " in line
    assert len([ln for ln in listing.stdout.splitlines() if poison in ln]) == 1
    full = _bhiv("dlq", "list", "--json", state_dir=stack.state_dir)
    messages = [json.loads(ln) for ln in full.stdout.splitlines()]
    assert any(poison in json.dumps(m["body"]) for m in messages)
    redrive = _bhiv("dlq", "redrive", state_dir=stack.state_dir)
    assert _json_lines(redrive.stdout + redrive.stderr) == []
    assert "still failing" in redrive.stdout


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["events", "tail"], "(default: 10)"),
        (["token"], "(default: bhiv_core)"),
        (["up"], "(default: 8010)"),
        (["diagnose"], "(default: 10.0)"),
    ],
)
def test_help_shows_defaults(args: list[str], shown: str) -> None:
    result = subprocess.run(
        [str(BHIV), *args, "--help"], capture_output=True, text=True, timeout=30, check=True, env=dict(os.environ)
    )
    assert shown in " ".join(result.stdout.split())


def test_outbox_list_answers_from_the_running_stack(stack: RunningStack) -> None:
    result = _bhiv("outbox", "list", state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("0 event(s) waiting for delivery")
    assert _json_lines(result.stdout + result.stderr) == []
