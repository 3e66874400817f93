"""The events table: conditional appends and index queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bhiv.bucket.domain import FEED, NewEvent
from bhiv.errors import StorageUnavailable
from bhiv.storage.aws import batch_get

# Filters in order of selectivity: the first one present picks the index, the rest filter.
INDEX_FOR_FILTER = {
    "trace_id": "by_trace",
    "agent_key": "by_agent",
    "requester_id": "by_requester",
    "event_type": "by_type",
}
INDEX_KEY = {
    "by_trace": "trace_id",
    "by_agent": "agent_key",
    "by_requester": "requester_id",
    "by_type": "event_type",
    "by_time": "feed",
}


@dataclass(frozen=True)
class EventQuery:
    filters: dict[str, str]
    since: str | None
    until: str | None
    limit: int
    newest_first: bool
    start_key: dict[str, str] | None


@dataclass(frozen=True)
class EventPage:
    items: list[dict[str, Any]]
    next_key: dict[str, str] | None
    scanned_count: int


def to_item(event: NewEvent) -> dict[str, dict[str, str]]:
    item = {
        "event_id": {"S": event.event_id},
        "feed": {"S": FEED},
        "ts_id": {"S": event.ts_id},
        "event_type": {"S": event.event_type},
        "requester_id": {"S": event.requester_id},
        "timestamp": {"S": event.received_at},
        "received_at": {"S": event.received_at},
        "event_data": {"S": event.event_data_json},
        "content_hash": {"S": event.content_hash},
    }
    if event.trace_id:
        item["trace_id"] = {"S": event.trace_id}
    if event.agent_key:
        item["agent_key"] = {"S": event.agent_key}
    return item


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: next(iter(v.values())) for k, v in item.items()}


UNAVAILABLE_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "UnrecognizedClientException",
    }
)


def storage_errors(func: Any) -> Any:
    """Turn AWS faults into StorageUnavailable (503), leaving conditional failures to callers."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BotoCoreError as exc:
            raise StorageUnavailable(str(exc)) from exc
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in UNAVAILABLE_CODES:
                raise StorageUnavailable(str(exc)) from exc
            raise

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


class EventStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    @storage_errors
    def append(self, event: NewEvent) -> dict[str, Any] | None:
        """Store the event unless its id exists; returns the existing item when it does."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item=to_item(event),
                ConditionExpression="attribute_not_exists(event_id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            if old:
                return from_item(old)
            existing: dict[str, Any] | None = self.get(event.event_id)
            if existing is None:  # vanished between check and read: cannot happen append-only
                raise StorageUnavailable("event disappeared during conditional write") from exc
            return existing

    @storage_errors
    def append_many(self, events: list[NewEvent]) -> list[dict[str, Any] | None]:
        """Append events with distinct ids in one transaction; per event, the existing item or None.

        Ids already stored are found with one BatchGetItem; the rest go in together, each on the
        condition that its id is still free, so a concurrent writer can never be overwritten.
        """
        result: list[dict[str, Any] | None] = [None] * len(events)
        pending = list(range(len(events)))
        for _ in range(5):
            existing = self._batch_get([events[i].event_id for i in pending])
            for i in pending:
                result[i] = existing.get(events[i].event_id)
            pending = [i for i in pending if result[i] is None]
            if not pending:
                return result
            try:
                self._client.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": to_item(events[i]),
                                "ConditionExpression": "attribute_not_exists(event_id)",
                            }
                        }
                        for i in pending
                    ]
                )
                return result
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                # someone stored one of these ids meanwhile: look again and retry the rest
        raise StorageUnavailable("batch append kept conflicting with concurrent writers")

    def _batch_get(self, event_ids: list[str]) -> dict[str, dict[str, Any]]:
        items = batch_get(self._client, self._table, [{"event_id": {"S": e}} for e in event_ids])
        return {item["event_id"]: item for item in map(from_item, items)}

    @storage_errors
    def get(self, event_id: str) -> dict[str, Any] | None:
        resp = self._client.get_item(TableName=self._table, Key={"event_id": {"S": event_id}}, ConsistentRead=True)
        item = resp.get("Item")
        return from_item(item) if item else None

    def _query_params(self, query: EventQuery) -> tuple[dict[str, Any], str, bool]:
        """Query parameters for `query`: (params, the index's key attribute, has a filter expression)."""
        index = next((INDEX_FOR_FILTER[f] for f in INDEX_FOR_FILTER if f in query.filters), "by_time")
        key_attr = INDEX_KEY[index]
        key_value = FEED if index == "by_time" else query.filters[key_attr]
        names = {"#k": key_attr}
        if query.since or query.until:
            names["#t"] = "ts_id"
        values: dict[str, Any] = {":k": {"S": key_value}}
        condition = "#k = :k"
        if query.since and query.until:
            condition += " AND #t BETWEEN :since AND :until"
            values[":since"] = {"S": query.since}
            values[":until"] = {"S": query.until + "~"}
        elif query.since:
            condition += " AND #t >= :since"
            values[":since"] = {"S": query.since}
        elif query.until:
            condition += " AND #t <= :until"
            values[":until"] = {"S": query.until + "~"}
        filters = []
        for i, (attr, value) in enumerate(sorted(query.filters.items())):
            if attr == key_attr:
                continue
            names[f"#f{i}"] = attr
            values[f":f{i}"] = {"S": value}
            filters.append(f"#f{i} = :f{i}")
        params: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": not query.newest_first,
        }
        if filters:
            params["FilterExpression"] = " AND ".join(filters)
        return params, key_attr, bool(filters)

    @storage_errors
    def count(self, query: EventQuery) -> int:
        """How many events match `query` (its filters and time window), with Select=COUNT."""
        params, _, _ = self._query_params(query)
        params["Select"] = "COUNT"
        total = 0
        while True:
            resp = self._client.query(**params)
            total += int(resp.get("Count", 0))
            if not resp.get("LastEvaluatedKey"):
                return total
            params["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    @storage_errors
    def query(self, query: EventQuery) -> EventPage:
        params, key_attr, filtered = self._query_params(query)
        items: list[dict[str, Any]] = []
        scanned = 0
        start_key = query.start_key
        # With a filter a page may come back short; keep reading, but never more than a few pages.
        budget = query.limit * 5 if filtered else query.limit
        while True:
            params["Limit"] = query.limit - len(items) if not filtered else query.limit
            if start_key:
                params["ExclusiveStartKey"] = {k: {"S": v} for k, v in start_key.items()}
            else:
                params.pop("ExclusiveStartKey", None)
            resp = self._client.query(**params)
            scanned += resp.get("ScannedCount", 0)
            for raw in resp.get("Items", []):
                items.append(from_item(raw))
                if len(items) == query.limit:
                    break
            last = resp.get("LastEvaluatedKey")
            if len(items) == query.limit:
                last_item = items[-1]
                next_key = {k: last_item[k] for k in ("event_id", key_attr, "ts_id")}
                return EventPage(items, next_key, scanned)
            if not last:
                return EventPage(items, None, scanned)
            start_key = {k: next(iter(v.values())) for k, v in last.items()}
            if scanned >= budget:
                return EventPage(items, start_key, scanned)

    @storage_errors
    def count_after(self, agent_key: str | None, after_ts_id: str | None) -> int:
        """How many events (about `agent_key`, or all) sort after `after_ts_id` in time.

        Read with Select=COUNT on the by_agent or by_time index: with the aggregates' watermark as
        `after_ts_id` this reads only the events the stream consumer has not counted yet."""
        index, key_attr, key_value = ("by_agent", "agent_key", agent_key) if agent_key else ("by_time", "feed", FEED)
        params: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :k",
            "ExpressionAttributeNames": {"#k": key_attr},
            "ExpressionAttributeValues": {":k": {"S": key_value}},
            "Select": "COUNT",
        }
        if after_ts_id is not None:
            params["KeyConditionExpression"] += " AND #t > :after"
            params["ExpressionAttributeNames"]["#t"] = "ts_id"
            params["ExpressionAttributeValues"][":after"] = {"S": after_ts_id}
        total = 0
        while True:
            resp = self._client.query(**params)
            total += int(resp.get("Count", 0))
            if not resp.get("LastEvaluatedKey"):
                return total
            params["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    @storage_errors
    def ping(self) -> None:
        self._client.describe_table(TableName=self._table)
