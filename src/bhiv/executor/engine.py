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
    step: Step, action: Action, plan: Plan, sleep: Callable[[float], None], clock: Callable[[], float]
) -> StepResult:
    started = clock()
    result = StepResult(step.index, step.action_type, "failed")
    for attempt in range(1, step.retry.max_attempts + 1):
        if attempt > 1:
            sleep(step.retry.delay_before(attempt))
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
) -> RunResult:
    started = clock()
    run = RunResult("success")
    for step in plan.steps:
        if run.status == "failed":
            run.steps.append(StepResult(step.index, step.action_type, "skipped"))
            continue
        outcome = run_step(step, registry[step.action_type], plan, sleep, clock)
        run.steps.append(outcome)
        if outcome.status != "succeeded":
            run.status = "failed"
    run.duration_ms = (clock() - started) * 1000
    return run
