"""How the local stack scales with what it holds: 1k / 10k (/ 100k) stored events.

For each size, a fresh `bhiv up` (subprocess, journal on, consumers live) is filled through the
batch API, then measured:

baseline  bare boto3 conditional put_item on in-process moto (a copy of EventsTable), same run
fill      batch ingest, 100 events per request, full pipeline: events/s
single    single-event ingest over HTTP: events/s, ratio to the baseline, p50/p99 latency
cpu       CPU seconds the whole stack spends per event (ingest + both consumers, read from /proc),
          against the bench process's CPU per bare put: on a shared, overloaded machine a
          many-threaded stack gets more of the CPU than the one-thread baseline, so the wall-clock
          ratio flatters it; the CPU ratio does not. Every measurement starts once the stack is idle
          (the consumers caught up, no compaction running)
pipeline  the fill until both consumers have handled every event: events/s through the whole pipeline
karma     Bucket write acknowledged -> the user's Karma visible, while a second client ingests
reads     each read's median latency over HTTP, and its DynamoDB ScannedCount (the same query
          made by the storage adapter through the stack's moto endpoint)
state     RSS after the fill; start-up from the clean-stop snapshot (seconds to healthy, RSS);
          start-up after kill -9 with the journal tail to replay

Usage: .venv/bin/python bench/bench_scale.py [--sizes 1000,10000] [--full]   (--full adds 100000)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import types
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from tests.e2e import stack as e2e_stack  # noqa: E402
from tests.e2e.stack import RunningStack, start_stack  # noqa: E402

USERS = 50
TRACE_HITS = 5


def _event_data(i: int) -> dict[str, Any]:
    return {
        "event_type": "workflow_execution",
        "trace_id": f"scale-{i // TRACE_HITS}",
        "user_id": f"user-{i % USERS}",
        "action_type": "task",
        "status": "success" if i % 5 else "failed",
        "execution_result": {},
        "message": "x" * 200,
    }


def baseline_conditional_puts(count: int) -> float:
    import boto3
    from moto import mock_aws

    from bhiv.bucket.domain import build_event
    from bhiv.local import template
    from bhiv.storage.events import to_item

    os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="b", AWS_SECRET_ACCESS_KEY="b")
    with mock_aws():
        client = boto3.client("dynamodb")
        props = template.resources("AWS::DynamoDB::Table")["EventsTable"]["Properties"]
        client.create_table(**template.table_create_args("Baseline", props))
        now = datetime.now(UTC)
        items = [to_item(build_event(_event_data(i), "workflow_executor", None, now)) for i in range(count)]
        started, cpu = time.perf_counter(), time.process_time()
        for item in items:
            client.put_item(TableName="Baseline", Item=item, ConditionExpression="attribute_not_exists(event_id)")
        BASELINE_CPU.append((time.process_time() - cpu) / count)
        return count / (time.perf_counter() - started)


BASELINE_CPU: list[float] = []  # CPU seconds per conditional put, every measurement


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Http:
    def __init__(self, url: str, token: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()  # the server closed an idle kept-alive connection: once more, anew
            self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
            response = self.conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))] * 1000


def _fill(stack: RunningStack, start: int, count: int) -> float:
    writer = Http(stack.bucket_url, stack.tokens["workflow_executor"])
    started = time.perf_counter()
    for first in range(start, start + count, 100):
        events = [{"event_data": _event_data(i)} for i in range(first, min(first + 100, start + count))]
        status, body = writer.call(
            "POST", "/core/write-events", {"requester_id": "workflow_executor", "events": events}
        )
        assert status == 201, body
    return count / (time.perf_counter() - started)


def _caught_up(stack: RunningStack, total: int, timeout: float = 1800) -> None:
    """Both stream consumers have handled `total` events (the stats consumer counted them, Karma
    applied, capped or ignored each)."""
    reader = Http(stack.bucket_url, stack.tokens["bhiv_reader"])
    karma = Http(stack.karma_url, stack.tokens["bhiv_reader"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = reader.call("GET", "/core/stats")
        if status == 200 and int(body["stats"]["total_events"]) >= total:
            status, body = karma.call("GET", "/v1/stats/system")
            if status == 200 and sum(int(v) for v in body["events"].values()) >= total:
                return
        time.sleep(0.2)
    raise RuntimeError("the stream consumers never caught up")


def _idle(stack: RunningStack, timeout: float = 600) -> None:
    """Wait until the stack uses under a tenth of a core for a second (a compaction or the stream
    trim after a large fill would otherwise run inside the next measurement)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        before = _cpu_seconds(stack.process.pid)
        time.sleep(0.5)
        quiet = quiet + 1 if _cpu_seconds(stack.process.pid) - before < 0.05 else 0


