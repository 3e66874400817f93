"""Wiring of Karma for its Lambda/Chalice entrypoints (reads the environment once)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bhiv.auth import Authenticator, authenticator_from_env
from bhiv.karma.consumer import KarmaConsumer
from bhiv.karma.policy import default_policy
from bhiv.karma.service import KarmaService
from bhiv.logs import get_logger
from bhiv.storage import aws
from bhiv.storage.events import EventStore
from bhiv.storage.karma import KarmaStore
from bhiv.storage.queues import QueueDepth

logger = get_logger("karma")


@lru_cache(maxsize=1)
def store() -> KarmaStore:
    return KarmaStore(aws.client("dynamodb"), aws.table_name("KARMA_TABLE"))


@lru_cache(maxsize=1)
def service() -> KarmaService:
    policy = default_policy()
    return KarmaService(
        store(),
        EventStore(aws.client("dynamodb"), aws.table_name("EVENTS_TABLE")),
        QueueDepth(aws.client("sqs"), aws.table_name("KARMA_DLQ")),
        policy,
        KarmaConsumer(store(), policy, logger),
        logger,
    )


def auth() -> Authenticator:
    return authenticator_from_env()


def handle_stream(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return service().handle_stream(event)
