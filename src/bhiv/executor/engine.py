"""Running a plan: steps in order, each retried by its policy; the first failed step ends the run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bhiv.executor.actions.base import Action, ActionContext, ActionFailed
from bhiv.executor.plan import Plan, Step


@dataclass
class StepResult:
    index: int
    action_type: str
    status: str  # succeeded | failed | skipped
    attempts: int = 0
    duration_ms: float = 0.0
    output: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.index,
            "action_type": self.action_type,
            "status": self.status,
            "attempts": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
            "output": self.output,
            "error": self.error,
        }


@dataclass
class RunResult:
    status: str  # success | failed
    steps: list[StepResult] = field(default_factory=list)
    duration_ms: float = 0.0


def run_step(
    step: Step,
    action: Action,
    plan: Plan,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    wait_left: list[float] | None = None,
) -> StepResult:
    """Run one step with its retries; `wait_left` ([seconds]) is the plan's remaining retry budget."""
    started = clock()
    result = StepResult(step.index, step.action_type, "failed")
    for attempt in range(1, step.retry.max_attempts + 1):
        if attempt > 1:
            delay = step.retry.delay_before(attempt)
            if wait_left is not None:
                if delay > wait_left[0]:
                    result.error = f"{result.error} (no retry: the plan's retry budget is spent)"
                    break
                wait_left[0] -= delay
            sleep(delay)
        result.attempts = attempt
        try:
            result.output = action.run(step.fields, ActionContext(plan.trace_id, plan.user_id, step.index, attempt))
            result.status, result.error = "succeeded", None
            break
        except ActionFailed as exc:
            result.error = str(exc)
            if not exc.retryable:
                break
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            break
    result.duration_ms = (clock() - started) * 1000
    return result


def run_plan(
    plan: Plan,
    registry: dict[str, Action],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
    retry_budget_s: float | None = None,
) -> RunResult:
    """Steps in order; waits between attempts never add up to more than `retry_budget_s`."""
    started = clock()
    wait_left = [retry_budget_s] if retry_budget_s is not None else None
    run = RunResult("success")
    for step in plan.steps:
        if run.status == "failed":
            run.steps.append(StepResult(step.index, step.action_type, "skipped"))
            continue
        outcome = run_step(step, registry[step.action_type], plan, sleep, clock, wait_left)
        run.steps.append(outcome)
        if outcome.status != "succeeded":
            run.status = "failed"
    run.duration_ms = (clock() - started) * 1000
    return run
