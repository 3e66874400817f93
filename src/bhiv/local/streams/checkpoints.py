"""Where each stream consumer has got to: checkpoints in a JSON file, replaced atomically."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bhiv.local.streams import lambda_shapes
from bhiv.local.streams.lambda_shapes import _iso

# --- checkpoints ------------------------------------------------------------------------------


class Checkpoints:
    """{table name: {shard id: {"sequence_number", "finished"}}} in one JSON file, replaced atomically.

    Keyed by table, not by stream ARN: moto labels a stream with its table's creation time, new at
    every start, and the local stack keeps a table's stream sequence numbers continuous across
    restarts and compactions (bhiv.local.durability), so a position stays valid for the table.
    """

    VERSION = 2
    # Saved at most this often while batches flow, and whenever the poller goes idle or stops: a
    # save is an fsync of the file and of its directory, per batch about a fifth of a single
    # write's CPU. A position not yet saved only means its records may be handed out again after a
    # crash, which every consumer absorbs (exactly-once effect); positions() reports the saved
    # ones, so nothing trims or compacts away a record the file would still ask for.
    SAVE_INTERVAL_S = 0.25

    def __init__(self, path: Path, log: Any) -> None:
        self.path = path
        self._log = log
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._dirty = False
        self._dir_made = False
        self._saved_at: float | None = None  # never saved: the first position is saved at once
        self._saved: dict[str, dict[str, str | None]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == self.VERSION:
                    self._tables = {str(t): dict(shards) for t, shards in data.get("tables", {}).items()}
                else:  # version 1 keyed positions by stream ARN, which changed at every start
                    self._log.warning(f"checkpoint file {path} has an old layout; starting from the stream's horizon")
            except (OSError, ValueError, AttributeError) as exc:
                broken = path.with_name(path.name + ".corrupt")
                self._log.warning(f"unreadable checkpoint file {path} ({exc}); moved to {broken}, starting over")
                with contextlib.suppress(OSError):
                    os.replace(path, broken)
        self._saved = self._positions_now()

    def _positions_now(self) -> dict[str, dict[str, str | None]]:
        return {
            table: {shard: entry.get("sequence_number") for shard, entry in shards.items()}
            for table, shards in self._tables.items()
        }

    def known(self, table: str) -> bool:
        return table in self._tables

    def get(self, table: str, shard_id: str) -> dict[str, Any] | None:
        return self._tables.get(table, {}).get(shard_id)

    def positions(self, table: str) -> dict[str, str | None]:
        """{shard id: last checkpointed sequence number} for one table, as the file has it."""
        with self._lock:
            return dict(self._saved.get(table, {}))

    def record(self, table: str, shard_id: str, sequence_number: str | None, finished: bool = False) -> None:
        with self._lock:
            entry = self._tables.setdefault(table, {}).setdefault(shard_id, {})
            if sequence_number is not None:
                entry["sequence_number"] = sequence_number
            entry["finished"] = finished
            entry["updated_at"] = _iso(lambda_shapes.wall_clock())
            self._dirty = True
            due = finished or self._saved_at is None or time.monotonic() - self._saved_at >= self.SAVE_INTERVAL_S
        if due:
            self.save()

    def forget_others(self, table: str, live_shards: set[str] | None) -> None:
        """Drop other tables of this file and shards the stream no longer lists."""
        with self._lock:
            for other in [t for t in self._tables if t != table]:
                del self._tables[other]
                self._dirty = True
            if live_shards is not None:
                shards = self._tables.get(table, {})
                for gone in [s for s in shards if s not in live_shards]:
                    del shards[gone]
                    self._dirty = True
        self.save()

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            if not self._dir_made:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._dir_made = True
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                # saved after every delivered batch: orjson (json's indented encoder is pure Python)
                handle.write(
                    orjson.dumps(
                        {"version": self.VERSION, "tables": self._tables},
                        option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
                    )
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            with contextlib.suppress(OSError):  # make the rename itself durable
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            self._dirty = False
            self._saved = self._positions_now()
            self._saved_at = time.monotonic()
