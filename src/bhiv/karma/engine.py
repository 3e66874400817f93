"""Applying one event to a user and the Q-table: pure functions, deterministic for replay."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
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
        }


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def apply_action(policy: Policy, user: UserState, qtable: QTable, action: str, at: str) -> Applied:
    """The effect of `user` taking `action` at time `at` (the event's received_at)."""
    when = _parse_time(at)
    points = policy.points_for(action, [_parse_time(t) for t in user.cheat_times], when)
    balances = dict(user.balances)
    for token, amount in points.items():
        balances[token] = balances.get(token, 0.0) + amount
    merit_before = policy.merit(user.balances)
    merit_after = policy.merit(balances)
    spec = policy.actions[action]
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
    )
    new_q = replace(qtable, values=values, updates=qtable.updates + 1)
    return Applied(new_user, new_q, action, points, reward, role_before, role_after, q_before, q_after)


def recommendations(policy: Policy, qtable: QTable, role: str) -> list[dict[str, Any]]:
    """The role's actions ranked by Q-value (ties keep policy order)."""
    ranked = sorted(policy.action_names, key=lambda a: -qtable.get(role, a, policy.initial_q))
    return [{"action": a, "q_value": qtable.get(role, a, policy.initial_q)} for a in ranked]
