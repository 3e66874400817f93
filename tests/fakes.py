"""In-memory stand-ins for the storage adapters, for unit tests of the domain and services."""

from __future__ import annotations

from typing import Any

from bhiv.bucket.domain import NewEvent
from bhiv.storage.events import EventPage, EventQuery


class FakeEventStore:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def append(self, event: NewEvent) -> dict[str, Any] | None:
        if event.event_id in self.items:
            return self.items[event.event_id]
        item = {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "requester_id": event.requester_id,
            "timestamp": event.received_at,
            "received_at": event.received_at,
            "ts_id": event.ts_id,
            "event_data": event.event_data_json,
            "content_hash": event.content_hash,
            "feed": "all",
        }
        if event.trace_id:
            item["trace_id"] = event.trace_id
        if event.agent_key:
            item["agent_key"] = event.agent_key
        self.items[event.event_id] = item
        return None

    def append_many(self, events: list[NewEvent]) -> list[dict[str, Any] | None]:
        return [self.append(event) for event in events]

    def get(self, event_id: str) -> dict[str, Any] | None:
        return self.items.get(event_id)

    def query(self, query: EventQuery) -> EventPage:
        rows = [i for i in self.items.values() if all(i.get(k) == v for k, v in query.filters.items())]
        rows = [
            i
            for i in rows
            if (not query.since or i["ts_id"] >= query.since) and (not query.until or i["ts_id"] <= query.until + "~")
        ]
        rows.sort(key=lambda i: i["ts_id"], reverse=query.newest_first)
        if query.start_key:
            after = query.start_key["ts_id"]
            rows = [i for i in rows if (i["ts_id"] < after if query.newest_first else i["ts_id"] > after)]
        page = rows[: query.limit]
        more = len(rows) > query.limit
        next_key = {"event_id": page[-1]["event_id"], "ts_id": page[-1]["ts_id"]} if more else None
        return EventPage(page, next_key, len(page))

    def count(self, query: EventQuery) -> int:
        everything = EventQuery(query.filters, query.since, query.until, 10**9, True, None)
        return len(self.query(everything).items)

    def count_after(self, agent_key: str | None, after_ts_id: str | None) -> int:
        return sum(
            1
            for i in self.items.values()
            if (agent_key is None or i.get("agent_key") == agent_key)
            and (after_ts_id is None or i["ts_id"] > after_ts_id)
        )

    def ping(self) -> None:
        return None


class FakeStatsStore:
    def totals(self) -> dict[str, Any]:
        return {"total_events": 0, "agents_tracked": 0, "last_event_at": None}

    def breakdown(self) -> dict[str, dict[str, int]]:
        return {"by_event_type": {}, "by_requester": {}}

    def agent(self, agent_key: str) -> dict[str, Any] | None:
        return None

    def agent_ids(self, limit: int) -> list[str]:
        return []


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.lines.append((str(msg), kwargs))
