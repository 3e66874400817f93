"""Finding 8: unbounded retry waits. Step retry settings allowed a wait of 60·10⁸ s before attempt
10, far beyond the function's timeout. Now the worst-case waits of a plan must fit the function's
timeout (minus a reserve), and the engine never waits past that budget."""

from __future__ import annotations

from typing import Any

from bhiv.executor.engine import run_plan
from bhiv.executor.plan import build_plan
from bhiv.local import template
from tests.security.conftest import Api, envelope, task_workflow
from tests.unit.test_executor_engine import Flaky


def test_a_retry_policy_beyond_the_timeout_is_422(executor: Api) -> None:
    from bhiv.executor.plan import retry_budget_s

    body = task_workflow("retry-1", retry={"max_attempts": 10, "interval_seconds": 60, "backoff_rate": 10})
    response = executor.request("POST", "/api/workflow/execute", body=body)
    assert response.status_code == 422, response.body
    error = envelope(response)["error"]
    assert error["code"] == "retry_budget_exceeded" and error["field"] == "data.payload.retry"
    assert error["limit_seconds"] == retry_budget_s()


def test_many_steps_whose_waits_add_up_past_the_timeout_are_422(executor: Api) -> None:
    step = {"action_type": "task", "title": "t", "retry": {"max_attempts": 3, "interval_seconds": 10}}  # 30 s each
    body = task_workflow("retry-2")
    body["data"]["payload"] = {"user_id": "u-1", "steps": [step, step]}  # type: ignore[index]
    response = executor.request("POST", "/api/workflow/execute", body=body)
    assert response.status_code == 422, response.body
    assert envelope(response)["error"]["field"] == "data.payload.steps.0.retry"


def test_the_budget_follows_the_function_timeout_in_the_template() -> None:
    from bhiv.executor.plan import retry_budget_s

    function = template.load_template()["Resources"]["ExecutorFunction"]["Properties"]
    assert float(function["Environment"]["Variables"]["EXECUTOR_FUNCTION_TIMEOUT_S"]) == float(function["Timeout"])
    assert 0 < retry_budget_s() < float(function["Timeout"])


def test_default_retries_fit() -> None:
    from bhiv.executor.plan import RetryPolicy, retry_budget_s

    body: dict[str, Any] = task_workflow("retry-3")
    body["data"]["payload"] = {"steps": [{"action_type": "flaky", "title": "t"}] * 10}
    build_plan(body, "retry-3", {"flaky": Flaky()})  # type: ignore[dict-item]
    assert RetryPolicy().total_wait() * 10 <= retry_budget_s()


def test_the_engine_never_waits_past_its_budget() -> None:
    action = Flaky(failures=100)
    body: dict[str, Any] = task_workflow("retry-4")
    body["data"]["payload"] = {
        "action_type": "flaky",
        "title": "t",
        "retry": {"max_attempts": 10, "interval_seconds": 1},
    }
    plan = build_plan(body, "retry-4", {"flaky": action}, retry_budget=1000)  # type: ignore[dict-item]
    slept: list[float] = []
    run = run_plan(plan, {"flaky": action}, sleep=slept.append, retry_budget_s=5.5)  # type: ignore[dict-item]
    assert sum(slept) <= 5.5 and run.status == "failed"
    assert "retry budget" in (run.steps[0].error or "")