def _single(stack: RunningStack, start: int, count: int) -> dict[str, float]:
    writer = Http(stack.bucket_url, stack.tokens["workflow_executor"])
    latencies = []
    started = time.perf_counter()
    for i in range(start, start + count):
        t0 = time.perf_counter()
        status, body = writer.call(
            "POST", "/core/write-event", {"requester_id": "workflow_executor", "event_data": _event_data(i)}
        )
        latencies.append(time.perf_counter() - t0)
        assert status == 200, body
    rate = count / (time.perf_counter() - started)
    return {"rate": rate, "p50": statistics.median(latencies) * 1000, "p99": _pct(latencies, 0.99)}


def _karma_latency(stack: RunningStack, samples: int, start: int) -> dict[str, float]:
    """Write -> Karma visible, while another connection ingests single events as fast as it can."""
    stop = threading.Event()

    def background() -> None:
        writer = Http(stack.bucket_url, stack.tokens["workflow_executor"])
        i = start
        while not stop.is_set():
            writer.call(
                "POST", "/core/write-event", {"requester_id": "workflow_executor", "event_data": _event_data(i)}
            )
            i += 1

    load = threading.Thread(target=background, daemon=True)
    load.start()
    writer = Http(stack.bucket_url, stack.tokens["workflow_executor"])
    reader = Http(stack.karma_url, stack.tokens["bhiv_reader"])
    latencies = []
    try:
        for i in range(samples):
            user = f"lat-{uuid.uuid4().hex[:10]}"
            data = {**_event_data(i), "user_id": user, "trace_id": f"lat-{user}"}
            status, _ = writer.call(
                "POST", "/core/write-event", {"requester_id": "workflow_executor", "event_data": data}
            )
            acknowledged = time.perf_counter()
            assert status == 200
            while reader.call("GET", f"/api/v1/karma/{user}")[0] != 200:
                if time.perf_counter() - acknowledged > 30:
                    raise AssertionError("event never reached Karma")
                time.sleep(0.002)
            latencies.append(time.perf_counter() - acknowledged)
    finally:
        stop.set()
        load.join(timeout=30)
    return {"p50": statistics.median(latencies) * 1000, "p99": _pct(latencies, 0.99)}


READ_REPEAT = 41  # a read takes milliseconds: one slow sample (a busy neighbour) must not be the median


def _timed(call: Any, pid: int, repeat: int = READ_REPEAT) -> tuple[float, float]:
    """(median latency in ms, the stack's CPU per call in ms): on a shared machine the CPU is the
    steadier of the two (a latency median moved 2x between runs with the same ScannedCount)."""
    times = []
    cpu = _cpu_seconds(pid)
    for _ in range(repeat):
        t0 = time.perf_counter()
        status, body = call()
        times.append(time.perf_counter() - t0)
        assert status == 200, body
    return statistics.median(times) * 1000, (_cpu_seconds(pid) - cpu) / repeat * 1000


def _reads(stack: RunningStack, stored: int, moto_url: str) -> dict[str, tuple[float, int, float]]:
    import boto3
    from botocore.config import Config

    from bhiv.storage.events import EventQuery, EventStore
    from bhiv.storage.stats import StatsStore

    events = Http(stack.bucket_url, stack.tokens["bhiv_reader"])
    karma = Http(stack.karma_url, stack.tokens["bhiv_reader"])
    moto = boto3.client(
        "dynamodb",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(account_id_endpoint_mode="disabled"),
    )
    store = EventStore(moto, "EventsTable")
    trace = f"scale-{stored // TRACE_HITS // 2}"
    # the cursor at about the middle of the table (or 5,000 deep), fetched untimed
    depth = min(stored // 2, 5_000)
    cursor = None
    fetched = 0
    while fetched < depth:
        query = {"limit": min(1000, depth - fetched), **({"cursor": cursor} if cursor else {})}
        _, body = events.call("GET", f"/core/events?{urlencode(query)}")
        cursor = body["next_cursor"]
        fetched += body["count"]
    key = store.query(EventQuery({}, None, None, depth, True, None)).next_key

    def scanned(filters: dict[str, str], start: dict[str, str] | None = None) -> int:
        return int(store.query(EventQuery(filters, None, None, 100, True, start)).scanned_count)

    calls_before = _query_calls(moto)
    StatsStore(moto, "BucketStatsTable").breakdown()
    stats_scanned = _query_calls(moto) - calls_before
    history: int = moto.query(
        TableName="KarmaTable",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :h)",
        ExpressionAttributeValues={":pk": {"S": "user#user-7"}, ":h": {"S": "h#"}},
        ScanIndexForward=False,
        Limit=20,
    )["ScannedCount"]
    pid = stack.process.pid
    reads = {
        "GET /core/events newest 100": (lambda: events.call("GET", "/core/events?limit=100"), scanned({})),
        f"by trace_id ({TRACE_HITS} hits)": (
            lambda: events.call("GET", f"/core/events?trace_id={trace}"),
            scanned({"trace_id": trace}),
        ),
        "deep cursor page (half-way, at most 5,000 in)": (
            lambda: events.call("GET", f"/core/events?{urlencode({'limit': 100, 'cursor': cursor})}"),
            scanned({}, key),
        ),
        "/core/stats": (lambda: events.call("GET", "/core/stats"), stats_scanned),
        "/core/read-context": (
            lambda: events.call("GET", "/core/read-context?agent_id=user-7"),
            scanned({"agent_key": "user-7"}),
        ),
        "Karma history (20)": (lambda: karma.call("GET", "/api/v1/karma/user-7/history?limit=20"), history),
    }
    measured: dict[str, tuple[float, int, float]] = {}
    for name, (call, scanned_count) in reads.items():
        latency, cpu = _timed(call, pid)
        measured[name] = (latency, scanned_count, cpu)
    return measured


