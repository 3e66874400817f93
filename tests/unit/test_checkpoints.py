"""Checkpoint files: saved at most every SAVE_INTERVAL_S while batches flow, positions() as saved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bhiv.local.streams.checkpoints import Checkpoints


def _on_disk(path: Path) -> str:
    return str(json.loads(path.read_text(encoding="utf-8"))["tables"]["T"]["s-1"]["sequence_number"])


def test_positions_between_saves_are_the_saved_ones(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    checkpoints = Checkpoints(path, logging.getLogger("test"))
    checkpoints.SAVE_INTERVAL_S = 3600.0  # nothing is due again during the test
    checkpoints.record("T", "s-1", "100")  # the first is saved at once
    assert _on_disk(path) == "100" and checkpoints.positions("T") == {"s-1": "100"}
    checkpoints.record("T", "s-1", "200")
    checkpoints.record("T", "s-1", "300")
    # not saved yet: what trims the stream or compacts must still see what the file says
    assert _on_disk(path) == "100" and checkpoints.positions("T") == {"s-1": "100"}
    assert (checkpoints.get("T", "s-1") or {}).get("sequence_number") == "300"  # the poller's own position
    checkpoints.save()
    assert _on_disk(path) == "300" and checkpoints.positions("T") == {"s-1": "300"}
    again = Checkpoints(path, logging.getLogger("test"))
    assert again.positions("T") == {"s-1": "300"}


def test_a_finished_shard_is_saved_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    checkpoints = Checkpoints(path, logging.getLogger("test"))
    checkpoints.SAVE_INTERVAL_S = 3600.0
    checkpoints.record("T", "s-1", "100")
    checkpoints.record("T", "s-1", "150", finished=True)
    assert _on_disk(path) == "150"


def test_saves_are_due_again_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    checkpoints = Checkpoints(path, logging.getLogger("test"))
    checkpoints.SAVE_INTERVAL_S = 0.0
    for position in ("1", "2", "3"):
        checkpoints.record("T", "s-1", position)
        assert _on_disk(path) == position


def test_the_first_position_is_saved_at_once_however_long_the_machine_has_been_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # time.monotonic() counts from boot: right after one, it is below any interval
    monkeypatch.setattr("bhiv.local.streams.checkpoints.time.monotonic", lambda: 0.01)
    path = tmp_path / "cp.json"
    checkpoints = Checkpoints(path, logging.getLogger("test"))
    checkpoints.record("T", "s-1", "100")
    assert _on_disk(path) == "100" and checkpoints.positions("T") == {"s-1": "100"}
    checkpoints.record("T", "s-1", "200")  # within the interval of that save: kept for later
    assert _on_disk(path) == "100"
