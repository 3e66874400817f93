"""The local HTTP servers under ordinary load and a slowloris attack (issue 9, item 7).

200 concurrent keep-alive clients (half writing events, half reading) plus 20 slowloris
connections (a header byte every second, reconnecting when cut) against one `bhiv up`, for 30 s.
Prints: requests sent, answered by status, unanswered (no answer within 60 s), connections the
server cut for being too slow, and the kernel's listen-overflow counter before and after.

Usage: .venv/bin/python bench/bench_http_load.py [--clients 200] [--slowloris 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import collections
import platform
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import start_stack  # noqa: E402


def listen_overflows() -> int:
    """TcpExtListenOverflows from /proc/net/netstat (0 where unavailable)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            fields = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--slowloris", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    statuses: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    cut = [0]
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state", "--ephemeral")
        try:
            writer = stack.auth("workflow_executor")
            reader = stack.auth("bhiv_reader")

            def client(n: int) -> None:
                session = requests.Session()
                while not stop.is_set():
                    try:
                        if n % 2:
                            response = session.post(
                                f"{stack.bucket_url}/core/write-event",
                                json={
                                    "requester_id": "workflow_executor",
                                    "event_data": {"event_type": "load", "trace_id": f"load-{uuid.uuid4().hex[:8]}"},
                                },
                                headers=writer,
                                timeout=60,
                            )
                        else:
                            response = session.get(
                                f"{stack.bucket_url}/core/events", params={"limit": "10"}, headers=reader, timeout=60
                            )
                        key = str(response.status_code)
                    except requests.RequestException as exc:
                        key = f"no answer ({type(exc).__name__})"
                    with lock:
                        statuses[key] += 1

            def slowloris() -> None:
                host, port = stack.bucket_url.removeprefix("http://").split(":")
                while not stop.is_set():
                    try:
                        with socket.create_connection((host, int(port)), timeout=5) as sock:
                            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                            while not stop.is_set():
                                sock.sendall(b"X")
                                time.sleep(1)
                    except OSError:
                        with lock:
                            cut[0] += 1

            overflows_before = listen_overflows()
            threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
            threads += [threading.Thread(target=slowloris, daemon=True) for _ in range(args.slowloris)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(args.seconds)
            stop.set()
            for thread in threads:
                thread.join(timeout=90)
            elapsed = time.monotonic() - started
            overflows = listen_overflows() - overflows_before
        finally:
            stack.stop()
    total = sum(statuses.values())
    print(f"machine: {platform.machine()}, {platform.python_version()}, {args.clients} clients + {args.slowloris} slow")
    print(f"requests: {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s)")
    for key, count in sorted(statuses.items()):
        print(f"  {key:<40} {count}")
    print(f"slowloris connections cut by the server: {cut[0]}")
    print(f"kernel listen overflows during the run: {overflows}")
    bad = sum(c for k, c in statuses.items() if not k.isdigit() or k.startswith("5"))
    print("result:", "PASS (every request answered, no 5xx)" if bad == 0 else f"FAIL ({bad} bad)")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
