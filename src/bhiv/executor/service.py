"""The Executor's use cases: execute (idempotent by trace id), look up, redrive the outbox."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bhiv.bucket.domain import canonical_json, isoformat
from bhiv.contracts import event_type_errors
from bhiv.errors import Conflict, NotFound, StorageUnavailable
from bhiv.executor.actions.base import Action
from bhiv.executor.delivery import BucketClient, DeliveryOutcome, deliver
from bhiv.executor.engine import RunResult, run_plan
from bhiv.executor.event import (
    event_id_for,
    execution_result,
    invalid_plan_event,
    invalid_plan_result,
    workflow_event,
)
from bhiv.executor.plan import InvalidPlan, Plan, build_plan, retry_budget_s, skip_reason
from bhiv.storage.executions import QUEUED, ExecutionStore
from bhiv.validation import raise_for_errors, schema_errors

LEASE = timedelta(minutes=5)
SERVICE = "workflow-executor"


class Log(Protocol):
    def info(self, msg: object, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None: ...
    def error(self, msg: object, *args: Any, **kwargs: Any) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def execution_key(requester_id: str, trace_id: str) -> str:
    """Executions belong to the requester that ran them: lookup, replay and conflicts are per
    requester, so one requester can neither read nor squat another's trace ids. ('/' is in
    neither a requester id nor a trace id's pattern.)"""
    return f"{requester_id}/{trace_id}"


def redrive_delay(rounds: int) -> timedelta:
    """Wait before redrive round n (1, 2, 4, ... seconds, at most a minute)."""
    return timedelta(seconds=min(2 ** max(rounds - 1, 0), 60))


