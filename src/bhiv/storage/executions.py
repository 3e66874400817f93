"""The Executor's executions table: idempotency by trace id, and the durable outbox of events
not yet delivered to the Bucket (a sparse index over executions whose event waits)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from bhiv.storage.events import storage_errors

QUEUED = "queued"


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in item.items():
        kind, raw = next(iter(value.items()))
        out[key] = int(raw) if kind == "N" else raw
    return out


class ExecutionStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    @storage_errors
    def claim(self, trace_id: str, request_hash: str, now: str, lease_until: str) -> dict[str, Any] | None:
        """Start an execution; returns the existing record when the trace id is taken
        (a running execution whose lease expired may be taken over)."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "trace_id": {"S": trace_id},
                    "request_hash": {"S": request_hash},
                    "state": {"S": "running"},
                    "created_at": {"S": now},
                    "lease_until": {"S": lease_until},
                },
                ConditionExpression="attribute_not_exists(trace_id) OR (#s = :running AND lease_until < :now "
                "AND request_hash = :h)",
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues={":running": {"S": "running"}, ":now": {"S": now}, ":h": {"S": request_hash}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item") or self._get_raw(trace_id)
            if not old:
                raise
            return _plain(old)

    @storage_errors
    def complete(
        self,
        trace_id: str,
        request_hash: str,
        record: dict[str, Any],
        response: dict[str, Any],
        event: dict[str, Any] | None,
        delivery_state: str,
        next_attempt_at: str | None,
    ) -> None:
        item: dict[str, Any] = {
            "trace_id": {"S": trace_id},
            "request_hash": {"S": request_hash},
            "state": {"S": "completed"},
            "response": {"S": json.dumps(response)},
            "delivery_state": {"S": delivery_state},
        }
        for key, value in record.items():
            if value is not None:
                item[key] = {"N": str(value)} if isinstance(value, int) else {"S": str(value)}
        if event is not None:
            item["event"] = {"S": json.dumps(event)}
        if delivery_state == QUEUED and next_attempt_at:
            item["outbox"] = {"S": QUEUED}
            item["next_attempt_at"] = {"S": next_attempt_at}
        self._client.put_item(
            TableName=self._table,
            Item=item,
            ConditionExpression="request_hash = :h",
            ExpressionAttributeValues={":h": {"S": request_hash}},
        )

    @storage_errors
    def get(self, trace_id: str) -> dict[str, Any] | None:
        item = self._get_raw(trace_id)
        return _plain(item) if item else None

    def _get_raw(self, trace_id: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self._client.get_item(
            TableName=self._table, Key={"trace_id": {"S": trace_id}}, ConsistentRead=True
        ).get("Item")
        return item

    @storage_errors
    def due(self, now: str, limit: int = 25) -> list[dict[str, Any]]:
        resp = self._client.query(
            TableName=self._table,
            IndexName="outbox",
            KeyConditionExpression="outbox = :q AND next_attempt_at <= :now",
            ExpressionAttributeValues={":q": {"S": QUEUED}, ":now": {"S": now}},
            Limit=limit,
        )
        return [_plain(i) for i in resp.get("Items", [])]

    @storage_errors
    def queued(self, limit: int = 1000) -> list[dict[str, Any]]:
        resp = self._client.query(
            TableName=self._table,
            IndexName="outbox",
            KeyConditionExpression="outbox = :q",
            ExpressionAttributeValues={":q": {"S": QUEUED}},
            Limit=limit,
        )
        return [_plain(i) for i in resp.get("Items", [])]

    @storage_errors
    def queued_count(self) -> int:
        resp = self._client.query(
            TableName=self._table,
            IndexName="outbox",
            KeyConditionExpression="outbox = :q",
            ExpressionAttributeValues={":q": {"S": QUEUED}},
            Select="COUNT",
        )
        return int(resp.get("Count", 0))

    @storage_errors
    def settle(self, trace_id: str, delivery_state: str, fields: dict[str, Any]) -> bool:
        """Take an execution out of the outbox (delivered or rejected); False if it already left."""
        names = {"#d": "delivery_state"}
        values: dict[str, Any] = {":d": {"S": delivery_state}}
        sets = ["#d = :d"]
        for i, (key, value) in enumerate(fields.items()):
            names[f"#f{i}"] = key
            values[f":f{i}"] = {"N": str(value)} if isinstance(value, int) else {"S": str(value)}
            sets.append(f"#f{i} = :f{i}")
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"trace_id": {"S": trace_id}},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE outbox, next_attempt_at",
                ConditionExpression="attribute_exists(outbox)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise

    @storage_errors
    def reschedule(self, trace_id: str, next_attempt_at: str, attempts: int, last_error: str, rounds: int) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"trace_id": {"S": trace_id}},
                UpdateExpression="SET next_attempt_at = :n, delivery_attempts = :a, last_error = :e, "
                "redrive_rounds = :r",
                ConditionExpression="attribute_exists(outbox)",
                ExpressionAttributeValues={
                    ":n": {"S": next_attempt_at},
                    ":a": {"N": str(attempts)},
                    ":e": {"S": last_error[:500]},
                    ":r": {"N": str(rounds)},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    @storage_errors
    def ping(self) -> None:
        self._client.describe_table(TableName=self._table)
