"""The Bucket's aggregates, maintained from the events stream with exactly-once effect.

Each event is applied in one transaction: a marker (condition: absent) plus the counter updates,
so a re-delivered record changes nothing and a crash never half-applies one.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from bhiv.storage.events import storage_errors

MARKER_TTL_SECONDS = 2 * 24 * 3600  # longer than the stream's 24 h retention


class StatsStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def _key(self, pk: str, sk: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _add(
        self, pk: str, sk: str, extra_set: str = "", extra_values: dict[str, Any] | None = None, extra_add: str = ""
    ) -> dict[str, Any]:
        values: dict[str, Any] = {":one": {"N": "1"}}
        values.update(extra_values or {})
        expression = "ADD event_count :one" + (f", {extra_add}" if extra_add else "")
        expression += f" SET {extra_set}" if extra_set else ""
        return {
            "Update": {
                "TableName": self._table,
                "Key": self._key(pk, sk),
                "UpdateExpression": expression,
                "ExpressionAttributeValues": values,
            }
        }

    @storage_errors
    def apply(self, event: dict[str, Any]) -> bool:
        """Count one stored event; False when it was counted before."""
        for _ in range(5):
            agent = event.get("agent_key")
            agent_known = agent is not None and self._get("agent", agent) is not None
            when = {":ts": {"S": event["received_at"]}}
            items = [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            **self._key("applied", event["event_id"]),
                            "expires_at": {"N": str(int(time.time()) + MARKER_TTL_SECONDS)},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                self._add(
                    "totals",
                    "all",
                    "last_event_at = :ts",
                    {**when, ":new_agent": {"N": "1" if agent and not agent_known else "0"}},
                    extra_add="agents_tracked :new_agent",
                ),
                self._add("event_type", event["event_type"], "last_event_at = :ts", when),
                self._add("requester", event["requester_id"], "last_event_at = :ts", when),
            ]
            if agent:
                if agent_known:
                    items.append(self._add("agent", agent, "last_event_at = :ts", when))
                    items[-1]["Update"]["ConditionExpression"] = "attribute_exists(pk)"
                else:
                    items.append(
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": {
                                    **self._key("agent", agent),
                                    "event_count": {"N": "1"},
                                    "first_event_at": when[":ts"],
                                    "last_event_at": when[":ts"],
                                },
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        }
                    )
            try:
                self._client.transact_write_items(TransactItems=items)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons", [])
                if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                    return False  # marker exists: already applied
                # the agent appeared (or vanished) concurrently: read again and retry
        raise RuntimeError(f"could not apply event {event['event_id']} to stats after retries")

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = self._client.get_item(TableName=self._table, Key=self._key(pk, sk), ConsistentRead=True).get("Item")
        return item if item else None

    def _partition(self, pk: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        while True:
            resp = self._client.query(**params)
            for item in resp.get("Items", []):
                counts[item["sk"]["S"]] = int(item.get("event_count", {}).get("N", "0"))
            if "LastEvaluatedKey" not in resp:
                return counts
            params["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    @storage_errors
    def totals(self) -> dict[str, Any]:
        item = self._get("totals", "all") or {}
        return {
            "total_events": int(item.get("event_count", {}).get("N", "0")),
            "agents_tracked": int(item.get("agents_tracked", {}).get("N", "0")),
            "last_event_at": item.get("last_event_at", {}).get("S"),
        }

    @storage_errors
    def breakdown(self) -> dict[str, dict[str, int]]:
        return {"by_event_type": self._partition("event_type"), "by_requester": self._partition("requester")}

    @storage_errors
    def agent(self, agent_key: str) -> dict[str, Any] | None:
        item = self._get("agent", agent_key)
        if item is None:
            return None
        return {
            "event_count": int(item["event_count"]["N"]),
            "first_event_at": item.get("first_event_at", {}).get("S"),
            "last_event_at": item.get("last_event_at", {}).get("S"),
        }
