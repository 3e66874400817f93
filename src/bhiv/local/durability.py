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
import ctypes
import gc
import itertools
import json
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bhiv import fastjson

DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
SQS_CHANGES = frozenset({"SendMessage", "SendMessageBatch", "DeleteMessage", "DeleteMessageBatch", "PurgeQueue"})
ACCOUNT = "123456789012"
SNAPSHOT_FORMAT = "bhiv-snapshot"
LOAD_CHUNK = 2000  # snapshot lines parsed by one json.loads
SNAPSHOT_VERSION = 3  # JSON lines (see _write_snapshot); versions 1 and 2 (one JSON document) still load

WRITE_LOCK = threading.RLock()
STREAM_LOCK = threading.Lock()  # a stream read never sees a tail half trimmed by a compaction

log = logging.getLogger("bhiv.local.durability")

# Start-up progress for restores that are not handed a callback: `bhiv up` sets it, so a large
# snapshot or journal does not look like a hang.
progress_hook: Callable[[str], None] | None = None
PROGRESS_EVERY = 5000


class SnapshotError(RuntimeError):
    """The snapshot cannot be read: start-up refuses, since starting without it would lose state."""


_LIBC: Any = None


def release_free_memory() -> bool:
    """Give the C allocator's free pages back to the system (glibc's malloc_trim): after a restore
    or a compaction, the memory their temporary data used stays in the process otherwise, counted
    in its RSS. Frees nothing that is in use; False (and nothing done) without glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC is False:
        return False
    _LIBC.malloc_trim(0)
    return True


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


class JournalFailed(Exception):
    """The journal (or the queues file) could not be written. The process takes no write after it:
    what is on disk is the state a restart will have, so nothing it refuses is acknowledged, and no
    consumer can build on the one write that reached memory but not the disk."""


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
        self.refused: SnapshotError | None = None  # the snapshot could not be read: never overwrite it
        self.failed: OSError | None = None  # a journal append failed: every later write is refused
        _install_hook()  # stream reads under STREAM_LOCK, also for an ephemeral stack (trim_streams)
        self.trimmed_records = 0  # stream records dropped once every consumer had checkpointed past them

    # --- start-up ---------------------------------------------------------------------------

    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def restore(
        self,
        dynamodb: Any,
        sqs: Any,
        progress: Callable[[str], None] | None = None,
        horizons: dict[str, int | None] | None = None,
    ) -> None:
        """Snapshot, then the journal tail, into the (already created, empty) moto tables.

        `horizons` (per table, the lowest position every consumer of its stream has checkpointed):
        replayed stream records up to it are dropped as the replay goes, not kept until the first
        trim (a journal holds every record since the last compaction)."""
        from bhiv.local import moto_memory

        moto_memory.install()
        progress = progress or progress_hook
        collecting = gc.isenabled()
        gc.collect()  # garbage from before (small now) is not frozen below
        gc.disable()  # millions of new objects and no garbage: full collections would only cost
        try:
            with moto_memory.loading():  # scalars shared across the whole load
                self._load_and_replay(dynamodb, progress, horizons or {})
        finally:
            if collecting:
                gc.enable()
        gc.freeze()  # what was loaded stays: later collections need not walk it again
        if self.queues_path.exists():
            self._load_queues(sqs, json.loads(self.queues_path.read_text(encoding="utf-8")))
        self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - held open for the run
        release_free_memory()  # the parsed lines are gone: their pages go back to the system

    def _load_and_replay(
        self, dynamodb: Any, progress: Callable[[str], None] | None, horizons: dict[str, int | None]
    ) -> None:
        from bhiv.local import moto_patch

        if self.snapshot_path.exists():
            if progress is not None:
                progress(f"loading the snapshot ({self.snapshot_path.stat().st_size / 1e6:.1f} MB)")
            try:
                self._load_snapshot(progress)
            except SnapshotError as exc:
                self.refused = exc
                raise
            self.items_at_compaction = self.loaded_items
        for legacy in (self.dir / "checkpoints").glob("g*"):  # positions keyed by a stream ARN of old
            shutil.rmtree(legacy, ignore_errors=True)
        self._replay(dynamodb, progress, horizons)
        for table in self._backend().tables.values():
            moto_patch.forget_key_indexes(table)

    def _replay(self, dynamodb: Any, progress: Callable[[str], None] | None, horizons: dict[str, int | None]) -> None:
        self._replaying = True
        try:
            for record in self._journal_records():
                if int(record.get("g", -1)) < self.generation:
                    continue  # written before the snapshot it is older than
                self._apply(record, dynamodb)
                self.replayed += 1
                self.writes_since_compaction += max(1, len(record.get("p", [])))
                if self.replayed % PROGRESS_EVERY == 0:
                    self._trim_replayed(horizons)
                    if progress is not None:
                        progress(f"replayed {self.replayed} journal writes")
            self._trim_replayed(horizons)
        finally:
            self._replaying = False

    def _trim_replayed(self, horizons: dict[str, int | None]) -> None:
        for name, table in self._backend().tables.items():
            if table.stream_shard is not None and horizons.get(name) is not None:
                self._trim_stream(table.stream_shard, horizons[name])

    def _journal_records(self) -> Iterator[dict[str, Any]]:
        """The journal's lines. A torn tail (a write cut short by a kill, never acknowledged) is cut
        off the file, so the next append starts a clean line."""
        if not self.journal_path.exists():
            return
        good_end = 0  # offset just after the last whole, readable line
        offset = 0
        with open(self.journal_path, "rb") as handle:  # line by line: a journal can be large
            for line in handle:
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

    def _load_snapshot(self, progress: Callable[[str], None] | None) -> None:
        """The snapshot into moto's tables and streams; SnapshotError when it cannot be read whole.

        Version 3 is read line by line (never the whole file in memory); a file whose first line is
        not a version 3 header is a version 1 or 2 snapshot: one JSON document."""
        with open(self.snapshot_path, "rb") as handle:
            first = handle.readline()
            try:
                header = json.loads(first)
            except ValueError as exc:
                raise self._unreadable(f"not JSON ({exc})") from None
            if not isinstance(header, dict):
                raise self._unreadable("not a snapshot")
            if header.get("format") == SNAPSHOT_FORMAT:
                if header.get("version") != SNAPSHOT_VERSION:
                    raise self._unreadable(
                        f"version {header.get('version')!r}; this bhiv reads versions 1 to {SNAPSHOT_VERSION}"
                    )
                self._load_v3(handle, first, header, progress)
                return
        # versions 1 and 2: one JSON document on one line (the line just parsed)
        if not isinstance(header.get("tables"), dict) or "generation" not in header:
            raise self._unreadable("no tables or generation")
        if int(header.get("version", 1)) > 2:
            raise self._unreadable(f"version {header.get('version')!r} without the version 3 header")
        self.generation = int(header["generation"])
        self.loaded_items = self._load_tables(header["tables"])
        self._restore_streams(header.get("streams") or {})

    def _unreadable(self, why: str) -> SnapshotError:
        return SnapshotError(
            f"the snapshot {self.snapshot_path} cannot be read: {why}. Refusing to start, because starting "
            "without it would lose the state it holds. Restore it from a backup, or move it aside to "
            "start from the journal alone (only the writes since the last compaction)."
        )

    def _load_v3(self, handle: Any, first: bytes, header: dict[str, Any], progress: Any) -> None:
        from bhiv.local import moto_memory

        make_item = moto_memory.make_item
        backend = self._backend()
        crc = zlib.crc32(first)
        lines = 1
        count = 0
        trailer: dict[str, Any] | None = None
        streams: dict[str, Any] = {}
        line_iter = iter(handle)

        def next_line(what: str) -> bytes:
            nonlocal crc, lines
            line = next(line_iter, b"")
            if not line.endswith(b"\n"):
                raise self._unreadable(f"cut short (expected {what} at line {lines + 1})")
            crc = zlib.crc32(line, crc)
            lines += 1
            return line

        def parse(line: bytes, what: str) -> Any:
            try:
                return json.loads(line)
            except ValueError:
                raise self._unreadable(f"line {lines} ({what}) is not JSON") from None

        while trailer is None:
            line = next(line_iter, b"")
            if not line.endswith(b"\n"):
                raise self._unreadable(f"cut short (no end line after line {lines})")
            section = parse(line, "a section header")
            if not isinstance(section, dict):
                raise self._unreadable(f"line {lines + 1} is not a section header")
            if section.get("end") is True:
                trailer = section
                break
            crc = zlib.crc32(line, crc)
            lines += 1
            if "table" in section:
                table = backend.tables.get(section["table"])
                if table is None:
                    raise self._unreadable(f"table {section['table']!r} is not in template.yaml")
                hash_attr, range_attr = table.hash_key_attr, table.range_key_attr
                items = table.items
                remaining = int(section["items"])
                while remaining > 0:  # parsed LOAD_CHUNK lines at a time: one json.loads per chunk
                    chunk = list(itertools.islice(line_iter, min(remaining, LOAD_CHUNK)))
                    if len(chunk) < min(remaining, LOAD_CHUNK) or not chunk[-1].endswith(b"\n"):
                        raise self._unreadable(f"cut short (in the items of {section['table']})")
                    joined = b"".join(chunk)
                    crc = zlib.crc32(joined, crc)
                    first_line = lines + 1
                    lines += len(chunk)
                    remaining -= len(chunk)
                    try:
                        flats = json.loads(b"[" + joined.replace(b"\n", b",")[:-1] + b"]")
                    except ValueError:
                        raise self._unreadable(f"lines {first_line}-{lines} (items) are not JSON") from None
                    if len(flats) != len(chunk):
                        raise self._unreadable(f"lines {first_line}-{lines} are not one item a line")
                    for flat in flats:
                        try:
                            item = make_item(hash_attr, range_attr, flat)
                        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                            raise self._unreadable(f"an item of {section['table']} is malformed") from None
                        if range_attr:
                            items[item.hash_key][item.range_key] = item
                        else:
                            items[item.hash_key] = item
                    count += len(flats)
                    if progress is not None and count // 50_000 != (count - len(flats)) // 50_000:
                        progress(f"loaded {count} items")
                from bhiv.local import moto_patch

                moto_patch.forget_key_indexes(table)
            elif "stream" in section:
                records = [parse(next_line("a stream record"), "a stream record") for _ in range(section["records"])]
                streams[section["stream"]] = {"next_sequence": section["next_sequence"], "records": records}
            else:
                raise self._unreadable(f"line {lines} is an unknown section")
        if trailer.get("lines") != lines or trailer.get("crc32") != crc:
            raise self._unreadable("its checksum does not match its contents")
        if next(line_iter, b"") != b"":
            raise self._unreadable("data after its end line")
        self.generation = int(header["generation"])
        self.loaded_items = count
        self._restore_streams(streams)

    def _load_tables(self, tables: dict[str, list[dict[str, Any]]]) -> int:
        """A version 1 or 2 snapshot's items straight into moto's tables."""
        from bhiv.local import moto_memory, moto_patch

        backend = self._backend()
        count = 0
        for name, items in tables.items():
            table = backend.tables[name]
            hash_attr, range_attr = table.hash_key_attr, table.range_key_attr
            for attrs in items:
                item = moto_memory.make_item(hash_attr, range_attr, _flat(attrs))
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
        try:
            self._journal.write(line + b"\n")
            self._journal.flush()
            if self.fsync:
                os.fsync(self._journal.fileno())
        except OSError as exc:
            self._fail(exc)
        self.writes_since_compaction += max(1, len(images))

    def refuse_writes_if_failed(self) -> None:
        """Raise JournalFailed once a journal append has failed (called before every write)."""
        if self.failed is not None:
            raise JournalFailed(
                f"the write journal could not be appended ({self.failed}); "
                "this stack refuses writes until it is restarted"
            )

    def _fail(self, exc: OSError) -> None:
        self.failed = exc
        log.critical(
            "Journal append failed; the stack refuses writes until it is restarted",
            extra={"error": str(exc), "journal": str(self.journal_path)},
        )
        self.refuse_writes_if_failed()

    def _apply(self, record: dict[str, Any], dynamodb: Any) -> None:
        """Replay one journal line: its after-images without stream records, then its records."""
        if "a" in record:  # a request, as journals before effects were recorded
            dynamodb._make_api_call(record["a"], json.loads(record["b"]))
            return
        from bhiv.local.moto_memory import make_item

        backend = self._backend()
        for table_name, key, attrs in record.get("p", []):
            table = backend.tables.get(table_name)
            if table is None:
                continue
            if attrs is None:
                shard, table.stream_shard = table.stream_shard, None
                try:
                    table.delete_item(*_key_values(table, key))
                finally:
                    table.stream_shard = shard
                continue
            # the after-image, as a snapshot's item is loaded (it passed moto's checks when written)
            item = make_item(table.hash_key_attr, table.range_key_attr, _flat(attrs))
            if table.range_key_attr:
                table.items[item.hash_key][item.range_key] = item
            else:
                table.items[item.hash_key] = item
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
        try:
            _atomic_write(self.queues_path, json.dumps(queues))
        except OSError as exc:
            self._fail(exc)

    # --- clean shutdown -----------------------------------------------------------------------

    def compact(self, horizons: dict[str, int | None] | None = None) -> None:
        """Fold the journal into a new snapshot; safe while the stack runs.

        `horizons`: per table, the lowest sequence number every consumer of its stream has
        checkpointed (None: some consumer has none yet). Records after it are kept in the snapshot
        and in memory; older ones are dropped from moto's stream (bounded memory).

        The write lock is held only while references to every item are taken (moto_memory.TableCopy);
        the items are serialised after it, as they were at the cut, straight into the file.
        """
        from bhiv.local import moto_memory

        if self.refused is not None:
            raise self.refused  # never replace a snapshot that could not be read
        moto_memory.install()
        horizons = horizons or {}
        with WRITE_LOCK:  # a consistent cut: no write between the copy and the generation switch
            backend = self._backend()
            copy = moto_memory.TableCopy(backend.tables, moto_memory.encode_item)
            streams = {
                name: self._trim_stream(table.stream_shard, horizons.get(name))
                for name, table in backend.tables.items()
                if table.stream_shard is not None
            }
            generation = self.generation + 1
            self.generation = generation
            self.items_at_compaction = sum(copy.counts().values())
            cut = 0
            if self._journal is not None:
                self._journal.flush()
                cut = self._journal.tell()
            self.writes_since_compaction = 0
        # Writes go on meanwhile, journaled as the new generation after `cut`.
        try:
            self._write_snapshot(generation, copy, streams)
        finally:
            copy.close()
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
        # As after a restore: the tables are long-lived and hold no reference cycles, and a full
        # collection walks every tracked object (0.44 s at 100k events), so what exists now is left
        # out of later ones.
        gc.freeze()
        release_free_memory()  # the serialised lines and the copy's references are gone

    def _write_snapshot(self, generation: int, copy: Any, streams: dict[str, tuple[int, list[Any]]]) -> None:
        """Snapshot version 3, JSON lines, written to a temporary file and renamed over the old one:

            {"format": "bhiv-snapshot", "version": 3, "generation": G, "created_at": T}
            {"table": NAME, "items": N}            then N lines: [name, type, value, name, ...]
            {"stream": NAME, "next_sequence": S, "records": M}   then M lines: a stream record
            {"end": true, "lines": L, "crc32": C}  L lines before this one, C their CRC-32

        Read line by line at start (bounded memory); a file cut short or changed is refused."""
        tmp = self.snapshot_path.with_name(f".{self.snapshot_path.name}.tmp")
        crc = 0
        lines = 0
        with open(tmp, "wb", buffering=1 << 20) as handle:

            def emit(data: bytes) -> None:
                nonlocal crc, lines
                data += b"\n"
                crc = zlib.crc32(data, crc)
                lines += 1
                handle.write(data)

            header = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "generation": generation}
            emit(json.dumps({**header, "created_at": time.time()}).encode("utf-8"))
            for name, count in copy.counts().items():
                emit(json.dumps({"table": name, "items": count}).encode("utf-8"))
                for line in copy.lines(name):
                    emit(line)
            for name, (next_sequence, records) in streams.items():
                emit(json.dumps({"stream": name, "next_sequence": next_sequence, "records": len(records)}).encode())
                for record in records:
                    emit(fastjson.dumps_bytes(record.to_json(), default=_json_default))
            handle.write(json.dumps({"end": True, "lines": lines, "crc32": crc}).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.snapshot_path)
        with contextlib.suppress(OSError):
            fd = os.open(self.snapshot_path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def trim_streams(self, horizons: dict[str, int | None]) -> int:
        """Drop the stream records every consumer has checkpointed past (real streams keep 24 h;
        locally a consumed record is only memory). Records some consumer has not read are kept, and
        the numbering goes on unchanged. Returns how many records were dropped."""
        dropped = 0
        with WRITE_LOCK:  # a write compares its stream's length before and after (record())
            for name, table in self._backend().tables.items():
                horizon = horizons.get(name)
                if table.stream_shard is None or horizon is None:
                    continue
                before = len(table.stream_shard.items)
                self._trim_stream(table.stream_shard, horizon)
                dropped += before - len(table.stream_shard.items)
        self.trimmed_records += dropped
        return dropped

    @staticmethod
    def _trim_stream(shard: Any, horizon: int | None) -> tuple[int, list[Any]]:
        """(next sequence number, the records kept); records up to `horizon` are dropped."""
        next_sequence = int(shard.starting_sequence_number) + len(shard.items)
        keep_from = 0
        if horizon is not None:
            keep_from = max(0, min(len(shard.items), horizon + 1 - int(shard.starting_sequence_number)))
        if keep_from == 0:
            return next_sequence, list(shard.items)
        with STREAM_LOCK:
            kept = shard.items[keep_from:]
            shard.items = kept
            shard.starting_sequence_number = next_sequence - len(kept)
        return next_sequence, list(kept)

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


def _flat(attrs: dict[str, Any]) -> list[Any]:
    """An item's DynamoDB JSON as [name, type, value, ...] (moto_memory.make_item)."""
    flat: list[Any] = []
    for attr, typed in attrs.items():
        for kind, value in typed.items():
            flat += (attr, kind, value)
    return flat


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


