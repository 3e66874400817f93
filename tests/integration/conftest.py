from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bhiv.local import moto_patch, template


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto with the template's tables and queues, and the Bucket's environment."""
    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BHIV_AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        moto_patch.install()
        dynamodb = boto3.client("dynamodb")
        queues = template.create_resources(dynamodb, boto3.client("sqs"))
        for function in template.resources("AWS::Serverless::Function"):
            for key, value in template.function_environment(function).items():
                monkeypatch.setenv(key, value)
        yield {"dynamodb": dynamodb, "queues": queues, "env": dict(os.environ)}
