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
MAX_USER_ID = 256  # events name users in 1..256 characters (contracts/)


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
    user_fields: tuple[str, ...]  # dotted paths, first non-empty string wins
    action: str | None = None
    action_field: str | None = None


@dataclass(frozen=True)
class Derivation:
    """Fills `field` of an `event_type` that lacks it, from the first rule that gives a value:
    `{from: path, map: {value: result}}` or `{from: path, sign: [negative, zero, positive]}`."""

    event_type: str
    field: str
    rules: tuple[dict[str, Any], ...]

    def value(self, event_data: dict[str, Any]) -> Any:
        for rule in self.rules:
            found = lookup(event_data, rule["from"])
            if "map" in rule and isinstance(found, str | bool):
                for key, result in rule["map"].items():
                    if type(key) is type(found) and key == found:
                        return result
            if "sign" in rule and isinstance(found, int | float) and not isinstance(found, bool):
                negative, zero, positive = rule["sign"]
                return negative if found < 0 else positive if found > 0 else zero
        return None


def lookup(event_data: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`metadata.user_id`), or None."""
    value: Any = event_data
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


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
    derivations: tuple[Derivation, ...] = ()
    paap_weight: float = 1.0  # how much paap (merit lost to penalties) weighs on weighted_karma_score

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

    def penalty_escalation(self) -> tuple[str, Escalation] | None:
        """The first action whose penalty escalates (the policy's `cheat`), if any."""
        for action in self.actions.values():
            if action.escalation is not None:
                return action.name, action.escalation
        return None

    def points_for(self, action: str, recent_cheats: list[datetime], at: datetime) -> dict[str, float]:
        """Balance changes for `action` at `at`, given the user's earlier cheat times."""
        spec = self.actions[action]
        if spec.escalation is None:
            return dict(spec.points)
        esc = spec.escalation
        within = [t for t in recent_cheats if at - esc.window < t <= at]
        amount = esc.amounts[min(len(within), len(esc.amounts) - 1)]
        return {esc.token: amount}

    def derive(self, event_data: dict[str, Any]) -> dict[str, Any]:
        """The event with the fields the policy derives (e.g. an outcome from a reward) filled in
        where the writer left them out; a field the writer sent is never replaced."""
        derived = dict(event_data)
        for rule in self.derivations:
            if derived.get("event_type") == rule.event_type and derived.get(rule.field) is None:
                value = rule.value(event_data)
                if value is not None:
                    derived[rule.field] = value
        return derived

    def map_event(self, event_data: dict[str, Any]) -> tuple[str, str] | None:
        """(user_id, action) for an event, or None when the policy ignores it."""
        event_data = self.derive(event_data)
        for rule in self.mappings:
            if all(event_data.get(k) == v for k, v in rule.when.items()):
                user = next(
                    (u for u in (lookup(event_data, f) for f in rule.user_fields) if isinstance(u, str) and u), None
                )
                if user is None or len(user) > MAX_USER_ID:
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
            when=dict(m["when"]),
            user_fields=tuple([m["user_field"]] if isinstance(m["user_field"], str) else m["user_field"]),
            action=m.get("action"),
            action_field=m.get("action_field"),
        )
        for m in doc["mappings"]
    )
    derivations = tuple(
        Derivation(event_type, field, tuple(rules))
        for event_type, fields in (doc.get("derive") or {}).items()
        for field, rules in fields.items()
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
        derivations=derivations,
        paap_weight=float(doc.get("paap_weight", 1.0)),
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
