from __future__ import annotations

from pathlib import Path

import pytest

from bhiv.auth import Authenticator, hash_token, load_requesters
from bhiv.errors import Forbidden, Unauthorized

REQUESTERS = {"workflow_executor": frozenset({"events:write"}), "bhiv_reader": frozenset({"events:read"})}


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(REQUESTERS, {"workflow_executor": hash_token("tok-wf"), "bhiv_reader": hash_token("tok-rd")})


def test_valid_token_with_scope_yields_its_owner(auth: Authenticator) -> None:
    principal = auth.authenticate("Bearer tok-wf", "events:write")
    assert principal.requester_id == "workflow_executor"
    assert auth.requester_for_write(principal, "workflow_executor") == "workflow_executor"


@pytest.mark.parametrize("header", [None, "", "tok-wf", "Basic tok-wf", "Bearer ", "Bearer nope"])
def test_missing_or_wrong_token_is_401(auth: Authenticator, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        auth.authenticate(header, "events:write")


def test_token_without_scope_is_403(auth: Authenticator) -> None:
    with pytest.raises(Forbidden) as err:
        auth.authenticate("Bearer tok-rd", "events:write")
    assert err.value.code == "insufficient_scope"


def test_body_naming_another_requester_is_403(auth: Authenticator) -> None:
    principal = auth.authenticate("Bearer tok-wf", "events:write")
    with pytest.raises(Forbidden) as err:
        auth.requester_for_write(principal, "bhiv_core")
    assert err.value.code == "requester_mismatch"


def test_token_of_a_requester_missing_from_config_is_403() -> None:
    auth = Authenticator(REQUESTERS, {"ghost": hash_token("tok-ghost")})
    with pytest.raises(Forbidden):
        auth.authenticate("Bearer tok-ghost", "events:read")


def test_auth_disabled_trusts_known_requesters_only(auth: Authenticator) -> None:
    open_auth = Authenticator(REQUESTERS, {}, auth_disabled=True)
    principal = open_auth.authenticate(None, "events:write")
    assert open_auth.requester_for_write(principal, "workflow_executor") == "workflow_executor"
    with pytest.raises(Forbidden):
        open_auth.requester_for_write(principal, "mallory")


def test_requesters_are_configuration(tmp_path: Path) -> None:
    packaged = load_requesters()
    assert packaged["bhiv_core"] >= {"events:write", "events:read", "karma:write", "workflows:execute"}
    assert packaged["workflow_executor"] == {"events:write"}
    assert packaged["bhiv_reader"] == {"events:read", "karma:read"}
    custom = tmp_path / "requesters.yaml"
    custom.write_text("requesters:\n  robot:\n    scopes: [events:read]\n", encoding="utf-8")
    assert load_requesters(str(custom)) == {"robot": frozenset({"events:read"})}
