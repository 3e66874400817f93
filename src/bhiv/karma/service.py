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
        ranked = recommendations(self._policy, qtable, user.role)
        return {
            "user_id": user.user_id,
            "role": user.role,
            "merit_score": _number(round(merit, 6)),
            "paap_score": _number(round(user.paap, 6)),
            "net_karma": _number(round(merit, 6)),
            "weighted_karma_score": _number(round(merit - self._policy.paap_weight * user.paap, 6)),
            "balances": {token: _number(user.balances.get(token, 0.0)) for token in TOKENS},
            "module_scores": {
                token: _number(round(user.balances.get(token, 0.0) * weight, 6))
                for token, weight in self._policy.merit_weights.items()
            },
            "action_stats": user.action_stats,
            "corrective_guidance": corrective_guidance(self._policy, user, merit, ranked),
            "events_applied": user.events_applied,
            "capped_stats": user.capped_stats,
            "recommended_actions": ranked,
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
        _check_original_direct_event(body)
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
        for field, kept_as in (("source", "source"), ("timestamp", "sent_at")):
            if isinstance(body.get(field), str) and kept_as not in event_data:
                event_data[kept_as] = body[field]
        event = domain.build_event(event_data, KARMA_REQUESTER, None, datetime.now(UTC))
        self._events.append(event)
        self._log.info(
            f"Received event from {KARMA_REQUESTER}",
            event_id=event.event_id,
            event_type=DIRECT_EVENT_TYPE,
            user_id=data["user_id"],
        )
        # The original response shape (senders check for 200), plus the event's id in the log.
        return {
            "status": "success",
            "success": True,
            "event_type": DIRECT_EVENT_TYPE,
            "event_id": event.event_id,
            "message": "Event recorded in the Bucket; Karma applies it from the stream",
            "data": {"user_id": data["user_id"], "action": data["action"], "role": data["role"]},
            "timestamp": event.received_at,
            "routing_info": {
                "recorded_in": "bucket",
                "requester_id": KARMA_REQUESTER,
                "event_id": event.event_id,
                "applied_by": "karma stream consumer",
            },
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


ORIGINAL_REQUIRED = ("user_id", "action", "role")


def _check_original_direct_event(body: Any) -> None:
    """The original's 400s: a type other than life_event, data without user_id/action/role."""
    if not isinstance(body, dict):
        return  # the schema answers 422
    kind = body.get("type")
    if isinstance(kind, str) and kind != DIRECT_EVENT_TYPE:
        raise BadRequest(
            f"Unknown event type {kind!r}; this service records '{DIRECT_EVENT_TYPE}'",
            code="unknown_event_type",
            field="type",
        )
    data = body.get("data")
    if isinstance(data, dict):
        missing = [name for name in ORIGINAL_REQUIRED if name not in data]
        if missing:
            raise BadRequest(
                f"data needs {', '.join(ORIGINAL_REQUIRED)}; missing: {', '.join(missing)}",
                code="missing_field",
                field=f"data.{missing[0]}",
            )


def corrective_guidance(policy: Policy, user: UserState, merit: float, ranked: list[dict[str, Any]]) -> list[str]:
    """Plain advice that follows from the policy: the price of the next penalty while earlier ones
    are within their window, and what the next role needs."""
    guidance: list[str] = []
    escalating = policy.penalty_escalation()
    if escalating is not None and user.last_updated:
        name, esc = escalating
        now = datetime.fromisoformat(user.last_updated.replace("Z", "+00:00"))
        recent = [t for t in user.cheat_times if now - esc.window < datetime.fromisoformat(t.replace("Z", "+00:00"))]
        if recent:
            cost = esc.amounts[min(len(recent), len(esc.amounts) - 1)]
            days = esc.window.days
            guidance.append(
                f"{len(recent)} '{name}' in the last {days} days: the next one costs {_number(-cost)} {esc.token}"
            )
    higher = [(role, threshold) for role, threshold in policy.roles if threshold > merit]
    if higher:
        role, threshold = higher[0]
        best = next((r["action"] for r in ranked if r["action"] != (escalating or ("",))[0]), None)
        advice = f"{_number(round(threshold - merit, 6))} more merit to reach '{role}'"
        guidance.append(advice + (f"; the best-valued action for a {user.role} is '{best}'" if best else ""))
    return guidance


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
