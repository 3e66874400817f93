"""The events table adapter against moto: appends are conditional, reads are index queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bhiv.bucket.domain import build_event, isoformat
from bhiv.errors import BadRequest
from bhiv.storage.events import EventQuery, EventStore

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["boto3", "fast"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs through boto3 and through the local stack's fast client."""
    return str(request.param)


def _fill(store: EventStore, dynamodb: Any, count: int, start: int = 0) -> list[str]:
    """``count`` events one second apart, written in bulk into the store's feed shards."""
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
        batch.append({"PutRequest": {"Item": to_item(event, store.shards)}})
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
        # the unfiltered feed reads each of its shards from its own position: at most a page per shard
        page_reads = 50 * store.shards if name == "all" else 50
        assert large[name] <= page_reads, (name, large[name])
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


# --- the write-sharded feed -------------------------------------------------------------------------


class _CountingClient:
    """The DynamoDB client, counting Query calls per index."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.queries: list[str] = []

    def query(self, **params: Any) -> Any:
        self.queries.append(params["IndexName"])
        return self._client.query(**params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _all_pages(store: EventStore, newest_first: bool, limit: int) -> tuple[list[str], list[dict[str, str] | None]]:
    seen: list[str] = []
    cursors: list[dict[str, str] | None] = []
    start = None
    while True:
        page = store.query(EventQuery({}, None, None, limit, newest_first, start))
        seen += [i["event_id"] for i in page.items]
        cursors.append(page.next_key)
        start = page.next_key
        if not start:
            return seen, cursors


def test_the_sharded_feed_pages_in_order_about_one_query_per_shard(aws: dict[str, Any]) -> None:
    client = _CountingClient(aws["dynamodb"])
    store = EventStore(client, "EventsTable", shards=5)
    ids = _fill(store, aws["dynamodb"], 97)
    feeds = aws["dynamodb"].scan(TableName="EventsTable", ProjectionExpression="feed")["Items"]
    assert len({item["feed"]["S"] for item in feeds}) == 5  # the writes are spread over every shard

    client.queries.clear()
    store.query(EventQuery({}, None, None, 7, True, None))
    assert client.queries == ["by_time"] * 5  # a page: one Query per shard (here; at most a few more)
    client.queries.clear()
    newest_first, cursors = _all_pages(store, True, 7)
    assert newest_first == list(reversed(ids))  # every event once, in time order across shards
    assert set(client.queries) == {"by_time"} and len(client.queries) <= 5 * len(cursors)
    assert all(set(cursor) == {"0", "1", "2", "3", "4"} for cursor in cursors[:-1] if cursor)
    oldest_first, _ = _all_pages(store, False, 10)
    assert oldest_first == ids
    assert _all_pages(store, True, 1000)[0] == list(reversed(ids))
    window = store.query(
        EventQuery({}, isoformat(T0 + timedelta(seconds=10)), isoformat(T0 + timedelta(seconds=19)), 4, False, None)
    )
    assert [int(i["event_id"][1:]) for i in window.items] == [10, 11, 12, 13]


def test_a_feed_page_reads_about_its_size_not_shards_times_it(aws: dict[str, Any]) -> None:
    store = EventStore(aws["dynamodb"], "EventsTable", shards=4)
    ids = _fill(store, aws["dynamodb"], 400)
    seen: list[str] = []
    start = None
    while True:
        page = store.query(EventQuery({}, None, None, 100, True, start))
        assert len(page.items) == 100 or page.next_key is None  # full pages until the end
        assert page.scanned_count <= 150 + 2 * 4  # was 400: every shard read a whole page
        seen += [i["event_id"] for i in page.items]
        start = page.next_key
        if not start:
            break
    assert seen == list(reversed(ids))
    for limit in (1, 2, 3):  # pages smaller than the shards
        assert [i["event_id"] for i in store.query(EventQuery({}, None, None, limit, True, None)).items] == list(
            reversed(ids)
        )[:limit]


def test_a_feed_whose_events_sit_in_one_shard_still_gives_full_exact_pages(aws: dict[str, Any]) -> None:
    """Shard 0 holds everything (written before sharding): it is read again as the merge uses it up."""
    ids = _fill(EventStore(aws["dynamodb"], "EventsTable", shards=1), aws["dynamodb"], 250)
    store = EventStore(aws["dynamodb"], "EventsTable", shards=4)
    for newest_first in (True, False):
        pages = []
        start = None
        while True:
            page = store.query(EventQuery({}, None, None, 100, newest_first, start))
            pages.append([i["event_id"] for i in page.items])
            assert page.scanned_count <= 4 * 100
            start = page.next_key
            if not start:
                break
        assert [len(p) for p in pages[:3]] == [100, 100, 50]
        assert [event_id for p in pages for event_id in p] == (list(reversed(ids)) if newest_first else ids)


def test_a_feed_cursor_is_stable_while_new_events_arrive(aws: dict[str, Any]) -> None:
    client = _CountingClient(aws["dynamodb"])
    store = EventStore(client, "EventsTable", shards=3)
    ids = _fill(store, aws["dynamodb"], 40)
    first = store.query(EventQuery({}, None, None, 15, True, None))
    assert [i["event_id"] for i in first.items] == list(reversed(ids))[:15]
    again = store.query(EventQuery({}, None, None, 15, True, None))
    assert again.next_key == first.next_key  # the same page gives the same cursor
    _fill(store, aws["dynamodb"], 20, start=40)  # newer events land in every shard meanwhile
    rest: list[str] = []
    cursor = first.next_key
    while cursor:
        client.queries.clear()
        page = store.query(EventQuery({}, None, None, 15, True, cursor))
        assert len(client.queries) <= 3
        assert page == store.query(EventQuery({}, None, None, 15, True, cursor))  # replaying a cursor: same page
        rest += [i["event_id"] for i in page.items]
        cursor = page.next_key
    assert rest == list(reversed(ids))[15:]  # neither the new events nor a repeat, nothing skipped


def test_a_feed_cursor_of_another_shard_layout_is_refused(aws: dict[str, Any]) -> None:
    _fill(EventStore(aws["dynamodb"], "EventsTable", shards=2), aws["dynamodb"], 10)
    two = EventStore(aws["dynamodb"], "EventsTable", shards=2).query(EventQuery({}, None, None, 3, True, None))
    assert two.next_key is not None
    with pytest.raises(BadRequest) as refused:
        EventStore(aws["dynamodb"], "EventsTable", shards=3).query(EventQuery({}, None, None, 3, True, two.next_key))
    assert refused.value.code == "invalid_cursor"


def test_growing_the_shard_count_keeps_the_single_feed_readable(aws: dict[str, Any]) -> None:
    old = EventStore(aws["dynamodb"], "EventsTable", shards=1)
    ids = _fill(old, aws["dynamodb"], 12)
    legacy_cursor = old.query(EventQuery({}, None, None, 5, True, None)).next_key
    assert legacy_cursor == {"0": f"{isoformat(T0 + timedelta(seconds=7))}#e000007"}
    grown = EventStore(aws["dynamodb"], "EventsTable", shards=4)
    more = _fill(grown, aws["dynamodb"], 12, start=12)
    assert _all_pages(grown, True, 5)[0] == list(reversed(ids + more))
