"""Start `bhiv up` as a real subprocess on free ports, as users and the project's checks do."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
BHIV = ROOT / ".venv" / "bin" / "bhiv"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the ephemeral range: a port the kernel hands out (bind to 0) can
    be given to any outgoing connection before the stack binds it ("Address already in use")."""
    low, _ = _ephemeral_range()
    for _ in range(50):
        port = random.randrange(20_000, max(20_001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    state_dir: Path
    bucket_url: str
    log_path: Path
    karma_url: str
    executor_url: str
    console_url: str = ""

    @property
    def tokens(self) -> dict[str, str]:
        tokens: dict[str, str] = json.loads((self.state_dir / "credentials.json").read_text(encoding="utf-8"))
        return tokens

    def auth(self, requester: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[requester]}"}

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class _PortTaken(RuntimeError):
    """The stack could not bind one of the ports picked for it."""


def _distinct_free_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:  # five random picks can repeat one
            ports.append(port)
    return ports


def start_stack(state_dir: Path, *extra: str, timeout: float = 60, bucket_port: int | None = None) -> RunningStack:
    """`bhiv up` on free ports. A port found free can still be taken before the stack binds it
    (another process, a second stack of the suite): then the start is tried again on new ports."""
    for _ in range(2):
        try:
            return _start_once(state_dir, extra, timeout, bucket_port)
        except _PortTaken:
            pass
    return _start_once(state_dir, extra, timeout, bucket_port)


def _start_once(state_dir: Path, extra: tuple[str, ...], timeout: float, bucket_port: int | None) -> RunningStack:
    fixed = {bucket_port} if bucket_port else set()
    picked = _distinct_free_ports(5 if bucket_port is None else 4, fixed)
    if bucket_port is None:
        bucket_port = picked.pop()
    karma_port, executor_port, moto_port, console_port = picked
    log_path = state_dir.parent / f"{state_dir.name}-stack.log"
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [
            str(BHIV) if BHIV.exists() else sys.executable,
            *([] if BHIV.exists() else ["-m", "bhiv.cli"]),
            "up",
            "--state-dir",
            str(state_dir),
            "--bucket-port",
            str(bucket_port),
            "--karma-port",
            str(karma_port),
            "--executor-port",
            str(executor_port),
            "--moto-port",
            str(moto_port),
            "--console-port",
            str(console_port),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    stack = RunningStack(
        process,
        state_dir,
        f"http://127.0.0.1:{bucket_port}",
        log_path,
        f"http://127.0.0.1:{karma_port}",
        f"http://127.0.0.1:{executor_port}",
        f"http://127.0.0.1:{console_port}",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = stack.output()
            if "Address already in use" in output:
                raise _PortTaken(f"bhiv up exited early:\n{output}")
            raise RuntimeError(f"bhiv up exited early:\n{output}")
        try:
            healthy = requests.get(f"{stack.bucket_url}/health", timeout=1).status_code == 200
            if healthy and "Press Ctrl-C" in stack.output():
                return stack
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    stack.stop()
    raise RuntimeError(f"bhiv up did not become healthy in {timeout}s:\n{stack.output()}")


def poll_until(fetch: Any, predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Call fetch() until predicate(result) holds; fail with the last result at the deadline."""
    deadline = time.monotonic() + timeout
    result = fetch()
    while not predicate(result):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last result: {result!r}")
        time.sleep(interval)
        result = fetch()
    return result


def stored_event_ids(stack: RunningStack, user: str) -> list[str]:
    """Every stored event id about `user`, across all pages of /core/events."""
    ids: list[str] = []
    cursor = None
    while True:
        params = {"user_id": user, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = requests.get(
            f"{stack.bucket_url}/core/events", params=params, headers=stack.auth("bhiv_reader"), timeout=10
        ).json()
        ids += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids
