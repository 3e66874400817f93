"""The three apps in-process (chalice's test client over moto), for requests an attacker would send.

Each test gets fresh tables, fresh tokens and fresh rate-limit buckets (the authenticator, which
holds the limiter, is rebuilt from the environment).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from bhiv import auth
from bhiv.bucket import runtime as bucket_runtime
from bhiv.executor import runtime as executor_runtime
from bhiv.karma import runtime as karma_runtime
from bhiv.local import template
from bhiv.local.server import load_function_module
from tests.conftest import MotoEnv
from tests.fake_bucket import FakeBucket

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    """One app behind chalice's test client, with the test's tokens."""

    client: Client
    tokens: dict[str, str]

    def request(
        self,
        method: str,
        path: str,
        *,
        as_: str | None = "bhiv_core",
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent = {"Content-Type": "application/json"} if method == "POST" else {}
        if as_ is not None:
            sent["Authorization"] = f"Bearer {self.tokens[as_]}"
        sent.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        return getattr(self.client.http, method.lower())(path, headers=sent, body=data)


def envelope(response: Any) -> dict[str, Any]:
    """The error envelope of a response, checked for shape; strict JSON (no NaN)."""
    body: dict[str, Any] = json.loads(response.body, parse_constant=_refuse)
    assert body["success"] is False, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    return body


def _refuse(name: str) -> Any:
    raise AssertionError(f"response holds {name}, which strict JSON parsers refuse")


def strict_json(response: Any) -> Any:
    return json.loads(response.body, parse_constant=_refuse)


def clear_services() -> None:
    """Forget services, authenticators and rate-limit buckets built from an earlier environment."""
    auth.authenticator_from_env.cache_clear()
    bucket_runtime.service.cache_clear()
    karma_runtime.service.cache_clear()
    karma_runtime.store.cache_clear()
    executor_runtime.service.cache_clear()


@pytest.fixture
def all_functions_env(aws_env: MotoEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoEnv]:
    """aws_env plus every function's environment (one test may talk to several apps)."""
    for function in template.resources("AWS::Serverless::Function"):
        for key, value in template.function_environment(function).items():
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("BHIV_LOCAL", "1")
    clear_services()
    yield aws_env
    clear_services()


def _api(code_uri: str, env: MotoEnv) -> Iterator[Api]:
    app = load_function_module(code_uri).app
    with Client(app, project_dir=str(ROOT / code_uri)) as client:
        yield Api(client, env.tokens)


@pytest.fixture
def bucket(all_functions_env: MotoEnv) -> Iterator[Api]:
    yield from _api("functions/bucket/", all_functions_env)


@pytest.fixture
def karma(all_functions_env: MotoEnv) -> Iterator[Api]:
    yield from _api("functions/karma/", all_functions_env)


@pytest.fixture(scope="session")
def fake_bucket() -> Iterator[FakeBucket]:
    fake = FakeBucket()
    yield fake
    fake.close()


@pytest.fixture
def executor(all_functions_env: MotoEnv, fake_bucket: FakeBucket, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    fake_bucket.mode = "ok"
    fake_bucket.received.clear()
    fake_bucket.stored.clear()
    monkeypatch.setenv("BUCKET_URL", fake_bucket.url)
    monkeypatch.setenv("EXECUTOR_DELIVERY_BUDGET_S", "0.2")
    monkeypatch.setenv("BHIV_EXECUTOR_TOKEN", all_functions_env.tokens["workflow_executor"])
    clear_services()
    yield from _api("functions/executor/", all_functions_env)


def write_event(event_data: dict[str, Any], requester: str = "bhiv_core") -> dict[str, Any]:
    return {"requester_id": requester, "event_data": event_data}


def task_workflow(trace_id: str, **fields: Any) -> dict[str, Any]:
    payload = {"action_type": "task", "user_id": "u-1", "title": "Call Asha", **fields}
    return {"trace_id": trace_id, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}}
