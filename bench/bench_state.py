"""The local stack's state at scale: RSS and start-up (clean-stop snapshot, after kill -9).

Fills a `bhiv up` state dir through the batch API (or reuses one filled before), then measures:

rss filled     RSS once the consumers have caught up
clean stop     seconds for SIGINT to finish (drain + final compaction)
snapshot       start-up from the clean-stop snapshot: seconds to healthy, RSS
after kill -9  500 single writes, kill -9, start-up again (snapshot + journal replay), RSS

in-process    --restore DIR: restore DIR's snapshot and journal into in-process moto (no HTTP, no
              apps; DIR is copied first and left as it is): seconds and RSS; then every Query key
              index built (bhiv.local.moto_patch): seconds and RSS

Usage: .venv/bin/python bench/bench_state.py --size 100000 [--state-dir DIR (kept, reused)]
       .venv/bin/python bench/bench_state.py --restore DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import Http, _caught_up, _event_data, _fill, _progress, _rss_mb, _startup  # noqa: E402


def _stored(state: Path) -> int:
    marker = state / "bench-filled.json"
    return int(json.loads(marker.read_text())["size"]) if marker.exists() else 0


def _single_writes(stack: Any, start: int, count: int) -> None:
    writer = Http(stack.bucket_url, stack.tokens["workflow_executor"])
    for i in range(start, start + count):
        body = {"requester_id": "workflow_executor", "event_data": _event_data(i)}
        status, answer = writer.call("POST", "/core/write-event", body)
        assert status in (200, 201) and answer.get("success"), answer


def measure(state: Path, size: int) -> dict[str, Any]:
    result: dict[str, Any] = {"size": size, "load": os.getloadavg()[0]}
    stored = _stored(state)
    stack, result["startup_first_s"] = _startup(state)
    try:
        if stored < size:
            _progress(f"filling {size - stored:,} events")
            result["fill_rate"] = _fill(stack, stored, size - stored)
            _caught_up(stack, size)
            (state / "bench-filled.json").write_text(json.dumps({"size": size}))
        result["rss_filled_mb"] = _rss_mb(stack.process.pid)
    finally:
        t0 = time.perf_counter()
        stack.stop(timeout=600)
        result["clean_stop_s"] = time.perf_counter() - t0
    result["snapshot_mb"] = (state / "snapshot.json").stat().st_size / 1e6 if (state / "snapshot.json").exists() else 0
    stack, result["startup_snapshot_s"] = _startup(state)
    result["rss_after_start_mb"] = _rss_mb(stack.process.pid)
    _progress(f"so far: {json.dumps(result)}")
    try:
        _single_writes(stack, 10_000_000 + int(time.time()) % 1_000_000 * 10, 500)
    finally:
        stack.stop(sig=signal.SIGKILL)
    stack, result["startup_after_kill_s"] = _startup(state)
    result["rss_after_kill_start_mb"] = _rss_mb(stack.process.pid)
    t0 = time.perf_counter()
    stack.stop(timeout=600)
    result["clean_stop_2_s"] = time.perf_counter() - t0
    (state / "bench-filled.json").write_text(json.dumps({"size": size}))
    return result


def _own_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _build_key_indexes() -> None:
    """Every Query key index of bhiv.local.moto_patch, as the reads of a running stack build them
    (each index of each table, each partition of a table's own index)."""
    from moto.dynamodb.models import dynamodb_backends

    from bhiv.local import durability, moto_patch

    for table in dynamodb_backends[durability.ACCOUNT]["us-east-1"].tables.values():
        state = moto_patch._indexes(table, create=True)
        assert state is not None
        for name in [None, *(index.name for index in table.all_indexes())]:
            index = state.get(name)
            if name is None and index is not None:
                for hash_key in list(table.items):
                    index.rows((hash_key.type, hash_key.value), hash_key)


def restore_in_process(source: Path) -> dict[str, Any]:
    import shutil

    import boto3
    from moto import mock_aws

    from bhiv.local import durability, moto_patch, template

    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory() as tmp, mock_aws():
        work = Path(tmp)
        for name in ("snapshot.json", "journal.jsonl", "queues.json"):
            if (source / name).exists():
                shutil.copy(source / name, work / name)
        moto_patch.install()
        dynamodb, sqs = boto3.client("dynamodb"), boto3.client("sqs")
        template.create_resources(dynamodb, sqs)
        before = _own_rss_mb()
        started = time.perf_counter()
        state = durability.DurableState(work, "us-east-1")
        state.restore(dynamodb, sqs)
        result = {
            "restore_s": time.perf_counter() - started,
            "items": state.loaded_items,
            "journal_writes": state.replayed,
            "rss_before_mb": before,
            "rss_after_mb": _own_rss_mb(),
            "load": os.getloadavg()[0],
        }
        started = time.perf_counter()
        _build_key_indexes()
        result["key_indexes_s"] = time.perf_counter() - started
        result["rss_key_indexes_mb"] = _own_rss_mb()
        state.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--state-dir", type=Path, default=None, help="kept and reused by later runs")
    parser.add_argument("--restore", type=Path, default=None, help="only restore this state dir in-process")
    args = parser.parse_args()
    if args.restore is not None:
        print(json.dumps(restore_in_process(args.restore.resolve()), indent=2))
        return 0
    os.environ["BHIV_RATE_LIMITS"] = "off"  # the stack inherits it: the fill is far over any limit
    if args.state_dir is not None:
        result = measure(args.state_dir.resolve(), args.size)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(Path(tmp) / "state", args.size)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
