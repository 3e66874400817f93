"""Chalice's own answers (unknown path, wrong method, foreign Content-Type) in the error envelope."""

from __future__ import annotations

import json

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
