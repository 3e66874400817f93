"""Wiring of the Bucket for its Lambda/Chalice entrypoints (reads the environment once)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from bhiv.auth import authenticator_from_env
from bhiv.bucket.service import BucketService
from bhiv.logs import get_logger
from bhiv.storage import aws
from bhiv.storage.events import EventStore
from bhiv.storage.stats import StatsStore

logger = get_logger("bucket")


def _cursor_secret() -> bytes:
    secret = os.environ.get("BHIV_CURSOR_SECRET")
    if secret:
        return secret.encode()
    # Stable across instances of one deployment, distinct between deployments.
    return hashlib.sha256(f"bhiv-cursor:{os.environ.get('EVENTS_TABLE', '')}".encode()).digest()


@lru_cache(maxsize=1)
def stats_store() -> StatsStore:
    return StatsStore(aws.client("dynamodb"), aws.table_name("BUCKET_STATS_TABLE"))


@lru_cache(maxsize=1)
def service() -> BucketService:
    return BucketService(
        EventStore(aws.client("dynamodb"), aws.table_name("EVENTS_TABLE")),
        stats_store(),
        authenticator_from_env(),
        logger,
        _cursor_secret(),
    )


def _image_to_event(record: DynamoDBRecord) -> dict[str, Any] | None:
    if record.raw_event.get("eventName") != "INSERT":
        return None  # the log is append-only; anything but an insert carries nothing new
    image = record.raw_event["dynamodb"]["NewImage"]
    event = {name: value["S"] for name, value in image.items() if "S" in value}
    for required in ("event_id", "event_type", "requester_id", "received_at"):
        if required not in event:
            raise ValueError(f"stream record lacks '{required}'")
    return event


def handle_stats_stream(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Count a batch of stream records; malformed ones are reported as item failures."""
    records = event.get("Records") or []
    events: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for record in records:
        try:
            stored = _image_to_event(DynamoDBRecord(record))
        except (KeyError, TypeError, ValueError) as exc:
            sequence = str(record.get("dynamodb", {}).get("SequenceNumber", ""))
            logger.warning("Malformed stream record", sequence_number=sequence, reason=str(exc))
            failures.append({"itemIdentifier": sequence})
            continue
        if stored is not None:
            events.append(stored)
    if events:
        stats_store().apply_batch(events)  # a storage fault raises: the whole batch is retried
    return {"batchItemFailures": failures}
