"""How long `bhiv` commands take against a running stack, as ratios to a bare interpreter start
measured in the same run (the machine is shared: absolute seconds mean little).

baseline   `python -c pass` (the interpreter alone)
status     `bhiv status` (reads the console's snapshot: no boto3, no template.yaml)
dlq list   `bhiv dlq list` (the console's summary) and `bhiv dlq list --json` (boto3 to the AWS endpoint)
outbox     `bhiv outbox list` (the Executor's service in-process, through the AWS endpoint)

Usage: .venv/bin/python bench/bench_cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import BHIV, start_stack  # noqa: E402


def _median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_version()}, {args.runs} runs each (median)")
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state")
        try:
            state = ["--state-dir", str(stack.state_dir)]
            baseline = _median_seconds([sys.executable, "-c", "pass"], args.runs)
            print(f"{'baseline (python -c pass)':<28} {baseline:6.2f} s")
            for name, command in (
                ("bhiv status", ["status"]),
                ("bhiv dlq list", ["dlq", "list"]),
                ("bhiv dlq list --json", ["dlq", "list", "--json"]),
                ("bhiv outbox list", ["outbox", "list"]),
                ("bhiv karma show nobody", ["karma", "show", "nobody"]),
            ):
                seconds = _median_seconds([str(BHIV), *command, *state], args.runs)
                print(f"{name:<28} {seconds:6.2f} s   ratio to baseline {seconds / baseline:5.1f}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
