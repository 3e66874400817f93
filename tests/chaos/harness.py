"""Fault injection against `bhiv up` subprocesses, in the style of a Jepsen set test.

Clients write events (single and batch; half with a client-chosen `event_id`, retried with the same
id after a timeout or a dropped connection) and execute workflows while the stack is SIGKILLed and
restarted, with a burst of writes released the moment the ports open, a torn journal tail, a second
`bhiv up` on the running state dir, and the Executor's Bucket behind a fault proxy (refuse, 500,
stall, forward). Then it checks the set: every acknowledged event stored exactly once, nothing
stored that no client sent, every stored event applied to Karma exactly once, `bhiv karma rebuild`
equal, `/core/stats` equal to what is stored, the outbox empty.

    python -m tests.chaos.harness [--cycles 4] [--seed 1]      # what `make chaos` runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.chaos.fault_proxy import FaultProxy
from tests.e2e.stack import BHIV, ROOT, free_port

ACK_STATUSES = (200, 201)
REQUEST_TIMEOUT_S = 5.0


@dataclass
class ChaosConfig:
    cycles: int = 4
    uptime_s: tuple[float, float] = (8.0, 15.0)
    writers: int = 3
    batch_writers: int = 1
    executors: int = 1
    burst: int = 16
    users: int = 4
    torn_tail: bool = True
    second_start: bool = True
    seed: int = 1
    state_dir: Path | None = None
    settle_timeout_s: float = 120.0


@dataclass
class Ledger:
    """What clients sent and what the stack acknowledged, keyed by each event's chaos_id."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, str] = field(default_factory=dict)  # chaos_id -> user
    acked: set[str] = field(default_factory=set)
    indeterminate: set[str] = field(default_factory=set)  # no event_id, outcome unknown (not retried)
    executions: dict[str, str] = field(default_factory=dict)  # trace_id -> user, acknowledged
    wrong_answers: list[str] = field(default_factory=list)  # a response naming another request's event
    refused: int = 0

    def note_sent(self, chaos_id: str, user: str) -> None:
        with self.lock:
            self.sent[chaos_id] = user


@dataclass
class Report:
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    karma_mismatches: int = 0
    wrong_answers: int = 0
    executions_acknowledged: int = 0
    executions_lost: int = 0
    executions_duplicated: int = 0
    indeterminate: int = 0
    restarts: int = 0
    startup_bursts: int = 0
    second_start_refused: bool | None = None
    torn_tail_recovered: bool | None = None
    rebuild_equal: bool = False
    stats_equal: bool = False
    outbox_empty: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not (self.lost or self.duplicated or self.phantom or self.karma_mismatches or self.wrong_answers)
            and not (self.executions_lost or self.executions_duplicated)
            and self.second_start_refused is not False
            and self.torn_tail_recovered is not False
            and self.rebuild_equal
            and self.stats_equal
            and self.outbox_empty
            and not self.problems
        )

    def table(self) -> str:
        rows = [
            ("acknowledged events", self.acknowledged),
            ("stored (of those sent)", self.stored),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("phantom", self.phantom),
            ("answers naming another request", self.wrong_answers),
            ("indeterminate (no id, no answer)", self.indeterminate),
            ("workflows acknowledged", self.executions_acknowledged),
            ("workflow events lost / duplicated", f"{self.executions_lost} / {self.executions_duplicated}"),
            ("Karma mismatches", self.karma_mismatches),
            ("karma rebuild equal", self.rebuild_equal),
            ("/core/stats equal to stored", self.stats_equal),
            ("outbox empty", self.outbox_empty),
            ("restarts (kill -9)", self.restarts),
            ("startup bursts", self.startup_bursts),
            ("second start refused", self.second_start_refused),
            ("torn journal tail recovered", self.torn_tail_recovered),
            ("time (s)", f"{self.seconds:.0f}"),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'check':<{width}} | value |", f"| {'-' * width} | ----- |"]
        lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


