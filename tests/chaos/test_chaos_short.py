"""The short chaos variant in `make test`: one kill cycle with a torn journal tail, one startup
burst, a second start on the running state dir, the Executor's Bucket behind a fault proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, run

pytestmark = pytest.mark.e2e


def test_one_kill_cycle_loses_nothing_duplicates_nothing(tmp_path: Path) -> None:
    report = run(
        ChaosConfig(
            cycles=1, uptime_s=(4.0, 5.0), writers=2, batch_writers=1, executors=1, state_dir=tmp_path / "state"
        )
    )
    print(report.table())
    assert report.ok, report.table()
    assert report.acknowledged > 0 and report.executions_acknowledged > 0
    assert report.restarts == 1 and report.startup_bursts == 1