_SCANNED: list[int] = []


def _query_calls(client: Any) -> int:
    """Sum of ScannedCount over the queries this client has made (counted by an event hook)."""
    if not getattr(client, "_bench_hooked", False):
        client.meta.events.register(
            "after-call.dynamodb.Query", lambda parsed, **_: _SCANNED.append(int(parsed.get("ScannedCount", 0)))
        )
        client._bench_hooked = True
    return sum(_SCANNED)


def _progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class _PatientRequests:
    """requests for the start-up probe of tests/e2e/stack.py: on an overloaded machine the first
    /health can take longer than the probe's 1 s; that means "not yet", not "failed"."""

    ConnectionError = requests.ConnectionError

    @staticmethod
    def get(url: str, timeout: float) -> Any:
        try:
            return requests.get(url, timeout=10)
        except requests.Timeout:
            return types.SimpleNamespace(status_code=0)


def _startup(state_dir: Path) -> tuple[RunningStack, float]:
    e2e_stack.requests = _PatientRequests  # type: ignore[attr-defined,assignment]
    os.sched_setaffinity(0, _ALL_CPUS)  # the stack picks the idlest CPU: leave it the choice
    t0 = time.perf_counter()
    stack = start_stack(state_dir, timeout=600)
    elapsed = time.perf_counter() - t0
    _away_from(stack)
    return stack, elapsed


_ALL_CPUS = os.sched_getaffinity(0)


def _away_from(stack: RunningStack) -> None:
    """Run this process (the clients, and the baseline) on the CPUs the stack is not pinned to
    (bhiv.local.stack.pin_to_one_cpu): a client sharing the stack's core costs it up to 2x CPU."""
    taken = os.sched_getaffinity(stack.process.pid)
    others = _ALL_CPUS - taken
    if others and taken != _ALL_CPUS:
        os.sched_setaffinity(0, others)


