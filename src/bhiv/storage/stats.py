"""The Bucket's aggregates, maintained from the events stream with exactly-once effect.

Events are counted in transactions: a marker per event (condition: absent) plus the counter
updates, so a re-delivered record changes nothing and a crash never half-counts one.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from bhiv.storage.aws import batch_get
from bhiv.storage.events import storage_errors

MARKER_TTL_SECONDS = 2 * 24 * 3600  # longer than the stream's 24 h retention


class StatsStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        self._known_agents: set[str] = set()  # agents this process has seen stored

    def _key(self, pk: str, sk: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def apply(self, event: dict[str, Any]) -> bool:
        """Count one stored event; False when it was counted before."""
        return bool(self.apply_batch([event]) == 1)

    @storage_errors
    def apply_batch(self, events: list[dict[str, Any]]) -> int:
        """Count stored events, each exactly once; returns how many were new.

        One transaction per group: a marker per event (condition: absent) plus the counters
        summed over the group, so a batch costs a few writes instead of five per event."""
        unique = list({e["event_id"]: e for e in events}.values())
        counted = 0
        start = 0
        while start < len(unique):
            group = self._group(unique[start:])
            counted += self._apply_group(group)
            start += len(group)
        return counted

    @staticmethod
    def _group(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The longest prefix whose transaction stays within DynamoDB's 100 items."""
        keys: set[tuple[str, str]] = set()
        group: list[dict[str, Any]] = []
        for event in events:
            new = {("event_type", event["event_type"]), ("requester", event["requester_id"])}
            if event.get("agent_key"):
                new.add(("agent", event["agent_key"]))
            if len(group) + 1 + len(keys | new) + 1 > 100:
                break
            keys |= new
            group.append(event)
        return group

    def _apply_group(self, group: list[dict[str, Any]]) -> int:
        # Optimistic first: no reads, agents assumed as remembered. A cancelled transaction
        # (an event counted before, an agent unknown to this process) is followed by a look.
        fresh, known = group, self._known_agents
        for _ in range(8):
            agents = sorted({e["agent_key"] for e in fresh if e.get("agent_key")})
            try:
                self._client.transact_write_items(TransactItems=self._items(fresh, agents, known))
                self._remember(agents)
                return len(fresh)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
            applied = self._existing("applied", [e["event_id"] for e in group])
            fresh = [e for e in group if e["event_id"] not in applied]
            if not fresh:
                return 0
            agents = sorted({e["agent_key"] for e in fresh if e.get("agent_key")})
            known = self._existing("agent", agents)
            self._remember(sorted(known))
        raise RuntimeError("could not count a group of events after retries")

    def _remember(self, agents: list[str]) -> None:
        if len(self._known_agents) + len(agents) > 100_000:
            self._known_agents.clear()
        self._known_agents.update(agents)

    def _items(self, fresh: list[dict[str, Any]], agents: list[str], known: set[str]) -> list[dict[str, Any]]:
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
        latest = max(e["received_at"] for e in fresh)
        new_agents = [a for a in agents if a not in known]
        items.append(self._update("totals", "all", len(fresh), latest, {"agents_tracked": len(new_agents)}))
        for pk, field in (("event_type", "event_type"), ("requester", "requester_id")):
            counts: dict[str, list[str]] = {}
            for e in fresh:
                counts.setdefault(e[field], []).append(e["received_at"])
            items += [self._update(pk, sk, len(times), max(times)) for sk, times in counts.items()]
        for agent in agents:
            times = [e["received_at"] for e in fresh if e.get("agent_key") == agent]
            if agent in known:
                update = self._update("agent", agent, len(times), max(times))
                update["Update"]["ConditionExpression"] = "attribute_exists(pk)"
                items.append(update)
            else:
                items.append(
                    {
                        "Put": {
                            "TableName": self._table,
                            "ConditionExpression": "attribute_not_exists(pk)",
                            "Item": {
                                **self._key("agent", agent),
                                "event_count": {"N": str(len(times))},
                                "first_event_at": {"S": min(times)},
                                "last_event_at": {"S": max(times)},
                            },
                        }
                    }
                )
        return items

    def _update(self, pk: str, sk: str, count: int, latest: str, extra: dict[str, int] | None = None) -> dict[str, Any]:
        adds = {"event_count": count, **(extra or {})}
        names = {f"#a{i}": name for i, name in enumerate(adds)}
        values: dict[str, Any] = {f":a{i}": {"N": str(n)} for i, n in enumerate(adds.values())}
        values[":ts"] = {"S": latest}
        adds_expr = ", ".join(f"#a{i} :a{i}" for i in range(len(adds)))
        return {
            "Update": {
                "TableName": self._table,
                "Key": self._key(pk, sk),
                "UpdateExpression": f"ADD {adds_expr} SET last_event_at = :ts",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

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
