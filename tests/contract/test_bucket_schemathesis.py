"""Schemathesis against the Bucket's Chalice app, in-process (ARCHITECTURE.md 5).

openapi/bucket.yaml is loaded from disk and every operation is exercised through a WSGI adapter
over chalice.local.LocalGateway, with moto behind it: all checks, positive and negative data, the
examples, coverage and fuzzing phases per operation, then the stateful phase along the spec's
links (write an event, read it back by id).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import hypothesis
import pytest
import schemathesis
from schemathesis import Case
from tests.conftest import ChaliceWSGI, MotoEnv, clear_runtime_caches, load_chalice_app

from bhiv.auth import load_requesters, new_token
from bhiv.bucket.domain import parse_time

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "bucket.yaml"
WRITER = "bhiv_core"  # holds events:write and events:read
TOKENS = {requester: new_token() for requester in load_requesters()}

MAX_EXAMPLES = 40
# Fixed, so a run is reproducible; set BHIV_SCHEMATHESIS_SEED to explore other inputs.
SEED = int(os.environ.get("BHIV_SCHEMATHESIS_SEED", "20240601"))

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {TOKENS[WRITER]}"},
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "checks": {
            # Refusals the spec documents: an oversize body (413) is a refusal too.
            "negative_data_rejection": {
                "expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "415", "422"]
            },
        },
        "operations": [
            {
                # A schema-valid query can still name a cursor the server never issued, `since`
                # after `until`, or a user_id and agent_id that differ: documented 400s that a
                # schema cannot express. `_only_explained_rejections` allows exactly those.
                "include-operation-id": "listEvents",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "409"]}
                },
            }
        ],
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True},
        },
    }
)

schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)
schema.app = ChaliceWSGI(load_chalice_app(ROOT / "functions" / "bucket" / "app.py"))


def _claim_token_owner(case: Case) -> None:
    """Positive writes name the token's owner as requester_id.

    That the body's requester must be the token's owner is a fact about credentials, which the
    spec cannot express; a positive body naming anyone else gets the documented 403. A requester_id
    that is itself valid is swapped, so a negative body stays negative.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    claimed = case.body.get("requester_id")
    if isinstance(claimed, str) and 1 <= len(claimed) <= 128:
        case.body["requester_id"] = WRITER


def _name_one_reader_and_subject(case: Case) -> None:
    """Positive read-context queries name a subject (agent_id or user_id: one of the two is needed,
    which the spec can only say in words) and, when they name a requester, the token's owner."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or case.operation.label != "GET /core/read-context":
        return
    query = case.query if isinstance(case.query, dict) else {}
    case.query = query
    if "agent_id" not in query and "user_id" not in query:
        query["agent_id"] = "user-1"
    if "agent_id" in query and "user_id" in query:
        query["user_id"] = query["agent_id"]
    if "requester_id" in query:
        query["requester_id"] = WRITER


def _only_explained_rejections(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """A 400 to schema-valid list parameters must be one of the rejections the spec describes."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return
    if case.operation.label != "GET /core/events":
        return
    query = case.query or {}
    field = response.json()["error"].get("field")
    if field == "cursor" and "cursor" in query:
        return  # only cursors the server issued (next_cursor of the same query) are valid
    if (
        field == "since"
        and "since" in query
        and "until" in query
        and parse_time(str(query["since"]), "since") > parse_time(str(query["until"]), "until")
    ):
        return  # an empty window
    both_named = "user_id" in query and "agent_id" in query
    if field in ("user_id", "agent_id") and both_named and query["user_id"] != query["agent_id"]:
        return  # two names of one subject that disagree
    raise AssertionError(f"Schema-valid list query refused for an undocumented reason: {response.text}")


@pytest.fixture
def api_tokens() -> dict[str, str]:
    return dict(TOKENS)


@pytest.fixture(autouse=True)
def _bucket(aws_env: MotoEnv, monkeypatch: pytest.MonkeyPatch) -> MotoEnv:
    monkeypatch.setenv("BHIV_RATE_LIMITS", "off")  # the runs test the API, not the per-requester limiter
    clear_runtime_caches()
    return aws_env


