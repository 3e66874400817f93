"""The Karma policy (roles, actions, rewards, event mapping), loaded from policy.yaml."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TOKENS = ("DharmaPoints", "SevaPoints", "PunyaTokens")


class PolicyError(ValueError):
    """An event the policy cannot apply (e.g. an unknown action): a poison record, not a no-op."""


@dataclass(frozen=True)
class Escalation:
    token: str
    amounts: tuple[float, ...]
    window: timedelta


@dataclass(frozen=True)
class Action:
    name: str
    points: dict[str, float]
    q_reward: float | None = None
    escalation: Escalation | None = None
    daily_cap: int | None = None  # applications per user per UTC day; None: uncapped


@dataclass(frozen=True)
class Mapping:
    when: dict[str, Any]
    user_field: str
    action: str | None = None
    action_field: str | None = None


@dataclass(frozen=True)
class Policy:
    version: str
    alpha: float
    gamma: float
    initial_q: float
    roles: tuple[tuple[str, float], ...]  # (name, min merit), ascending
    merit_weights: dict[str, float]
    actions: dict[str, Action]
    mappings: tuple[Mapping, ...]

    @property
    def states(self) -> list[str]:
        return [name for name, _ in self.roles]

    @property
    def action_names(self) -> list[str]:
        return list(self.actions)

    def role_for(self, merit: float) -> str:
        role = self.roles[0][0]
        for name, threshold in self.roles:
            if merit >= threshold:
                role = name
        return role

    def merit(self, balances: dict[str, float]) -> float:
        return sum(balances.get(token, 0) * weight for token, weight in self.merit_weights.items())

    def points_for(self, action: str, recent_cheats: list[datetime], at: datetime) -> dict[str, float]:
        """Balance changes for `action` at `at`, given the user's earlier cheat times."""
        spec = self.actions[action]
        if spec.escalation is None:
            return dict(spec.points)
        esc = spec.escalation
        within = [t for t in recent_cheats if at - esc.window < t <= at]
        amount = esc.amounts[min(len(within), len(esc.amounts) - 1)]
        return {esc.token: amount}

    def map_event(self, event_data: dict[str, Any]) -> tuple[str, str] | None:
        """(user_id, action) for an event, or None when the policy ignores it."""
        for rule in self.mappings:
            if all(event_data.get(k) == v for k, v in rule.when.items()):
                user = event_data.get(rule.user_field)
                if not isinstance(user, str) or not user:
                    return None  # nobody to credit
                action = rule.action if rule.action else event_data.get(rule.action_field or "")
                if not isinstance(action, str) or action not in self.actions:
                    raise PolicyError(f"unknown action {action!r} for event type {event_data.get('event_type')!r}")
                return user, action
        return None


def _parse(doc: dict[str, Any]) -> Policy:
    actions: dict[str, Action] = {}
    for name, spec in doc["actions"].items():
        esc = spec.get("escalating")
        cap = spec.get("daily_cap")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"policy action {name!r}: daily_cap must be a positive integer or absent")
        actions[name] = Action(
            name=name,
            points={k: float(v) for k, v in (spec.get("points") or {}).items()},
            q_reward=float(spec["q_reward"]) if "q_reward" in spec else None,
            escalation=Escalation(
                esc["token"], tuple(float(a) for a in esc["amounts"]), timedelta(days=float(esc["window_days"]))
            )
            if esc
            else None,
            daily_cap=cap,
        )
    roles = tuple(sorted(((r["name"], float(r["min_merit"])) for r in doc["roles"]), key=lambda r: r[1]))
    mappings = tuple(
        Mapping(
            when=dict(m["when"]), user_field=m["user_field"], action=m.get("action"), action_field=m.get("action_field")
        )
        for m in doc["mappings"]
    )
    for m in mappings:
        if m.action is not None and m.action not in actions:
            raise ValueError(f"policy maps to unknown action {m.action!r}")
    return Policy(
        version=str(doc["version"]),
        alpha=float(doc["alpha"]),
        gamma=float(doc["gamma"]),
        initial_q=float(doc.get("initial_q", 0.0)),
        roles=roles,
        merit_weights={k: float(v) for k, v in doc["merit_weights"].items()},
        actions=actions,
        mappings=mappings,
    )


def load_policy(path: str | None = None) -> Policy:
    path = path or os.environ.get("BHIV_KARMA_POLICY_FILE")
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = resources.files("bhiv.karma").joinpath("policy.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    return load_policy()
