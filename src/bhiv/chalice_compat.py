"""Chalice's own answers, in the project's error envelope.

Chalice answers some requests before a view runs: a method the route does not list (405), a
Content-Type the route does not take (415), and, when served locally (`chalice local`, `bhiv up`,
the in-process tests), a path no route matches. Locally that last one is API Gateway's
`403 {"message": "Missing Authentication Token"}`, and with an Authorization header chalice's
emulation pastes the header, token included, into the message. Every such answer here becomes a
4xx `{"success": false, "error": {"code", "message"}}` that never repeats a request header:
404 for an unknown path, 405 with `Allow` for a wrong method.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chalice import Chalice, Response

try:
    from chalice import local as chalice_local
except ImportError:  # the Lambda layer ships Chalice's runtime only; API Gateway routes there
    chalice_local = None

_CHALICE_ERRORS = {  # Chalice's error code -> (status, the envelope's code)
    "MethodNotAllowedError": (405, "method_not_allowed"),
    "UnsupportedMediaType": (415, "unsupported_media_type"),
    "BadRequest": (400, "bad_request"),
}


def envelope(status: int, code: str, message: str) -> str:
    return json.dumps({"success": False, "error": {"code": code, "message": message}})


def use_error_envelope(app: Chalice) -> None:
    """Rewrite Chalice's own error answers (405, 415, ...) into the envelope."""

    @app.middleware("http")
    def _envelope(event: Any, get_response: Callable[[Any], Response]) -> Response:
        response = get_response(event)
        body = response.body
        if response.status_code < 400 or not isinstance(body, dict) or set(body) != {"Code", "Message"}:
            return response
        known = _CHALICE_ERRORS.get(str(body["Code"]))
        if known is None:
            return response
        status, code = known
        headers = dict(response.headers or {})
        if status == 405:
            message = f"Method {event.method} is not allowed here; allowed: {headers.get('Allow', '')}"
        elif status == 415:
            message = "Unsupported Content-Type for this route"
        else:
            message = str(body["Message"])[:200]
        headers["Content-Type"] = "application/json"
        return Response(body=envelope(status, code, message), status_code=status, headers=headers)


def _patch_local_gateway() -> None:
    if chalice_local is None or getattr(chalice_local.LocalGateway, "_bhiv_not_found", False):
        return
    original = chalice_local.LocalGateway.handle_request

    def handle_request(self: Any, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        try:
            self.event_converter._route_matcher.match_route(path)
        except ValueError:
            # API Gateway would say 403 "Missing Authentication Token" (and chalice's emulation
            # echoes the Authorization header); an unknown path is a 404 here, and nothing of the
            # request is repeated back.
            return {
                "statusCode": 404,
                "headers": {"Content-Type": "application/json"},
                "multiValueHeaders": {},
                "body": envelope(404, "not_found", "No such path; the API is described in openapi/"),
            }
        return original(self, method, path, headers, body)

    chalice_local.LocalGateway.handle_request = handle_request
    chalice_local.LocalGateway._bhiv_not_found = True
    _remember_per_gateway_lookups()


ROUTE_MATCHES_KEPT = 1024  # per server; a bound against clients that send endless distinct paths


def _remember_per_gateway_lookups() -> None:
    """Chalice's local route matcher parses the URL and walks every route on each call, and a request
    is matched twice (above, then by the event converter): about 8 % of a single write's CPU. The
    answer depends on the URL alone, so it is kept; each caller gets its own copy of the dicts.
    The Lambda context's settings are kept per gateway likewise."""
    original = chalice_local.RouteMatcher.match_route
    match_result = chalice_local.MatchResult

    def match_route(self: Any, url: str) -> Any:
        known: dict[str, Any] | None = self.__dict__.get("_bhiv_matches")
        if known is None:
            known = self._bhiv_matches = {}
        found = known.get(url)
        if found is None:
            found = original(self, url)  # an unknown path raises, and is not kept
            if len(known) >= ROUTE_MATCHES_KEPT:
                known.clear()
            known[url] = found
        return match_result(
            found.route, dict(found.captured), {name: list(values) for name, values in found.query_params.items()}
        )

    chalice_local.RouteMatcher.match_route = match_route

    def generate_lambda_context(self: Any) -> Any:
        # chalice looks the function's name, memory and timeout up in its layered config on every
        # request (three chained lookups); a gateway's config never changes
        settings = self.__dict__.get("_bhiv_context_settings")
        if settings is None:
            timeout = self._config.lambda_timeout
            settings = self._bhiv_context_settings = (
                self._config.function_name,
                self._config.lambda_memory_size,
                self.MAX_LAMBDA_EXECUTION_TIME * 1000 if timeout is None else timeout * 1000,
            )
        name, memory, runtime_ms = settings
        return chalice_local.LambdaContext(function_name=name, memory_size=memory, max_runtime_ms=runtime_ms)

    chalice_local.LocalGateway._generate_lambda_context = generate_lambda_context


_patch_local_gateway()