def writes_refused() -> bool:
    """Whether the active durable state refuses writes (a journal append failed): stream consumers
    then hold their records, neither retried into the on-failure destination nor checkpointed."""
    state = _ACTIVE
    return state is not None and state.failed is not None


def activate(state: DurableState | None) -> None:
    """Route moto's successful writes to `state` (None: stop journaling)."""
    global _ACTIVE
    _ACTIVE = state
    _install_hook()


def unavailable_response(exc: JournalFailed) -> tuple[int, dict[str, str], str]:
    """What a service answers when it cannot take a write: 503 ServiceUnavailable (AWS's JSON
    protocol error; boto3 raises it as a ClientError, the storage adapters as StorageUnavailable)."""
    body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ServiceUnavailable", "message": str(exc)})
    return 503, {"content-type": "application/x-amz-json-1.0"}, body


def _journaled(state: DurableState, run: Callable[[], Any], journal: Callable[[dict[str, int]], None]) -> Any:
    """One write through moto's API, under the write lock: refused (503) once the journal has
    failed; journaled (given the stream lengths before it) when moto answered it with success."""
    with WRITE_LOCK:
        try:
            state.refuse_writes_if_failed()
            before = state.stream_lengths()
            result = run()
            if int(result[0]) < 400:
                journal(before)
        except JournalFailed as exc:
            return unavailable_response(exc)
        return result


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
            return _journaled(state, lambda: original(self), lambda before: state.record(action, request, before))
        if service == "sqs" and action in SQS_CHANGES:
            return _journaled(state, lambda: original(self), lambda _: state.save_queues())
        return original(self)

    BaseResponse.call_action = call_action  # type: ignore[method-assign]

    from moto.dynamodb.models.table import StreamShard

    read_shard = StreamShard.get

    def get(self: Any, start: int, quantity: int) -> Any:
        with STREAM_LOCK:
            # A position below the trimmed start (a reader behind every consumer's checkpoint, such
            # as a lag count from a checkpoint file a moment old) reads from the oldest record kept:
            # what was dropped had been read by every consumer. moto would fail an assertion.
            return read_shard(self, max(int(start), int(self.starting_sequence_number)), quantity)

    StreamShard.get = get  # type: ignore[method-assign]
    _HOOKED = True
