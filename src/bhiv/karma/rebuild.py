"""Replay: Karma's whole state recomputed from the Bucket's event log, with the live code path's
pure engine. Equal to the live state when the same events are applied in the same order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bhiv.karma.consumer import StoredEvent
from bhiv.karma.engine import QTable, UserState, apply_action
from bhiv.karma.policy import Policy, PolicyError


@dataclass
class Replayed:
    users: dict[str, UserState] = field(default_factory=dict)
    qtable: QTable | None = None
    applied: int = 0
    capped: int = 0  # over a daily cap: recorded, not applied (the same caps as the live path)
    ignored: int = 0
    rejected: list[str] = field(default_factory=list)


def application_order(events: Iterable[StoredEvent], recorded: dict[str, tuple[int, int]]) -> list[StoredEvent]:
    """The events in the order Karma applied them (its recorded order); the rest (ignored, not yet
    applied, or applied before the order was recorded) by their place in the log. Q-learning
    depends on order, and with several stream shards the recorded order is the only reproducible one.
    """
    unique = list({event.event_id: event for event in events}.values())
    position = {event.event_id: index for index, event in enumerate(unique)}

    def key(event: StoredEvent) -> tuple[int, int, int, int]:
        place = recorded.get(event.event_id)
        if place is None:
            return (1, position[event.event_id], 0, 0)
        return (0, place[0], place[1], position[event.event_id])

    legacy = [event for event in unique if event.event_id not in recorded]
    if recorded and legacy:
        # events applied before orders were recorded came first: keep them first, in log order
        first_recorded = min((position[e] for e in recorded if e in position), default=0)
        early = [event for event in legacy if position[event.event_id] < first_recorded]
        late = [event for event in legacy if position[event.event_id] >= first_recorded]
        return early + sorted((e for e in unique if e.event_id in recorded), key=key) + late
    return sorted(unique, key=key)


def replay(policy: Policy, events: Iterable[StoredEvent]) -> Replayed:
    result = Replayed(qtable=QTable.new(policy))
    qtable = result.qtable
    assert qtable is not None
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        try:
            target = policy.map_event(event.event_data)
        except PolicyError:
            result.rejected.append(event.event_id)
            continue
        if target is None:
            result.ignored += 1
            continue
        user_id, action = target
        user = result.users.get(user_id) or UserState.new(user_id, policy)
        applied = apply_action(policy, user, qtable, action, event.received_at)
        result.users[user_id], qtable = applied.user, applied.qtable
        if applied.capped:
            result.capped += 1
        else:
            result.applied += 1
    result.qtable = qtable
    return result
