"""SQS access: queue depth for status endpoints."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError


class QueueDepth:
    def __init__(self, client: Any, queue: str) -> None:
        self._client = client
        self._queue = queue  # a URL (cloud: !Ref of the queue) or a name (local stack)
        self._url: str | None = queue if queue.startswith("http") else None

    def depth(self) -> int | None:
        """Messages waiting (visible + in flight), or None when the queue cannot be read."""
        try:
            if self._url is None:
                self._url = self._client.get_queue_url(QueueName=self._queue)["QueueUrl"]
            attrs = self._client.get_queue_attributes(
                QueueUrl=self._url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
        except (BotoCoreError, ClientError):
            return None
