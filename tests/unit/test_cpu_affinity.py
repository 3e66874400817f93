"""The local stack runs on one CPU (bhiv.local.stack.pin_to_one_cpu); checked in a child process,
so that this test run itself is never pinned."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs"
)

CHILD = """
import json, os, sys, threading, time
from bhiv.local.stack import pin_to_one_cpu
seen = {}
started = threading.Event()
def early():
    started.set()
    time.sleep(0.5)
    seen["early"] = sorted(os.sched_getaffinity(0))
thread = threading.Thread(target=early)
thread.start()
started.wait()
cpu = pin_to_one_cpu(sys.argv[1])
late = threading.Thread(target=lambda: seen.update(late=sorted(os.sched_getaffinity(0))))
late.start(); late.join(); thread.join()
print(json.dumps({"cpu": cpu, "main": sorted(os.sched_getaffinity(0)), **seen}))
"""


def _run(setting: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, setting], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_auto_pins_every_thread_to_one_allowed_cpu() -> None:
    result = _run("auto")
    cpu = result["cpu"]
    assert cpu in os.sched_getaffinity(0)
    assert result["main"] == result["early"] == result["late"] == [cpu]  # threads before and after


def test_a_named_cpu_is_used_and_off_leaves_scheduling_alone() -> None:
    first = min(os.sched_getaffinity(0))
    assert _run(str(first))["main"] == [first]
    allowed = sorted(os.sched_getaffinity(0))
    assert _run("off") == {"cpu": None, "main": allowed, "early": allowed, "late": allowed}
    assert _run("9999")["cpu"] is None  # not an allowed CPU: a warning, not pinned
