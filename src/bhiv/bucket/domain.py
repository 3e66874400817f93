"""Pure Bucket logic: building stored events, idempotency, cursors. No I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bhiv import rfc3339
from bhiv.errors import BadRequest

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_ITEMS = 100
MAX_SUBJECT_CHARS = 256
FEED = "all"  # the partition of the by_time index: one feed of every event


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def isoformat(moment: datetime) -> str:
    # not strftime: its %Y does not zero-pad years before 1000, which breaks string order
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(value: str, name: str) -> datetime:
    """An RFC 3339 date-time query parameter (the spec's `format: date-time`), in UTC; else 400."""
    moment = rfc3339.parse(value)
    if moment is None:
        raise BadRequest(
            f"'{name}' must be an RFC 3339 date-time with a timezone, e.g. 2030-01-31T09:00:00Z; got {value!r}",
            code="invalid_parameter",
            field=name,
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00: before the earliest instant datetime holds
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


@dataclass(frozen=True)
class NewEvent:
    event_id: str
    event_type: str
    trace_id: str | None
    agent_key: str | None
    requester_id: str
    received_at: str
    event_data: dict[str, Any]
    event_data_json: str
    content_hash: str

    @property
    def ts_id(self) -> str:
        return f"{self.received_at}#{self.event_id}"


def build_event(
    event_data: dict[str, Any], requester_id: str, event_id: str | None, now: datetime, data_json: str | None = None
) -> NewEvent:
    """The stored form of an accepted event; the server owns every top-level field. `data_json`:
    canonical_json(event_data), when the caller has it already (the size check makes it)."""
    if data_json is None:
        data_json = canonical_json(event_data)
    content_hash = hashlib.sha256(f"{requester_id}\n{data_json}".encode()).hexdigest()
    agent = subject_of(event_data)
    trace = event_data.get("trace_id")
    return NewEvent(
        event_id=event_id or f"evt_{uuid.uuid4().hex}",
        event_type=str(event_data["event_type"]),
        trace_id=trace if isinstance(trace, str) and trace else None,
        agent_key=agent if isinstance(agent, str) and agent else None,
        requester_id=requester_id,
        received_at=isoformat(now),
        event_data=event_data,
        event_data_json=data_json,
        content_hash=content_hash,
    )


def subject_of(event_data: dict[str, Any]) -> str | None:
    """Who an event is about: `user_id`, else `agent_id`, else `metadata.user_id` (where the
    original Workflow Executor put the user)."""
    metadata = event_data.get("metadata")
    candidates = (
        event_data.get("user_id"),
        event_data.get("agent_id"),
        metadata.get("user_id") if isinstance(metadata, dict) else None,
    )
    for value in candidates:
        if isinstance(value, str) and value and len(value) <= MAX_SUBJECT_CHARS:
            return value
    return None


def public_event(stored: dict[str, Any]) -> dict[str, Any]:
    """The API shape of a stored event (see contracts/stored_event.schema.json).

    Every `event_data` field is also at the top level, as the original Bucket stored events
    (clients read `event["action_type"]`); the server-owned fields win over same-named ones."""
    data = json.loads(stored["event_data"])
    return {
        **data,
        "event_id": stored["event_id"],
        "event_type": stored["event_type"],
        "trace_id": stored.get("trace_id"),
        "user_id": stored.get("agent_key"),
        "requester_id": stored["requester_id"],
        "timestamp": stored["received_at"],
        "received_at": stored["received_at"],
        "event_data": data,
    }


# --- cursors: opaque, signed, bound to the query they came from -------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(position: dict[str, Any], query_fingerprint: str, secret: bytes) -> str:
    payload = _b64(canonical_json({"p": position, "q": query_fingerprint}).encode())
    signature = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:16])
    return f"{payload}.{signature}"


def decode_cursor(cursor: str, query_fingerprint: str, secret: bytes) -> dict[str, Any]:
    invalid = BadRequest("Invalid or tampered cursor", code="invalid_cursor", field="cursor")
    payload, _, signature = cursor.partition(".")
    if not payload or not signature or not cursor.isascii():  # compare_digest refuses non-ASCII str
        raise invalid
    expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:16])
    if not hmac.compare_digest(expected, signature):
        raise invalid
    try:
        body = json.loads(_unb64(payload))
    except ValueError:
        raise invalid from None
    if not isinstance(body, dict) or body.get("q") != query_fingerprint or not isinstance(body.get("p"), dict):
        raise BadRequest("Cursor belongs to a different query", code="invalid_cursor", field="cursor")
    position: dict[str, Any] = body["p"]
    return position
