"""`chalice local` serves one function against a running `bhiv up` (README: "Run one function
with chalice local").

The Bucket runs under the real `chalice local` command from functions/bucket/, with its
.chalice/config.json; the stack provides the AWS endpoint, the stream pollers and the credentials.
An event written through chalice local is read back through the stack's own Bucket and applied
by the stack's Karma.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.e2e.stack import ROOT, RunningStack, free_port, poll_until

pytestmark = pytest.mark.e2e
CHALICE = ROOT / ".venv" / "bin" / "chalice"


@pytest.fixture
def stack(stack_with_auth: RunningStack) -> RunningStack:
    return stack_with_auth


def _chalice_local(function: str, state_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BHIV_"))}
    env["BHIV_STATE_DIR"] = str(state_dir)  # this stack, not the default ../../.bhiv
    process = subprocess.Popen(
        [str(CHALICE), "local", "--port", str(port), "--no-autoreload"],
        cwd=ROOT / "functions" / function,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chalice local exited: {log.read_text(errors='replace')}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"chalice local never became healthy: {log.read_text(errors='replace')}")


def test_the_bucket_under_chalice_local_writes_into_the_running_stack(stack: RunningStack, tmp_path: Path) -> None:
    process, url = _chalice_local("bucket", stack.state_dir, tmp_path / "chalice-local.log")
    try:
        trace_id = f"chalice-local-{uuid.uuid4().hex[:12]}"
        user_id = f"user-{trace_id}"
        event = {
            "event_type": "workflow_execution",
            "trace_id": trace_id,
            "action_type": "task",
            "status": "success",
            "execution_result": {"success": True},
            "metadata": {"user_id": user_id},  # where the original Executor puts the user
        }
        write = requests.post(
            f"{url}/core/write-event",
            json={"requester_id": "workflow_executor", "event_data": event},
            headers=stack.auth("workflow_executor"),  # the stack's credentials hold under chalice local
            timeout=10,
        )
        assert write.status_code == 200, write.text
        assert write.json()["success"] is True
        unauthenticated = requests.get(f"{url}/core/events", timeout=10)
        assert unauthenticated.status_code == 401  # the stack's auth mode, not a default
        # read back through the stack's own Bucket
        found = poll_until(
            lambda: requests.get(
                f"{stack.bucket_url}/core/events", params={"trace_id": trace_id}, headers=stack.auth("bhiv_reader")
            ).json()["events"],
            lambda events: len(events) == 1,
        )
        assert found[0]["event_id"] == write.json()["event_id"]
        # and the stack's stream poller handed it to Karma
        karma = poll_until(
            lambda: requests.get(f"{stack.karma_url}/api/v1/karma/{user_id}", headers=stack.auth("bhiv_reader")),
            lambda response: response.status_code == 200,
            timeout=15,
        )
        assert karma.json()["action_stats"] == {"workflow_success": 1}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_karma_and_the_executor_under_chalice_local_use_the_running_stack(stack: RunningStack, tmp_path: Path) -> None:
    karma, karma_url = _chalice_local("karma", stack.state_dir, tmp_path / "karma.log")
    executor, executor_url = _chalice_local("executor", stack.state_dir, tmp_path / "executor.log")
    try:
        trace_id = f"chalice-local-wf-{uuid.uuid4().hex[:12]}"
        user_id = f"user-{trace_id}"
        response = requests.post(
            f"{executor_url}/api/workflow/execute",
            json={
                "trace_id": trace_id,
                "decision": "workflow",
                "data": {
                    "workflow_type": "workflow",
                    "payload": {"action_type": "task", "user_id": user_id, "title": "t"},
                },
            },
            headers=stack.auth("bhiv_core"),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["delivery_state"] == "delivered"  # to the stack's Bucket, with the stack's token
        profile = poll_until(
            lambda: requests.get(f"{karma_url}/api/v1/karma/{user_id}", headers=stack.auth("bhiv_reader"), timeout=10),
            lambda r: r.status_code == 200,
            timeout=15,
        )
        assert profile.json()["action_stats"] == {"workflow_success": 1}  # Karma's tables, through chalice local
    finally:
        for process in (karma, executor):
            process.terminate()
            process.wait(timeout=10)
