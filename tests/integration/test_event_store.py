"""The events table adapter against moto: appends are conditional, reads are index queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bhiv.bucket.domain import build_event, isoformat
from bhiv.storage.events import EventQuery, EventStore

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["boto3", "fast"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs through boto3 and through the local stack's fast client."""
    return str(request.param)


def _fill(store: EventStore, dynamodb: Any, count: int, start: int = 0) -> list[str]:
    ids = []
    batch: list[dict[str, Any]] = []
    from bhiv.storage.events import to_item

    for i in range(start, start + count):
        event = build_event(
            {"event_type": f"type{i % 4}", "user_id": f"user{i % 10}", "n": i},
            f"req{i % 3}",
            f"e{i:06d}",
            T0 + timedelta(seconds=i),
        )
        ids.append(event.event_id)
        batch.append({"PutRequest": {"Item": to_item(event)}})
        if len(batch) == 25:
            dynamodb.batch_write_item(RequestItems={"EventsTable": batch})
            batch = []
    if batch:
        dynamodb.batch_write_item(RequestItems={"EventsTable": batch})
    return ids


def _query(store: EventStore, filters: dict[str, str], limit: int = 50) -> Any:
    return store.query(EventQuery(filters, None, None, limit, True, None))


def test_append_is_conditional_and_returns_the_existing_item(aws: dict[str, Any]) -> None:
    store = EventStore(aws["dynamodb"], "EventsTable")
    event = build_event({"event_type": "x", "v": 1}, "req", "same-id", T0)
    assert store.append(event) is None
    later = build_event({"event_type": "x", "v": 2}, "req", "same-id", T0 + timedelta(seconds=5))
    existing = store.append(later)
    assert existing is not None and existing["content_hash"] == event.content_hash
    assert store.get("same-id")["received_at"] == event.received_at  # type: ignore[index]


def test_page_scans_about_the_page_size_whatever_the_table_size(aws: dict[str, Any]) -> None:
    store = EventStore(aws["dynamodb"], "EventsTable")
    _fill(store, aws["dynamodb"], 600)
    small = {name: _query(store, f).scanned_count for name, f in _FILTERS.items()}
    _fill(store, aws["dynamodb"], 2400, start=600)
    large = {name: _query(store, f).scanned_count for name, f in _FILTERS.items()}
    for name in _FILTERS:
        assert large[name] <= 50, (name, large[name])
        assert large[name] == small[name], name


_FILTERS: dict[str, dict[str, str]] = {
    "all": {},
    "event_type": {"event_type": "type1"},
    "requester_id": {"requester_id": "req2"},
    "user": {"agent_key": "user3"},
}


def test_filters_and_time_window_select_exactly_the_matching_events(aws: dict[str, Any]) -> None:
    store = EventStore(aws["dynamodb"], "EventsTable")
    _fill(store, aws["dynamodb"], 120)
    page = _query(store, {"event_type": "type1", "requester_id": "req0"}, limit=1000)
    expected = {i for i in range(120) if i % 4 == 1 and i % 3 == 0}
    assert {int(item["event_id"][1:]) for item in page.items} == expected
    since, until = isoformat(T0 + timedelta(seconds=10)), isoformat(T0 + timedelta(seconds=19))
    window = store.query(EventQuery({}, since, until, 1000, False, None))
    assert [int(i["event_id"][1:]) for i in window.items] == list(range(10, 20))


def test_pagination_visits_every_event_once_newest_first(aws: dict[str, Any]) -> None:
    store = EventStore(aws["dynamodb"], "EventsTable")
    ids = _fill(store, aws["dynamodb"], 95)
    seen: list[str] = []
    start = None
    while True:
        page = store.query(EventQuery({"event_type": "type2"}, None, None, 7, True, start))
        seen += [i["event_id"] for i in page.items]
        start = page.next_key
        if not start:
            break
    assert seen == [i for i in reversed(ids) if int(i[1:]) % 4 == 2]


def test_batch_append_stores_new_ids_and_reports_existing_ones(aws: dict[str, Any]) -> None:
    store = EventStore(aws["dynamodb"], "EventsTable")
    old = build_event({"event_type": "x", "v": 0}, "req", "b-0", T0)
    store.append(old)
    batch = [build_event({"event_type": "x", "v": i}, "req", f"b-{i}", T0 + timedelta(seconds=1)) for i in range(3)]
    found = store.append_many(batch)
    assert found[0] is not None and found[0]["content_hash"] == old.content_hash
    assert found[1:] == [None, None]
    assert store.get("b-2") is not None
    assert store.append_many(batch[1:]) == [store.get("b-1"), store.get("b-2")]