class Stack:
    """One state dir, fixed ports, `bhiv up` started and killed again and again."""

    def __init__(self, state_dir: Path, executor_bucket_url: str, bucket_port: int) -> None:
        self.state_dir = state_dir
        self.ports = {
            "bucket": bucket_port,
            "karma": free_port(),
            "executor": free_port(),
            "moto": free_port(),
        }
        self.executor_bucket_url = executor_bucket_url
        self.process: subprocess.Popen[str] | None = None
        self.log_path = state_dir.parent / "stack.log"
        self.url = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}

    def spawn(self) -> None:
        log = self.log_path.open("a", encoding="utf-8")
        self.process = subprocess.Popen(
            [
                str(BHIV),
                "up",
                "--state-dir",
                str(self.state_dir),
                *("--bucket-port", str(self.ports["bucket"]), "--karma-port", str(self.ports["karma"])),
                *("--executor-port", str(self.ports["executor"]), "--moto-port", str(self.ports["moto"])),
                *("--executor-bucket-url", self.executor_bucket_url, "--compact-every", "400"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        log.close()

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"bhiv up exited with {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url['karma']}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"bhiv up did not become healthy in {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tokens(self) -> dict[str, str]:
        tokens: dict[str, str] = json.loads((self.state_dir / "credentials.json").read_text(encoding="utf-8"))
        return tokens


class Clients:
    """The writers, the executors and the proxy's mode switcher, as threads."""

    def __init__(self, config: ChaosConfig, stack: Stack, proxy: FaultProxy, ledger: Ledger) -> None:
        self.config = config
        self.stack = stack
        self.proxy = proxy
        self.ledger = ledger
        self.stop = threading.Event()
        self.users = [f"chaos-{config.seed}-u{i}" for i in range(config.users)]
        self._threads: list[threading.Thread] = []
        self._writer_token = ""
        self._core_token = ""

    def start(self) -> None:
        tokens = self.stack.tokens()
        self._writer_token, self._core_token = tokens["workflow_executor"], tokens["bhiv_core"]
        targets: list[tuple[Any, tuple[Any, ...]]] = []
        targets += [(self._single_writer, (n,)) for n in range(self.config.writers)]
        targets += [(self._batch_writer, (n,)) for n in range(self.config.batch_writers)]
        targets += [(self._executor, (n,)) for n in range(self.config.executors)]
        targets += [(self._switch_proxy, ())]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def event(self, user: str, event_id: str | None) -> tuple[str, dict[str, Any]]:
        chaos_id = uuid.uuid4().hex
        body: dict[str, Any] = {
            "requester_id": "workflow_executor",
            "event_data": {
                "event_type": "life_event",
                "user_id": user,
                "action": "completing_lessons",
                "role": "learner",
                "chaos_id": chaos_id,
            },
        }
        if event_id:
            body["event_id"] = event_id
        self.ledger.note_sent(chaos_id, user)
        return chaos_id, body

    def post_until_answered(self, path: str, body: dict[str, Any], retry: bool) -> requests.Response | None:
        """POST; with `retry`, again (same body) after any failure until answered or stopped."""
        headers = {"Authorization": f"Bearer {self._writer_token}"}
        while True:
            try:
                response = requests.post(
                    f"{self.stack.url['bucket']}{path}", json=body, headers=headers, timeout=REQUEST_TIMEOUT_S
                )
                if response.status_code == 429 or response.status_code >= 500:
                    if not retry:
                        return response
                    time.sleep(float(response.headers.get("Retry-After", "0.2") or 0.2))
                    continue
                return response
            except requests.RequestException:
                if not retry or self.stop.is_set():
                    return None
                time.sleep(0.05)

    def write_one(self, user: str, with_id: bool) -> None:
        event_id = f"chaos-{uuid.uuid4().hex}" if with_id else None
        chaos_id, body = self.event(user, event_id)
        response = self.post_until_answered("/core/write-event", body, retry=with_id)
        self._judge_single(chaos_id, event_id, response)

    def _judge_single(self, chaos_id: str, event_id: str | None, response: requests.Response | None) -> None:
        with self.ledger.lock:
            if response is None:
                self.ledger.indeterminate.add(chaos_id)
                return
            if response.status_code not in ACK_STATUSES:
                if response.status_code >= 500:
                    self.ledger.indeterminate.add(chaos_id)
                else:
                    self.ledger.refused += 1
                return
            answer = response.json()
            if event_id is not None and answer.get("event_id") != event_id:
                self.ledger.wrong_answers.append(f"sent {event_id}, answered {answer.get('event_id')}")
            self.ledger.acked.add(chaos_id)

    def _single_writer(self, n: int) -> None:
        rng = random.Random(self.config.seed * 1000 + n)
        i = 0
        while not self.stop.is_set():
            self.write_one(self.users[rng.randrange(len(self.users))], with_id=i % 2 == 0)
            i += 1

    def _batch_writer(self, n: int) -> None:
        rng = random.Random(self.config.seed * 2000 + n)
        while not self.stop.is_set():
            events = []
            for _ in range(5):
                event_id = f"chaos-b-{uuid.uuid4().hex}"
                chaos_id, body = self.event(self.users[rng.randrange(len(self.users))], event_id)
                events.append((chaos_id, event_id, {"event_id": event_id, "event_data": body["event_data"]}))
            batch = {"requester_id": "workflow_executor", "events": [e[2] for e in events]}
            response = self.post_until_answered("/core/write-events", batch, retry=True)
            if response is None:  # stopped while the stack was down: same as a timeout
                with self.ledger.lock:
                    self.ledger.indeterminate.update(e[0] for e in events)
                return
            results = response.json().get("results", []) if response.status_code in (200, 201, 207) else []
            with self.ledger.lock:
                for (chaos_id, event_id, _), result in zip(events, results, strict=False):
                    if result.get("event_id") != event_id:
                        self.ledger.wrong_answers.append(f"batch item {event_id} answered {result.get('event_id')}")
                    if result.get("status") in ("stored", "duplicate"):
                        self.ledger.acked.add(chaos_id)

    def _executor(self, n: int) -> None:
        rng = random.Random(self.config.seed * 3000 + n)
        headers = {"Authorization": f"Bearer {self._core_token}"}
        while not self.stop.is_set():
            user = self.users[rng.randrange(len(self.users))]
            trace = f"chaos-wf-{uuid.uuid4().hex[:12]}"
            body = {
                "trace_id": trace,
                "decision": "workflow",
                "data": {
                    "workflow_type": "workflow",
                    "payload": {"trace_id": trace, "action_type": "task", "user_id": user, "title": "chaos"},
                },
            }
            while not self.stop.is_set():
                try:
                    response = requests.post(
                        f"{self.stack.url['executor']}/api/workflow/execute",
                        json=body,
                        headers=headers,
                        timeout=REQUEST_TIMEOUT_S,
                    )
                except requests.RequestException:
                    time.sleep(0.05)
                    continue  # the same trace again: the Executor is idempotent by trace_id
                if response.status_code == 200:
                    with self.ledger.lock:
                        self.ledger.executions[trace] = user
                    break
                time.sleep(0.1)  # 409 in progress, 429, 5xx: ask again

    def _switch_proxy(self) -> None:
        rng = random.Random(self.config.seed)
        while not self.stop.wait(1.5):
            self.proxy.set_mode(rng.choice(("forward", "forward", "refuse", "500", "stall")))
        self.proxy.set_mode("forward")


def startup_burst(clients: Clients, size: int) -> threading.Thread:
    """`size` writers, each retrying its connect every few ms, so all land as the port opens."""

    def fire() -> None:
        barrier = threading.Barrier(size)

        def one(i: int) -> None:
            barrier.wait()
            clients.write_one(clients.users[i % len(clients.users)], with_id=True)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def second_start_refused(stack: Stack, report: Report) -> bool:
    """A second `bhiv up` on the running state dir must exit non-zero at once, naming the holder.
    (That it touched nothing is what the final set check shows: a second start that emptied the
    journal would lose acknowledged events at the next kill.)"""
    result = subprocess.run(
        [
            str(BHIV),
            "up",
            "--state-dir",
            str(stack.state_dir),
            *("--bucket-port", str(free_port()), "--karma-port", str(free_port())),
            *("--executor-port", str(free_port()), "--moto-port", str(free_port())),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    refused = result.returncode != 0 and "in use by a running stack" in result.stderr
    healthy = requests.get(f"{stack.url['bucket']}/health", timeout=10).status_code == 200
    if not (refused and healthy):
        report.problems.append(f"second start: exit {result.returncode}, {result.stderr.strip()[-300:]!r}")
    return refused and healthy


def tear_journal_tail(state_dir: Path) -> None:
    with open(state_dir / "journal.jsonl", "ab") as journal:
        journal.write(b'{"g": 0, "a": "PutItem", "b": "{\\"TableName\\": \\"EventsTable\\", \\"Item\\": {\\"pk')


# --- verification -----------------------------------------------------------------------------


def _get(url: str, token: str, params: dict[str, str] | None = None) -> Any:
    for _ in range(50):
        with contextlib.suppress(requests.RequestException):
            response = requests.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if response.status_code == 200:
                return response.json()
        time.sleep(0.2)
    raise RuntimeError(f"GET {url} kept failing")


def all_events(stack: Stack, token: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "1000", "order": "asc", **({"cursor": cursor} if cursor else {})}
        page = _get(f"{stack.url['bucket']}/core/events", token, params)
        events += page["events"]
        cursor = page.get("next_cursor")
        if not cursor:
            return events


def karma_history(stack: Stack, token: str, user: str) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = _get(f"{stack.url['karma']}/api/v1/karma/{user}/history", token, params)
        ids += [entry["event_id"] for entry in page["events"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("event_data")
    return data if isinstance(data, dict) else event


def settle(stack: Stack, token: str, users: list[str], timeout: float) -> None:
    """Wait until the outbox is empty and Karma has seen every stored event of the run's users."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = _get(f"{stack.url['executor']}/healthz", token)
        if health.get("outbox", {}).get("queued") == 0:
            events = all_events(stack, token)
            expected = sum(1 for e in events if _user_of(e) in users)
            seen = sum(len(karma_history(stack, token, user)) for user in users)
            if seen >= expected:
                return
        time.sleep(0.5)


def _user_of(event: dict[str, Any]) -> str | None:
    data = _payload(event)
    if isinstance(data.get("user_id"), str):
        return str(data["user_id"])
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    user = payload.get("user_id") if isinstance(payload, dict) else None
    return str(user) if isinstance(user, str) else None


def verify(stack: Stack, ledger: Ledger, users: list[str], report: Report) -> None:
    tokens = stack.tokens()
    reader = tokens["bhiv_core"]
    events = all_events(stack, reader)
    by_chaos: dict[str, int] = {}
    by_trace: dict[str, int] = {}
    for event in events:
        data = _payload(event)
        chaos_id = data.get("chaos_id")
        if isinstance(chaos_id, str):
            by_chaos[chaos_id] = by_chaos.get(chaos_id, 0) + 1
        if event.get("event_type") == "workflow_execution" and isinstance(event.get("trace_id"), str):
            by_trace[event["trace_id"]] = by_trace.get(event["trace_id"], 0) + 1
    report.acknowledged = len(ledger.acked)
    report.stored = sum(1 for c in by_chaos if c in ledger.sent)
    report.lost = sum(1 for c in ledger.acked if c not in by_chaos)
    report.duplicated = sum(1 for count in by_chaos.values() if count > 1)
    report.phantom = sum(1 for c in by_chaos if c not in ledger.sent)
    report.wrong_answers = len(ledger.wrong_answers)
    report.indeterminate = len(ledger.indeterminate)
    report.executions_acknowledged = len(ledger.executions)
    report.executions_lost = sum(1 for t in ledger.executions if by_trace.get(t, 0) == 0)
    report.executions_duplicated = sum(1 for count in by_trace.values() if count > 1)
    report.problems += ledger.wrong_answers[:5]

    mismatches = 0
    for user in users:
        expected = sorted(e["event_id"] for e in events if _user_of(e) == user)
        history = sorted(karma_history(stack, reader, user))
        if history != expected:
            mismatches += len(set(history) ^ set(expected)) + (len(history) - len(set(history)))
    report.karma_mismatches = mismatches

    rebuild = subprocess.run(
        [str(BHIV), "karma", "rebuild", "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    report.rebuild_equal = rebuild.returncode == 0
    if not report.rebuild_equal:
        report.problems.append(f"karma rebuild: {rebuild.stdout.strip()} {rebuild.stderr.strip()[-300:]}")
    deadline = time.monotonic() + 30
    while True:
        stats = _get(f"{stack.url['bucket']}/core/stats", reader)
        report.stats_equal = stats["stats"]["total_events"] == len(events)
        if report.stats_equal or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not report.stats_equal:
        report.problems.append(f"/core/stats total {stats['stats']['total_events']} != {len(events)} stored")
    health = _get(f"{stack.url['executor']}/healthz", reader)
    report.outbox_empty = health.get("outbox", {}).get("queued") == 0


# --- the run ----------------------------------------------------------------------------------


def run(config: ChaosConfig) -> Report:
    started = time.monotonic()
    rng = random.Random(config.seed)
    report = Report()
    ledger = Ledger()
    with contextlib.ExitStack() as cleanup:
        state_dir = config.state_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory())) / "state"
        bucket_port = free_port()
        proxy = FaultProxy(bucket_port)
        cleanup.callback(proxy.close)
        stack = Stack(state_dir, proxy.url, bucket_port)
        cleanup.callback(stack.kill)
        stack.spawn()
        stack.wait_healthy()
        clients = Clients(config, stack, proxy, ledger)
        clients.start()
        for cycle in range(config.cycles):
            time.sleep(rng.uniform(*config.uptime_s))
            if config.second_start and cycle == 0:
                report.second_start_refused = second_start_refused(stack, report)
            stack.kill()
            report.restarts += 1
            if config.torn_tail and cycle == min(1, config.cycles - 1):
                tear_journal_tail(state_dir)
            burst = startup_burst(clients, config.burst)
            stack.spawn()
            stack.wait_healthy()
            burst.join(timeout=120)
            report.startup_bursts += 1
            if config.torn_tail and cycle == min(1, config.cycles - 1):
                report.torn_tail_recovered = "Journal tail truncated" in stack.log_path.read_text(errors="replace")
        time.sleep(rng.uniform(*config.uptime_s) / 2)
        clients.join()
        proxy.set_mode("forward")
        settle(stack, stack.tokens()["bhiv_core"], clients.users, config.settle_timeout_s)
        if stack.stop() != 0:  # a clean stop, then a start from the compacted snapshot
            report.problems.append("the clean stop exited non-zero")
        stack.spawn()
        stack.wait_healthy()
        verify(stack, ledger, clients.users, report)
        if stack.stop() != 0:
            report.problems.append("the final clean stop exited non-zero")
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=4, help="kill -9 and restart cycles (default 4)")
    parser.add_argument("--min-uptime", type=float, default=8.0, help="seconds between kills, at least (default 8)")
    parser.add_argument("--max-uptime", type=float, default=15.0, help="seconds between kills, at most (default 15)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the state here (default: a temp dir)")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        cycles=args.cycles, uptime_s=(args.min_uptime, args.max_uptime), seed=args.seed, state_dir=args.state_dir
    )
    print(f"chaos: {config.cycles} kill cycles, {config.uptime_s[0]:.0f}-{config.uptime_s[1]:.0f} s apart", flush=True)
    report = run(config)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
