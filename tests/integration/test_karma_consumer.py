"""Karma's stream consumer against moto: exactly-once effect under at-least-once delivery."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bhiv.bucket.domain import build_event
from bhiv.karma.consumer import EventRejected, KarmaConsumer, StoredEvent
from bhiv.karma.engine import UserState
from bhiv.karma.policy import default_policy
from bhiv.karma.rebuild import replay
from bhiv.storage.karma import KarmaStore

P = default_policy()


class Log:
    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        pass

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(params=["boto3", "fast"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs through boto3 and through the local stack's fast client."""
    return str(request.param)


def _events(count: int, users: int = 5, start: int = 0) -> list[StoredEvent]:
    kinds = [
        {"event_type": "workflow_execution", "status": "success"},
        {"event_type": "workflow_execution", "status": "failed"},
        {"event_type": "life_event", "action": "helping_peers", "role": "learner"},
        {"event_type": "life_event", "action": "cheat", "role": "learner"},
        {"event_type": "agent_result", "agent_id": "a1", "outcome": "success"},
        {"event_type": "life_event", "action": "selfless_service", "role": "learner"},
        {"event_type": "test"},
    ]
    out = []
    for i in range(start, start + count):
        data = {**kinds[i % len(kinds)], "user_id": f"user{i % users}"}
        out.append(
            StoredEvent(
                f"e{i:05d}",
                data["event_type"],
                f"2026-11-{1 + i // 1000:02d}T00:{(i // 60) % 60:02d}:{i % 60:02d}.{i:06d}Z",
                data,
            )
        )
    return out


@pytest.fixture
def store(aws: dict[str, Any]) -> KarmaStore:
    return KarmaStore(aws["dynamodb"], "KarmaTable")


def _snapshot(store: KarmaStore, user_ids: list[str]) -> tuple[dict[str, UserState], Any]:
    users = store.users(user_ids)
    return {u: (s.role, s.balances, s.action_stats, s.events_applied) for u, s in users.items()}, (  # type: ignore[misc]
        store.qtable(P.version)
    )


def test_redelivered_events_change_nothing(store: KarmaStore) -> None:
    consumer = KarmaConsumer(store, P, Log())
    events = _events(70)
    consumer.apply(events)
    before = _snapshot(store, [f"user{i}" for i in range(5)])
    consumer.apply(events[10:50])  # a retry, a bisect half, a redrive
    consumer.apply(events)
    assert _snapshot(store, [f"user{i}" for i in range(5)]) == before
    counters = store.counters()
    # every 7th is a plain test event; the 2nd..10th selfless_service of a user's day is capped
    assert counters["applied"] + counters["capped"] == 60 and counters["ignored"] == 10
    assert counters["capped"] == 5
    qtable = store.qtable(P.version)
    assert qtable is not None and qtable.updates == 55  # capped events do not update the Q-table


def test_live_state_equals_rebuild_from_the_log(store: KarmaStore) -> None:
    events = _events(150)
    KarmaConsumer(store, P, Log()).apply(events)
    rebuilt = replay(P, events)
    live_users = store.users(list(rebuilt.users))
    assert set(live_users) == set(rebuilt.users)
    for user_id, expected in rebuilt.users.items():
        live = live_users[user_id]
        assert (live.role, live.balances, live.action_stats, live.cheat_times, live.events_applied) == (
            expected.role,
            expected.balances,
            expected.action_stats,
            expected.cheat_times,
            expected.events_applied,
        )
    live_q = store.qtable(P.version)
    assert live_q is not None and rebuilt.qtable is not None
    assert live_q.values == rebuilt.qtable.values  # exact: floats round-trip through storage


