"""Durable local state for moto, which keeps everything in memory.

Design (see docs/local-state.md):
* Journal: every successful DynamoDB write (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
  TransactWriteItems), whoever sends it (the apps in-process, or tools through the moto server), is
  appended to `<state-dir>/journal.jsonl` and flushed to the OS before the response goes back, under
  one lock with the write itself so journal order is apply order. A `kill -9` loses nothing that was
  acknowledged (set BHIV_JOURNAL_FSYNC=1 to survive a power cut too, at a cost).
* Start-up: load the snapshot (if any) straight into moto's tables without stream records, then
  replay the journal's writes of the snapshot's generation through moto's own API. moto numbers
  stream records from a fixed start in write order, so the replay recreates the same records
  with the same sequence numbers and the stream pollers' checkpoints stay valid: nothing is
  delivered twice and nothing is skipped.
* Clean shutdown: once every stream consumer has caught up, the tables are compacted into a new
  snapshot (generation + 1); the journal restarts empty and the new generation's checkpoints start
  at the (fresh, empty) stream's horizon. A crash at any point leaves a consistent pair: journal
  lines carry their generation and are replayed only on top of the matching snapshot.
* SQS queues (the DLQs, the reminder queue) hold few messages: their contents are rewritten to
  `<state-dir>/queues.json` (atomically) after every change.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
SQS_CHANGES = frozenset({"SendMessage", "SendMessageBatch", "DeleteMessage", "DeleteMessageBatch", "PurgeQueue"})
ACCOUNT = "123456789012"

WRITE_LOCK = threading.RLock()

# Start-up progress: called as (stage, items so far) every PROGRESS_EVERY items restored; `bhiv up`
# prints it, so a large snapshot or journal does not look like a hang.
PROGRESS_EVERY = 5000
progress_hook: Callable[[str, int], None] | None = None


def _progress(stage: str, count: int) -> None:
    if progress_hook is not None and count % PROGRESS_EVERY == 0:
        progress_hook(stage, count)


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
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

    # --- start-up ---------------------------------------------------------------------------

    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints" / f"g{self.generation}"

    def restore(self, dynamodb: Any, sqs: Any) -> None:
        """Snapshot, then the journal tail, into the (already created, empty) moto tables."""
        if self.snapshot_path.exists():
            snapshot = json.loads(self.snapshot_path.read_text(encoding="utf-8"))
            self.generation = int(snapshot["generation"])
            self.loaded_items = self._load_tables(snapshot["tables"])
        self._replaying = True
        try:
            for record in self._journal_records():
                if record.get("g") != self.generation:
                    continue  # written before the snapshot it is older than
                dynamodb._make_api_call(record["a"], json.loads(record["b"]))
                self.replayed += 1
                _progress("journal writes replayed", self.replayed)
        finally:
            self._replaying = False
        if self.queues_path.exists():
            self._load_queues(sqs, json.loads(self.queues_path.read_text(encoding="utf-8")))
        self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def _journal_records(self) -> Iterator[dict[str, Any]]:
        if not self.journal_path.exists():
            return
        with open(self.journal_path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    return  # a write cut short by a kill: never acknowledged
                yield json.loads(line)

    def _backend(self) -> Any:
        from moto.dynamodb.models import dynamodb_backends

        return dynamodb_backends[ACCOUNT][self.region]

    def _load_tables(self, tables: dict[str, list[dict[str, Any]]]) -> int:
        backend = self._backend()
        count = 0
        for name, items in tables.items():
            table = backend.tables[name]
            shard, table.stream_shard = table.stream_shard, None  # no stream records for old state
            try:
                for attrs in items:
                    table.put_item(attrs)
                    count += 1
                    _progress("snapshot items loaded", count)
            finally:
                table.stream_shard = shard
        return count

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

    def record(self, action: str, body: str) -> None:
        if self._replaying or self._journal is None:
            return
        self._journal.write(json.dumps({"g": self.generation, "a": action, "b": body}) + "\n")
        self._journal.flush()
        if self.fsync:
            os.fsync(self._journal.fileno())

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

    def compact(self) -> bool:
        """Fold the journal into a new snapshot. Call only when every stream consumer is caught up."""
        with WRITE_LOCK:
            backend = self._backend()
            tables = {
                name: [item.to_json()["Attributes"] for item in table.all_items()]
                for name, table in backend.tables.items()
            }
            generation = self.generation + 1
            _atomic_write(
                self.snapshot_path, json.dumps({"generation": generation, "created_at": time.time(), "tables": tables})
            )
            if self._journal is not None:
                self._journal.close()
            _atomic_write(self.journal_path, "")
            self._journal = None
            old_checkpoints = self.checkpoint_dir()
            self.generation = generation
        shutil.rmtree(old_checkpoints, ignore_errors=True)  # the new generation's stream starts empty
        return True

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


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
            request = _request_json(self.body)
            with WRITE_LOCK:
                status, headers, body = original(self)
                if int(status) < 400:
                    state.record(action, request)
                return status, headers, body
        if service == "sqs" and action in SQS_CHANGES:
            with WRITE_LOCK:
                result = original(self)
                if int(result[0]) < 400:
                    state.save_queues()
                return result
        return original(self)

    BaseResponse.call_action = call_action  # type: ignore[method-assign]
    _HOOKED = True
