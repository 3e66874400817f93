"""The Executor's service against moto and a fake Bucket over HTTP: idempotency and delivery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bhiv.errors import Conflict
from bhiv.executor.delivery import BucketClient
from bhiv.executor.service import ExecutorService
from bhiv.storage.executions import ExecutionStore
from tests.fake_bucket import FakeBucket
from tests.unit.test_executor_engine import Flaky

REQUESTER = "bhiv_core"


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.lines.append((str(msg), kwargs))

    warning = error = info


@pytest.fixture
def bucket() -> Iterator[FakeBucket]:
    fake = FakeBucket()
    yield fake
    fake.close()


def _service(aws: dict[str, Any], bucket: FakeBucket, action: Flaky, log: Log, budget: float = 1.0) -> ExecutorService:
    return ExecutorService(
        ExecutionStore(aws["dynamodb"], "ExecutionsTable"),
        BucketClient(bucket.url, "tok"),
        {"flaky": action},
        log,
        delivery_budget_s=budget,
        sleep=lambda s: None,
    )  # type: ignore[dict-item]


def _body(trace: str = "t-1", title: str = "x") -> dict[str, Any]:
    return {
        "trace_id": trace,
        "decision": "workflow",
        "data": {"workflow_type": "workflow", "payload": {"action_type": "flaky", "title": title, "user_id": "u"}},
    }


def test_execute_delivers_one_event_and_a_replay_runs_nothing(aws: dict[str, Any], bucket: FakeBucket) -> None:
    action, log = Flaky(), Log()
    service = _service(aws, bucket, action, log)
    status, first, headers = service.execute(REQUESTER, _body())
    assert (status, first["status"], first["delivery_state"], headers) == (200, "success", "delivered", {})
    assert bucket.received[0]["authorization"] == "Bearer tok"
    assert bucket.received[0]["body"]["requester_id"] == "workflow_executor"
    assert bucket.received[0]["body"]["event_id"] == first["event_id"]
    status, again, headers = service.execute(REQUESTER, _body())
    assert headers == {"X-Idempotent-Replay": "true"}
    assert again["execution_result"] == first["execution_result"]
    assert len(action.calls) == 1 and len(bucket.received) == 1
    messages = [m for m, _ in log.lines]
    assert "Sending workflow event to Bucket" in messages and "Workflow event logged to Bucket" in messages


def test_same_trace_with_a_different_body_is_409(aws: dict[str, Any], bucket: FakeBucket) -> None:
    service = _service(aws, bucket, Flaky(), Log())
    service.execute(REQUESTER, _body())
    with pytest.raises(Conflict):
        service.execute(REQUESTER, _body(title="other"))


def test_a_403_is_a_rejection_not_a_success(aws: dict[str, Any], bucket: FakeBucket) -> None:
    bucket.mode = "reject"
    log = Log()
    service = _service(aws, bucket, Flaky(), log)
    _, response, _ = service.execute(REQUESTER, _body())
    assert response["delivery_state"] == "rejected"
    assert len(bucket.received) == 1  # not retried
    rejected = [fields for message, fields in log.lines if message == "Bucket rejected event"]
    assert rejected and rejected[0]["status"] == 403 and "nope" in rejected[0]["reason"]
    assert service.execution(REQUESTER, "t-1")["delivery"]["rejected_status"] == 403
    assert service.redrive(due_only=False) == {"delivered": 0, "rejected": 0, "queued": 0}


def test_a_down_bucket_queues_the_event_and_the_redriver_delivers_it_once(
    aws: dict[str, Any], bucket: FakeBucket
) -> None:
    bucket.mode = "error"
    log = Log()
    service = _service(aws, bucket, Flaky(), log, budget=0.3)
    _, response, _ = service.execute(REQUESTER, _body())
    assert response["delivery_state"] == "queued"
    assert any(m == "Bucket unreachable, event queued" for m, _ in log.lines)
    assert [i["trace_id"] for i in service.outbox()] == ["t-1"]
    bucket.mode = "ok"
    assert service.redrive(due_only=False) == {"delivered": 1, "rejected": 0, "queued": 0}
    assert service.redrive(due_only=False) == {"delivered": 0, "rejected": 0, "queued": 0}
    assert list(bucket.stored) == [response["event_id"]]
    assert service.execution(REQUESTER, "t-1")["delivery_state"] == "delivered"
    assert service.execute(REQUESTER, _body())[1]["delivery_state"] == "delivered"  # the replay shows the current state


def test_a_hanging_bucket_never_holds_the_caller_past_the_budget(aws: dict[str, Any], bucket: FakeBucket) -> None:
    bucket.mode = "hang"
    service = _service(aws, bucket, Flaky(), Log(), budget=0.5)
    _, response, _ = service.execute(REQUESTER, _body())
    # The Bucket still holds the request (it would store it once released): the caller was
    # answered by the budget, not by the Bucket, and the event waits in the outbox.
    assert not bucket.release.is_set()
    assert response["delivery_state"] == "queued"
    assert [i["trace_id"] for i in service.outbox()] == ["t-1"]


@pytest.mark.parametrize("mode", ["ok", "reject", "error"])
def test_delivery_has_one_shape_in_the_response_the_replay_and_the_execution(
    aws: dict[str, Any], bucket: FakeBucket, mode: str
) -> None:
    if mode != "ok":
        bucket.mode = mode
    service = _service(aws, bucket, Flaky(), Log(), budget=0.2)
    _, first, _ = service.execute(REQUESTER, _body())
    _, replay, _ = service.execute(REQUESTER, _body())
    stored = service.execution(REQUESTER, "t-1")
    keys = {"state", "attempts", "delivered_at", "next_attempt_at", "last_error", "rejected_status"}
    assert set(first["delivery"]) == set(replay["delivery"]) == set(stored["delivery"]) == keys
    assert first["delivery"] == replay["delivery"] == stored["delivery"]
    assert first["delivery"]["state"] == {"ok": "delivered", "reject": "rejected", "error": "queued"}[mode]