@schema.parametrize()
def test_bucket_api(case: Case) -> None:
    _claim_token_owner(case)
    _name_one_reader_and_subject(case)
    case.call_and_validate(additional_checks=[_only_explained_rejections])


# One valid request per secured operation, sent with a token that lacks the operation's scope.
SCOPE_PROBES = [
    (
        "POST",
        "/core/write-event",
        "bhiv_reader",
        {},
        {"requester_id": "bhiv_reader", "event_data": {"event_type": "x"}},
    ),
    ("POST", "/core/write-events", "bhiv_reader", {}, {"requester_id": "bhiv_reader", "events": [{"event_data": {}}]}),
    ("GET", "/core/events", "workflow_executor", {"limit": 5}, None),
    ("GET", "/core/events/{event_id}", "workflow_executor", {}, None),
    ("GET", "/core/stats", "workflow_executor", {}, None),
    ("GET", "/core/read-context", "workflow_executor", {"agent_id": "user-1"}, None),
]


@pytest.mark.parametrize(("method", "path", "requester", "query", "body"), SCOPE_PROBES)
def test_token_without_the_scope_gets_documented_403(
    method: str, path: str, requester: str, query: dict[str, Any], body: dict[str, Any] | None
) -> None:
    operation = schema[path][method]
    kwargs: dict[str, Any] = {"query": query or None}
    if body is not None:
        kwargs["body"] = body
        kwargs["media_type"] = "application/json"
    if "{event_id}" in path:
        kwargs["path_parameters"] = {"event_id": "evt-1"}
    case = operation.Case(**kwargs)
    response = case.call(headers={"Authorization": f"Bearer {TOKENS[requester]}"})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "insufficient_scope"
    case.validate_response(response, headers={"Authorization": f"Bearer {TOKENS[requester]}"})


# The stateful phase follows the links among write-event, list and get-by-id (write → read by id,
# list → read by id). Schemathesis starts scenarios only at the operations it judges likeliest to
# succeed, and it ranks read-context (no inputs from other responses) above the write: with it in,
# no scenario would ever start with a write. (`exclude`, because `include` on a schema whose config
# has [[operations]] entries selects everything.)
STATEFUL_EXCLUDED = ["health", "writeEvents", "stats", "readContext"]


@hypothesis.seed(SEED)
class BucketStateMachine(schema.exclude(operation_id=STATEFUL_EXCLUDED).as_state_machine()):  # type: ignore[misc]
    seen: ClassVar[Counter[tuple[str, int]]] = Counter()  # (operation, status) of every step

    env: ClassVar[MotoEnv | None] = None

    def setup(self) -> None:
        # Each scenario starts from an empty Bucket: Hypothesis replays scenarios, and a replay
        # must meet the state its first run met (a repeated event_id would now answer 200 or 409).
        if self.env is not None:
            self.env.clear_tables()

    def before_call(self, case: Case) -> None:
        _claim_token_owner(case)

    def after_call(self, response: schemathesis.Response, case: Case) -> None:
        self.seen[(case.operation.label, response.status_code)] += 1

    def validate_response(
        self,
        response: schemathesis.Response,
        case: Case,
        additional_checks: list[schemathesis.CheckFunction] | None = None,
        **kwargs: Any,
    ) -> None:
        checks = [*(additional_checks or []), _only_explained_rejections]
        super().validate_response(response, case, additional_checks=checks, **kwargs)


def test_bucket_stateful(aws_env: MotoEnv) -> None:
    BucketStateMachine.env = aws_env
    BucketStateMachine.seen.clear()
    BucketStateMachine.run(
        settings=hypothesis.settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
    # the links were followed: events were written, then read back by the id the write returned
    seen = BucketStateMachine.seen
    assert seen[("POST /core/write-event", 200)] > 0, seen
    assert seen[("GET /core/events/{event_id}", 200)] > 0, seen
