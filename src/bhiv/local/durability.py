"""Durable local state for moto, which keeps everything in memory.

Design (see docs/local-state.md):
* Journal: every successful DynamoDB write (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
  TransactWriteItems), whoever sends it (the apps in-process, or tools through the moto server), is
  appended to `<state-dir>/journal.jsonl` by its effect (the after-image of every item it touched
  and the stream records it produced) and flushed to the OS before the response goes back, under
  one lock with the write itself so journal order is apply order. A `kill -9` loses nothing that
  was acknowledged (set BHIV_JOURNAL_FSYNC=1 to survive a power cut too, at a cost). Replaying
  effects costs what loading a snapshot costs, far less than re-executing requests through moto.
* Stream sequence numbers are continuous for the life of the state dir: a snapshot records, per
  table, the next sequence number and the stream records some consumer has not checkpointed yet
  (the tail). Start-up loads the items without stream records, puts the tail back with its own
  sequence numbers, and replays the journal through moto's API, which numbers the new records
  exactly as the crashed process did. The pollers' checkpoints (keyed by table and shard) stay
  valid across restarts and compactions: nothing is delivered twice, nothing is skipped.
* Compaction folds the journal into a new snapshot (generation + 1), at a clean stop and while
  running every `COMPACT_EVERY` writes, so a restart after `kill -9` replays only the writes since
  the last compaction. It never waits for consumers (their unread tail goes into the snapshot) and
  holds the write lock only while it copies the tables. Journal lines carry their generation; a
  start replays the lines of the snapshot's generation and later, so a crash at any point of a
  compaction leaves a consistent state.
* A line cut short by a kill (the torn tail) was never acknowledged: start-up truncates it, so the
  next line starts clean.
* SQS queues (the DLQs, the reminder queue) hold few messages: their contents are rewritten to
  `<state-dir>/queues.json` (atomically) after every change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bhiv import fastjson

DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
SQS_CHANGES = frozenset({"SendMessage", "SendMessageBatch", "DeleteMessage", "DeleteMessageBatch", "PurgeQueue"})
ACCOUNT = "123456789012"

WRITE_LOCK = threading.RLock()
STREAM_LOCK = threading.Lock()  # a stream read never sees a tail half trimmed by a compaction

log = logging.getLogger("bhiv.local.durability")

# Start-up progress for restores that are not handed a callback: `bhiv up` sets it, so a large
# snapshot or journal does not look like a hang.
progress_hook: Callable[[str], None] | None = None
PROGRESS_EVERY = 5000


def _atomic_write(path: Path, data: str) -> None:
    _atomic_write_bytes(path, data.encode("utf-8"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DurableState:
    def __init__(self, state_dir: Path, region: str, *, fsync: bool | None = None, enabled: bool = True) -> None:
        self.dir = state_dir
        self.region = region
        self.enabled = enabled
        self.fsync = os.environ.get("BHIV_JOURNAL_FSYNC") == "1" if fsync is None else fsync
        self.journal_path = state_dir / "journal.jsonl"
        self.snapshot_path = state_dir / "snapshot.json"
        self.queues_path = state_dir / "queues.json"
        self.generation = 0
        self._journal: Any = None
        self._replaying = False
        self.replayed = 0
        self.loaded_items = 0
        self.truncated_bytes = 0
        self.writes_since_compaction = 0
        self.compactions = 0
        self.items_at_compaction = 0  # items in the last snapshot: replay should stay cheaper than their load

    # --- start-up ---------------------------------------------------------------------------

    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def restore(self, dynamodb: Any, sqs: Any, progress: Callable[[str], None] | None = None) -> None:
        """Snapshot, then the journal tail, into the (already created, empty) moto tables."""
        progress = progress or progress_hook
        streams: dict[str, Any] = {}
        if self.snapshot_path.exists():
            snapshot = json.loads(self.snapshot_path.read_text(encoding="utf-8"))
            self.generation = int(snapshot["generation"])
            if progress is not None:
                progress(f"loading the snapshot ({self.snapshot_path.stat().st_size / 1e6:.1f} MB)")
            self.loaded_items = self._load_tables(snapshot["tables"])
            self.items_at_compaction = self.loaded_items
            streams = snapshot.get("streams") or {}
        self._restore_streams(streams)
        for legacy in (self.dir / "checkpoints").glob("g*"):  # positions keyed by a stream ARN of old
            shutil.rmtree(legacy, ignore_errors=True)
        self._replaying = True
        try:
            for record in self._journal_records():
                if int(record.get("g", -1)) < self.generation:
                    continue  # written before the snapshot it is older than
                self._apply(record, dynamodb)
                self.replayed += 1
                self.writes_since_compaction += max(1, len(record.get("p", [])))
                if progress is not None and self.replayed % PROGRESS_EVERY == 0:
                    progress(f"replayed {self.replayed} journal writes")
        finally:
            self._replaying = False
        if self.queues_path.exists():
            self._load_queues(sqs, json.loads(self.queues_path.read_text(encoding="utf-8")))
        self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - held open for the run

    def _journal_records(self) -> Iterator[dict[str, Any]]:
        """The journal's lines. A torn tail (a write cut short by a kill, never acknowledged) is cut
        off the file, so the next append starts a clean line."""
        if not self.journal_path.exists():
            return
        with open(self.journal_path, "rb") as handle:
            lines = handle.readlines()
        good_end = 0  # offset just after the last whole, readable line
        offset = 0
        for line in lines:
            offset += len(line)
            record = _parse_line(line) if line.endswith(b"\n") else None
            if record is None and line.endswith(b"\n"):
                # A torn line that a later append completed (journals written before torn tails
                # were truncated): the acknowledged write is the last whole record in it.
                record = _salvage(line)
                log.warning(
                    "Journal line salvaged" if record else "Journal line unreadable; skipped",
                    extra={"journal": str(self.journal_path), "offset": offset - len(line)},
                )
            if record is None:
                continue
            good_end = offset
            yield record
        size = offset
        if size > good_end:
            with open(self.journal_path, "r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
            self.truncated_bytes = size - good_end
            log.warning(
                "Journal tail truncated",
                extra={"journal": str(self.journal_path), "offset": good_end, "bytes": size - good_end},
            )

    def _backend(self) -> Any:
        from moto.dynamodb.models import dynamodb_backends

        return dynamodb_backends[ACCOUNT][self.region]

    def _load_tables(self, tables: dict[str, list[dict[str, Any]]]) -> int:
        """Put the snapshot's items straight into moto's tables: no stream records for old state,
        and none of put_item's per-item parsing and checks (the items passed them when written)."""
        from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

        from bhiv.local import moto_patch

        backend = self._backend()
        count = 0
        for name, items in tables.items():
            table = backend.tables[name]
            hash_attr, range_attr = table.hash_key_attr, table.range_key_attr
            for attrs in items:
                item = Item.__new__(Item)
                item.attrs = LimitedSizeDict()
                dict.update(item.attrs, {key: DynamoType(value) for key, value in attrs.items()})
                item.hash_key = item.attrs[hash_attr]
                item.range_key = item.attrs[range_attr] if range_attr else None
                if range_attr:
                    table.items[item.hash_key][item.range_key] = item
                else:
                    table.items[item.hash_key] = item
                count += 1
            moto_patch.forget_key_indexes(table)
        return count

    def _restore_streams(self, streams: dict[str, Any]) -> None:
        """Each table's stream continues where the snapshot left it: the unconsumed tail with its
        own sequence numbers, and new records numbered after it."""
        for name, table in self._backend().tables.items():
            shard = table.stream_shard
            saved = streams.get(name)
            if shard is None or not saved:
                continue
            tail = [_RestoredRecord(record) for record in saved.get("records", [])]
            shard.items = tail
            shard.starting_sequence_number = int(saved["next_sequence"]) - len(tail)

    @staticmethod
    def _load_queues(sqs: Any, queues: dict[str, list[dict[str, Any]]]) -> None:
        for name, messages in queues.items():
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            for message in messages:
                params: dict[str, Any] = {"QueueUrl": url, "MessageBody": message["body"]}
                if message.get("attributes"):
                    params["MessageAttributes"] = message["attributes"]
                sqs.send_message(**params)

    # --- while running ----------------------------------------------------------------------

    def stream_lengths(self) -> dict[str, int]:
        """How many records each table's stream holds now (taken under WRITE_LOCK before a write)."""
        return {
            name: len(table.stream_shard.items)
            for name, table in self._backend().tables.items()
            if table.stream_shard is not None
        }

    def record(self, action: str, request: dict[str, Any], streams_before: dict[str, int]) -> None:
        """Journal a successful write by its effect: the after-image of every item it touched and
        the stream records it produced (called under WRITE_LOCK, right after the write).

        Replaying effects, not requests, is as fast as loading a snapshot, and it reproduces the
        stream exactly (moto emits two records for an UpdateItem that creates an item)."""
        if self._replaying or self._journal is None:
            return
        backend = self._backend()
        images: list[list[Any]] = []
        for table_name, named, is_put in _touched_keys(action, request):
            table = backend.tables.get(table_name)
            if table is None:
                continue
            key = {table.hash_key_attr: named[table.hash_key_attr]}
            if table.range_key_attr:
                key[table.range_key_attr] = named[table.range_key_attr]
            if is_put:  # a put that succeeded stored exactly its item (moto keeps what it is given)
                images.append([table_name, key, named])
                continue
            item = table.get_item(*_key_values(table, key))
            images.append([table_name, key, item.to_json()["Attributes"] if item is not None else None])
        records: dict[str, list[dict[str, Any]]] = {}
        for name, table in backend.tables.items():
            shard = table.stream_shard
            if shard is not None and len(shard.items) > streams_before.get(name, 0):
                records[name] = [r.to_json() for r in shard.items[streams_before.get(name, 0) :]]
        line = fastjson.dumps_bytes({"g": self.generation, "p": images, "s": records}, default=_json_default)
        self._journal.write(line + b"\n")
        self._journal.flush()
        if self.fsync:
            os.fsync(self._journal.fileno())
        self.writes_since_compaction += max(1, len(images))

    def _apply(self, record: dict[str, Any], dynamodb: Any) -> None:
        """Replay one journal line: its after-images without stream records, then its records."""
        if "a" in record:  # a request, as journals before effects were recorded
            dynamodb._make_api_call(record["a"], json.loads(record["b"]))
            return
        backend = self._backend()
        for table_name, key, attrs in record.get("p", []):
            table = backend.tables.get(table_name)
            if table is None:
                continue
            shard, table.stream_shard = table.stream_shard, None
            try:
                if attrs is None:
                    table.delete_item(*_key_values(table, key))
                else:
                    table.put_item(attrs)
            finally:
                table.stream_shard = shard
        for table_name, stream_records in record.get("s", {}).items():
            table = backend.tables.get(table_name)
            if table is not None and table.stream_shard is not None:
                table.stream_shard.items.extend(_RestoredRecord(r) for r in stream_records)

    def save_queues(self) -> None:
        if self._replaying or self._journal is None:
            return
        from moto.sqs.models import sqs_backends

        backend = sqs_backends[ACCOUNT][self.region]
        queues = {}
        for name, queue in backend.queues.items():
            queues[name] = [{"body": m.body, "attributes": _message_attributes(m)} for m in queue._messages]
        _atomic_write(self.queues_path, json.dumps(queues))

    # --- clean shutdown -----------------------------------------------------------------------

    def compact(self, horizons: dict[str, int | None] | None = None) -> None:
        """Fold the journal into a new snapshot; safe while the stack runs.

        `horizons`: per table, the lowest sequence number every consumer of its stream has
        checkpointed (None: some consumer has none yet). Records after it are kept in the snapshot
        and in memory; older ones are dropped from moto's stream (bounded memory).
        """
        horizons = horizons or {}
        with WRITE_LOCK:  # a consistent cut: no write between the copy and the generation switch
            backend = self._backend()
            tables = {
                name: [item.to_json()["Attributes"] for item in table.all_items()]
                for name, table in backend.tables.items()
            }
            streams = {
                name: self._trim_stream(table.stream_shard, horizons.get(name))
                for name, table in backend.tables.items()
                if table.stream_shard is not None
            }
            generation = self.generation + 1
            self.generation = generation
            self.items_at_compaction = sum(len(items) for items in tables.values())
            cut = 0
            if self._journal is not None:
                self._journal.flush()
                cut = self._journal.tell()
            self.writes_since_compaction = 0
        # Writes go on meanwhile, journaled as the new generation after `cut`.
        _atomic_write(
            self.snapshot_path,
            json.dumps(
                {
                    "version": 2,
                    "generation": generation,
                    "created_at": time.time(),
                    "tables": tables,
                    "streams": streams,
                },
                default=_json_default,
            ),
        )
        with WRITE_LOCK:  # drop the lines the snapshot now holds
            if self._journal is not None:
                self._journal.flush()
                with open(self.journal_path, "rb") as handle:
                    handle.seek(cut)
                    newer = handle.read()
                self._journal.close()
                _atomic_write_bytes(self.journal_path, newer)
                self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - held open for the run
            else:
                _atomic_write_bytes(self.journal_path, b"")
        self.compactions += 1

    @staticmethod
    def _trim_stream(shard: Any, horizon: int | None) -> dict[str, Any]:
        next_sequence = int(shard.starting_sequence_number) + len(shard.items)
        keep_from = 0
        if horizon is not None:
            keep_from = max(0, min(len(shard.items), horizon + 1 - int(shard.starting_sequence_number)))
        with STREAM_LOCK:
            kept = shard.items[keep_from:]
            shard.items = kept
            shard.starting_sequence_number = next_sequence - len(kept)
        return {"next_sequence": next_sequence, "records": [record.to_json() for record in kept]}

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


