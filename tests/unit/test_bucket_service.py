from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bhiv.auth import Authenticator, Principal
from bhiv.bucket.service import BucketService
from bhiv.errors import BadRequest, Conflict, Forbidden, PayloadTooLarge, Unprocessable
from tests.fakes import FakeEventStore, FakeStatsStore, RecordingLog

WRITER = Principal("workflow_executor", frozenset({"events:write"}))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture
def store() -> FakeEventStore:
    return FakeEventStore()


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture
def service(store: FakeEventStore, log: RecordingLog) -> BucketService:
    auth = Authenticator({"workflow_executor": frozenset({"events:write"})}, {})
    return BucketService(store, FakeStatsStore(), auth, log, b"secret", clock=Clock())


def body(**event_data: Any) -> dict[str, Any]:
    return {"requester_id": "workflow_executor", "event_data": {"event_type": "test", **event_data}}


def test_first_write_is_200_and_stored_once(service: BucketService, store: FakeEventStore) -> None:
    # every original client counts only 200 as stored (ORIGINAL_API.md)
    status, result = service.write_event(WRITER, body(message="hi"))
    assert status == 200
    assert result["success"] is True and result["message"] == "Event received" and result["duplicate"] is False
    assert list(store.items) == [result["event_id"]]


def test_same_id_same_content_is_a_duplicate(service: BucketService, store: FakeEventStore) -> None:
    first = {**body(message="hi"), "event_id": "e-1"}
    assert service.write_event(WRITER, first)[0] == 200
    status, result = service.write_event(WRITER, first)
    assert (status, result["duplicate"], result["event_id"]) == (200, True, "e-1")
    assert len(store.items) == 1


def test_same_id_other_content_is_409_and_keeps_the_original(service: BucketService, store: FakeEventStore) -> None:
    service.write_event(WRITER, {**body(message="hi"), "event_id": "e-1"})
    with pytest.raises(Conflict):
        service.write_event(WRITER, {**body(message="changed"), "event_id": "e-1"})
    assert json.loads(store.items["e-1"]["event_data"])["message"] == "hi"


def test_event_data_never_overwrites_server_fields(service: BucketService, store: FakeEventStore) -> None:
    forged = body(timestamp="1999-01-01T00:00:00Z", requester_id="bhiv_core", received_at="x", event_id="forged")
    _, result = service.write_event(WRITER, forged)
    stored = service.get_event(result["event_id"])["event"]
    assert stored["requester_id"] == "workflow_executor"
    assert stored["timestamp"].startswith("2026-11-29")
    assert stored["event_id"] != "forged"
    assert stored["event_data"]["timestamp"] == "1999-01-01T00:00:00Z"  # kept, but only inside event_data