def measure(size: int, baseline: float, single_count: int, karma_samples: int) -> dict[str, Any]:
    result: dict[str, Any] = {"size": size}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        stack, result["startup_empty_s"] = _startup(state)
        try:
            _progress(f"filling {size:,} events")
            cpu = _cpu_seconds(stack.process.pid)
            started = time.perf_counter()
            result["fill_rate"] = _fill(stack, 0, size)
            _progress("waiting for the consumers")
            _caught_up(stack, size)
            result["pipeline_rate"] = size / (time.perf_counter() - started)
            result["fill_cpu_ms"] = (_cpu_seconds(stack.process.pid) - cpu) / size * 1000
            _idle(stack)
            result["rss_filled_mb"] = _rss_mb(stack.process.pid)
            info = json.loads((state / "stack.json").read_text())
            _progress("reads")
            # the bare put right before and after the reads: this machine's speed drifts by a third
            # within a run, and a read's ratio across sizes should not carry that drift
            baseline_conditional_puts(300)
            result["reads"] = _reads(stack, size, info["urls"]["aws"])
            baseline_conditional_puts(300)
            result["reads_baseline_cpu_ms"] = statistics.mean(BASELINE_CPU[-2:]) * 1000
            _progress("single ingest")
            # the baseline right before and after, so that both see the same machine load
            before = baseline_conditional_puts(300)
            _idle(stack)
            cpu = _cpu_seconds(stack.process.pid)
            single = _single(stack, size, single_count)
            _caught_up(stack, size + single_count)
            result["single_cpu_ms"] = (_cpu_seconds(stack.process.pid) - cpu) / single_count * 1000
            baseline = (before + baseline_conditional_puts(300)) / 2
            result["baseline_cpu_ms"] = statistics.median(BASELINE_CPU) * 1000
            result["baseline"] = baseline
            result["single"] = single
            result["single_ratio"] = single["rate"] / baseline
            result["batch_over_single"] = result["fill_rate"] / single["rate"]
            _idle(stack)
            _progress("write -> Karma latency")
            result["karma"] = _karma_latency(stack, karma_samples, size + single_count)
            _progress("clean stop")
        finally:
            stack.stop()
        stack, result["startup_snapshot_s"] = _startup(state)
        result["rss_after_start_mb"] = _rss_mb(stack.process.pid)
        _progress("journal tail, then kill -9")
        # journal tail: some single writes, then kill -9 and start again
        try:
            _single(stack, size * 10, 500)
        finally:
            stack.stop(sig=signal.SIGKILL)
        stack, result["startup_after_kill_s"] = _startup(state)
        stack.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--full", action="store_true", help="add 100,000 events")
    parser.add_argument("--single", type=int, default=300)
    parser.add_argument("--karma-samples", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([100_000] if args.full else [])
    os.environ["BHIV_RATE_LIMITS"] = "off"  # the stacks started below measure capacity, not the limits
    baseline = baseline_conditional_puts(1000)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"baseline boto3 conditional put_item, in-process moto: {baseline:.0f} ops/s")
    results = []
    for size in sizes:
        r = measure(size, baseline, args.single, args.karma_samples)
        results.append(r)
        s = r["single"]
        print(f"\n== {size:,} events (load {os.getloadavg()[0]:.1f}; baseline next to it {r['baseline']:.0f} ops/s)")
        base_cpu = r["baseline_cpu_ms"]
        print(
            f"CPU per event, whole stack: single {r['single_cpu_ms']:.2f} ms, batch {r['fill_cpu_ms']:.2f} ms;"
            f" bare conditional put {base_cpu:.2f} ms -> CPU ratio single {base_cpu / r['single_cpu_ms']:.2f},"
            f" batch {base_cpu / r['fill_cpu_ms']:.2f} (batch/single {r['single_cpu_ms'] / r['fill_cpu_ms']:.1f}x)"
        )
        print(f"batch ingest (fill)      : {r['fill_rate']:8.0f} events/s   {r['batch_over_single']:.1f}x single")
        print(f"  ... through both consumers: {r['pipeline_rate']:5.0f} events/s (until Karma and stats caught up)")
        print(
            f"single ingest            : {s['rate']:8.0f} events/s   ratio {r['single_ratio']:.2f}"
            f"   p50 {s['p50']:.1f} ms  p99 {s['p99']:.1f} ms"
        )
        print(f"write -> Karma (loaded)  : p50 {r['karma']['p50']:.0f} ms  p99 {r['karma']['p99']:.0f} ms")
        for name, (ms, scanned, cpu) in r["reads"].items():
            print(f"{name:<36}: {ms:8.1f} ms  (stack CPU {cpu:5.1f} ms)   ScannedCount {scanned}")
        print(f"RSS filled / after start : {r['rss_filled_mb']:.0f} MB / {r['rss_after_start_mb']:.0f} MB")
        print(
            f"start-up empty / snapshot / after kill -9 (+500 journaled): {r['startup_empty_s']:.1f} s / "
            f"{r['startup_snapshot_s']:.1f} s / {r['startup_after_kill_s']:.1f} s"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        speed = last["reads_baseline_cpu_ms"] / first["reads_baseline_cpu_ms"]
        print(
            f"\nread at {last['size']:,} / at {first['size']:,}: median latency, stack CPU, stack CPU in bare"
            f" puts (the bare put's CPU next to the reads: {first['reads_baseline_cpu_ms']:.2f} ms at"
            f" {first['size']:,}, {last['reads_baseline_cpu_ms']:.2f} ms at {last['size']:,})"
        )
        for name in first["reads"]:
            wall = last["reads"][name][0] / first["reads"][name][0]
            cpu = last["reads"][name][2] / first["reads"][name][2] if first["reads"][name][2] else float("nan")
            print(f"  {name:<36}: {wall:.2f}x   {cpu:.2f}x   {cpu / speed:.2f}x")
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
