"""Applying one event to a user and the Q-table: pure functions, deterministic for replay."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from bhiv.karma.policy import TOKENS, Policy

CHEAT_MEMORY = 16  # cheat times kept per user; more than any escalation needs


def q_update(q: float, reward: float, next_max: float, alpha: float, gamma: float) -> float:
    """One Q-learning step: Q + alpha * (r + gamma * max Q(s') - Q)."""
    return q + alpha * (reward + gamma * next_max - q)


@dataclass(frozen=True)
class UserState:
    user_id: str
    role: str
    balances: dict[str, float]
    action_stats: dict[str, int] = field(default_factory=dict)
    cheat_times: tuple[str, ...] = ()
    events_applied: int = 0
    last_updated: str | None = None
    version: int = 0
    paap: float = 0.0  # merit lost to penalties (negative points) so far; never decreases
    # applications per action per UTC day (YYYY-MM-DD), for the daily caps; the last few days only
    cap_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    capped_stats: dict[str, int] = field(default_factory=dict)  # events over a cap, per action (ever)

    @staticmethod
    def new(user_id: str, policy: Policy) -> UserState:
        return UserState(user_id, policy.roles[0][0], {token: 0.0 for token in TOKENS})


@dataclass(frozen=True)
class QTable:
    values: dict[str, dict[str, float]]
    updates: int = 0
    version: int = 0

    @staticmethod
    def new(policy: Policy) -> QTable:
        return QTable({s: {a: policy.initial_q for a in policy.action_names} for s in policy.states})

    def get(self, state: str, action: str, default: float) -> float:
        return self.values.get(state, {}).get(action, default)

    def best(self, state: str, policy: Policy) -> float:
        return max(self.get(state, a, policy.initial_q) for a in policy.action_names)


@dataclass(frozen=True)
class Applied:
    user: UserState
    qtable: QTable
    action: str
    points: dict[str, float]
    reward: float
    role_before: str
    role_after: str
    q_before: float
    q_after: float
    capped: bool = False  # over the action's daily cap: recorded, but balances and Q-table unchanged

    def history_entry(self, event_id: str, event_type: str, at: str) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "event_type": event_type,
            "action": self.action,
            "points": self.points,
            "reward": self.reward,
            "role_before": self.role_before,
            "role_after": self.role_after,
            "q_before": self.q_before,
            "q_after": self.q_after,
            "applied_at": at,
            "capped": self.capped,
        }


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


CAP_DAYS_KEPT = 3  # a late event (stream order is not quite time order) still finds its day


def _count_on(user: UserState, day: str, action: str) -> dict[str, dict[str, int]]:
    """The user's cap counts with one more `action` on `day` (keeping the latest days only)."""
    counts = {d: dict(c) for d, c in user.cap_counts.items()}
    today = counts.setdefault(day, {})
    today[action] = today.get(action, 0) + 1
    return {d: counts[d] for d in sorted(counts)[-CAP_DAYS_KEPT:]}


def apply_action(policy: Policy, user: UserState, qtable: QTable, action: str, at: str) -> Applied:
    """The effect of `user` taking `action` at time `at` (the event's received_at).

    An action over its daily cap (policy.yaml) is recorded as capped: no points, no Q-update.
    """
    spec = policy.actions[action]
    day = _parse_time(at).astimezone(UTC).date().isoformat()
    if spec.daily_cap is not None and user.cap_counts.get(day, {}).get(action, 0) >= spec.daily_cap:
        q_now = qtable.get(user.role, action, policy.initial_q)
        capped_stats = dict(user.capped_stats)
        capped_stats[action] = capped_stats.get(action, 0) + 1
        new_user = replace(user, capped_stats=capped_stats, last_updated=at)
        return Applied(new_user, qtable, action, {}, 0.0, user.role, user.role, q_now, q_now, capped=True)
    cap_counts = _count_on(user, day, action) if spec.daily_cap is not None else user.cap_counts
    when = _parse_time(at)
    points = policy.points_for(action, [_parse_time(t) for t in user.cheat_times], when)
    balances = dict(user.balances)
    for token, amount in points.items():
        balances[token] = balances.get(token, 0.0) + amount
    merit_before = policy.merit(user.balances)
    merit_after = policy.merit(balances)
    reward = spec.q_reward if spec.q_reward is not None else merit_after - merit_before
    role_before = user.role
    role_after = policy.role_for(merit_after)
    q_before = qtable.get(role_before, action, policy.initial_q)
    q_after = q_update(q_before, reward, qtable.best(role_after, policy), policy.alpha, policy.gamma)
    values = {state: dict(row) for state, row in qtable.values.items()}
    values.setdefault(role_before, {})[action] = q_after
    cheats = user.cheat_times
    if spec.escalation is not None:
        cheats = (*cheats, at)[-CHEAT_MEMORY:]
    penalty = -sum(min(amount, 0.0) * policy.merit_weights.get(token, 0.0) for token, amount in points.items())
    stats = dict(user.action_stats)
    stats[action] = stats.get(action, 0) + 1
    new_user = replace(
        user,
        role=role_after,
        balances=balances,
        action_stats=stats,
        cheat_times=cheats,
        events_applied=user.events_applied + 1,
        last_updated=at,
        paap=user.paap + penalty,
        cap_counts=cap_counts,
    )
    new_q = replace(qtable, values=values, updates=qtable.updates + 1)
    return Applied(new_user, new_q, action, points, reward, role_before, role_after, q_before, q_after)


def recommendations(policy: Policy, qtable: QTable, role: str) -> list[dict[str, Any]]:
    """The role's actions ranked by Q-value (ties keep policy order)."""
    ranked = sorted(policy.action_names, key=lambda a: -qtable.get(role, a, policy.initial_q))
    return [{"action": a, "q_value": qtable.get(role, a, policy.initial_q)} for a in ranked]
