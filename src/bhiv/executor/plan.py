"""Reading an execute request into a plan: which actions to run, with which retry policy.

Pure: the action registry's `validate` is the only thing consulted, and it does no I/O.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

from bhiv.errors import BadRequest, Unprocessable
from bhiv.executor.actions.base import Action

WORKFLOW = "workflow"
DECISIONS = ("respond", "task", "workflow", "insight", "fallback")
STEP_META = frozenset({"action_type", "retry", "trace_id", "user_id", "name"})
DEFAULT_FUNCTION_TIMEOUT_S = 60.0  # template.yaml ExecutorFunction Timeout (EXECUTOR_FUNCTION_TIMEOUT_S)
TIMEOUT_RESERVE_S = 10.0  # for the actions themselves, storage and the 1 s delivery to the Bucket


def retry_budget_s() -> float:
    """The most a plan may wait between attempts, all steps together: the function's timeout
    (env EXECUTOR_FUNCTION_TIMEOUT_S, set from template.yaml) minus a reserve for the work itself."""
    raw = os.environ.get("EXECUTOR_FUNCTION_TIMEOUT_S")
    try:
        timeout = float(raw) if raw else DEFAULT_FUNCTION_TIMEOUT_S
    except ValueError:
        timeout = DEFAULT_FUNCTION_TIMEOUT_S
    return max(0.0, timeout - TIMEOUT_RESERVE_S)


class InvalidPlan(Unprocessable):
    """The payload names a workflow that cannot run (no or an unknown action_type, missing or bad
    fields). The original contract answers this as a *failed execution* (200, `status: failed`,
    reported to the Bucket), not as a refused request: `error_code` is the original's code."""

    def __init__(self, message: str, *, error_code: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.error_code = error_code


def _field_error_code(action_type: str, problems: list[dict[str, str]]) -> str:
    """The original's codes: `missing_<field>` (a task's title: `missing_task_title`) for a
    required field left out, `invalid_action_fields` for anything else."""
    first = problems[0]
    name = first["field"].rsplit(".", 1)[-1]
    if first["message"] in ("is required", "must not be empty"):
        return "missing_task_title" if (action_type, name) == ("task", "title") else f"missing_{name}"
    return "invalid_action_fields"


@dataclass(frozen=True)
class RetryPolicy:
    """Step Functions' Retrier in spirit: max attempts, first interval, backoff rate."""

    max_attempts: int = 3
    interval_s: float = 1.0
    backoff_rate: float = 2.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt n (n >= 2)."""
        return float(self.interval_s * self.backoff_rate ** (attempt - 2))

    def total_wait(self) -> float:
        """Worst case: every wait before attempts 2..max_attempts."""
        return sum(self.delay_before(n) for n in range(2, self.max_attempts + 1))


@dataclass(frozen=True)
class Step:
    index: int
    action_type: str
    fields: dict[str, Any]
    retry: RetryPolicy


@dataclass(frozen=True)
class Plan:
    trace_id: str
    user_id: str | None
    steps: tuple[Step, ...]
    single: bool  # the original single-action shape (payload.action_type)
    requester_id: str = "anonymous"  # who asked for it (the token's owner); the execution is theirs


def _retry(raw: Any, where: str) -> RetryPolicy:
    if raw is None:
        return RetryPolicy()
    if not isinstance(raw, dict):
        raise InvalidPlan(f"'{where}' must be an object", error_code="invalid_retry", field=where)
    unknown = set(raw) - {"max_attempts", "interval_seconds", "backoff_rate"}
    if unknown:
        raise InvalidPlan(
            f"'{where}' has unknown fields: {', '.join(sorted(unknown))}", error_code="invalid_retry", field=where
        )
    attempts = raw.get("max_attempts", 3)
    interval = raw.get("interval_seconds", 1.0)
    backoff = raw.get("backoff_rate", 2.0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10:
        raise InvalidPlan(
            f"'{where}.max_attempts' must be an integer 1..10",
            error_code="invalid_retry",
            field=f"{where}.max_attempts",
        )
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 <= interval <= 60:
        raise InvalidPlan(
            f"'{where}.interval_seconds' must be 0..60", error_code="invalid_retry", field=f"{where}.interval_seconds"
        )
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 1 <= backoff <= 10:
        raise InvalidPlan(
            f"'{where}.backoff_rate' must be 1..10", error_code="invalid_retry", field=f"{where}.backoff_rate"
        )
    if not all(math.isfinite(float(v)) for v in (interval, backoff)):
        raise InvalidPlan(f"'{where}' must hold finite numbers", error_code="invalid_retry", field=where)
    return RetryPolicy(attempts, float(interval), float(backoff))


def _step(index: int, raw: Any, where: str, registry: dict[str, Action]) -> Step:
    if not isinstance(raw, dict):
        raise InvalidPlan(f"'{where}' must be an object", error_code="invalid_step", field=where)
    action_type = raw.get("action_type")
    if not isinstance(action_type, str) or not action_type:
        raise InvalidPlan(
            f"'{where}.action_type' is required",
            error_code="missing_action_type",
            field=f"{where}.action_type",
            known=sorted(registry),
        )
    action = registry.get(action_type)
    if action is None:
        raise InvalidPlan(
            f"Unsupported action_type '{action_type}' (known: {', '.join(sorted(registry))})",
            error_code="unsupported_action_type",
            code="unknown_action_type",
            field=f"{where}.action_type",
            known=sorted(registry),
        )
    fields = {k: v for k, v in raw.items() if k not in STEP_META}
    problems = action.validate(fields)
    if problems:
        errors = [{"field": f"{where}.{p.field}", "message": p.message} for p in problems]
        raise InvalidPlan(
            f"Invalid '{action_type}' step: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            error_code=_field_error_code(action_type, errors),
            code="invalid_action_fields",
            field=errors[0]["field"],
            errors=errors,
        )
    return Step(index, action_type, fields, _retry(raw.get("retry"), f"{where}.retry"))


def skip_reason(body: dict[str, Any]) -> str | None:
    decision = body.get("decision")
    if decision == WORKFLOW:
        return None
    return f"decision '{decision}' is not '{WORKFLOW}': no actions run, no event emitted"


def _check_retry_budget(plan: Plan, budget_s: float) -> None:
    waits = [step.retry.total_wait() for step in plan.steps]
    total = sum(waits)
    if total <= budget_s:
        return
    worst = max(range(len(waits)), key=lambda i: waits[i])
    raise Unprocessable(
        f"Retry waits add up to {total:g} s in the worst case; the limit is {budget_s:g} s "
        "(the function's timeout minus a reserve). Lower max_attempts, interval_seconds or backoff_rate.",
        code="retry_budget_exceeded",
        field="data.payload.retry" if plan.single else f"data.payload.steps.{worst}.retry",
        total_wait_seconds=total,
        limit_seconds=budget_s,
    )


def build_plan(
    body: dict[str, Any],
    trace_id: str,
    registry: dict[str, Action],
    *,
    requester_id: str = "anonymous",
    retry_budget: float | None = None,
) -> Plan:
    """The plan of a workflow request; 400/422 for anything it cannot run as asked."""
    plan = _build_plan(body, trace_id, registry)
    _check_retry_budget(plan, retry_budget_s() if retry_budget is None else retry_budget)
    return replace(plan, requester_id=requester_id)


def _build_plan(body: dict[str, Any], trace_id: str, registry: dict[str, Action]) -> Plan:
    data = body.get("data")
    payload = data.get("payload") if isinstance(data, dict) else None
    if not isinstance(payload, dict) or not payload:
        raise BadRequest(
            "A 'workflow' decision needs data.payload with the action(s) to run",
            code="missing_workflow_payload",
            field="data.payload",
        )
    user_id = payload.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or not 1 <= len(user_id) <= 256):
        raise InvalidPlan(
            "'data.payload.user_id' must be a string of 1..256 characters",
            error_code="invalid_user_id",
            field="data.payload.user_id",
        )
    if "steps" in payload:
        raw_steps = payload["steps"]
        if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= 25:
            raise InvalidPlan(
                "'data.payload.steps' must be a list of 1..25 steps",
                error_code="invalid_steps",
                field="data.payload.steps",
            )
        if "action_type" in payload:
            raise InvalidPlan(
                "Give either 'action_type' (one action) or 'steps', not both",
                error_code="invalid_steps",
                field="data.payload.action_type",
            )
        steps = tuple(_step(i, raw, f"data.payload.steps.{i}", registry) for i, raw in enumerate(raw_steps))
        return Plan(trace_id, user_id, steps, single=False)
    single = {k: v for k, v in payload.items() if k != "user_id"}
    return Plan(trace_id, user_id, (_step(0, single, "data.payload", registry),), single=True)
