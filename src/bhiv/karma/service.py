"""Karma's HTTP use cases and its stream handler's logic. Storage is injected."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any, Protocol

from bhiv.bucket import domain
from bhiv.errors import BadRequest, NotFound, StorageUnavailable, Unprocessable
from bhiv.karma.consumer import EventRejected, KarmaConsumer, StoredEvent
from bhiv.karma.engine import QTable, UserState, recommendations
from bhiv.karma.policy import TOKENS, Policy
from bhiv.validation import raise_for_errors, schema_errors

KARMA_REQUESTER = "karma"
DIRECT_EVENT_TYPE = "life_event"
MAX_USER_ID = 256  # events name users in 1..256 characters (contracts/): a longer id is nobody
MAX_CURSOR_KEY_BYTES = 1024  # DynamoDB's sort key limit: a longer "cursor" was never issued
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII only: int() also reads "٣" and raises on "²" or "--5"


class KarmaReads(Protocol):
    def user(self, user_id: str) -> UserState | None: ...
    def qtable(self, policy_version: str) -> QTable | None: ...
    def counters(self) -> dict[str, int]: ...
    def history(self, user_id: str, limit: int, start_after: str | None) -> tuple[list[dict[str, Any]], str | None]: ...
    def ping(self) -> None: ...


class EventLog(Protocol):
    def append(self, event: domain.NewEvent) -> dict[str, Any] | None: ...


class Queue(Protocol):
    def depth(self) -> int | None: ...


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class KarmaService:
    def __init__(
        self, store: KarmaReads, events: EventLog, dlq: Queue, policy: Policy, consumer: KarmaConsumer, log: Any
    ) -> None:
        self._store = store
        self._events = events
        self._dlq = dlq
        self._policy = policy
        self._consumer = consumer
        self._log = log

    # --- stream ---------------------------------------------------------------------------

    def handle_stream(self, event: dict[str, Any]) -> dict[str, Any]:
        """Lambda DynamoDB-stream handler body: returns batchItemFailures from the first failure on."""
        records = event.get("Records") or []
        parsed: list[StoredEvent] = []
        positions: list[int] = []
        first_bad: int | None = None
        for index, record in enumerate(records):
            if record.get("eventName") != "INSERT":
                continue  # the log is append-only: nothing else carries a new event
            try:
                parsed.append(StoredEvent.from_image(record["dynamodb"]["NewImage"]))
                positions.append(index)
            except (KeyError, TypeError, ValueError) as exc:
                self._log.warning(
                    "Malformed stream record",
                    reason=str(exc),
                    sequence_number=record.get("dynamodb", {}).get("SequenceNumber"),
                )
                first_bad = index
                break
        try:
            self._consumer.apply(parsed)
        except EventRejected as rejected:
            first_bad = positions[rejected.index]
        if first_bad is None:
            return {"batchItemFailures": []}
        return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in records[first_bad:]]}

    # --- HTTP -----------------------------------------------------------------------------

    def karma(self, user_id: str) -> dict[str, Any]:
        user = self._store.user(user_id) if len(user_id) <= MAX_USER_ID else None
        if user is None:
            raise NotFound(f"No karma recorded for user '{user_id}'", code="user_not_found")
        qtable = self._store.qtable(self._policy.version) or QTable.new(self._policy)
        merit = self._policy.merit(user.balances)
        return {
            "user_id": user.user_id,
            "role": user.role,
            "merit_score": _number(round(merit, 6)),
            "balances": {token: _number(user.balances.get(token, 0.0)) for token in TOKENS},
            "action_stats": user.action_stats,
            "events_applied": user.events_applied,
            "capped_stats": user.capped_stats,
            "recommended_actions": recommendations(self._policy, qtable, user.role),
            "policy_version": self._policy.version,
            "last_updated": user.last_updated,
        }

    def history(self, user_id: str, params: dict[str, str]) -> dict[str, Any]:
        limit = _int_param(params, "limit", 50, 1, 1000)
        start = None
        if params.get("cursor"):
            try:
                start = base64.urlsafe_b64decode(params["cursor"] + "=" * (-len(params["cursor"]) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("Invalid cursor", code="invalid_cursor", field="cursor") from None
            if not start.startswith("h#") or len(start.encode()) > MAX_CURSOR_KEY_BYTES:
                raise BadRequest("Invalid cursor", code="invalid_cursor", field="cursor")
        if len(user_id) > MAX_USER_ID or self._store.user(user_id) is None:
            raise NotFound(f"No karma recorded for user '{user_id}'", code="user_not_found")
        entries, last = self._store.history(user_id, limit, start)
        cursor = base64.urlsafe_b64encode(last.encode()).decode().rstrip("=") if last else None
        return {"user_id": user_id, "events": entries, "next_cursor": cursor}

    def q_table(self) -> dict[str, Any]:
        qtable = self._store.qtable(self._policy.version) or QTable.new(self._policy)
        states, actions = self._policy.states, self._policy.action_names
        return {
            "states": states,
            "actions": actions,
            "values": [[qtable.get(s, a, self._policy.initial_q) for a in actions] for s in states],
            "updates": qtable.updates,
            "policy_version": self._policy.version,
            "alpha": self._policy.alpha,
            "gamma": self._policy.gamma,
        }

    def system_stats(self) -> dict[str, Any]:
        counters = self._store.counters()
        return {
            "users_by_role": {role: counters.get(f"users:{role}", 0) for role in self._policy.states},
            "users_total": sum(counters.get(f"users:{role}", 0) for role in self._policy.states),
            "events": {
                "applied": counters.get("applied", 0),
                "capped": counters.get("capped", 0),
                "ignored": counters.get("ignored", 0),
                "failed": counters.get("failed", 0),
            },
            "dlq_depth": self._dlq.depth(),
            "policy_version": self._policy.version,
        }

    def record_direct_event(self, body: Any) -> dict[str, Any]:
        raise_for_errors(schema_errors("karma_direct_event", body))
        data = body["data"]
        problems = []
        if data["action"] not in self._policy.actions:
            problems.append(
                {
                    "field": "data.action",
                    "message": f"unknown action {data['action']!r}; known: {', '.join(self._policy.action_names)}",
                }
            )
        if data["role"] not in self._policy.states:
            problems.append(
                {
                    "field": "data.role",
                    "message": f"unknown role {data['role']!r}; known: {', '.join(self._policy.states)}",
                }
            )
        if problems:
            raise Unprocessable(problems[0]["message"], field=problems[0]["field"], errors=problems)
        event_data = {"event_type": DIRECT_EVENT_TYPE, **{k: v for k, v in data.items() if v is not None}}
        event = domain.build_event(event_data, KARMA_REQUESTER, None, datetime.now(UTC))
        self._events.append(event)
        self._log.info(
            f"Received event from {KARMA_REQUESTER}",
            event_id=event.event_id,
            event_type=DIRECT_EVENT_TYPE,
            user_id=data["user_id"],
        )
        return {
            "success": True,
            "status": "accepted",
            "event_id": event.event_id,
            "message": "Event recorded in the Bucket; Karma applies it from the stream",
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            self._store.ping()
        except StorageUnavailable as exc:
            return 503, {
                "status": "unhealthy",
                "service": "karma",
                "storage": {"status": "unreachable", "error": str(exc)[:200]},
            }
        return 200, {
            "status": "healthy",
            "service": "karma",
            "storage": {"status": "ok"},
            "policy_version": self._policy.version,
        }


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise BadRequest(f"'{name}' must be an integer {low}..{high}", code="invalid_parameter", field=name)
    value = int(raw) if len(raw) <= 12 else high + 1  # a longer one is out of range (and int() may refuse it)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}", code="invalid_parameter", field=name)
    return value
