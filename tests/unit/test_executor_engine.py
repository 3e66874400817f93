"""The Executor's plan reading and engine, with fake actions and a fake clock: no AWS, no sleeping."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from bhiv.contracts import event_type_errors
from bhiv.errors import BadRequest, Unprocessable
from bhiv.executor.actions.base import ActionContext, ActionFailed, FieldProblem
from bhiv.executor.engine import run_plan
from bhiv.executor.event import event_id_for, execution_result, workflow_event
from bhiv.executor.plan import RetryPolicy, build_plan, skip_reason


class Flaky:
    """Fails `failures` times (retryable or not), then succeeds; records every call."""

    name: ClassVar[str] = "flaky"
    required: ClassVar[tuple[str, ...]] = ("title",)

    def __init__(self, failures: int = 0, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.calls: list[ActionContext] = []

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        return [] if isinstance(fields.get("title"), str) else [FieldProblem("title", "required")]

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        self.calls.append(context)
        if len(self.calls) <= self.failures:
            raise ActionFailed("temporarily broken", retryable=self.retryable)
        return {"done": fields["title"]}


def _body(payload: dict[str, Any]) -> dict[str, Any]:
    return {"trace_id": "t1", "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}}


def test_other_decisions_are_skipped_with_a_reason() -> None:
    assert skip_reason({"decision": "respond"}) is not None
    assert skip_reason({"decision": "workflow"}) is None


def test_workflow_without_payload_is_400() -> None:
    with pytest.raises(BadRequest) as err:
        build_plan({"decision": "workflow"}, "t", {"flaky": Flaky()})
    assert err.value.code == "missing_workflow_payload"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"action_type": "teleport"}, "data.payload.action_type"),
        ({"title": "x"}, "data.payload.action_type"),
        ({"action_type": "flaky"}, "data.payload.title"),
        ({"steps": [{"action_type": "flaky", "title": "a"}, {"action_type": "flaky"}]}, "data.payload.steps.1.title"),
        (
            {"steps": [{"action_type": "flaky", "title": "a", "retry": {"max_attempts": 0}}]},
            "data.payload.steps.0.retry.max_attempts",
        ),
        ({"steps": []}, "data.payload.steps"),
    ],
)
def test_bad_actions_are_422_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(Unprocessable) as err:
        build_plan(_body(payload), "t1", {"flaky": Flaky()})
    assert err.value.details["field"] == field


def test_retry_policy_defaults_like_step_functions() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.delay_before(2), policy.delay_before(3)) == (3, 1.0, 2.0)


def test_a_retryable_failure_is_retried_with_backoff_then_succeeds() -> None:
    action = Flaky(failures=2)
    sleeps: list[float] = []
    plan = build_plan(_body({"action_type": "flaky", "title": "x", "user_id": "u1"}), "t1", {"flaky": action})
    run = run_plan(plan, {"flaky": action}, sleep=sleeps.append)
    assert run.status == "success"
    assert sleeps == [1.0, 2.0]
    assert [c.attempt for c in action.calls] == [1, 2, 3]
    assert run.steps[0].attempts == 3 and run.steps[0].output == {"done": "x"}


def test_a_permanent_failure_is_not_retried_and_later_steps_are_skipped() -> None:
    broken, fine = Flaky(failures=5, retryable=False), Flaky()
    registry = {"flaky": broken, "fine": fine}
    payload = {"steps": [{"action_type": "flaky", "title": "a"}, {"action_type": "fine", "title": "b"}]}
    plan = build_plan(_body(payload), "t1", registry)  # type: ignore[arg-type]
    run = run_plan(plan, registry, sleep=lambda s: None)  # type: ignore[arg-type]
    assert run.status == "failed"
    assert [(s.status, s.attempts) for s in run.steps] == [("failed", 1), ("skipped", 0)]
    assert fine.calls == []


def test_exhausted_retries_fail_the_step_with_the_last_error() -> None:
    action = Flaky(failures=10)
    payload = {"action_type": "flaky", "title": "x", "retry": {"max_attempts": 2, "interval_seconds": 0.5}}
    plan = build_plan(_body(payload), "t1", {"flaky": action})
    run = run_plan(plan, {"flaky": action}, sleep=lambda s: None)
    assert (run.status, run.steps[0].attempts, run.steps[0].error) == ("failed", 2, "temporarily broken")


def test_the_event_satisfies_its_contract_and_its_id_follows_the_trace() -> None:
    action = Flaky()
    for payload in (
        {"action_type": "flaky", "title": "x", "user_id": "u1"},
        {"steps": [{"action_type": "flaky", "title": "a"}], "user_id": "u2"},
    ):
        plan = build_plan(_body(payload), "t1", {"flaky": action})
        run = run_plan(plan, {"flaky": action}, sleep=lambda s: None)
        event = workflow_event(plan, run, execution_result(plan, run))
        assert event_type_errors(event) == []
        assert event["trace_id"] == "t1" and event["status"] == "success"
    assert event_id_for("t1", "a") == event_id_for("t1", "a") != event_id_for("t2", "a")
    assert event_id_for("t1", "a") != event_id_for("t1", "b")  # executions belong to their requester
