"""Local-state figures: start-up time of `bhiv up` and the cost of the write journal.

startup   seconds from `bhiv up` to a healthy Bucket: with an empty state dir, and with 100,000
          stored events in the state dir (a compacted snapshot, as a clean stop leaves it; and,
          optionally, the same events only in the journal, as a kill -9 leaves it)
journal   single-event ingest over HTTP with the journal on vs. `--ephemeral`, same run: the ratio
          is the cost of durability

restart   after `kill -9` with N events written over HTTP (consumers caught up): restart time against
          a clean start of the same state, the journal writes replayed, and the stream records
          delivered again after the restart (must be 0)

Usage: .venv/bin/python bench/bench_durability.py [--events 100000] [--ingest 500] [--journal-startup]
       .venv/bin/python bench/bench_durability.py --kill-restart 10000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import start_stack as _start_stack  # noqa: E402


def start_stack(state: Path, *extra: str, **kwargs: Any) -> Any:
    """The figures come from the stack's runtime log records: JSON on its console."""
    return _start_stack(state, "--log-format", "json", *extra, **kwargs)


def _events(count: int) -> list[dict[str, dict[str, str]]]:
    from bhiv.bucket.domain import build_event
    from bhiv.storage.events import to_item

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        to_item(
            build_event(
                {"event_type": "bench", "trace_id": f"t{i}", "user_id": f"u{i % 500}", "n": i},
                "workflow_executor",
                f"evt{i:07d}",
                t0 + timedelta(milliseconds=i),
            )
        )
        for i in range(count)
    ]


def write_snapshot(state_dir: Path, count: int) -> None:
    state_dir.mkdir(parents=True)
    snapshot = {"generation": 1, "created_at": time.time(), "tables": {"EventsTable": _events(count)}}
    (state_dir / "snapshot.json").write_text(json.dumps(snapshot), encoding="utf-8")
    (state_dir / "journal.jsonl").write_text("", encoding="utf-8")


def write_journal(state_dir: Path, count: int) -> None:
    state_dir.mkdir(parents=True)
    with open(state_dir / "journal.jsonl", "w", encoding="utf-8") as journal:
        for item in _events(count):
            body = {"TableName": "EventsTable", "Item": item, "ConditionExpression": "attribute_not_exists(event_id)"}
            journal.write(json.dumps({"g": 0, "a": "PutItem", "b": json.dumps(body)}) + "\n")


def startup_seconds(state_dir: Path) -> float:
    started = time.perf_counter()
    stack = start_stack(state_dir, timeout=1800)
    elapsed = time.perf_counter() - started
    stack.stop(timeout=600)
    return elapsed


def ingest_rate(count: int, *extra: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state", *extra)
        try:
            host, port = stack.bucket_url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            token = stack.tokens["workflow_executor"]
            started = time.perf_counter()
            for i in range(count):
                conn.request(
                    "POST",
                    "/core/write-event",
                    headers={"Authorization": f"Bearer {token}"},
                    body=json.dumps(
                        {"requester_id": "workflow_executor", "event_data": {"event_type": "bench", "n": i}}
                    ),
                )
                response = conn.getresponse()
                response.read()
                assert response.status == 200
            return count / (time.perf_counter() - started)
        finally:
            stack.stop()


def _log_records(output: str, message: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{") and f'"{message}"' in line]


def kill_restart(count: int) -> int:
    import signal

    import requests

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        stack = start_stack(state)
        session = requests.Session()
        session.headers.update(stack.auth("workflow_executor"))
        for start in range(0, count, 100):
            events = [
                {
                    "event_id": f"kr-{i:07d}",
                    "event_data": {
                        "event_type": "life_event",
                        "user_id": f"u{i % 50}",
                        "action": "completing_lessons",
                        "role": "learner",
                    },
                }
                for i in range(start, min(count, start + 100))
            ]
            response = session.post(
                f"{stack.bucket_url}/core/write-events",
                json={"requester_id": "workflow_executor", "events": events},
                timeout=60,
            )
            assert response.status_code in (200, 201), response.text
        reader = stack.auth("bhiv_reader")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            stats = requests.get(f"{stack.karma_url}/v1/stats/system", headers=reader, timeout=30).json()
            total = requests.get(f"{stack.bucket_url}/core/stats", headers=reader, timeout=30).json()
            if stats["events"]["applied"] >= count and total["stats"]["total_events"] >= count:
                break
            time.sleep(0.5)
        stack.stop(signal.SIGKILL)

        started = time.perf_counter()
        after_kill = start_stack(state, timeout=1800)
        kill_seconds = time.perf_counter() - started
        (restored,) = _log_records(after_kill.output(), "State restored")
        after_kill.stop(timeout=600)
        redelivered = sum(
            int(str(r["records_handled"])) for r in _log_records(after_kill.output(), "Stream mapping stopped")
        )

        started = time.perf_counter()
        clean = start_stack(state, timeout=1800)
        clean_seconds = time.perf_counter() - started
        clean.stop(timeout=600)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{count} events written, consumers caught up, then kill -9")
    print(
        f"restart after kill -9     : {kill_seconds:6.1f} s  (snapshot items {restored['snapshot_items']}, "
        f"journal writes replayed {restored['journal_writes']})"
    )
    print(f"clean start, same state   : {clean_seconds:6.1f} s")
    print(f"ratio kill / clean        : {kill_seconds / clean_seconds:6.2f}  (target <= 2)")
    print(f"stream records delivered again after the kill: {redelivered}  (target 0)")
    return 0


def main() -> int:
    # measures the services, not the per-requester limiter (src/bhiv/requesters.yaml); the stack inherits it
    os.environ["BHIV_RATE_LIMITS"] = "off"
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--ingest", type=int, default=500)
    parser.add_argument("--journal-startup", action="store_true", help="also time a journal-only restart")
    parser.add_argument("--kill-restart", type=int, default=0, help="time a restart after kill -9 at N events")
    args = parser.parse_args()
    if args.kill_restart:
        return kill_restart(args.kill_restart)
    with tempfile.TemporaryDirectory() as tmp:
        empty = startup_seconds(Path(tmp) / "empty")
        write_snapshot(Path(tmp) / "full", args.events)
        full = startup_seconds(Path(tmp) / "full")
        journal = None
        if args.journal_startup:
            write_journal(Path(tmp) / "journal", args.events)
            journal = startup_seconds(Path(tmp) / "journal")
    durable = ingest_rate(args.ingest)
    ephemeral = ingest_rate(args.ingest, "--ephemeral")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"start-up, empty state                        : {empty:6.1f} s")
    print(f"start-up, {args.events} events in the snapshot  : {full:6.1f} s")
    if journal is not None:
        print(f"start-up, {args.events} events in the journal   : {journal:6.1f} s")
    print(
        f"ingest with journal / ephemeral              : {durable:6.0f} / {ephemeral:6.0f} events/s"
        f"  ratio {durable / ephemeral:.2f}  (n={args.ingest})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
