"""Karma's pure core against hand-computed values."""

from __future__ import annotations

import pytest

from bhiv.karma.engine import QTable, UserState, apply_action, q_update, recommendations
from bhiv.karma.policy import PolicyError, default_policy

P = default_policy()
T = "2026-11-{day:02d}T10:00:00.000000Z"


def test_q_update_matches_the_formula() -> None:
    assert q_update(0.0, 5.0, 0.0, 0.15, 0.9) == pytest.approx(0.75)
    assert q_update(2.0, -1.0, 4.0, 0.5, 0.5) == pytest.approx(2.0 + 0.5 * (-1.0 + 2.0 - 2.0))


def test_first_lesson_hand_computed() -> None:
    result = apply_action(P, UserState.new("u", P), QTable.new(P), "completing_lessons", T.format(day=1))
    assert result.points == {"DharmaPoints": 5.0}
    assert result.reward == 5.0  # merit delta: 5 Dharma * 1.0
    assert result.q_after == pytest.approx(0.75)  # 0 + 0.15 * (5 + 0.9 * 0 - 0)
    assert result.user.balances["DharmaPoints"] == 5.0 and result.user.role == "learner"
    assert result.qtable.values["learner"]["completing_lessons"] == pytest.approx(0.75)
    assert result.qtable.updates == 1


def test_second_step_uses_max_of_next_state() -> None:
    first = apply_action(P, UserState.new("u", P), QTable.new(P), "completing_lessons", T.format(day=1))
    second = apply_action(P, first.user, first.qtable, "helping_peers", T.format(day=2))
    # reward = 10 Seva * 1.2 = 12; max Q(learner) = 0.75
    assert second.reward == pytest.approx(12.0)
    assert second.q_after == pytest.approx(0.15 * (12.0 + 0.9 * 0.75))


def test_role_follows_merit_thresholds() -> None:
    user, q = UserState.new("u", P), QTable.new(P)
    roles = []
    for day in range(1, 8):  # 25 Punya = 75 merit each
        result = apply_action(P, user, q, "selfless_service", T.format(day=day))
        user, q = result.user, result.qtable
        roles.append(user.role)
    # merit 75, 150, 225, 300, 375, 450, 525
    assert roles == ["volunteer", "volunteer", "seva", "seva", "seva", "seva", "guru"]
    assert P.merit({"DharmaPoints": 10, "SevaPoints": 10, "PunyaTokens": 10}) == pytest.approx(52.0)


def test_cheating_escalates_within_30_days_and_resets_after() -> None:
    user, q = UserState.new("u", P), QTable.new(P)
    penalties = []
    for day in range(1, 8):
        result = apply_action(P, user, q, "cheat", T.format(day=day))
        user, q = result.user, result.qtable
        penalties.append(result.points["DharmaPoints"])
    assert penalties == [-2, -5, -10, -20, -40, -100, -100]
    later = apply_action(P, user, q, "cheat", "2027-01-20T10:00:00.000000Z")
    assert later.points == {"DharmaPoints": -2.0}


def test_derived_actions_have_documented_rewards() -> None:
    failed = apply_action(P, UserState.new("u", P), QTable.new(P), "workflow_failure", T.format(day=1))
    assert failed.points == {} and failed.reward == -1.0 and failed.user.balances["DharmaPoints"] == 0
    ok = apply_action(P, UserState.new("u", P), QTable.new(P), "workflow_success", T.format(day=1))
    assert ok.points == {"DharmaPoints": 2.0} and ok.reward == 2.0


def test_event_mapping_is_declarative() -> None:
    assert P.map_event({"event_type": "workflow_execution", "status": "success", "user_id": "u1"}) == (
        "u1",
        "workflow_success",
    )
    assert P.map_event({"event_type": "workflow_execution", "status": "failed", "user_id": "u1"}) == (
        "u1",
        "workflow_failure",
    )
    assert P.map_event({"event_type": "agent_result", "outcome": "partial", "user_id": "u2"}) == ("u2", "agent_partial")
    assert P.map_event({"event_type": "rl_outcome", "outcome": "negative", "user_id": "u3"}) == ("u3", "rl_negative")
    assert P.map_event({"event_type": "life_event", "action": "cheat", "user_id": "u4"}) == ("u4", "cheat")
    assert P.map_event({"event_type": "workflow_execution", "status": "success"}) is None  # nobody to credit
    assert P.map_event({"event_type": "test", "user_id": "u1"}) is None
    with pytest.raises(PolicyError):
        P.map_event({"event_type": "life_event", "action": "teleport", "user_id": "u4"})


def test_recommendations_rank_the_roles_q_values() -> None:
    result = apply_action(P, UserState.new("u", P), QTable.new(P), "helping_peers", T.format(day=1))
    ranked = recommendations(P, result.qtable, "learner")
    assert ranked[0]["action"] == "helping_peers"
    assert len(ranked) == len(P.action_names)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # BHIV Core's agent_result {task_id, agent_id, result}: outcome from the result, user from metadata
        (
            {"event_type": "agent_result", "agent_id": "a", "result": {"success": True}, "metadata": {"user_id": "u"}},
            ("u", "agent_success"),
        ),
        (
            {"event_type": "agent_result", "agent_id": "a", "result": {"success": False}, "user_id": "u"},
            ("u", "agent_failure"),
        ),
        (
            {"event_type": "agent_result", "agent_id": "a", "result": {"status": "partial"}, "user_id": "u"},
            ("u", "agent_partial"),
        ),
        ({"event_type": "agent_result", "agent_id": "a", "result": {"success": True}}, None),  # an agent is no user
        ({"event_type": "agent_result", "agent_id": "a", "result": {"note": "?"}, "user_id": "u"}, None),  # no outcome
        # BHIV Core's rl_outcome {agent_id, reward, metadata}: outcome from the reward's sign
        (
            {"event_type": "rl_outcome", "agent_id": "a", "reward": 2.5, "metadata": {"user_id": "u"}},
            ("u", "rl_positive"),
        ),
        ({"event_type": "rl_outcome", "agent_id": "a", "reward": 0, "metadata": {"user_id": "u"}}, ("u", "rl_neutral")),
        (
            {"event_type": "rl_outcome", "agent_id": "a", "reward": -1, "metadata": {"user_id": "u"}},
            ("u", "rl_negative"),
        ),
        (
            {"event_type": "rl_outcome", "reward": 3, "outcome": "negative", "user_id": "u"},
            ("u", "rl_negative"),
        ),  # sent wins
        # the original Executor's workflow_execution: the user in metadata.user_id
        (
            {"event_type": "workflow_execution", "status": "failed", "metadata": {"user_id": "u"}},
            ("u", "workflow_failure"),
        ),
    ],
)
def test_original_writers_shapes_are_mapped_by_documented_rules(event: dict[str, object], expected: object) -> None:
    assert P.map_event(event) == expected


def test_paap_is_the_merit_lost_to_penalties() -> None:
    user, q = UserState.new("u", P), QTable.new(P)
    for day, action in ((1, "cheat"), (2, "completing_lessons"), (3, "cheat")):
        result = apply_action(P, user, q, action, T.format(day=day))
        user, q = result.user, result.qtable
    assert user.paap == 2 + 5  # the first cheat costs 2, the second within 30 days 5
    assert P.merit(user.balances) == -2 + 5 - 5
