"""The Bucket's aggregates, maintained from the events stream with exactly-once effect.

Events are counted in transactions: a marker per event (condition: absent) plus each touched
counter written once per group as a whole item, conditional on the version this process last saw
(or on its absence). A re-delivered record finds its marker and changes nothing; a crash never
half-counts one; a second consumer, or a stale cache, cancels the transaction and the group is
retried after one read of the markers and counters involved. Whole-item puts instead of ADD
updates: an update expression costs several times a conditional put (moto measured 6x).
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from bhiv.storage.aws import batch_get
from bhiv.storage.events import storage_errors

MARKER_TTL_SECONDS = 2 * 24 * 3600  # longer than the stream's 24 h retention
CACHE_LIMIT = 100_000  # counters remembered between batches (agents are the many)

Key = tuple[str, str]


class StatsStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        # counters as last written or read by this process; None: known to be absent
        self._cache: dict[Key, dict[str, Any] | None] = {}

    def _key(self, pk: str, sk: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def apply(self, event: dict[str, Any]) -> bool:
        """Count one stored event; False when it was counted before."""
        return bool(self.apply_batch([event]) == 1)

    @storage_errors
    def apply_batch(self, events: list[dict[str, Any]]) -> int:
        """Count stored events, each exactly once; returns how many were new.

        One transaction per group: a marker per event (condition: absent) plus every touched
        counter once, so a batch costs about one write per event plus one per counter."""
        unique = list({e["event_id"]: e for e in events}.values())
        counted = 0
        start = 0
        while start < len(unique):
            group = self._group(unique[start:])
            counted += self._apply_group(group)
            start += len(group)
        return counted

    @staticmethod
    def _counter_keys(event: dict[str, Any]) -> set[Key]:
        keys = {("event_type", event["event_type"]), ("requester", event["requester_id"])}
        if event.get("agent_key"):
            keys.add(("agent", event["agent_key"]))
        return keys

    @classmethod
    def _group(cls, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The longest prefix whose transaction stays within DynamoDB's 100 items."""
        keys: set[Key] = set()
        group: list[dict[str, Any]] = []
        for event in events:
            new = cls._counter_keys(event)
            if len(group) + 1 + len(keys | new) + 1 > 100:
                break
            keys |= new
            group.append(event)
        return group

    def _apply_group(self, group: list[dict[str, Any]]) -> int:
        # Optimistic first: no reads, counters as cached (unknown ones assumed absent). A cancelled
        # transaction (an event counted before, a counter changed elsewhere) is followed by a look.
        fresh = group
        for _ in range(8):
            items, written = self._items(fresh)
            try:
                self._client.transact_write_items(TransactItems=items)
                self._remember(written)
                return len(fresh)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
            applied = self._existing("applied", [e["event_id"] for e in group])
            fresh = [e for e in group if e["event_id"] not in applied]
            if not fresh:
                return 0
            self._refresh(sorted({("totals", "all")} | {k for e in fresh for k in self._counter_keys(e)}))
        raise RuntimeError("could not count a group of events after retries")

    def _remember(self, written: dict[Key, dict[str, Any]]) -> None:
        if len(self._cache) + len(written) > CACHE_LIMIT:
            self._cache.clear()
        self._cache.update(written)

    def _refresh(self, keys: list[Key]) -> None:
        found = {
            (item["pk"]["S"], item["sk"]["S"]): item
            for item in batch_get(self._client, self._table, [self._key(pk, sk) for pk, sk in keys])
        }
        self._remember({})
        for key in keys:
            self._cache[key] = found.get(key)

    def _items(self, fresh: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[Key, dict[str, Any]]]:
        expires = {"N": str(int(time.time()) + MARKER_TTL_SECONDS)}
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._table,
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "Item": {**self._key("applied", e["event_id"]), "expires_at": expires},
                }
            }
            for e in fresh
        ]
        times: dict[Key, list[str]] = {}
        for event in fresh:
            for key in self._counter_keys(event):
                times.setdefault(key, []).append(event["received_at"])
        new_agents = sum(1 for key in times if key[0] == "agent" and self._cache.get(key) is None)
        written: dict[Key, dict[str, Any]] = {}
        total_times = [e["received_at"] for e in fresh]
        for key, seen in [(("totals", "all"), total_times), *sorted(times.items())]:
            extra = {"agents_tracked": new_agents} if key == ("totals", "all") else {}
            put, item = self._counter_put(key, seen, extra)
            items.append(put)
            written[key] = item
        return items, written

    def _counter_put(self, key: Key, seen: list[str], extra: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The counter's new item (its cached state plus these events) and the versioned put."""
        old = self._cache.get(key)
        item: dict[str, Any] = dict(old) if old else self._key(*key)
        count = int(item.get("event_count", {}).get("N", "0")) + len(seen)
        item["event_count"] = {"N": str(count)}
        for name, add in extra.items():
            item[name] = {"N": str(int(item.get(name, {}).get("N", "0")) + add)}
        latest = max(seen)
        item["last_event_at"] = {"S": max(latest, item.get("last_event_at", {}).get("S", ""))}
        if key[0] == "agent":
            first = item.get("first_event_at", {}).get("S")
            item["first_event_at"] = {"S": min(seen) if first is None else min(first, min(seen))}
        version = old.get("version", {}).get("N") if old else None
        item["version"] = {"N": str(int(version or 0) + 1)}
        put: dict[str, Any] = {"TableName": self._table, "Item": item}
        if old is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        elif version is None:  # written before counters carried a version
            put["ConditionExpression"] = "attribute_exists(pk) AND attribute_not_exists(version)"
        else:
            put["ConditionExpression"] = "version = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": version}}
        return {"Put": put}, item

    def _existing(self, pk: str, sks: list[str]) -> set[str]:
        keys = [self._key(pk, sk) for sk in sks]
        return {item["sk"]["S"] for item in batch_get(self._client, self._table, keys, "sk")}

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
    def agent_ids(self, limit: int) -> list[str]:
        """The first `limit` agents with counted events, in id order (one Query page)."""
        resp = self._client.query(
            TableName=self._table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "agent"}},
            ProjectionExpression="sk",
            Limit=limit,
        )
        return [item["sk"]["S"] for item in resp.get("Items", [])]

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
