"""Schemathesis against Karma's Chalice app, in-process (ARCHITECTURE.md 5).

openapi/karma.yaml is loaded from disk and every operation is exercised through a WSGI adapter
over chalice.local.LocalGateway, with moto behind it: all checks, positive and negative data, the
examples, coverage and fuzzing phases per operation, then the stateful phase along the spec's
links (record a direct event, then read the user's karma and history).

Karma's state changes only through the Bucket's stream. There is no poller in-process, so the
harness runs the local stream poller (bhiv.local.streams, the stand-in for Lambda's event source
mapping) over the events table: once to apply the seed events, and in the stateful phase after
every accepted direct event, so the linked reads must then find the user.

Self-contained: the moto environment, the seed and the WSGI adapter are defined here.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import boto3
import hypothesis
import pytest
import schemathesis
from botocore.config import Config as BotoConfig
from chalice.config import Config as ChaliceConfig
from chalice.local import LocalGateway, LocalGatewayException
from moto import mock_aws
from schemathesis import Case
from werkzeug.test import Client

from bhiv import auth
from bhiv.bucket.domain import build_event
from bhiv.karma import runtime
from bhiv.local import moto_patch, template
from bhiv.local.server import load_function_module
from bhiv.local.streams import StreamPoller
from bhiv.storage import aws as aws_clients
from bhiv.storage.events import EventStore

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "karma.yaml"
FUNCTION = "KarmaFunction"  # the HTTP function (its environment)
STREAM_FUNCTION = "KarmaStreamFunction"  # the stream consumer (its event source mapping)
CALLER = "bhiv_core"  # holds karma:read and karma:write
TOKENS = {requester: auth.new_token() for requester in auth.load_requesters()}

# Modest, to keep the file well under two minutes; raise BHIV_SCHEMATHESIS_MAX_EXAMPLES to hunt.
MAX_EXAMPLES = int(os.environ.get("BHIV_SCHEMATHESIS_MAX_EXAMPLES", "30"))
# Fixed, so a run is reproducible; set BHIV_SCHEMATHESIS_SEED to explore other inputs.
SEED = int(os.environ.get("BHIV_SCHEMATHESIS_SEED", "20261129"))

AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",  # moto does not know account-based endpoints
}
# Variables that would make the app look elsewhere for tokens, storage or configuration.
FOREIGN_ENV = (
    "BHIV_AWS_ENDPOINT_URL",
    "BHIV_AUTH_DISABLED",
    "BHIV_CREDENTIALS_FILE",
    "BHIV_TOKEN_HASHES_PARAMETER",
    "BHIV_REQUESTERS_FILE",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)

# Seeded through the stream, so the spec's example user ids (user-1, user-seva) have 200 answers.
SEED_EVENTS: list[dict[str, Any]] = [
    {
        "event_type": "workflow_execution",
        "trace_id": "seed-1",
        "user_id": "user-1",
        "action_type": "task",
        "status": "success",
        "execution_result": {},
    },
    {"event_type": "life_event", "user_id": "user-1", "action": "helping_peers", "role": "learner"},
    {"event_type": "life_event", "user_id": "user-1", "action": "cheat", "role": "learner"},
    {
        "event_type": "workflow_execution",
        "trace_id": "seed-2",
        "user_id": "user-1",
        "action_type": "email",
        "status": "failed",
        "execution_result": {},
    },
    {"event_type": "agent_result", "agent_id": "agent-1", "user_id": "user-1", "outcome": "partial"},
    {"event_type": "page_view", "user_id": "user-1"},  # mapped to no action: ignored
    *[{"event_type": "life_event", "user_id": "user-seva", "action": "selfless_service", "role": "learner"}] * 3,
]


# --- the app, as API Gateway would call it --------------------------------------------------------


class ApiGatewayLikeGateway(LocalGateway):  # type: ignore[misc]
    """LocalGateway with path parameters URL-decoded, as API Gateway hands them to the function.

    `chalice local` matches the raw path and passes the captured segments still percent-encoded
    (`/api/v1/karma/a%20b` reaches the view as `a%20b`); API Gateway decodes them (`a b`).
    """

    def _generate_lambda_event(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> dict[str, Any]:
        event: dict[str, Any] = super()._generate_lambda_event(method, path, headers, body)
        params = event.get("pathParameters") or {}
        event["pathParameters"] = {name: unquote(value) for name, value in params.items()}
        return event


class ChaliceWSGI:
    """A WSGI application over the gateway: what the HTTP API serves, in-process."""

    def __init__(self, app: Any) -> None:
        self.gateway = ApiGatewayLikeGateway(app, ChaliceConfig(chalice_stage="local"))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ["REQUEST_METHOD"]).upper()
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw_uri:
            path = str(raw_uri).partition("?")[0]
        else:
            path = quote(str(environ.get("PATH_INFO", "/")), safe="/:@!$&'()*+,;=-._~")
        if environ.get("QUERY_STRING"):
            path += "?" + str(environ["QUERY_STRING"])
        headers = {
            key[5:].replace("_", "-").title(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = str(environ["CONTENT_TYPE"])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length > 0 else None
        try:
            response = self.gateway.handle_request(method=method, path=path, headers=headers, body=body)
        except LocalGatewayException as exc:
            status, out_headers, payload = exc.CODE, dict(exc.headers), exc.body or b""
        else:
            status = int(response["statusCode"])
            out_headers = dict(response.get("headers") or {})
            out_headers.update(response.get("multiValueHeaders") or {})
            raw = response.get("body")
            if raw is None:
                payload = b""
            elif response.get("isBase64Encoded"):
                payload = base64.b64decode(raw)
            else:
                payload = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
        header_list: list[tuple[str, str]] = []
        for name, value in out_headers.items():
            if name.lower() != "content-length":
                header_list.extend((str(name), str(v)) for v in (value if isinstance(value, list) else [value]))
        if payload and not any(name.lower() == "content-type" for name, _ in header_list):
            header_list.append(("Content-Type", "application/json"))
        header_list.append(("Content-Length", str(len(payload))))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        start_response(f"{status} {reason}", header_list)
        return [payload]


APP_MODULE = load_function_module("functions/karma/")

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {TOKENS[CALLER]}"},
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "checks": {
            # Refusals the spec documents: an oversize body (413) is a refusal too.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "413", "415", "422"]},
        },
        "operations": [
            {
                # A schema-valid cursor the server never issued is a documented 400 the schema
                # cannot express; `only_explained_rejections` allows exactly that one.
                "include-operation-id": "getKarmaHistory",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]}},
            }
        ],
        "phases": {
            "examples": {"enabled": True},
            # `chalice local`'s HTTP server answers TRACE and QUERY with 501 (BaseHTTPRequestHandler has
            # no handler for them) before the app sees them; every other undeclared method gets the
            # app's 405 with an Allow header. OPTIONS is the gateway's CORS preflight (Schemathesis
            # skips it).
            "coverage": {"enabled": True, "unexpected-methods": ["get", "put", "post", "delete", "patch"]},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True, "max-steps": 6},
        },
    }
)

schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)
schema.app = ChaliceWSGI(APP_MODULE.app)


# --- moto, the app's environment and the seed ------------------------------------------------------


@dataclass
class KarmaEnv:
    dynamodb: Any
    poller: StreamPoller
    tokens: dict[str, str] = field(default_factory=dict)


def clear_runtime_caches() -> None:
    """Forget clients, services and authenticators built from a previous environment."""
    runtime.store.cache_clear()
    runtime.service.cache_clear()
    auth.authenticator_from_env.cache_clear()
    aws_clients.client.cache_clear()


def karma_poller(dynamodb: Any, sqs: Any, queues: dict[str, str], checkpoints: Path) -> StreamPoller:
    """The local stand-in for KarmaStreamFunction's event source mapping, calling `on_event`."""
    (mapping,) = [m for m in template.stream_mappings() if m.function == STREAM_FUNCTION]
    return StreamPoller(
        mapping=mapping,
        handler=APP_MODULE.on_event,
        dynamodb=dynamodb,
        streams=boto3.client("dynamodbstreams", config=BotoConfig(account_id_endpoint_mode="disabled")),
        sqs=sqs,
        queue_url=queues.get(mapping.on_failure_queue or ""),
        checkpoint_path=checkpoints,
    )


