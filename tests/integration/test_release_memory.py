"""After a restore and after each compaction the allocator's free pages go back to the system
(durability.release_free_memory); nothing in use is touched: the state round-trips exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

from bhiv.local import durability
from tests.integration.conftest import use_offline_aws
from tests.integration.test_durable_state import _picture, _restart, _start, _workload


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_offline_aws(monkeypatch)
    yield
    durability.activate(None)


def test_release_free_memory_is_safe_to_call_any_time() -> None:
    kept = [bytes(2048) for _ in range(2000)]
    released = durability.release_free_memory()
    assert released is True or released is False  # False only without glibc
    assert durability.release_free_memory() is released
    assert all(len(block) == 2048 and not any(block[:16]) for block in kept)


def test_restore_and_compaction_release_memory_and_keep_every_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = durability.release_free_memory

    def counting() -> bool:
        calls.append("release")
        return real()

    monkeypatch.setattr(durability, "release_free_memory", counting)
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        assert calls == ["release"]  # after the restore
        _workload(dynamodb, 0)
        state.compact()
        assert calls == ["release", "release"]  # after the compaction
        _workload(dynamodb, 10)
        live = _picture()
        state.close()
    assert _restart(tmp_path) == live
