"""Chalice's own answers (unknown path, wrong method, foreign Content-Type) in the error envelope."""

from __future__ import annotations

import json

import pytest
from chalice import Chalice
from chalice.config import Config
from chalice.local import LocalGateway

from bhiv.chalice_compat import use_error_envelope

TOKEN = "bhiv_" + "x7" * 20


def _gateway() -> LocalGateway:
    app = Chalice(app_name="compat-probe")
    use_error_envelope(app)

    @app.route("/things", methods=["GET"])
    def things() -> dict[str, bool]:
        return {"ok": True}

    return LocalGateway(app, Config())


def test_an_unknown_path_is_404_in_the_envelope_and_never_echoes_the_token() -> None:
    response = _gateway().handle_request("GET", "/nope", {"authorization": f"Bearer {TOKEN}"}, None)
    assert response["statusCode"] == 404
    body = json.loads(response["body"])
    assert body["success"] is False and body["error"]["code"] == "not_found"
    assert TOKEN not in response["body"]


def test_a_wrong_method_is_405_with_allow_in_the_envelope() -> None:
    response = _gateway().handle_request("DELETE", "/things", {}, None)
    assert response["statusCode"] == 405
    assert response["headers"]["Allow"] == "GET"
    assert json.loads(response["body"])["error"]["code"] == "method_not_allowed"


def test_a_foreign_content_type_is_415_in_the_envelope() -> None:
    response = _gateway().handle_request("GET", "/things", {"content-type": "text/plain"}, None)
    assert response["statusCode"] == 415  # this probe route keeps Chalice's default content types
    assert json.loads(response["body"])["error"]["code"] == "unsupported_media_type"


def test_route_matches_are_remembered_and_each_caller_gets_its_own_copy() -> None:
    from chalice.local import RouteMatcher

    import bhiv.chalice_compat as compat

    matcher = RouteMatcher(["/core/events", "/core/events/{event_id}", "/v1/karma/{user_id}"])
    first = matcher.match_route("/core/events/evt%201?limit=5&limit=6")
    assert first.route == "/core/events/{event_id}"
    assert first.captured == {"event_id": "evt%201"}
    assert first.query_params == {"limit": ["5", "6"]}
    first.captured["event_id"] = "changed"
    first.query_params["limit"].append("7")
    again = matcher.match_route("/core/events/evt%201?limit=5&limit=6")
    assert again.captured == {"event_id": "evt%201"} and again.query_params == {"limit": ["5", "6"]}
    assert matcher.match_route("/core/events/").route == "/core/events"
    with pytest.raises(ValueError):
        matcher.match_route("/nowhere")
    for i in range(compat.ROUTE_MATCHES_KEPT + 10):  # bounded, however many distinct paths arrive
        matcher.match_route(f"/v1/karma/u{i}")
    assert len(matcher._bhiv_matches) <= compat.ROUTE_MATCHES_KEPT