@pytest.fixture
def karma_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KarmaEnv]:
    """moto with template.yaml's tables and queues, KarmaFunction's environment, the seed applied."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in FOREIGN_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BHIV_TOKEN_HASHES", json.dumps({r: auth.hash_token(t) for r, t in TOKENS.items()}))
    monkeypatch.setenv("BHIV_RATE_LIMITS", "off")  # the runs test the API, not the per-requester limiter
    clear_runtime_caches()
    with mock_aws():
        moto_patch.install()
        dynamodb, sqs = boto3.client("dynamodb"), boto3.client("sqs")
        queues = template.create_resources(dynamodb, sqs)
        env = template.function_environment(FUNCTION)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        events = EventStore(dynamodb, env["EVENTS_TABLE"])
        for index, data in enumerate(SEED_EVENTS):
            # a day apart: selfless_service is capped at one a day (policy.yaml)
            events.append(build_event(data, CALLER, f"seed-{index}", datetime(2026, 11, 1 + index, tzinfo=UTC)))
        poller = karma_poller(dynamodb, sqs, queues, tmp_path / "checkpoints.json")
        assert poller.poll_once() == len(SEED_EVENTS)
        try:
            yield KarmaEnv(dynamodb=dynamodb, poller=poller, tokens=dict(TOKENS))
        finally:
            clear_runtime_caches()


# --- checks the spec cannot express ----------------------------------------------------------------


def only_explained_rejections(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """A 400 to schema-valid history parameters must be the one the spec describes: a cursor the
    server never issued."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return
    if case.operation.label != "GET /api/v1/karma/{user_id}/history":
        return
    error = response.json()["error"]
    if error.get("field") == "cursor" and (case.query or {}).get("cursor"):
        return
    raise AssertionError(f"Schema-valid history query refused for an undocumented reason: {response.text}")


