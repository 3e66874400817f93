from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bhiv.local import fast_client, moto_patch, template
from bhiv.storage import aws as aws_clients

OFFLINE_AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "t",
    "AWS_SECRET_ACCESS_KEY": "t",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}


def use_offline_aws(env: pytest.MonkeyPatch) -> None:
    """The environment moto's tests run in: fake credentials, one region, and no endpoint of a
    running stack (BHIV_AWS_ENDPOINT_URL), so every client talks to the in-process mock."""
    for key, value in OFFLINE_AWS_ENV.items():
        env.setenv(key, value)
    env.delenv("BHIV_AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def client_kind() -> str:
    """Which DynamoDB client the `aws` fixture hands out. Modules that test storage adapters
    override it with both, so the local stack's fast client (bhiv.local.fast_client) can never
    drift from boto3: same requests accepted, same answers, same errors."""
    return "boto3"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, client_kind: str) -> Iterator[dict[str, Any]]:
    """moto with the template's tables and queues, and the Bucket's environment."""
    use_offline_aws(monkeypatch)
    monkeypatch.setenv("BHIV_LOCAL_FAST_CLIENT", "1" if client_kind == "fast" else "0")
    aws_clients.client.cache_clear()
    with mock_aws():
        moto_patch.install()
        dynamodb = boto3.client("dynamodb")
        queues = template.create_resources(dynamodb, boto3.client("sqs"))
        for function in template.resources("AWS::Serverless::Function"):
            for key, value in template.function_environment(function).items():
                monkeypatch.setenv(key, value)
        if client_kind == "fast":
            dynamodb = fast_client.FastDynamoDB(dynamodb)
        try:
            yield {"dynamodb": dynamodb, "queues": queues, "env": dict(os.environ)}
        finally:
            aws_clients.client.cache_clear()