def test_poison_event_stops_the_batch_at_its_position(store: KarmaStore) -> None:
    events = _events(5)
    poison = StoredEvent(
        "poison",
        "life_event",
        "2026-11-01T00:00:09.000000Z",
        {"event_type": "life_event", "action": "teleport", "role": "learner", "user_id": "user1"},
    )
    consumer = KarmaConsumer(store, P, Log())
    with pytest.raises(EventRejected) as rejected:
        consumer.apply([*events[:3], poison, *events[3:]])
    assert rejected.value.index == 3
    assert store.counters()["applied"] == 3  # exactly the events before the poison
    consumer.apply(events[3:])  # what follows the poison still flows once it is set aside
    assert store.counters()["applied"] == 5
    assert store.counters()["failed"] == 1
    with pytest.raises(EventRejected):
        consumer.apply([poison])
    assert store.counters()["failed"] == 1  # retries of the same poison count once


def test_two_consumers_racing_on_the_same_records_apply_each_once(store: KarmaStore) -> None:
    events = _events(120, users=3)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            KarmaConsumer(store, P, Log()).apply(events)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    expected = replay(P, events)
    live = store.users(list(expected.users))
    assert {u: s.events_applied for u, s in live.items()} == {u: s.events_applied for u, s in expected.users.items()}
    assert store.qtable(P.version).updates == expected.applied  # type: ignore[union-attr]


def test_consumers_racing_on_different_records_lose_no_update(store: KarmaStore) -> None:
    first, second = _events(60, users=2), _events(60, users=2, start=1000)
    threads = [
        threading.Thread(target=KarmaConsumer(store, P, Log()).apply, args=(batch,)) for batch in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected_applied = replay(P, first).applied + replay(P, second).applied
    users = store.users(["user0", "user1"])
    assert sum(u.events_applied for u in users.values()) == expected_applied
    assert store.qtable(P.version).updates == expected_applied  # type: ignore[union-attr]


def test_stream_handler_reports_failures_from_the_first_bad_record(aws: dict[str, Any], store: KarmaStore) -> None:
    from bhiv.storage.events import to_item

    def record(seq: int, data: dict[str, Any]) -> dict[str, Any]:
        from datetime import UTC, datetime

        item = to_item(build_event(data, "bhiv_core", f"s{seq}", datetime(2026, 11, 29, tzinfo=UTC)))
        return {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(seq), "NewImage": item}}

    from bhiv.karma import runtime

    runtime.store.cache_clear()
    runtime.service.cache_clear()
    good = {"event_type": "life_event", "action": "helping_peers", "role": "learner", "user_id": "z"}
    bad = {**good, "action": "teleport"}
    batch = {
        "Records": [
            record(1, good),
            record(2, bad),
            record(3, good | {"note": "x"}),
            {"eventName": "INSERT", "dynamodb": {"SequenceNumber": "4", "NewImage": {"junk": {"S": "1"}}}},
        ]
    }
    response = runtime.handle_stream(batch, None)
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == ["2", "3", "4"]
    assert store.user("z").events_applied == 1  # type: ignore[union-attr]


def test_counters_stay_exact_with_several_writers_caching_them(aws: dict[str, Any]) -> None:
    """Each store caches the counters item it last wrote and puts it whole, conditional on its
    version: writers interleaving (and a failure counted in between) must lose no count."""
    stores = [KarmaStore(aws["dynamodb"], "KarmaTable") for _ in range(3)]
    consumers = [KarmaConsumer(s, P, Log()) for s in stores[:2]]
    events = _events(80, users=4)
    for start in range(0, len(events), 10):
        # the first writer goes on with its cached counters after a failure is counted elsewhere
        consumers[0 if start < 50 else (start // 10) % 2].apply(events[start : start + 10])
        if start == 30:
            assert stores[2].record_failure("poison-1", "test")
            assert not stores[1].record_failure("poison-1", "test")  # counted once
    counters = stores[1].counters()
    assert counters["applied"] + counters.get("capped", 0) + counters.get("ignored", 0) == len(events)
    assert counters["failed"] == 1
    assert "version" not in counters
    expected = replay(P, events)
    assert (counters["applied"], counters.get("capped", 0), counters.get("ignored", 0)) == (
        expected.applied,
        expected.capped,
        expected.ignored,
    )
