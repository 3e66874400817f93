"""The events table: conditional appends and index queries.

The ``by_time`` index (every event, in time order) is write-sharded: an event goes to one of N feed
partitions (``all``, ``all#1``, ... ``all#N-1``, by a hash of its id), so appends are spread over N
partitions instead of one (a DynamoDB partition takes about 1,000 writes/s). A page of the feed is
one Query per shard, merged by ``ts_id``; its cursor carries each shard's position. N comes from
``EVENTS_FEED_SHARDS`` (default ``DEFAULT_FEED_SHARDS``, template.yaml's ``EventsFeedShards``) and
may grow but never shrink: shard 0 is the original single feed ``all``, and a shard beyond the
configured N would no longer be read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bhiv.bucket.domain import FEED, NewEvent
from bhiv.errors import BadRequest, StorageUnavailable
from bhiv.storage.aws import batch_get

FEED_SHARDS_ENV = "EVENTS_FEED_SHARDS"
DEFAULT_FEED_SHARDS = 4
MAX_FEED_SHARDS = 64
# A shard's position in a feed cursor: not started, read to the end (newest-first only), or after a ts_id.
SHARD_NOT_STARTED = ""
SHARD_EXHAUSTED = "-"


def feed_shards(value: str | None = None) -> int:
    """The configured number of feed shards (EVENTS_FEED_SHARDS), 1..MAX_FEED_SHARDS."""
    raw = os.environ.get(FEED_SHARDS_ENV) if value is None else value
    if not raw:
        return DEFAULT_FEED_SHARDS
    shards = int(raw)
    if not 1 <= shards <= MAX_FEED_SHARDS:
        raise ValueError(f"{FEED_SHARDS_ENV} must be 1..{MAX_FEED_SHARDS}, got {raw!r}")
    return shards


def feed_key(shard: int) -> str:
    """The by_time partition of a shard; shard 0 is the single feed of old (``all``)."""
    return FEED if shard == 0 else f"{FEED}#{shard}"


def shard_of(event_id: str, shards: int) -> int:
    """The shard of an event: stable for its id, so a retried append lands where the first one did."""
    return int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:4], "big") % shards


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


def to_item(event: NewEvent, shards: int | None = None) -> dict[str, dict[str, str]]:
    feed = feed_key(shard_of(event.event_id, feed_shards() if shards is None else shards))
    item = {
        "event_id": {"S": event.event_id},
        "feed": {"S": feed},
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
    def __init__(self, client: Any, table: str, shards: int | None = None) -> None:
        self._client = client
        self._table = table
        self._shards = feed_shards() if shards is None else shards

    @property
    def shards(self) -> int:
        return self._shards

    @storage_errors
    def append(self, event: NewEvent) -> dict[str, Any] | None:
        """Store the event unless its id exists; returns the existing item when it does."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item=to_item(event, self._shards),
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

        All go in together, each on the condition that its id is still free, so a concurrent writer
        can never be overwritten. Only when that is refused (an id stored before: a retried batch)
        are the stored ones fetched with one BatchGetItem, and the rest tried again.
        """
        result: list[dict[str, Any] | None] = [None] * len(events)
        pending = list(range(len(events)))
        refused = False
        for _ in range(5):
            if refused:
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
                                "Item": to_item(events[i], self._shards),
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
                refused = True  # some ids are stored (by an earlier try, or a concurrent writer)
        raise StorageUnavailable("batch append kept conflicting with concurrent writers")

    def _batch_get(self, event_ids: list[str]) -> dict[str, dict[str, Any]]:
        items = batch_get(self._client, self._table, [{"event_id": {"S": e}} for e in event_ids])
        return {item["event_id"]: item for item in map(from_item, items)}

    @storage_errors
    def get(self, event_id: str) -> dict[str, Any] | None:
        resp = self._client.get_item(TableName=self._table, Key={"event_id": {"S": event_id}}, ConsistentRead=True)
        item = resp.get("Item")
        return from_item(item) if item else None

    @storage_errors
    def query(self, query: EventQuery) -> EventPage:
        index = next((INDEX_FOR_FILTER[f] for f in INDEX_FOR_FILTER if f in query.filters), "by_time")
        key_attr = INDEX_KEY[index]
        params = self._query_params(query, index, key_attr)
        if index == "by_time":
            return self._query_feed(query, params)
        items: list[dict[str, Any]] = []
        scanned = 0
        start_key = query.start_key
        filtered = "FilterExpression" in params
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
    def count(self, query: EventQuery) -> int:
        """How many events match `query` (its filters and time window), with Select=COUNT
        (on the feed: summed over its shards)."""
        index = next((INDEX_FOR_FILTER[f] for f in INDEX_FOR_FILTER if f in query.filters), "by_time")
        params = self._query_params(query, index, INDEX_KEY[index])
        params["Select"] = "COUNT"
        params.pop("ScanIndexForward", None)
        if index != "by_time":
            return self._count_pages(params)
        return sum(
            self._count_pages(
                {**params, "ExpressionAttributeValues": {**params["ExpressionAttributeValues"], ":k": {"S": key}}}
            )
            for key in (feed_key(shard) for shard in range(self._shards))
        )

    @storage_errors
    def count_after(self, agent_key: str | None, after_ts_id: str | None) -> int:
        """How many events (about `agent_key`, or all) sort after `after_ts_id` in time.

        Read with Select=COUNT on the by_agent index or the feed's shards: with the aggregates'
        watermark as `after_ts_id` this reads only the events the stream consumer has not counted yet."""
        if agent_key:
            partitions = [("by_agent", "agent_key", agent_key)]
        else:
            partitions = [("by_time", "feed", feed_key(shard)) for shard in range(self._shards)]
        total = 0
        for index, key_attr, key_value in partitions:
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
            total += self._count_pages(params)
        return total

    def _count_pages(self, params: dict[str, Any]) -> int:
        total = 0
        params = dict(params)
        while True:
            resp = self._client.query(**params)
            total += int(resp.get("Count", 0))
            if not resp.get("LastEvaluatedKey"):
                return total
            params["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _query_params(self, query: EventQuery, index: str, key_attr: str) -> dict[str, Any]:
        """The Query of one page on ``index`` (for by_time, ``:k`` is set per shard)."""
        names = {"#k": key_attr}
        if query.since or query.until:
            names["#t"] = "ts_id"
        values: dict[str, Any] = {":k": {"S": FEED if index == "by_time" else query.filters[key_attr]}}
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
        return params

    def _shard_positions(self, start_key: dict[str, str] | None) -> list[str]:
        if start_key is None:
            return [SHARD_NOT_STARTED] * self._shards
        if set(start_key) == {"event_id", "feed", "ts_id"} and self._shards == 1:
            return [start_key["ts_id"]]  # a cursor of the single feed, from before sharding
        if set(start_key) != {str(shard) for shard in range(self._shards)} or not all(
            position in (SHARD_NOT_STARTED, SHARD_EXHAUSTED) or "#" in position for position in start_key.values()
        ):
            raise BadRequest("Cursor belongs to a different feed layout", code="invalid_cursor", field="cursor")
        return [start_key[str(shard)] for shard in range(self._shards)]

    def _query_feed(self, query: EventQuery, params: dict[str, Any]) -> EventPage:
        """A page of the sharded feed: the shards merged by ts_id, each read a chunk at a time.

        Each shard is read ``1.5 x limit / shards`` items at a time (the events are spread evenly
        over the shards: a second read of a shard is rare), and again only when the merge has used
        all it read, so a page costs about 1.5 x ``limit`` items read, not ``shards x limit``. The
        merge is exact: an item is emitted only while every shard that may hold a better one has
        one read. Reads stop at ``shards x (limit + chunk)`` scanned (a selective filter): the page
        then ends early, with a cursor. Each shard's next position is its last emitted item, or where it
        stopped reading when it emitted everything it read.
        """
        positions = self._shard_positions(query.start_key)
        descending = query.newest_first
        chunk = -(-3 * query.limit // (2 * len(positions))) + 1
        budget = (query.limit + chunk) * len(positions)
        unread = [position != SHARD_EXHAUSTED for position in positions]  # a shard may hold more
        read_to = list(positions)  # per shard: where its next read starts
        buffers: list[list[dict[str, Any]]] = [[] for _ in positions]  # read, not emitted yet
        scanned = 0

        def read(shard: int) -> None:
            """Read the shard until something is buffered, it is exhausted or the budget is spent."""
            nonlocal scanned
            while unread[shard] and not buffers[shard] and scanned < budget:
                shard_params = {
                    **params,
                    "ExpressionAttributeValues": {**params["ExpressionAttributeValues"], ":k": {"S": feed_key(shard)}},
                    "Limit": min(chunk, budget - scanned),
                }
                position = read_to[shard]
                if position:
                    shard_params["ExclusiveStartKey"] = {
                        "event_id": {"S": position.split("#", 1)[1]},
                        "feed": {"S": feed_key(shard)},
                        "ts_id": {"S": position},
                    }
                resp = self._client.query(**shard_params)
                scanned += int(resp.get("ScannedCount", 0))
                buffers[shard].extend(from_item(raw) for raw in resp.get("Items", []))
                last = resp.get("LastEvaluatedKey")
                if last:
                    read_to[shard] = last["ts_id"]["S"]
                else:
                    unread[shard] = False
                    if buffers[shard]:
                        read_to[shard] = buffers[shard][-1]["ts_id"]

        for shard in range(len(positions)):
            read(shard)
        page: list[dict[str, Any]] = []
        emitted_to = list(positions)  # per shard: the last item emitted from it
        while len(page) < query.limit:
            if any(unread[shard] and not buffers[shard] for shard in range(len(positions))):
                break  # the budget is spent and that shard may hold the next item
            heads = [(buffer[0]["ts_id"], shard) for shard, buffer in enumerate(buffers) if buffer]
            if not heads:
                break
            ts_id, shard = max(heads) if descending else min(heads)
            page.append(buffers[shard].pop(0))
            emitted_to[shard] = ts_id
            if not buffers[shard]:
                read(shard)

        next_positions: list[str] = []
        for shard, position in enumerate(positions):
            if buffers[shard]:
                next_positions.append(emitted_to[shard])  # read again from there next time
            elif unread[shard]:
                next_positions.append(read_to[shard])
            elif descending or position == SHARD_EXHAUSTED:
                next_positions.append(SHARD_EXHAUSTED)  # nothing older will appear in an append-only feed
            else:
                next_positions.append(read_to[shard])  # newer ones may
        more = any(unread) or any(buffers)
        next_key = {str(shard): position for shard, position in enumerate(next_positions)} if more else None
        return EventPage(page, next_key, scanned)

    @storage_errors
    def ping(self) -> None:
        self._client.describe_table(TableName=self._table)
