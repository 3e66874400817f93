"""Applying stored events to Karma's state, in stream order, with exactly-once effect."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bhiv.karma.engine import QTable, UserState, apply_action
from bhiv.karma.policy import Policy, PolicyError
from bhiv.storage.karma import AlreadyApplied, Outcome, VersionConflict

GROUP_SIZE = 90  # events per transaction: one item each + touched users + Q-table + counters <= 100
ITEM_BUDGET = 100 - 2
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
    def existing_markers(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]: ...
    def commit(
        self,
        outcomes: list[Outcome],
        users: dict[str, tuple[UserState, int | None]],
        qtable: tuple[QTable, int | None] | None,
        policy_version: str,
        role_changes: dict[str, int],
    ) -> None: ...
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
    """Applies events to stored state. Users and the Q-table are cached between batches: every
    write is conditional on the version cached, so a stale cache costs a retry, never an update."""

    def __init__(self, store: Store, policy: Policy, log: Log, cache_size: int = 10_000) -> None:
        self._store = store
        self._policy = policy
        self._log = log
        self._cache_size = cache_size
        self._users: dict[str, UserState] = {}
        self._qtable: QTable | None = None

    def apply(self, events: list[StoredEvent]) -> int:
        """Apply events in order; returns how many were handled (applied, ignored or seen before).

        Stops at the first event the policy rejects (PolicyError) and raises EventRejected with
        its index, so the caller can report it and everything after it for retry: later events
        are never applied ahead of an earlier one.
        """
        done = 0
        while done < len(events):
            done += self._apply_group_with_retries(events[done:], done)
        return done

    def _apply_group_with_retries(self, remaining: list[StoredEvent], offset: int) -> int:
        check_markers = False
        size = GROUP_SIZE
        for attempt in range(MAX_ATTEMPTS):
            try:
                return self._apply_group(remaining[:size], offset, check_markers)
            except AlreadyApplied:
                check_markers = True  # a re-delivery: look up which ones, then skip them
            except VersionConflict:
                self._forget()  # another consumer moved on: re-read what we cached
                if attempt >= 2:
                    size = 1  # contention: go one event at a time
        raise VersionConflict(f"could not commit event {remaining[0].event_id} after {MAX_ATTEMPTS} attempts")

    def _forget(self) -> None:
        self._users.clear()
        self._qtable = None

    def _load(self, user_ids: list[str]) -> tuple[dict[str, UserState], QTable | None]:
        missing = [u for u in dict.fromkeys(user_ids) if u not in self._users]
        if missing:
            if len(self._users) + len(missing) > self._cache_size:
                self._users.clear()
                missing = list(dict.fromkeys(user_ids))
            self._users.update(self._store.users(missing))
        if self._qtable is None:
            self._qtable = self._store.qtable(self._policy.version)
        return {u: self._users[u] for u in user_ids if u in self._users}, self._qtable

    def _apply_group(self, group: list[StoredEvent], offset: int, check_markers: bool) -> int:
        mapped: list[tuple[StoredEvent, tuple[str, str] | None]] = []
        rejected: EventRejected | None = None
        users_needed: list[str] = []
        for index, event in enumerate(group):
            try:
                target = self._policy.map_event(event.event_data)
            except PolicyError as exc:
                rejected = EventRejected(offset + index, str(exc))
                break
            if target is not None:
                new_user = target[0] not in users_needed
                if len(mapped) + 1 + len(users_needed) + int(new_user) > ITEM_BUDGET:
                    break  # keep the transaction under its item limit
                if new_user:
                    users_needed.append(target[0])
            elif len(mapped) + 1 + len(users_needed) > ITEM_BUDGET:
                break
            mapped.append((event, target))
        handled = len(mapped)
        read_users, stored_q = self._load(users_needed)
        qtable = stored_q or QTable.new(self._policy)
        users: dict[str, UserState] = dict(read_users)
        outcomes: list[Outcome] = []
        for event, target in mapped:
            if target is None:
                outcomes.append(Outcome(event.event_id, "ignored"))
                continue
            user_id, action = target
            user = users.get(user_id) or UserState.new(user_id, self._policy)
            result = apply_action(self._policy, user, qtable, action, event.received_at)
            users[user_id], qtable = result.user, result.qtable
            trace = event.event_data.get("trace_id")
            outcomes.append(
                Outcome(
                    event.event_id,
                    "capped" if result.capped else "applied",
                    user_id,
                    result.history_entry(event.event_id, event.event_type, event.received_at),
                    event.received_at,
                    trace if isinstance(trace, str) else None,
                )
            )
        if check_markers and outcomes:
            seen = self._store.existing_markers([o.marker_key for o in outcomes])
            if seen:
                # recompute without the events handled before, from fresh state
                self._forget()
                fresh = [e for (e, _), o in zip(mapped, outcomes, strict=True) if o.marker_key not in seen]
                if len(fresh) < len(mapped):
                    if fresh:
                        self._apply_group(fresh, offset, check_markers=False)
                    return self._finish(handled, rejected, group, offset)
        if outcomes:
            self._commit(outcomes, read_users, users, stored_q, qtable)
        return self._finish(handled, rejected, group, offset)

    def _finish(self, handled: int, rejected: EventRejected | None, group: list[StoredEvent], offset: int) -> int:
        if rejected is not None and rejected.index - offset == handled:
            failed = group[rejected.index - offset]
            self._store.record_failure(failed.event_id, rejected.reason)
            self._log.warning("Karma rejected event", event_id=failed.event_id, reason=rejected.reason)
            raise rejected
        return handled

    def _commit(
        self,
        outcomes: list[Outcome],
        read_users: dict[str, UserState],
        users: dict[str, UserState],
        stored_q: QTable | None,
        qtable: QTable,
    ) -> None:
        touched = {o.user_id for o in outcomes if o.user_id}
        writes = {}
        role_changes: dict[str, int] = {}
        for user_id in touched:
            before = read_users.get(user_id)
            after = users[user_id]
            writes[user_id] = (
                replace(after, version=(before.version + 1) if before else 1),
                before.version if before else None,
            )
            if before is None:
                role_changes[f"users:{after.role}"] = role_changes.get(f"users:{after.role}", 0) + 1
            elif before.role != after.role:
                role_changes[f"users:{before.role}"] = role_changes.get(f"users:{before.role}", 0) - 1
                role_changes[f"users:{after.role}"] = role_changes.get(f"users:{after.role}", 0) + 1
        q_write = None
        # capped events take part in the order too: which event is over a cap depends on it
        if any(o.status in ("applied", "capped") for o in outcomes):
            q_write = (
                replace(qtable, version=(stored_q.version + 1) if stored_q else 1),
                stored_q.version if stored_q else None,
            )
            # The order Karma applied events in: Q-table writes are serialised by their version,
            # so (version written, place in the group) is a total order, whatever the shards.
            # `bhiv karma rebuild` replays in this order (Q-learning depends on it).
            applied = [o for o in outcomes if o.status in ("applied", "capped") and o.history is not None]
            for place, outcome in enumerate(applied):
                assert outcome.history is not None
                outcome.history["applied_order"] = [q_write[0].version, place]
        self._store.commit(outcomes, writes, q_write, self._policy.version, role_changes)
        for user_id, (state, _) in writes.items():
            self._users[user_id] = state
        if q_write is not None:
            self._qtable = q_write[0]
        for outcome in outcomes:
            if outcome.status == "capped" and outcome.history:
                self._log.info(
                    "Karma capped event",
                    event_id=outcome.event_id,
                    user_id=outcome.user_id,
                    action=outcome.history["action"],
                    reason="over the action's daily cap (policy.yaml): recorded, not applied",
                    trace_id=outcome.trace_id,
                )
            elif outcome.status == "applied" and outcome.history:
                self._log.info(
                    "Karma applied event",
                    event_id=outcome.event_id,
                    user_id=outcome.user_id,
                    action=outcome.history["action"],
                    reward=outcome.history["reward"],
                    trace_id=outcome.trace_id,
                )