class ExecutorService:
    def __init__(
        self,
        store: ExecutionStore,
        bucket: BucketClient,
        registry: dict[str, Action],
        log: Log,
        *,
        delivery_budget_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._store = store
        self._bucket = bucket
        self._registry = registry
        self._log = log
        self._budget = delivery_budget_s
        self._sleep = sleep
        self._clock = clock

    # --- execute ----------------------------------------------------------------------------

    def execute(self, requester_id: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        raise_for_errors(schema_errors("workflow_request", body))
        trace_id: str = body["trace_id"]
        reason = skip_reason(body)
        if reason is not None:
            return (
                200,
                {
                    "trace_id": trace_id,
                    "status": "skipped",
                    "reason": reason,
                    "execution_result": {},
                    "event_id": None,
                    "delivery_state": None,
                },
                {},
            )
        budget = retry_budget_s()
        plan: Plan | None = None
        problem: InvalidPlan | None = None
        try:
            plan = build_plan(body, trace_id, self._registry, requester_id=requester_id, retry_budget=budget)
        except InvalidPlan as exc:
            problem = exc  # answered as a failed execution, and reported like one
        request_hash = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        now = self._clock()
        key = execution_key(requester_id, trace_id)
        existing = self._store.claim(key, request_hash, isoformat(now), isoformat(now + LEASE))
        if existing is not None:
            return self._replay(trace_id, request_hash, existing)
        if plan is not None:
            self._log.info(
                "Executing workflow",
                trace_id=trace_id,
                requester_id=requester_id,
                steps=[s.action_type for s in plan.steps],
            )
            run = run_plan(plan, self._registry, sleep=self._sleep, retry_budget_s=budget)
            result = execution_result(plan, run)
            event = workflow_event(plan, run, result)
            user_id = plan.user_id
        else:
            assert problem is not None
            payload = body["data"]["payload"]
            action_type = payload.get("action_type") if isinstance(payload.get("action_type"), str) else None
            user_id = _valid_user(payload.get("user_id"))
            self._log.warning(
                "Workflow cannot run", trace_id=trace_id, error_code=problem.error_code, reason=problem.message
            )
            run = RunResult("failed")
            result = invalid_plan_result(problem, action_type)
            event = invalid_plan_event(trace_id, user_id, action_type, result, requester_id)
        contract_errors = event_type_errors(event)
        if contract_errors:  # our own bug; the Bucket would refuse it, so say so loudly
            self._log.error("Workflow event breaks its contract", trace_id=trace_id, errors=contract_errors)
        event_id = event_id_for(trace_id, requester_id)
        response: dict[str, Any] = {
            "trace_id": trace_id,
            "status": run.status,
            "execution_result": result,
            "event_id": event_id,
            "user_id": user_id,
            "duration_ms": round(run.duration_ms, 3),
        }
        record = {
            "status": run.status,
            "event_id": event_id,
            "completed_at": isoformat(self._clock()),
            "created_at": isoformat(now),
            "delivery_attempts": 0,
            "requester_id": requester_id,
            "request_trace_id": trace_id,
        }
        # Persist first, with the event queued: if we die now the redriver still delivers it.
        first_retry = isoformat(self._clock() + timedelta(seconds=self._budget + 2))
        self._store.complete(key, request_hash, record, response, event, QUEUED, first_retry)
        outcome = self._deliver(trace_id, event_id, event)
        state, written = self._settle(key, outcome)
        response["delivery_state"] = state
        response["delivery"] = delivery_view({**record, **written, "delivery_state": state})
        return 200, response, {}

    def _deliver(
        self, trace_id: str, event_id: str, event: dict[str, Any], budget: float | None = None
    ) -> DeliveryOutcome:
        self._log.info(
            "Sending workflow event to Bucket", trace_id=trace_id, event_id=event_id, bucket=self._bucket.base_url
        )
        outcome = deliver(self._bucket, event_id, event, self._budget if budget is None else budget)
        if outcome.state == "delivered":
            self._log.info(
                "Workflow event logged to Bucket",
                trace_id=trace_id,
                event_id=event_id,
                attempts=outcome.attempts,
                duplicate=outcome.duplicate,
            )
        elif outcome.state == "rejected":
            self._log.error(
                "Bucket rejected event",
                trace_id=trace_id,
                event_id=event_id,
                status=outcome.status,
                reason=outcome.reason,
            )
        else:
            self._log.warning(
                "Bucket unreachable, event queued",
                trace_id=trace_id,
                event_id=event_id,
                status=outcome.status,
                reason=outcome.reason,
                attempts=outcome.attempts,
            )
        return outcome

    def _settle(
        self, key: str, outcome: DeliveryOutcome, attempts_before: int = 0, rounds_before: int = 0
    ) -> tuple[str, dict[str, Any]]:
        """Record the outcome; returns the delivery state and the delivery fields written."""
        attempts = attempts_before + outcome.attempts
        now = self._clock()
        if outcome.state == "delivered":
            fields: dict[str, Any] = {"delivered_at": isoformat(now), "delivery_attempts": attempts}
            self._store.settle(key, "delivered", fields)
            return "delivered", fields
        if outcome.state == "rejected":
            fields = {
                "rejected_status": outcome.status or 0,
                "last_error": outcome.reason or "",
                "delivery_attempts": attempts,
            }
            self._store.settle(key, "rejected", fields)
            return "rejected", fields
        rounds = rounds_before + 1
        fields = {
            "next_attempt_at": isoformat(now + redrive_delay(rounds)),
            "delivery_attempts": attempts,
            "last_error": outcome.reason or "unreachable",
        }
        self._store.reschedule(key, fields["next_attempt_at"], attempts, fields["last_error"], rounds)
        return QUEUED, fields

    def _replay(
        self, trace_id: str, request_hash: str, existing: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if existing.get("request_hash") != request_hash:
            raise Conflict(
                f"trace_id '{trace_id}' was already used for a different request",
                code="trace_id_conflict",
                field="trace_id",
            )
        if existing.get("state") != "completed":
            raise Conflict(
                f"trace_id '{trace_id}' is still executing; retry shortly",
                code="execution_in_progress",
                field="trace_id",
            )
        response: dict[str, Any] = json.loads(existing["response"])
        response["delivery_state"] = existing.get("delivery_state")
        response["delivery"] = delivery_view(existing)
        return 200, response, {"X-Idempotent-Replay": "true"}

    # --- reads ------------------------------------------------------------------------------

    def execution(self, requester_id: str, trace_id: str) -> dict[str, Any]:
        record = self._store.get(execution_key(requester_id, trace_id)) if len(trace_id) <= 256 else None
        if record is None or record.get("state") != "completed":
            raise NotFound(f"No completed execution with trace_id '{trace_id}'", code="execution_not_found")
        response = json.loads(record["response"])
        return {
            **response,
            "delivery_state": record.get("delivery_state"),
            "delivery": delivery_view(record),
            "created_at": record.get("created_at"),
            "completed_at": record.get("completed_at"),
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            queued = self._store.queued_count()
            storage = {"status": "ok"}
            status, code = "ok", 200
        except StorageUnavailable as exc:
            queued, storage, status, code = -1, {"status": "unreachable", "error": str(exc)[:200]}, "degraded", 503
        return code, {
            "status": status,
            "service": SERVICE,
            "storage": storage,
            "bucket": {"url": self._bucket.base_url, "reachable": self._bucket.reachable()},
            "outbox": {"queued": queued},
            "actions": sorted(self._registry),
        }

    # --- outbox -----------------------------------------------------------------------------

    def redrive(self, due_only: bool = True, limit: int = 25) -> dict[str, int]:
        """Deliver queued events (those due, or all); returns counts by outcome."""
        now = self._clock()
        items = self._store.due(isoformat(now), limit) if due_only else self._store.queued(limit)
        counts = {"delivered": 0, "rejected": 0, "queued": 0}
        for item in items:
            event = json.loads(item["event"])
            trace_id = item.get("request_trace_id") or item["trace_id"]  # the table key is requester/trace
            outcome = self._deliver(trace_id, item["event_id"], event, budget=min(self._budget, 0.5))
            state, _ = self._settle(
                item["trace_id"], outcome, int(item.get("delivery_attempts", 0)), int(item.get("redrive_rounds", 0))
            )
            counts[state] += 1
            if state == QUEUED:
                break  # the Bucket is still away: the rest keep their turn for the next pass
        return counts

    def outbox(self) -> list[dict[str, Any]]:
        return [
            {
                "trace_id": item.get("request_trace_id") or item.get("trace_id"),
                "requester_id": item.get("requester_id"),
                **{
                    k: item.get(k)
                    for k in ("event_id", "created_at", "delivery_attempts", "last_error", "next_attempt_at")
                },
            }
            for item in self._store.queued()
        ]


def _valid_user(value: Any) -> str | None:
    return value if isinstance(value, str) and 1 <= len(value) <= 256 else None


def delivery_view(record: dict[str, Any]) -> dict[str, Any]:
    """The `delivery` object, one shape in the first response, a replay and executions/{trace_id}
    (openapi/executor.yaml, Delivery): where the event's delivery stands now, from the stored record."""
    state = record.get("delivery_state")
    rejected = record.get("rejected_status") if state == "rejected" else None
    return {
        "state": state,
        "attempts": int(record.get("delivery_attempts") or 0),
        "delivered_at": record.get("delivered_at") if state == "delivered" else None,
        "next_attempt_at": record.get("next_attempt_at") if state == QUEUED else None,
        "last_error": (record.get("last_error") or None) if state != "delivered" else None,
        "rejected_status": int(rejected) if rejected is not None else None,
    }