def test_the_seed_is_applied(karma_env: KarmaEnv) -> None:
    user = runtime.service().karma("user-1")
    assert user["events_applied"] == 5
    assert runtime.service().karma("user-seva")["role"] == "seva"
    assert runtime.service().system_stats()["events"] == {"applied": 8, "capped": 0, "ignored": 1, "failed": 0}


@pytest.fixture(autouse=True)
def _karma(karma_env: KarmaEnv) -> KarmaEnv:
    """Every test runs against its own moto (autouse: Hypothesis refuses function-scoped fixtures
    among a test's arguments, though the state shared by a test's examples is what we want)."""
    return karma_env


@schema.parametrize()  # type: ignore[untyped-decorator]
def test_karma_api(case: Case) -> None:
    case.call_and_validate(additional_checks=[only_explained_rejections])


# --- regressions: inputs the seeded runs may not draw ---------------------------------------------

READER = {"Authorization": f"Bearer {TOKENS['bhiv_reader']}"}


@pytest.fixture
def http() -> Client:
    return Client(schema.app)


@pytest.mark.parametrize("limit", ["--5", "\u00b2", "\u0663", "1.0", "", " 5", "+5", "9" * 5000, "0", "1001"])
def test_history_refuses_a_limit_that_is_not_an_integer_in_range(http: Client, limit: str) -> None:
    # "--5" and "²" used to pass an isdigit() test and fail int() (500); "٣" (Arabic-Indic 3) was taken as 3
    response = http.get("/api/v1/karma/user-1/history", query_string={"limit": limit}, headers=READER)
    assert response.status_code == 400, response.text
    assert response.json is not None and response.json["error"]["field"] == "limit"


