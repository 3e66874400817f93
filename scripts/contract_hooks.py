"""Schemathesis hooks for `make contract` (loaded through SCHEMATHESIS_HOOKS).

They make positive (schema-valid) cases also valid by the facts a schema cannot state, the same
adjustments the in-process contract tests make: a cursor must be one the server issued, the body's
requester is the token's owner, a trace id is used once per body, a reminder is in the future.
Negative cases are left alone.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

TOKEN_OWNER = "bhiv_core"


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _future_reminders(payload: Any) -> None:
    if not isinstance(payload, dict):
        return
    raw_steps = payload.get("steps")
    steps: list[Any] = raw_steps if isinstance(raw_steps, list) else [payload]
    for step in steps:
        if isinstance(step, dict) and step.get("action_type") == "reminder" and isinstance(step.get("remind_at"), str):
            step["remind_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if not _positive(case):
        return
    label = case.operation.label
    query = case.query if isinstance(case.query, dict) else None
    body = case.body if isinstance(case.body, dict) else None
    if query is not None:
        query.pop("cursor", None)  # only cursors the server issued are valid
        if "since" in query and "until" in query:
            query.pop("until")  # `since` after `until` is a documented 400
        if "user_id" in query and "agent_id" in query:
            query["agent_id"] = query["user_id"]  # two names of one subject
        if label == "GET /core/read-context":
            if "agent_id" not in query and "user_id" not in query:
                query["agent_id"] = "user-1"  # one of the two is required (a documented 400)
            if "requester_id" in query:
                query["requester_id"] = TOKEN_OWNER  # the reader is the token's owner
    if body is None:
        return
    if label.startswith("POST /core/write-event") and isinstance(body.get("requester_id"), str):
        body["requester_id"] = TOKEN_OWNER
    if label == "POST /api/workflow/execute":
        body["trace_id"] = f"contract-{uuid.uuid4().hex}"  # a reused trace id is a documented 409
        data = body.get("data")
        if isinstance(data, dict):
            _future_reminders(data.get("payload"))
