"""Schemathesis against the Workflow Executor's Chalice app, in-process (ARCHITECTURE.md 5).

openapi/executor.yaml is loaded from disk and every operation is exercised through a WSGI adapter
over chalice.local.LocalGateway, with moto behind it (DynamoDB, SES, SNS, EventBridge Scheduler for
the five actions) and a fake Bucket on loopback receiving the events: all checks, positive and
negative data, the examples, coverage and fuzzing phases per operation, then the stateful phase
along the spec's link (execute a workflow, read the execution back by the trace id it returned).

Two facts no schema can hold are applied to positive requests only (a positive request must
then succeed): trace ids are made unique (the same trace id with another body is a documented
409), and a reminder's `remind_at` is moved into the future. A positive body over 64 KB may get
the documented 413.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import hypothesis
import pytest
import schemathesis
from schemathesis import Case
from tests.conftest import ChaliceWSGI, MotoEnv
from tests.fake_bucket import FakeBucket

from bhiv import auth
from bhiv.executor import runtime
from bhiv.executor.actions._common import parse_date_time
from bhiv.local.server import load_function_module

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "executor.yaml"
CALLER = "bhiv_core"  # holds workflows:execute
TOKENS = {requester: auth.new_token() for requester in auth.load_requesters()}
MAX_BODY_BYTES = 64 * 1024
TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Fixed, so a run is reproducible; set BHIV_SCHEMATHESIS_SEED (and a bigger
# BHIV_SCHEMATHESIS_MAX_EXAMPLES) to explore other inputs.
MAX_EXAMPLES = int(os.environ.get("BHIV_SCHEMATHESIS_MAX_EXAMPLES", "60"))
SEED = int(os.environ.get("BHIV_SCHEMATHESIS_SEED", "20261130"))

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {TOKENS[CALLER]}"},
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "checks": {
            # Refusals the spec documents: an oversize body (413) is a refusal too.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "422"]},
            # 404: a schema-valid trace id nobody executed. 413: only a body over 64 KB
            # (`_explained_refusals`). No 409 and no 5xx: positive trace ids are unique.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "413"]},
        },
        "phases": {
            "examples": {"enabled": True},
            # Every default unexpected method but TRACE: `chalice local`'s HTTP server answers TRACE
            # with 501 (it has no do_TRACE) before the app sees it; the others get the app's 405.
            "coverage": {
                "enabled": True,
                "unexpected-methods": ["get", "put", "post", "delete", "patch", "options", "query"],
            },
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True, "max-steps": 6},
        },
    }
)


APP_MODULE = load_function_module("functions/executor/")
schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)
schema.app = ChaliceWSGI(APP_MODULE.app)


# --- facts the schema cannot hold, applied to positive requests ------------------------------------

_unique = itertools.count()


def _is_positive(case: Case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def _actions(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    data = body.get("data")
    payload = data.get("payload") if isinstance(data, dict) else None
    if not isinstance(payload, dict):
        return
    steps = payload.get("steps")
    if isinstance(steps, list):
        yield from (step for step in steps if isinstance(step, dict))
    else:
        yield payload


def _prepare(case: Case) -> None:
    """Make a positive execute request one the server must accept.

    A trace id is the idempotency key: reused with another body it is a documented 409, so each
    positive request gets a fresh one (still matching the pattern). A reminder's `remind_at` must
    be in the future, which no schema can say: a past one is moved a day ahead.
    """
    if not _is_positive(case) or case.operation.label != "POST /api/workflow/execute":
        return
    body = case.body
    if not isinstance(body, dict):
        return
    trace_id = body.get("trace_id")
    if isinstance(trace_id, str) and TRACE_ID.fullmatch(trace_id):
        body["trace_id"] = f"{trace_id[:100]}-u{next(_unique)}"
    _fit_retry_budget(list(_actions(body)))
    for action in _actions(body):
        remind_at = action.get("remind_at")
        if action.get("action_type") != "reminder" or not isinstance(remind_at, str):
            continue
        when = parse_date_time(remind_at)
        if when is not None and when.utcoffset() is not None and when <= datetime.now(UTC) + timedelta(minutes=5):
            action["remind_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="seconds")


# The error codes openapi/executor.yaml documents for a payload that cannot run.
UNRUNNABLE_CODES = frozenset(
    {
        "missing_action_type",
        "unsupported_action_type",
        "missing_task_title",
        "missing_recipient",
        "missing_subject",
        "missing_body",
        "missing_message",
        "missing_prompt",
        "missing_remind_at",
        "invalid_action_fields",
        "invalid_steps",
        "invalid_retry",
        "invalid_user_id",
        "invalid_step",
    }
)


def _fit_retry_budget(actions: list[dict[str, Any]]) -> None:
    """The worst-case retry waits of all steps must fit the function's timeout, which no schema can
    say: drop retry policies (largest first) until they fit."""
    from bhiv.executor.plan import RetryPolicy, retry_budget_s

    def wait(action: dict[str, Any]) -> float:
        retry = action.get("retry")
        if not isinstance(retry, dict):
            return RetryPolicy().total_wait()
        try:
            return RetryPolicy(
                int(retry.get("max_attempts", 3)),
                float(retry.get("interval_seconds", 1.0)),
                float(retry.get("backoff_rate", 2.0)),
            ).total_wait()
        except (TypeError, ValueError):
            return 0.0

    for action in sorted(actions, key=wait, reverse=True):
        if sum(wait(a) for a in actions) <= retry_budget_s():
            return
        action["retry"] = {"max_attempts": 1}


def _explained_refusals(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """413 to positive data only for a body over 64 KB; an executed workflow answers for itself."""
    if not _is_positive(case):
        return
    if response.status_code == 413:
        sent = response.request.body or b""
        size = len(sent.encode() if isinstance(sent, str) else sent)
        assert size > MAX_BODY_BYTES, f"413 for a {size}-byte body: {response.text}"
    if case.operation.label != "POST /api/workflow/execute" or response.status_code != 200:
        return
    body = case.body if isinstance(case.body, dict) else {}
    result = response.json()
    if "trace_id" in body:
        assert result["trace_id"] == body["trace_id"], "the response names another trace"
    if body.get("decision") != "workflow":
        assert result["status"] == "skipped", result
        return
    assert result["delivery_state"] == "delivered", result  # succeeded or failed, the Bucket hears of it
    outcome = result["execution_result"]
    if outcome.get("error_code") in UNRUNNABLE_CODES:
        # a payload that cannot run: the original's contract answers it as a failed execution
        assert (result["status"], outcome["success"], outcome["steps"]) == ("failed", False, []), result
        assert outcome["message"], result
        return
    # Every adapter runs against moto, so a runnable workflow succeeds; a failure is a bug to show.
    assert result["status"] == "success", f"a valid workflow failed: {json.dumps(result)[:2000]}"
    assert outcome["success"] is True
    assert len(outcome["steps"]) == len(list(_actions(body)))


# --- moto, the Executor's environment and a Bucket on loopback ---------------------------------------


@pytest.fixture
def api_tokens() -> dict[str, str]:
    return dict(TOKENS)


@pytest.fixture
def function_logical_id() -> str:
    return "ExecutorFunction"


@pytest.fixture(scope="module")
def fake_bucket() -> Iterator[FakeBucket]:
    bucket = FakeBucket()
    yield bucket
    bucket.close()


@pytest.fixture(autouse=True)
def _executor(aws_env: MotoEnv, fake_bucket: FakeBucket, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoEnv]:
    fake_bucket.mode = "ok"
    monkeypatch.setenv("BUCKET_URL", fake_bucket.url)
    monkeypatch.setenv("EXECUTOR_DELIVERY_BUDGET_S", "0.2")
    monkeypatch.setenv("BHIV_LOCAL", "1")
    monkeypatch.setenv("BHIV_EXECUTOR_TOKEN", TOKENS["workflow_executor"])  # not SSM
    monkeypatch.setenv("BHIV_RATE_LIMITS", "off")  # the runs test the API, not the per-requester limiter
    runtime.service.cache_clear()
    auth.authenticator_from_env.cache_clear()
    # A step's retry policy may ask for up to 60 s between attempts; a test waits a moment at most.
    monkeypatch.setattr(runtime.service(), "_sleep", lambda seconds: time.sleep(min(seconds, 0.01)))
    yield aws_env
    runtime.service.cache_clear()


@schema.parametrize()
def test_executor_api(case: Case) -> None:
    _prepare(case)
    case.call_and_validate(additional_checks=[_explained_refusals])


# One valid request per secured operation, sent with a token that lacks workflows:execute.
SCOPE_PROBES = [
    ("POST", "/api/workflow/execute", "bhiv_reader"),
    ("POST", "/api/workflow/execute", "workflow_executor"),
    ("GET", "/api/workflow/executions/{trace_id}", "bhiv_reader"),
    ("GET", "/api/workflow/executions/{trace_id}", "karma"),
]


@pytest.mark.parametrize(("method", "path", "requester"), SCOPE_PROBES)
def test_token_without_the_scope_gets_documented_403(method: str, path: str, requester: str) -> None:
    operation = schema[path][method]
    kwargs: dict[str, Any] = {}
    if method == "POST":
        kwargs["body"] = {
            "trace_id": "scope-probe",
            "decision": "workflow",
            "data": {"workflow_type": "workflow", "payload": {"action_type": "task", "title": "x"}},
        }
        kwargs["media_type"] = "application/json"
    else:
        kwargs["path_parameters"] = {"trace_id": "scope-probe"}
    case = operation.Case(**kwargs)
    headers = {"Authorization": f"Bearer {TOKENS[requester]}"}
    response = case.call(headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "insufficient_scope"
    case.validate_response(response, headers=headers)


# The stateful phase follows the link from execute to the execution by its trace id. The health
# operations take no input from other responses, so they would be ranked as the likeliest starts.
class ExecutorStateMachine(schema.exclude(operation_id=["healthz", "health"]).as_state_machine()):  # type: ignore[misc]
    seen: ClassVar[Counter[tuple[str, int]]] = Counter()  # (operation, status) of every step

    def before_call(self, case: Case) -> None:
        _prepare(case)

    def after_call(self, response: schemathesis.Response, case: Case) -> None:
        self.seen[(case.operation.label, response.status_code)] += 1

    def validate_response(
        self,
        response: schemathesis.Response,
        case: Case,
        additional_checks: list[schemathesis.CheckFunction] | None = None,
        **kwargs: Any,
    ) -> None:
        checks = [*(additional_checks or []), _explained_refusals]
        super().validate_response(response, case, additional_checks=checks, **kwargs)


def test_executor_stateful() -> None:
    ExecutorStateMachine.seen.clear()
    ExecutorStateMachine.run(
        settings=hypothesis.settings(
            max_examples=20,
            stateful_step_count=6,
            deadline=None,
            # Four of the five decisions are answered `skipped` and stored nowhere: whether a random
            # run follows a link from a workflow that ran is chance. A fixed seed makes it repeatable.
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
    # the link was followed: workflows were executed, then read back by the trace id they returned
    # (each answer validated against the spec above). Whether one of the followed links led to a
    # stored execution (200) rather than a skipped decision (404) depends on what the run
    # generated; in a fresh clone's full suite the fixed seed yields only 404s, so the 200 case is
    # asserted by tests/integration/test_executor_service.py instead.
    seen = ExecutorStateMachine.seen
    assert seen[("POST /api/workflow/execute", 200)] > 0, seen
    gets = sum(count for (label, _), count in seen.items() if label == "GET /api/workflow/executions/{trace_id}")
    assert gets > 0, seen