class _RestoredRecord:
    """A stream record put back from a snapshot: what moto's StreamShard.get needs of one."""

    def __init__(self, record: dict[str, Any]) -> None:
        created = record.get("dynamodb", {}).get("ApproximateCreationDateTime")
        if isinstance(created, int | float):
            record["dynamodb"]["ApproximateCreationDateTime"] = datetime.fromtimestamp(created, UTC)
        self.record = record

    def to_json(self) -> dict[str, Any]:
        return self.record


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    return record if ("a" in record and "b" in record) or "p" in record else None


def _salvage(line: bytes) -> dict[str, Any] | None:
    start = line.rfind(b'{"g": ')
    return _parse_line(line[start:]) if start > 0 else None


def _touched_keys(action: str, request: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(table, whole item for a put or key, is a put) of every item a write request names."""
    if action == "PutItem":
        return [(request["TableName"], request["Item"], True)]
    if action in ("UpdateItem", "DeleteItem"):
        return [(request["TableName"], request["Key"], False)]
    touched: list[tuple[str, dict[str, Any], bool]] = []
    if action == "BatchWriteItem":
        for table, writes in request.get("RequestItems", {}).items():
            for write in writes:
                if "PutRequest" in write:
                    touched.append((table, write["PutRequest"]["Item"], True))
                elif "DeleteRequest" in write:
                    touched.append((table, write["DeleteRequest"]["Key"], False))
    elif action == "TransactWriteItems":
        for entry in request.get("TransactItems", []):
            for op_type, op in entry.items():
                if op_type == "Put":
                    touched.append((op["TableName"], op["Item"], True))
                elif op_type in ("Update", "Delete"):
                    touched.append((op["TableName"], op["Key"], False))
    return touched


def _key_values(table: Any, attrs: dict[str, Any]) -> tuple[Any, Any]:
    """moto's (hash, range) key values of an item or key, for get_item/delete_item."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    range_value = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    return DynamoType(attrs[table.hash_key_attr]), range_value


def _request_json(body: Any) -> str:
    if isinstance(body, dict):
        return json.dumps(body)
    if isinstance(body, bytes):
        return body.decode("utf-8")
    return str(body)


def _message_attributes(message: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, value in (getattr(message, "message_attributes", None) or {}).items():
        kind = value.get("data_type") or value.get("DataType") or "String"
        text = value.get("string_value") or value.get("StringValue")
        if text is not None:
            attributes[name] = {"DataType": kind, "StringValue": text}
    return attributes


_ACTIVE: DurableState | None = None
_HOOKED = False


def activate(state: DurableState | None) -> None:
    """Route moto's successful writes to `state` (None: stop journaling)."""
    global _ACTIVE
    _ACTIVE = state
    _install_hook()


def _install_hook() -> None:
    global _HOOKED
    if _HOOKED:
        return
    from moto.core.responses import BaseResponse

    original = BaseResponse.call_action

    def call_action(self: Any) -> Any:
        state = _ACTIVE
        service = getattr(self, "service_name", "")
        if state is None or not state.enabled or service not in ("dynamodb", "sqs"):
            return original(self)
        action = self._get_action()
        if service == "dynamodb" and action in DYNAMODB_WRITES:
            request = json.loads(_request_json(self.body) or "{}")
            with WRITE_LOCK:
                before = state.stream_lengths()
                status, headers, body = original(self)
                if int(status) < 400:
                    state.record(action, request, before)
                return status, headers, body
        if service == "sqs" and action in SQS_CHANGES:
            with WRITE_LOCK:
                result = original(self)
                if int(result[0]) < 400:
                    state.save_queues()
                return result
        return original(self)

    BaseResponse.call_action = call_action  # type: ignore[method-assign]

    from moto.dynamodb.models.table import StreamShard

    read_shard = StreamShard.get

    def get(self: Any, start: int, quantity: int) -> Any:
        with STREAM_LOCK:
            return read_shard(self, start, quantity)

    StreamShard.get = get  # type: ignore[method-assign]
    _HOOKED = True