def test_history_pages_follow_next_cursor(http: Client) -> None:
    whole = http.get("/api/v1/karma/user-1/history", query_string={"limit": "1000"}, headers=READER).json
    assert whole is not None and whole["next_cursor"] is None
    pages: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = http.get("/api/v1/karma/user-1/history", query_string={"limit": "2", "cursor": cursor}, headers=READER)
        assert page.status_code == 200, page.text
        assert page.json is not None
        pages.extend(page.json["events"])
        if page.json["next_cursor"] is None:
            break
        cursor = page.json["next_cursor"]
    assert [e["event_id"] for e in pages] == [e["event_id"] for e in whole["events"]]
    assert [e["event_id"] for e in pages] == [f"seed-{i}" for i in (4, 3, 2, 1, 0)]  # newest first


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"x#2026").decode(),  # not a history key
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        base64.urlsafe_b64encode(b"h#" + b"x" * 1100).decode(),  # longer than any DynamoDB sort key
    ],
    ids=["garbage", "foreign_key", "not_utf8", "oversize_key"],
)
def test_history_refuses_cursors_it_never_issued(http: Client, cursor: str) -> None:
    response = http.get("/api/v1/karma/user-1/history", query_string={"cursor": cursor}, headers=READER)
    assert response.status_code == 400, response.text
    assert response.json is not None and response.json["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize("suffix", ["", "/history"])
def test_an_id_longer_than_any_user_is_not_found_without_a_lookup(http: Client, suffix: str) -> None:
    # DynamoDB refuses partition keys over 2048 bytes (moto does not): no such lookup may reach it
    response = http.get(f"/api/v1/karma/{'u' * 3000}{suffix}", headers=READER)
    assert response.status_code == 404, response.text


def test_path_parameters_arrive_decoded(http: Client) -> None:
    """As API Gateway hands them over: /api/v1/karma/a%2Fb%20c names the user "a/b c"."""
    response = http.get("/api/v1/karma/a%2Fb%20c", headers=READER)
    assert response.status_code == 404
    assert response.json is not None and "'a/b c'" in response.json["error"]["message"]


# --- the stateful phase ----------------------------------------------------------------------------

# Scenarios start at the direct-event write and follow its links to the user's karma and history.
# The operations with no links (health, q-table, stats) are left out: Schemathesis would rank them
# as likelier roots than the write. (`exclude`, because `include` on a schema whose config has
# [[operations]] entries selects everything.)
STATEFUL_EXCLUDED = ["health", "getQTable", "getSystemStats"]
WRITE = "POST /v1/event"
READS = ("GET /api/v1/karma/{user_id}", "GET /api/v1/karma/{user_id}/history")


class KarmaStateMachine(schema.exclude(operation_id=STATEFUL_EXCLUDED).as_state_machine()):  # type: ignore[misc]
    poller: StreamPoller | None = None  # set by the test: the karma_env fixture's poller
    # user_id -> actions recorded for them with a 200 (and applied from the stream since)
    recorded: dict[str, set[str]] = {}

    def after_call(self, response: schemathesis.Response, case: Case) -> None:
        super().after_call(response, case)
        if case.operation.label == WRITE and response.status_code == 200:
            assert self.poller is not None
            self.poller.poll_once()  # what the event source mapping does shortly after the write
            data = case.body["data"]
            KarmaStateMachine.recorded.setdefault(data["user_id"], set()).add(data["action"])

    def validate_response(
        self,
        response: schemathesis.Response,
        case: Case,
        additional_checks: list[schemathesis.CheckFunction] | None = None,
        **kwargs: Any,
    ) -> None:
        checks = [*(additional_checks or []), only_explained_rejections, recorded_events_are_applied]
        super().validate_response(response, case, additional_checks=checks, **kwargs)


def recorded_events_are_applied(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """Once the stream has delivered an accepted direct event, its user exists and shows it."""
    if case.operation.label not in READS:
        return
    user_id = (case.path_parameters or {}).get("user_id")
    actions = KarmaStateMachine.recorded.get(str(user_id))
    if not actions:
        return
    if response.status_code == 404:
        raise AssertionError(f"user {user_id!r} had a direct event accepted and applied, but reads 404")
    if response.status_code == 200 and case.operation.label == READS[0]:
        counted = response.json()["action_stats"]
        missing = sorted(a for a in actions if counted.get(a, 0) < 1)
        assert not missing, f"user {user_id!r}: accepted actions {missing} not in action_stats {counted}"


def test_karma_stateful(karma_env: KarmaEnv) -> None:
    KarmaStateMachine.poller = karma_env.poller
    KarmaStateMachine.recorded = {}
    try:
        KarmaStateMachine.run(
            settings=hypothesis.settings(
                max_examples=max(20, MAX_EXAMPLES // 2),
                stateful_step_count=6,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
        )
    finally:
        KarmaStateMachine.poller = None
        KarmaStateMachine.recorded = {}
