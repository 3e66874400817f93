"""The workflow_execution event: one per executed workflow, its id fixed by the trace id."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bhiv.executor.engine import RunResult
from bhiv.executor.plan import InvalidPlan, Plan

MAX_EVENT_BYTES = 30 * 1024  # the Bucket refuses events over 32 KB


def event_id_for(trace_id: str, requester_id: str) -> str:
    """Every retry and redrive of an execution's event carries this id, so the Bucket stores it
    once. Executions belong to their requester: two requesters' equal trace ids are two events."""
    return "wf_" + hashlib.sha256(f"{requester_id}\x00{trace_id}".encode()).hexdigest()[:40]


def execution_result(plan: Plan, run: RunResult) -> dict[str, Any]:
    """The original's locked contract: `success` always; on failure `error_code` and `message`."""
    result: dict[str, Any] = {"success": run.status == "success", "steps": [s.to_json() for s in run.steps]}
    if plan.single:
        only = run.steps[0]
        result.update({"action_type": only.action_type, "output": only.output, "error": only.error})
    failed = next((s for s in run.steps if s.status == "failed"), None)
    if failed is not None:
        result.update({"error_code": "action_failed", "message": f"{failed.action_type}: {failed.error}"})
    return result


def invalid_plan_result(problem: InvalidPlan, action_type: str | None) -> dict[str, Any]:
    """A workflow that could not run: a failed execution with the original's error code."""
    result: dict[str, Any] = {
        "success": False,
        "error_code": problem.error_code,
        "message": problem.message,
        "steps": [],
        "action_type": action_type,
        "output": None,
        "error": problem.message,
    }
    for name in ("field", "errors", "known"):
        if name in problem.details:
            result[name] = problem.details[name]
    return result


def invalid_plan_event(
    trace_id: str, user_id: str | None, action_type: str | None, result: dict[str, Any], requester_id: str
) -> dict[str, Any]:
    """Reported like any failed execution ("no silent failures"); action_type null when none was given."""
    event: dict[str, Any] = {
        "event_type": "workflow_execution",
        "trace_id": trace_id,
        "status": "failed",
        "action_type": action_type,
        "execution_result": result,
        "duration_ms": 0,
        "requested_by": requester_id,
    }
    if user_id:
        event["user_id"] = user_id
    return event


def workflow_event(plan: Plan, run: RunResult, result: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "workflow_execution",
        "trace_id": plan.trace_id,
        "status": run.status,
        "execution_result": result,
        "duration_ms": round(run.duration_ms, 3),
    }
    if plan.user_id:
        event["user_id"] = plan.user_id
    event["requested_by"] = plan.requester_id
    if plan.single:
        event["action_type"] = plan.steps[0].action_type
    else:
        event["steps"] = [{"action_type": s.action_type, "status": s.status} for s in run.steps]
    if len(json.dumps(event).encode()) > MAX_EVENT_BYTES:
        # keep the facts, drop the bulky outputs: the full result stays in the execution record
        event["execution_result"] = {
            "steps": [{k: v for k, v in s.items() if k != "output"} for s in result["steps"]],
            "outputs_truncated": True,
        }
    return event
