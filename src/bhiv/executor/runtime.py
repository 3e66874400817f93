"""Wiring of the Executor for its Lambda/Chalice entrypoints (reads the environment once)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from bhiv.auth import Authenticator, authenticator_from_env
from bhiv.executor.actions import REGISTRY
from bhiv.executor.delivery import REQUESTER, BucketClient
from bhiv.executor.service import ExecutorService
from bhiv.logs import get_logger
from bhiv.storage import aws
from bhiv.storage.executions import ExecutionStore

logger = get_logger("executor")


def executor_token() -> str | None:
    """The Executor's own token for the Bucket: env, the local credentials file, or SSM."""
    token = os.environ.get("BHIV_EXECUTOR_TOKEN")
    if token:
        return token
    creds = os.environ.get("BHIV_CREDENTIALS_FILE")
    if creds and Path(creds).exists():
        value = json.loads(Path(creds).read_text(encoding="utf-8")).get(REQUESTER)
        return str(value) if value else None
    parameter = os.environ.get("BHIV_EXECUTOR_TOKEN_PARAMETER")
    if parameter:
        response = aws.client("ssm").get_parameter(Name=parameter, WithDecryption=True)
        return str(response["Parameter"]["Value"])
    return None


@lru_cache(maxsize=1)
def service() -> ExecutorService:
    return ExecutorService(
        ExecutionStore(aws.client("dynamodb"), aws.table_name("EXECUTIONS_TABLE")),
        BucketClient(os.environ.get("BUCKET_URL", "http://127.0.0.1:8001"), executor_token()),
        REGISTRY,
        logger,
        delivery_budget_s=float(os.environ.get("EXECUTOR_DELIVERY_BUDGET_S", "1.0")),
    )


def auth() -> Authenticator:
    return authenticator_from_env()


def handle_redrive(event: dict[str, Any], context: Any) -> dict[str, Any]:
    counts = service().redrive(due_only=True, limit=100)
    if any(counts.values()):
        logger.info("Outbox redrive", extra=counts)
    return counts
