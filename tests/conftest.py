"""Shared fixtures: an in-process moto with the template's resources, and loading Chalice apps.

Every Chalice function's module is called `app.py` (and would share the module name `app`), so
apps are imported by path under a unique module name (ARCHITECTURE.md 5).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from chalice.config import Config as ChaliceConfig
from chalice.local import LocalGateway, LocalGatewayException
from moto import mock_aws

from bhiv import auth
from bhiv.bucket import runtime as bucket_runtime
from bhiv.local import moto_patch, template
from bhiv.storage import aws as aws_clients

# Stacks started by the tests check every request of the fast local client against botocore's
# model, as boto3 would (bhiv.local.fast_client): an adapter can never send what boto3 refuses.
os.environ.setdefault("BHIV_FAST_CLIENT_VALIDATE", "1")

ROOT = Path(__file__).resolve().parents[1]

_AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",  # moto does not know account-based endpoints
}
# Variables that would make the apps look elsewhere for tokens, storage or configuration.
_FOREIGN_ENV = (
    "BHIV_AWS_ENDPOINT_URL",
    "BHIV_AUTH_DISABLED",
    "BHIV_CREDENTIALS_FILE",
    "BHIV_TOKEN_HASHES_PARAMETER",
    "BHIV_REQUESTERS_FILE",
    "BHIV_RATE_LIMITS",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)

_LOADED_APPS: dict[Path, ModuleType] = {}


def load_chalice_module(path: str | Path) -> ModuleType:
    """Import a Chalice `app.py` by path under a unique module name (cached per path)."""
    resolved = (ROOT / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if resolved in _LOADED_APPS:
        return _LOADED_APPS[resolved]
    rel = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else Path(resolved.name)
    name = "bhiv_test_" + "_".join(part.replace("-", "_").replace(".", "_") for part in rel.with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {resolved}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _LOADED_APPS[resolved] = module
    return module


def load_chalice_app(path: str | Path) -> Any:
    """The `app` object (a chalice.Chalice) of the `app.py` at `path`."""
    return load_chalice_module(path).app


class ChaliceWSGI:
    """A WSGI application over chalice.local.LocalGateway: what `chalice local` serves, in-process.

    For test clients that speak WSGI (Schemathesis' `schema.app`, werkzeug's test Client). The
    path goes to the gateway raw (undecoded), as `chalice local`'s HTTP handler passes it.
    """

    def __init__(self, app: Any, stage: str = "local") -> None:
        self.gateway = LocalGateway(app, ChaliceConfig(chalice_stage=stage))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ["REQUEST_METHOD"]).upper()
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw:
            path = str(raw).partition("?")[0]
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
        if length:
            headers["Content-Length"] = str(length)
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
            if name.lower() == "content-length":
                continue
            values = value if isinstance(value, list) else [value]
            header_list.extend((str(name), str(v)) for v in values)
        if not any(name.lower() == "content-type" for name, _ in header_list) and payload:
            header_list.append(("Content-Type", "application/json"))
        header_list.append(("Content-Length", str(len(payload))))
        start_response(f"{status} {_reason(status)}", header_list)
        return [payload]


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def clear_runtime_caches() -> None:
    """Forget clients, services and authenticators built from a previous environment."""
    bucket_runtime.service.cache_clear()
    bucket_runtime.stats_store.cache_clear()
    auth.authenticator_from_env.cache_clear()
    aws_clients.client.cache_clear()


@dataclass
class MotoEnv:
    """The in-process AWS of one test: template resources plus a function's environment."""

    dynamodb: Any
    sqs: Any
    queues: dict[str, str]
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def bearer(self, requester_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[requester_id]}"}

    def clear_tables(self) -> None:
        """Delete every item of every template table (a fresh start within one test)."""
        for table in template.resources("AWS::DynamoDB::Table"):
            keys = [k["AttributeName"] for k in self.dynamodb.describe_table(TableName=table)["Table"]["KeySchema"]]
            names = {f"#k{i}": key for i, key in enumerate(keys)}
            for page in self.dynamodb.get_paginator("scan").paginate(
                TableName=table, ProjectionExpression=", ".join(names), ExpressionAttributeNames=names
            ):
                for item in page["Items"]:
                    self.dynamodb.delete_item(TableName=table, Key=item)


@pytest.fixture
def api_tokens() -> dict[str, str]:
    """A fresh bearer token for every known requester (override in a module for fixed tokens)."""
    return {requester: auth.new_token() for requester in auth.load_requesters()}


@pytest.fixture
def function_logical_id() -> str:
    """The template function whose environment `aws_env` sets (override per module or test)."""
    return "BucketFunction"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, api_tokens: dict[str, str], function_logical_id: str) -> Iterator[MotoEnv]:
    """moto with template.yaml's tables and queues, a function's environment, and bearer tokens.

    The app reads its tokens from BHIV_TOKEN_HASHES ({requester_id: sha256(token)}); the plain
    tokens are on the returned object.
    """
    for key, value in _AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in _FOREIGN_ENV:
        monkeypatch.delenv(key, raising=False)
    hashes = {requester: auth.hash_token(token) for requester, token in api_tokens.items()}
    monkeypatch.setenv("BHIV_TOKEN_HASHES", json.dumps(hashes))
    clear_runtime_caches()
    with mock_aws():
        moto_patch.install()
        dynamodb = boto3.client("dynamodb", region_name=_AWS_ENV["AWS_DEFAULT_REGION"])
        sqs = boto3.client("sqs", region_name=_AWS_ENV["AWS_DEFAULT_REGION"])
        queues = template.create_resources(dynamodb, sqs)
        env = template.function_environment(function_logical_id)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            yield MotoEnv(dynamodb=dynamodb, sqs=sqs, queues=queues, env=env, tokens=dict(api_tokens))
        finally:
            clear_runtime_caches()


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One `bhiv up --demo` (what `make run` starts), shared by the console's browser tests and the
    first-time-user CLI tests: each module would otherwise pay a stack start of its own."""
    from tests.e2e.stack import poll_until, start_stack

    running = start_stack(tmp_path_factory.mktemp("demo") / "state", "--demo")
    try:
        poll_until(running.output, lambda text: "The stack keeps running" in text or "FAILED" in text, timeout=60)
        yield running
    finally:
        running.stop()
