"""What the adapters share: field checks for `validate`, and turning AWS errors into ActionFailed.

Failure classification (the engine retries only `retryable` failures):
* throttling, 5xx answers and connection problems (refused, timed out, reset) are transient;
* any other client error (4xx: validation, access denied, missing resource) is not: another
  attempt would fail the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from bhiv import rfc3339
from bhiv.executor.actions.base import ActionFailed, FieldProblem

# Error codes AWS services answer when a later attempt may succeed (besides any 5xx / 429).
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "TransactionInProgressException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_transient(exc: BaseException) -> bool:
    """True when another attempt of the same call may succeed."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500 or status == 429
    # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError (ConnectionError);
    # ReadTimeoutError, ConnectionClosedError (HTTPClientError).
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def as_failure(exc: ClientError | BotoCoreError, operation: str) -> ActionFailed:
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        detail = f"{error_code(exc) or 'ClientError'}: {message}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return ActionFailed(f"{operation} failed: {detail}", retryable=is_transient(exc))


@contextmanager
def aws_call(operation: str) -> Iterator[None]:
    """Turn botocore's exceptions raised inside the block into a classified ActionFailed."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise as_failure(exc, operation) from exc


def setting(name: str) -> str:
    """A required environment setting; missing is a configuration error, never worth a retry."""
    value = os.environ.get(name)
    if not value:
        raise ActionFailed(f"{name} is not set (see template.yaml)", retryable=False)
    return value


# --- field checks for validate() (pure) ------------------------------------------------------


def check_text(
    fields: dict[str, Any],
    name: str,
    problems: list[FieldProblem],
    *,
    required: bool = True,
    max_len: int | None = None,
    single_line: bool = False,
) -> str | None:
    """Check a string field; append a problem and return None when it is missing or wrong."""
    value = fields.get(name)
    if value is None:
        if required:
            problems.append(FieldProblem(name, "is required"))
        return None
    if not isinstance(value, str):
        problems.append(FieldProblem(name, f"must be a string, not {type(value).__name__}"))
        return None
    if required and not value.strip():
        problems.append(FieldProblem(name, "must not be empty"))
        return None
    if max_len is not None and len(value) > max_len:
        problems.append(FieldProblem(name, f"must be at most {max_len} characters (got {len(value)})"))
        return None
    if single_line and ("\r" in value or "\n" in value):
        problems.append(FieldProblem(name, "must be a single line"))
        return None
    return value


def check_date_time(
    fields: dict[str, Any],
    name: str,
    problems: list[FieldProblem],
    *,
    required: bool = True,
) -> datetime | None:
    """Check an RFC 3339 date-time field (the spec's `format: date-time`: with a timezone)."""
    raw = check_text(fields, name, problems, required=required, max_len=64)
    if raw is None:
        return None
    parsed = parse_date_time(raw)
    if parsed is None:
        problems.append(
            FieldProblem(
                name,
                "must be an RFC 3339 date-time with a timezone (Z or an offset like +05:30), "
                f"e.g. 2030-01-31T09:00:00Z (got {raw!r})",
            )
        )
    return parsed


def parse_date_time(raw: str) -> datetime | None:
    return rfc3339.parse(raw)
