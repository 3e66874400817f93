"""The Bucket's use cases. Storage is injected; everything here is testable with fakes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bhiv.auth import Authenticator, Principal
from bhiv.bucket import domain
from bhiv.contracts import event_type_errors
from bhiv.errors import ApiError, BadRequest, Conflict, NotFound, PayloadTooLarge, StorageUnavailable, Unprocessable
from bhiv.storage.events import EventPage, EventQuery
from bhiv.validation import raise_for_errors, schema_errors

VERSION = "2.0.0"
TRACKED_AGENTS_SHOWN = 100  # /core/stats lists at most this many agent ids (agents_with_context counts all)
CONTEXT_TYPES_WINDOW = 10  # read-context's recent_event_types: distinct types of the newest 10 events
MAX_SINGLE_BODY_BYTES = 64 * 1024
LIST_FILTERS = ("event_type", "requester_id", "trace_id", "user_id", "agent_id")


class EventRepository(Protocol):
    def append(self, event: domain.NewEvent) -> dict[str, Any] | None: ...
    def append_many(self, events: list[domain.NewEvent]) -> list[dict[str, Any] | None]: ...
    def get(self, event_id: str) -> dict[str, Any] | None: ...
    def query(self, query: EventQuery) -> EventPage: ...
    def count(self, query: EventQuery) -> int: ...
    def count_after(self, agent_key: str | None, after_ts_id: str | None) -> int: ...
    def ping(self) -> None: ...


class StatsRepository(Protocol):
    def totals(self) -> dict[str, Any]: ...
    def breakdown(self) -> dict[str, dict[str, int]]: ...
    def agent(self, agent_key: str) -> dict[str, Any] | None: ...
    def agent_ids(self, limit: int) -> list[str]: ...


class Log(Protocol):
    def info(self, msg: object, *args: Any, **kwargs: Any) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BucketService:
    def __init__(
        self,
        events: EventRepository,
        stats: StatsRepository,
        auth: Authenticator,
        log: Log,
        cursor_secret: bytes,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._events = events
        self._stats = stats
        self._auth = auth
        self._log = log
        self._cursor_secret = cursor_secret
        self._clock = clock

    def authenticate(self, authorization: str | None, scope: str) -> Principal:
        return self._auth.authenticate(authorization, scope)

    def throttle(self, principal: Principal) -> None:
        """One token of the requester's write budget (429 when it is spent)."""
        self._auth.throttle(principal, "events:write")

    def throttle_batch_rest(self, principal: Principal, body: Any) -> None:
        """A batch costs one token per event: the rest of it, after the one `throttle` took."""
        events = body.get("events") if isinstance(body, dict) else None
        if isinstance(events, list) and len(events) > 1:
            self._auth.throttle(principal, "events:write", min(len(events), domain.MAX_BATCH_ITEMS) - 1)

    # --- writes -----------------------------------------------------------------------------

    def write_event(self, principal: Principal, body: Any) -> tuple[int, dict[str, Any]]:
        raise_for_errors(schema_errors("write_event_request", body))
        requester = self._auth.requester_for_write(principal, body["requester_id"])
        event_data: dict[str, Any] = body["event_data"]
        data_json = self._check_event(event_data, "event_data")
        outcome, event_id = self._store(requester, event_data, body.get("event_id"), data_json)
        # 200 for new and duplicate alike: every original client counts only 200 as stored
        if outcome == "duplicate":
            return 200, {"success": True, "message": "Duplicate event ignored", "event_id": event_id, "duplicate": True}
        return 200, {"success": True, "message": "Event received", "event_id": event_id, "duplicate": False}

    def write_events(self, principal: Principal, body: Any) -> tuple[int, dict[str, Any]]:
        if isinstance(body, dict) and isinstance(body.get("events"), list):
            count = len(body["events"])
            if count > domain.MAX_BATCH_ITEMS:
                raise PayloadTooLarge(
                    f"A batch holds at most {domain.MAX_BATCH_ITEMS} events, got {count}",
                    limit_items=domain.MAX_BATCH_ITEMS,
                )
        raise_for_errors(schema_errors("write_events_request", body))
        requester = self._auth.requester_for_write(principal, body["requester_id"])
        results: list[dict[str, Any] | None] = [None] * len(body["events"])
        accepted: list[tuple[int, domain.NewEvent]] = []
        first_of_id: dict[str, domain.NewEvent] = {}
        now = self._clock()
        for index, item in enumerate(body["events"]):
            event_id = item.get("event_id")
            try:
                raise_for_errors(
                    schema_errors("write_event_request", {"requester_id": requester, **item}, prefix=f"events.{index}")
                )
                data_json = self._check_event(item["event_data"], f"events.{index}.event_data")
            except (Unprocessable, PayloadTooLarge) as exc:
                results[index] = _item_error(index, event_id, exc)
                continue
            # one microsecond apart, so a batch reads back in the order it was sent
            moment = now + timedelta(microseconds=index)
            event = domain.build_event(item["event_data"], requester, event_id, moment, data_json)
            earlier = first_of_id.get(event.event_id)
            if earlier is None:
                first_of_id[event.event_id] = event
                accepted.append((index, event))
            elif earlier.content_hash == event.content_hash:
                results[index] = {"index": index, "status": "duplicate", "event_id": event.event_id}
            else:
                results[index] = _item_error(index, event_id, _conflict(event.event_id))
        existing = self._events.append_many([event for _, event in accepted]) if accepted else []
        for (index, event), found in zip(accepted, existing, strict=True):
            if found is None:
                self._log_received(event)
                results[index] = {"index": index, "status": "stored", "event_id": event.event_id}
            elif found.get("content_hash") == event.content_hash:
                results[index] = {"index": index, "status": "duplicate", "event_id": event.event_id}
            else:
                results[index] = _item_error(index, event.event_id, _conflict(event.event_id))
        final = [r for r in results if r is not None]
        stored_any = any(r["status"] == "stored" for r in final)
        all_ok = all(r["status"] != "error" for r in final)
        # One rule (openapi/bucket.yaml): 207 exactly when some item failed, so `success: false`
        # never travels with a 2xx that reads as "all done"; else 201 if anything was stored, 200 if not.
        return (207 if not all_ok else 201 if stored_any else 200), {"success": all_ok, "results": final}

    def _check_event(self, event_data: dict[str, Any], where: str) -> str:
        """Refuse an event too large or not valid for its type; returns its canonical JSON."""
        data_json = domain.canonical_json(event_data)
        size = len(data_json.encode("utf-8"))
        if size > domain.MAX_EVENT_BYTES:
            raise PayloadTooLarge(
                f"{where} is {size} bytes; the limit is {domain.MAX_EVENT_BYTES}",
                field=where,
                limit_bytes=domain.MAX_EVENT_BYTES,
            )
        errors = event_type_errors(event_data)
        for error in errors:
            error["field"] = error["field"].replace("event_data", where, 1)
        raise_for_errors(errors)
        return data_json

    def _store(
        self, requester: str, event_data: dict[str, Any], event_id: str | None, data_json: str
    ) -> tuple[str, str]:
        event = domain.build_event(event_data, requester, event_id, self._clock(), data_json)
        existing = self._events.append(event)
        if existing is not None:
            if existing.get("content_hash") != event.content_hash:
                raise _conflict(event.event_id)
            self._log.info(
                f"Duplicate event from {requester} ignored",
                event_id=event.event_id,
                event_type=event.event_type,
                trace_id=event.trace_id,
            )
            return "duplicate", event.event_id
        self._log_received(event)
        return "stored", event.event_id

    def _log_received(self, event: domain.NewEvent) -> None:
        self._log.info(
            f"Received event from {event.requester_id}",
            event_id=event.event_id,
            event_type=event.event_type,
            trace_id=event.trace_id,
            requester_id=event.requester_id,
        )

    # --- reads ------------------------------------------------------------------------------

    def list_events(self, params: dict[str, str]) -> dict[str, Any]:
        limit = _int_param(params, "limit", default=100, low=1, high=1000)
        order = params.get("order")
        if order is not None and order not in ("asc", "desc"):
            raise BadRequest("'order' must be 'asc' or 'desc'", code="invalid_parameter", field="order")
        order = order or "tail"
        filters: dict[str, str] = {}
        for name in LIST_FILTERS:
            value = params.get(name)
            if value is None:
                continue
            if not value or len(value) > 256:
                raise BadRequest(f"'{name}' must be 1..256 characters", code="invalid_parameter", field=name)
            attr = "agent_key" if name in ("user_id", "agent_id") else name
            if attr in filters and filters[attr] != value:
                raise BadRequest(
                    "'user_id' and 'agent_id' name the same subject; they differ", code="invalid_parameter", field=name
                )
            filters[attr] = value
        since = domain.isoformat(domain.parse_time(params["since"], "since")) if "since" in params else None
        until = domain.isoformat(domain.parse_time(params["until"], "until")) if "until" in params else None
        if since and until and since > until:
            raise BadRequest("'since' is after 'until'", code="invalid_parameter", field="since")
        fingerprint = hashlib.sha256(domain.canonical_json([filters, since, until, order]).encode()).hexdigest()[:16]
        start_key = None
        if params.get("cursor"):
            position = domain.decode_cursor(params["cursor"], fingerprint, self._cursor_secret)
            if not all(isinstance(v, str) for v in position.values()):
                raise BadRequest("Invalid or tampered cursor", code="invalid_cursor", field="cursor")
            start_key = position
        # Without `order` (the original clients): the newest `limit` events, returned oldest first.
        page = self._events.query(EventQuery(filters, since, until, limit, order != "asc", start_key))
        events = [domain.public_event(item) for item in page.items]
        if order == "tail":
            events.reverse()
        next_cursor = domain.encode_cursor(page.next_key, fingerprint, self._cursor_secret) if page.next_key else None
        if filters or since or until:
            count = self._events.count(EventQuery(filters, since, until, limit, True, None))
        else:
            count = self.total_events()
        return {"events": events, "count": count, "showing": len(events), "next_cursor": next_cursor}

    def total_events(self) -> int:
        """Events stored, including those the stream consumer has not counted yet."""
        totals = self._stats.totals()
        return int(totals["total_events"]) + self._events.count_after(None, _after(totals["last_event_at"]))

    def _agent_event_count(self, agent_id: str) -> int:
        summary = self._stats.agent(agent_id) or {}
        counted = int(summary.get("event_count", 0))
        return counted + self._events.count_after(agent_id, _after(summary.get("last_event_at")))

    def get_event(self, event_id: str) -> dict[str, Any]:
        stored = self._events.get(event_id) if len(event_id) <= 128 else None
        if stored is None:
            raise NotFound(f"No event with id '{event_id}'", code="event_not_found")
        return {"success": True, "event": domain.public_event(stored)}

    def stats(self) -> dict[str, Any]:
        totals = self._stats.totals()
        breakdown = self._stats.breakdown()
        return {
            "stats": {
                "events_received": totals["total_events"],
                "total_events": totals["total_events"],
                "by_event_type": breakdown["by_event_type"],
                "by_requester": breakdown["by_requester"],
                "agents_tracked": totals["agents_tracked"],
                "agents_with_context": totals["agents_tracked"],
                "tracked_agents": self._stats.agent_ids(TRACKED_AGENTS_SHOWN),
                "last_event_at": totals["last_event_at"],
            },
            "integration_status": "active",
            "integration": {"storage": "dynamodb", "stats_source": "events stream", "status": "connected"},
        }

    def read_context(self, principal: Principal, params: dict[str, str]) -> dict[str, Any]:
        agent_id = params.get("agent_id") or params.get("user_id")
        if not agent_id or len(agent_id) > 256:
            raise BadRequest(
                "'agent_id' (or 'user_id'), 1..256 characters, is required", code="invalid_parameter", field="agent_id"
            )
        if params.get("user_id") and params.get("agent_id") and params["user_id"] != params["agent_id"]:
            raise BadRequest(
                "'user_id' and 'agent_id' name the same subject; they differ", code="invalid_parameter", field="user_id"
            )
        if "requester_id" in params:
            self._auth.requester_for_read(principal, params["requester_id"], "events:read")
        limit = _int_param(params, "limit", default=20, low=1, high=100)
        page = self._events.query(EventQuery({"agent_key": agent_id}, None, None, limit, True, None))
        recent = [domain.public_event(item) for item in page.items]
        if not recent:
            return {"success": True, "context": None}
        recent_types: list[str] = []
        for event in recent[:CONTEXT_TYPES_WINDOW]:
            if event["event_type"] not in recent_types:
                recent_types.append(event["event_type"])
        return {
            "success": True,
            "context": {
                "agent_id": agent_id,
                "event_count": self._agent_event_count(agent_id),
                "last_updated": recent[0]["received_at"],
                "recent_event_types": recent_types,
                "recent_events": recent,
            },
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            self._events.ping()
            totals = self._stats.totals()
        except StorageUnavailable as exc:
            return 503, {
                "status": "unhealthy",
                "bucket_version": VERSION,
                "storage": {"status": "unreachable", "error": str(exc)[:200]},
                "core_integration": {"status": "disconnected", "events_received": 0, "agents_tracked": 0},
            }
        return 200, {
            "status": "healthy",
            "bucket_version": VERSION,
            "storage": {"status": "ok", "backend": "dynamodb"},
            "auth": "disabled" if self._auth.auth_disabled else "bearer",
            "core_integration": {
                "status": "active",
                "events_received": totals["total_events"],
                "agents_tracked": totals["agents_tracked"],
            },
        }


def _conflict(event_id: str) -> Conflict:
    return Conflict(
        f"Event '{event_id}' already exists with different content",
        code="event_id_conflict",
        field="event_id",
        event_id=event_id,
    )


def _item_error(index: int, event_id: Any, exc: ApiError) -> dict[str, Any]:
    return {
        "index": index,
        "status": "error",
        "event_id": event_id if isinstance(event_id, str) else None,
        "error": exc.to_body()["error"] | {"status": exc.status},
    }


def _after(watermark: str | None) -> str | None:
    # ts_id is "<received_at>#<event_id>": "~" sorts after "#", so every counted id is excluded
    return f"{watermark}~" if watermark else None


def _int_param(params: dict[str, str], name: str, *, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise BadRequest(f"'{name}' must be an integer {low}..{high}", code="invalid_parameter", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(
            f"'{name}' must be between {low} and {high}, got {value}", code="invalid_parameter", field=name
        )
    return value
