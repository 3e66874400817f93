"""Applying stored events to Karma's state, in stream order, with exactly-once effect."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bhiv.karma.engine import QTable, UserState, apply_action
from bhiv.karma.policy import Policy, PolicyError
from bhiv.storage.karma import AlreadyApplied, Outcome, VersionConflict

GROUP_SIZE = 30  # events per transaction: 2 items each + users + Q-table + counters <= 100
MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    event_type: str
    received_at: str
    event_data: dict[str, Any]

    @staticmethod
    def from_image(image: dict[str, Any]) -> StoredEvent:
        """From a stream record's NewImage (DynamoDB JSON); ValueError when it is not an event."""
        try:
            data = json.loads(image["event_data"]["S"])
            event = StoredEvent(image["event_id"]["S"], image["event_type"]["S"], image["received_at"]["S"], data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a stored event: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("event_data is not an object")
        return event


class Store(Protocol):
    def users(self, user_ids: list[str]) -> dict[str, UserState]: ...
    def qtable(self, policy_version: str) -> QTable | None: ...
    def applied_markers(self, event_ids: list[str]) -> set[str]: ...
    def commit(self, outcomes: list[Outcome], users: dict[str, tuple[UserState, int | None]],
               qtable: tuple[QTable, int | None] | None, policy_version: str, role_changes: dict[str, int]) -> None: ...
    def record_failure(self, event_id: str, reason: str) -> bool: ...


class Log(Protocol):
    def info(self, msg: object, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None: ...


class EventRejected(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class KarmaConsumer:
    def __init__(self, store: Store, policy: Policy, log: Log) -> None:
        self._store = store
        self._policy = policy
        self._log = log

    def apply(self, events: list[StoredEvent]) -> int:
        """Apply events in order; returns how many were handled (applied, ignored or seen before).

        Stops at the first event the policy rejects (PolicyError) and raises EventRejected with
        its index, so the caller can report it and everything after it for retry: later events
        are never applied ahead of an earlier one.
        """
        done = 0
        while done < len(events):
            group = events[done: done + GROUP_SIZE]
            handled = self._apply_group_with_retries(group, done)
            done += handled
        return done

    def _apply_group_with_retries(self, group: list[StoredEvent], offset: int) -> int:
        for attempt in range(MAX_ATTEMPTS):
            try:
                return self._apply_group(group, offset)
            except (VersionConflict, AlreadyApplied):
                if attempt >= 2 and len(group) > 1:
                    group = group[:1]  # contention: go one event at a time
        raise VersionConflict(f"could not commit event {group[0].event_id} after {MAX_ATTEMPTS} attempts")

    def _apply_group(self, group: list[StoredEvent], offset: int) -> int:
        seen = self._store.applied_markers([e.event_id for e in group])
        mapped: list[tuple[StoredEvent, tuple[str, str] | None]] = []
        rejected: EventRejected | None = None
        for index, event in enumerate(group):
            if event.event_id in seen:
                mapped.append((event, None))
                continue
            try:
                mapped.append((event, self._policy.map_event(event.event_data)))
            except PolicyError as exc:
                rejected = EventRejected(offset + index, str(exc))
                break
        user_ids = [m[1][0] for m in mapped if m[1] is not None and m[0].event_id not in seen]
        read_users = self._store.users(user_ids) if user_ids else {}
        stored_q = self._store.qtable(self._policy.version)
        qtable = stored_q or QTable.new(self._policy)
        users: dict[str, UserState] = dict(read_users)
        outcomes: list[Outcome] = []
        for event, target in mapped:
            if event.event_id in seen:
                continue
            if target is None:
                outcomes.append(Outcome(event.event_id, "ignored"))
                continue
            user_id, action = target
            user = users.get(user_id) or UserState.new(user_id, self._policy)
            result = apply_action(self._policy, user, qtable, action, event.received_at)
            users[user_id], qtable = result.user, result.qtable
            outcomes.append(Outcome(event.event_id, "applied", user_id,
                                    result.history_entry(event.event_id, event.event_type, event.received_at)))
        if outcomes:
            touched = {o.user_id for o in outcomes if o.user_id}
            writes = {}
            role_changes: dict[str, int] = {}
            for user_id in touched:
                before = read_users.get(user_id)
                after = users[user_id]
                writes[user_id] = (replace(after, version=(before.version + 1) if before else 1),
                                   before.version if before else None)
                if before is None:
                    role_changes[f"users:{after.role}"] = role_changes.get(f"users:{after.role}", 0) + 1
                elif before.role != after.role:
                    role_changes[f"users:{before.role}"] = role_changes.get(f"users:{before.role}", 0) - 1
                    role_changes[f"users:{after.role}"] = role_changes.get(f"users:{after.role}", 0) + 1
            q_write = None
            if any(o.status == "applied" for o in outcomes):
                q_write = (replace(qtable, version=(stored_q.version + 1) if stored_q else 1),
                           stored_q.version if stored_q else None)
            self._store.commit(outcomes, writes, q_write, self._policy.version, role_changes)
            for outcome in outcomes:
                if outcome.status == "applied" and outcome.history:
                    self._log.info("Karma applied event", event_id=outcome.event_id, user_id=outcome.user_id,
                                   action=outcome.history["action"], reward=outcome.history["reward"])
        if rejected is not None:
            failed = group[rejected.index - offset]
            self._store.record_failure(failed.event_id, rejected.reason)
            self._log.warning("Karma rejected event", event_id=failed.event_id, reason=rejected.reason)
            raise rejected
        return len(group)
