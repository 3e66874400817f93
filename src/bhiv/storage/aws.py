"""boto3 clients configured from the environment (region, optional endpoint for moto server)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=2,
    read_timeout=5,
    account_id_endpoint_mode="disabled",  # moto does not know account-based endpoints
)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


FAST_LOCAL_SERVICES = ("dynamodb", "dynamodbstreams")


def fast_local_client() -> bool:
    """Whether DynamoDB calls go straight to the moto embedded in this process
    (bhiv.local.fast_client) instead of through botocore and moto's HTTP layer: set
    BHIV_LOCAL_FAST_CLIENT=1 (the local stack does; the cloud never does)."""
    return os.environ.get("BHIV_LOCAL_FAST_CLIENT") == "1"


@cache
def client(service: str) -> Any:
    endpoint = os.environ.get("BHIV_AWS_ENDPOINT_URL") or None
    boto = boto3.client(service, region_name=region(), endpoint_url=endpoint, config=_CONFIG)
    if service in FAST_LOCAL_SERVICES and endpoint is None and fast_local_client():
        from bhiv.local import fast_client  # moto is not part of the Lambda layer

        if service == "dynamodbstreams":
            return fast_client.FastDynamoDBStreams(boto, validate=os.environ.get("BHIV_FAST_CLIENT_VALIDATE") == "1")
        return fast_client.FastDynamoDB(boto, validate=os.environ.get("BHIV_FAST_CLIENT_VALIDATE") == "1")
    return boto


def table_name(env_var: str) -> str:
    name = os.environ.get(env_var)
    if not name:
        raise RuntimeError(f"{env_var} is not set (the table name comes from template.yaml)")
    return name


def batch_get(
    client: Any, table: str, keys: list[dict[str, Any]], projection: str | None = None
) -> list[dict[str, Any]]:
    """Consistent BatchGetItem of any number of keys: chunks of 100, unprocessed keys retried."""
    found: list[dict[str, Any]] = []
    pending = list({repr(sorted(k.items())): k for k in keys}.values())  # BatchGetItem refuses duplicates
    while pending:
        chunk, pending = pending[:100], pending[100:]
        spec: dict[str, Any] = {"Keys": chunk, "ConsistentRead": True}
        if projection:
            spec["ProjectionExpression"] = projection
        request: dict[str, Any] = {table: spec}
        while request:
            response = client.batch_get_item(RequestItems=request)
            found.extend(response.get("Responses", {}).get(table, []))
            request = response.get("UnprocessedKeys") or {}
    return found
