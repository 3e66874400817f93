"""Karma's state in DynamoDB, changed only by conditional, versioned transactions.

A group of stream records is committed in one transaction: a marker per event (condition: absent),
the history entries, each touched user's state and the Q-table (condition: the version we read),
and the counters. A re-delivered record finds its marker and changes nothing; two consumers racing
on the same user or the Q-table cannot both win, the loser re-reads and tries again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from bhiv.karma.engine import QTable, UserState
from bhiv.storage.aws import batch_get
from bhiv.storage.events import storage_errors

MARKER_TTL_SECONDS = 2 * 24 * 3600
MAX_TRANSACTION_ITEMS = 100
_UNREAD = object()


class VersionConflict(Exception):
    """Another writer changed a user or the Q-table since we read it."""


class AlreadyApplied(Exception):
    """An event of the group has a marker already."""


@dataclass(frozen=True)
class Outcome:
    """What applying one event produced, ready to be written."""

    event_id: str
    status: str  # "applied" | "capped" (over a daily cap: history only) | "ignored"
    user_id: str | None = None
    history: dict[str, Any] | None = None
    received_at: str = ""
    trace_id: str | None = None

    @property
    def marker_key(self) -> tuple[str, str]:
        """The item whose existence says this event was handled: for an applied event its history
        entry (keyed by user, time and id, all fixed by the event), else an `ignored` marker."""
        if self.history is not None and self.user_id is not None:
            return f"user#{self.user_id}", f"h#{self.received_at}#{self.event_id}"
        return "ignored", self.event_id


def _n(value: float | int) -> dict[str, str]:
    return {"N": repr(float(value)) if isinstance(value, float) else str(value)}


def user_to_item(user: UserState) -> dict[str, Any]:
    return {
        "pk": {"S": f"user#{user.user_id}"},
        "sk": {"S": "state"},
        "user_id": {"S": user.user_id},
        "role": {"S": user.role},
        "state": {
            "S": json.dumps(
                {
                    "balances": user.balances,
                    "action_stats": user.action_stats,
                    "cheat_times": list(user.cheat_times),
                    "paap": user.paap,
                    "cap_counts": user.cap_counts,
                    "capped_stats": user.capped_stats,
                }
            )
        },
        "events_applied": _n(user.events_applied),
        "last_updated": {"S": user.last_updated or ""},
        "version": _n(user.version),
    }


def user_from_item(item: dict[str, Any]) -> UserState:
    state = json.loads(item["state"]["S"])
    return UserState(
        user_id=item["user_id"]["S"],
        role=item["role"]["S"],
        balances=state["balances"],
        action_stats=state["action_stats"],
        cheat_times=tuple(state["cheat_times"]),
        events_applied=int(item["events_applied"]["N"]),
        last_updated=item["last_updated"]["S"] or None,
        version=int(item["version"]["N"]),
        paap=float(state.get("paap", 0.0)),  # absent in states written before it was kept
        cap_counts=state.get("cap_counts") or {},
        capped_stats=state.get("capped_stats") or {},
    )


class KarmaStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        # The counters item as this store last wrote it (None: absent), or _UNREAD. Counters are
        # written as a whole item, conditional on that version: an ADD update costs several
        # times a conditional put (in moto, and in write units for a large item in DynamoDB too).
        self._counters_item: Any = _UNREAD

    # --- reads ----------------------------------------------------------------------------

    @storage_errors
    def user(self, user_id: str) -> UserState | None:
        item = self._get(f"user#{user_id}", "state")
        return user_from_item(item) if item else None

    @storage_errors
    def users(self, user_ids: list[str]) -> dict[str, UserState]:
        keys = [{"pk": {"S": f"user#{u}"}, "sk": {"S": "state"}} for u in user_ids]
        return {user.user_id: user for user in map(user_from_item, batch_get(self._client, self._table, keys))}

    @storage_errors
    def qtable(self, policy_version: str) -> QTable | None:
        item = self._get("qtable", policy_version)
        if not item:
            return None
        return QTable(json.loads(item["values"]["S"]), int(item["updates"]["N"]), int(item["version"]["N"]))

    @storage_errors
    def existing_markers(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in keys]
        return {(i["pk"]["S"], i["sk"]["S"]) for i in batch_get(self._client, self._table, wanted, "pk, sk")}

    @storage_errors
    def counters(self) -> dict[str, int]:
        item = self._get("stats", "counters") or {}
        return {k: int(v["N"]) for k, v in item.items() if "N" in v and k != "version"}

    @storage_errors
    def history(self, user_id: str, limit: int, start_after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :h)",
            "ExpressionAttributeValues": {":pk": {"S": f"user#{user_id}"}, ":h": {"S": "h#"}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if start_after:
            params["ExclusiveStartKey"] = {"pk": {"S": f"user#{user_id}"}, "sk": {"S": start_after}}
        resp = self._client.query(**params)
        entries = [json.loads(i["entry"]["S"]) for i in resp.get("Items", [])]
        last = resp.get("LastEvaluatedKey")
        return entries, (last["sk"]["S"] if last else None)

    @storage_errors
    def applied_order(self) -> dict[str, tuple[int, int]]:
        """{event id: (Q-table version written, place in its group)} for every applied event.

        A full scan: for `bhiv karma rebuild`, never on a request path."""
        order: dict[str, tuple[int, int]] = {}
        params: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "begins_with(sk, :h)",
            "ExpressionAttributeValues": {":h": {"S": "h#"}},
            "ProjectionExpression": "entry",
        }
        while True:
            page = self._client.scan(**params)
            for item in page.get("Items", []):
                entry = json.loads(item["entry"]["S"]) if "entry" in item else {}
                place = entry.get("applied_order")
                if isinstance(place, list) and len(place) == 2:
                    order[str(entry["event_id"])] = (int(place[0]), int(place[1]))
            if "LastEvaluatedKey" not in page:
                return order
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        resp = self._client.get_item(TableName=self._table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True)
        item: dict[str, Any] | None = resp.get("Item")
        return item

    @storage_errors
    def ping(self) -> None:
        self._client.describe_table(TableName=self._table)

    # --- writes ---------------------------------------------------------------------------

    @storage_errors
    def commit(
        self,
        outcomes: list[Outcome],
        users: dict[str, tuple[UserState, int | None]],
        qtable: tuple[QTable, int | None] | None,
        policy_version: str,
        role_changes: dict[str, int],
    ) -> None:
        """Write a group atomically. users/qtable: (new state, version read or None when new)."""
        expires = {"N": str(int(time.time()) + MARKER_TTL_SECONDS)}
        items: list[dict[str, Any]] = []
        for outcome in outcomes:
            pk, sk = outcome.marker_key
            item: dict[str, Any] = {"pk": {"S": pk}, "sk": {"S": sk}}
            if outcome.history is not None:
                item["entry"] = {"S": json.dumps(outcome.history)}
            else:
                item["expires_at"] = expires
            items.append(
                {"Put": {"TableName": self._table, "ConditionExpression": "attribute_not_exists(pk)", "Item": item}}
            )
        for user, read_version in users.values():
            items.append(
                {"Put": {"TableName": self._table, "Item": user_to_item(user), **_version_condition(read_version)}}
            )
        if qtable is not None:
            table, read_version = qtable
            items.append(
                {
                    "Put": {
                        "TableName": self._table,
                        **_version_condition(read_version),
                        "Item": {
                            "pk": {"S": "qtable"},
                            "sk": {"S": policy_version},
                            "values": {"S": json.dumps(table.values)},
                            "updates": _n(table.updates),
                            "version": _n(table.version),
                        },
                    }
                }
            )
        adds = {
            "applied": sum(o.status == "applied" for o in outcomes),
            "capped": sum(o.status == "capped" for o in outcomes),
            "ignored": sum(o.status == "ignored" for o in outcomes),
            **role_changes,
        }
        adds = {k: v for k, v in adds.items() if v}
        counters = None
        if adds:
            put, counters = self._counters_put(adds)
            items.append(put)
        if len(items) > MAX_TRANSACTION_ITEMS:
            raise ValueError(f"transaction of {len(items)} items; split the group")
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            self._counters_item = _UNREAD
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons", [])
            markers = len(outcomes)
            if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons[:markers]):
                raise AlreadyApplied() from exc
            raise VersionConflict() from exc
        except BaseException:
            self._counters_item = _UNREAD
            raise
        if counters is not None:
            self._counters_item = counters

    def _counters_put(self, adds: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The counters item plus `adds`, and its put, conditional on the version it was read at."""
        old = self._counters_item
        if old is _UNREAD:
            old = self._get("stats", "counters")
        item: dict[str, Any] = dict(old) if old else {"pk": {"S": "stats"}, "sk": {"S": "counters"}}
        for name, add in adds.items():
            item[name] = _n(int(item.get(name, {}).get("N", "0")) + add)
        version = old.get("version", {}).get("N") if old else None
        item["version"] = _n(int(version or 0) + 1)
        put: dict[str, Any] = {"TableName": self._table, "Item": item}
        if old is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        elif version is None:  # written before the counters carried a version
            put["ConditionExpression"] = "attribute_exists(pk) AND attribute_not_exists(version)"
        else:
            put["ConditionExpression"] = "version = :cv"
            put["ExpressionAttributeValues"] = {":cv": {"N": version}}
        return {"Put": put}, item

    @storage_errors
    def record_failure(self, event_id: str, reason: str) -> bool:
        """Count a distinct event that could not be applied (retries of it count once)."""
        self._counters_item = _UNREAD
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table,
                            "ConditionExpression": "attribute_not_exists(pk)",
                            "Item": {"pk": {"S": "failed"}, "sk": {"S": event_id}, "reason": {"S": reason[:500]}},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": {"S": "stats"}, "sk": {"S": "counters"}},
                            # the version moves too: a commit's cached counters are then stale
                            "UpdateExpression": "ADD failed :one, version :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    },
                ]
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise


def _version_condition(read_version: int | None) -> dict[str, Any]:
    if read_version is None:
        return {"ConditionExpression": "attribute_not_exists(pk)"}
    return {"ConditionExpression": "version = :v", "ExpressionAttributeValues": {":v": _n(read_version)}}