def test_accepted_event_is_logged_with_stable_message(service: BucketService, log: RecordingLog) -> None:
    _, result = service.write_event(WRITER, body(trace_id="t-9"))
    message, fields = log.lines[-1]
    assert message == "Received event from workflow_executor"
    assert fields["event_id"] == result["event_id"] and fields["trace_id"] == "t-9"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"requester_id": "workflow_executor", "event_data": {}}, "event_data.event_type"),
        ({"requester_id": "workflow_executor", "event_data": {"event_type": 5}}, "event_data.event_type"),
        ({"requester_id": "workflow_executor"}, "event_data"),
        ({**body(), "extra": 1}, "extra"),
        ({**body(), "event_id": "has spaces"}, "event_id"),
        (
            {"requester_id": "workflow_executor", "event_data": {"event_type": "workflow_execution"}},
            "event_data.execution_result",
        ),
    ],
)
def test_schema_violations_are_422_naming_the_field(
    service: BucketService, store: FakeEventStore, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(Unprocessable) as err:
        service.write_event(WRITER, payload)
    assert field in [e["field"] for e in err.value.details["errors"]]
    assert store.items == {}


def test_other_requester_in_body_is_403(service: BucketService, store: FakeEventStore) -> None:
    with pytest.raises(Forbidden):
        service.write_event(WRITER, {**body(), "requester_id": "bhiv_core"})
    assert store.items == {}


def test_event_over_32_kb_is_413(service: BucketService, store: FakeEventStore) -> None:
    with pytest.raises(PayloadTooLarge):
        service.write_event(WRITER, body(blob="x" * 33_000))
    assert store.items == {}


def test_batch_reports_each_item_and_one_bad_item_does_not_sink_the_rest(
    service: BucketService, store: FakeEventStore
) -> None:
    service.write_event(WRITER, {**body(n=0), "event_id": "dup"})
    status, result = service.write_events(
        WRITER,
        {
            "requester_id": "workflow_executor",
            "events": [
                {"event_data": {"event_type": "a", "n": 1}},
                {"event_data": {"n": 2}},
                {"event_data": {"event_type": "test", "n": 0}, "event_id": "dup"},
                {"event_data": {"event_type": "test", "n": 9}, "event_id": "dup"},
                {"event_data": {"event_type": "b", "n": 3}, "event_id": "b-3"},
            ],
        },
    )
    assert status == 207  # the one rule: some item failed <=> 207 <=> success false
    assert result["success"] is False
    assert [r["status"] for r in result["results"]] == ["stored", "error", "duplicate", "error", "stored"]
    assert [r["index"] for r in result["results"]] == [0, 1, 2, 3, 4]
    assert result["results"][1]["error"]["field"] == "events.1.event_data.event_type"
    assert result["results"][3]["error"]["status"] == 409
    assert len(store.items) == 3


def test_batch_status_is_201_when_all_stored_and_200_when_all_duplicates(service: BucketService) -> None:
    batch = {"requester_id": "workflow_executor", "events": [{"event_data": {"event_type": "a"}, "event_id": "a-1"}]}
    assert service.write_events(WRITER, batch)[0] == 201
    status, result = service.write_events(WRITER, batch)
    assert status == 200 and result["success"] is True


def test_batch_over_100_items_is_413(service: BucketService, store: FakeEventStore) -> None:
    events = [{"event_data": {"event_type": "x"}} for _ in range(101)]
    with pytest.raises(PayloadTooLarge):
        service.write_events(WRITER, {"requester_id": "workflow_executor", "events": events})
    assert store.items == {}


def test_listing_is_newest_first_and_pages_without_gaps(service: BucketService) -> None:
    ids = [service.write_event(WRITER, body(n=i))[1]["event_id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", "order": "desc", **({"cursor": cursor} if cursor else {})}
        page = service.list_events(params)
        seen += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"order": "sideways"},
        {"since": "yesterday"},
        {"since": "2026-11-30T00:00:00Z", "until": "2026-11-29T00:00:00Z"},
        {"cursor": "garbage"},
        {"trace_id": ""},
    ],
)
def test_bad_list_parameters_are_400(service: BucketService, params: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        service.list_events(params)


def test_tampered_or_foreign_cursor_is_refused(service: BucketService) -> None:
    for i in range(3):
        service.write_event(WRITER, body(n=i, event_type="a" if i else "b"))
    cursor = service.list_events({"limit": "1"})["next_cursor"]
    assert cursor
    payload, _, signature = cursor.partition(".")
    with pytest.raises(BadRequest):
        service.list_events({"limit": "1", "cursor": payload[:-2] + "AA." + signature})
    with pytest.raises(BadRequest):
        service.list_events({"limit": "1", "event_type": "a", "cursor": cursor})


def test_health_is_503_when_storage_is_unreachable(log: RecordingLog) -> None:
    from bhiv.errors import StorageUnavailable

    class DownStore(FakeEventStore):
        def ping(self) -> None:
            raise StorageUnavailable("connection refused")

    auth = Authenticator({}, {})
    down = BucketService(DownStore(), FakeStatsStore(), auth, log, b"secret")
    status, body = down.health()
    assert status == 503 and body["status"] == "unhealthy" and body["storage"]["status"] == "unreachable"
    up = BucketService(FakeEventStore(), FakeStatsStore(), auth, log, b"secret")
    assert up.health()[0] == 200


def test_listing_without_order_is_the_newest_events_oldest_first(service: BucketService) -> None:
    # the original answered the last N events oldest first: scripts take events[-1] as the newest
    ids = [service.write_event(WRITER, body(n=i))[1]["event_id"] for i in range(5)]
    page = service.list_events({"limit": "3"})
    assert [e["event_id"] for e in page["events"]] == ids[2:]
    assert (page["count"], page["showing"]) == (5, 3)  # count: all stored; showing: this page
    older = service.list_events({"limit": "3", "cursor": page["next_cursor"]})
    assert [e["event_id"] for e in older["events"]] == ids[:2]


def test_count_includes_events_the_stats_have_not_counted_yet(service: BucketService) -> None:
    before = service.list_events({})["count"]
    service.write_event(WRITER, body(n=1))
    assert service.list_events({})["count"] == before + 1


def test_event_data_fields_are_at_the_top_level_but_never_over_server_fields(service: BucketService) -> None:
    service.write_event(
        WRITER,
        body(action_type="task", status="failed", requester_id="someone_else", timestamp="1999-01-01T00:00:00Z"),
    )
    event = service.list_events({})["events"][-1]
    assert (event["action_type"], event["status"]) == ("task", "failed")
    assert event["requester_id"] == "workflow_executor" and event["timestamp"] == event["received_at"]
    assert event["event_data"]["timestamp"] == "1999-01-01T00:00:00Z"


READER = Principal("bhiv_core", frozenset({"events:read"}))


def test_read_context_has_the_original_shape(service: BucketService) -> None:
    assert service.read_context(READER, {"agent_id": "nobody"}) == {"success": True, "context": None}
    service.write_event(WRITER, body(event_type="a", agent_id="agent-1"))
    service.write_event(WRITER, body(event_type="b", metadata={"user_id": "agent-1"}))
    result = service.read_context(READER, {"agent_id": "agent-1", "requester_id": "bhiv_core"})
    context = result["context"]
    assert result["success"] is True
    assert context["agent_id"] == "agent-1" and context["event_count"] == 2
    assert context["recent_event_types"] == ["b", "a"]
    assert context["last_updated"] == context["recent_events"][0]["received_at"]


def test_read_context_refuses_a_requester_other_than_the_token_owner(service: BucketService) -> None:
    with pytest.raises(Forbidden):
        service.read_context(READER, {"agent_id": "a", "requester_id": "workflow_executor"})


def test_stats_keep_the_original_fields(service: BucketService) -> None:
    stats = service.stats()
    assert stats["integration_status"] == "active"
    assert isinstance(stats["stats"]["agents_with_context"], int)
    assert isinstance(stats["stats"]["tracked_agents"], list)


def test_count_of_a_filtered_listing_is_what_matches(service: BucketService) -> None:
    for i in range(3):
        service.write_event(WRITER, body(n=i, trace_id="t-a" if i else "t-b"))
    page = service.list_events({"trace_id": "t-a", "limit": "1"})
    assert (page["count"], page["showing"]) == (2, 1)
