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
