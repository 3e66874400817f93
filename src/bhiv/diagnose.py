"""`bhiv diagnose`: follow one fresh workflow from the Executor into the Bucket and into Karma,
and name the hop that failed with its evidence (executor, delivery, bucket, stream, karma)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class HopFailed(Exception):
    def __init__(self, hop: str, message: str, evidence: Any = None) -> None:
        super().__init__(message)
        self.hop = hop
        self.message = message
        self.evidence = evidence


@dataclass
class Targets:
    executor: str
    bucket: str
    karma: str
    token: str | None
    timeout_s: float = 10.0


def _call(method: str, url: str, token: str | None, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")[:500]
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return 0, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def _poll(
    fetch: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float, label: str, out: Callable[[str], None]
) -> Any:
    deadline = time.monotonic() + timeout_s
    attempt = 0
    result = fetch()
    while not done(result):
        attempt += 1
        if time.monotonic() > deadline:
            return result
        if attempt % 5 == 1:
            out(f"   {label}... ({attempt})")
        time.sleep(0.1)
        result = fetch()
    return result


def run(targets: Targets, out: Callable[[str], None] = print, details: bool = True) -> dict[str, Any]:
    t = targets
    out("[Step 1] Checking services...")
    for hop, url in (
        ("executor", f"{t.executor}/healthz"),
        ("bucket", f"{t.bucket}/health"),
        ("karma", f"{t.karma}/health"),
    ):
        status, body = _call("GET", url, None, timeout=5)
        if status != 200:
            raise HopFailed(hop, f"{url} answered {status or 'nothing'}", body)
        out(f"OK {hop:<9} {url}: {status}")

    out("[Step 2] Getting current workflow event count...")
    status, page = _call("GET", f"{t.bucket}/core/events?event_type=workflow_execution&limit=1000", t.token)
    if status != 200:
        raise HopFailed("bucket", f"GET /core/events answered {status}", page)
    before = page["count"]
    out(f"   workflow events in the Bucket (latest page): {before}")

    trace_id = f"diagnostic_{int(time.time() * 1000)}"
    user_id = f"diag_user_{trace_id[-8:]}"
    out("[Step 3] Executing workflow...")
    status, result = _call(
        "POST",
        f"{t.executor}/api/workflow/execute",
        t.token,
        {
            "trace_id": trace_id,
            "decision": "workflow",
            "data": {
                "workflow_type": "workflow",
                "payload": {
                    "trace_id": trace_id,
                    "action_type": "task",
                    "user_id": user_id,
                    "title": "bhiv diagnose",
                    "description": "created by bhiv diagnose",
                },
            },
        },
    )
    if status != 200 or not isinstance(result, dict) or result.get("status") != "success":
        raise HopFailed("executor", f"execute answered {status}", result)
    out(
        f"OK workflow executed   trace_id {trace_id}   status {result['status']}   "
        f"delivery {result.get('delivery_state')}"
    )
    if result.get("delivery_state") == "rejected":
        raise HopFailed("delivery", "the Bucket rejected the workflow event", result.get("delivery"))

    out("[Step 4] Waiting for the event to reach the Bucket...")
    query = urllib.parse.urlencode({"trace_id": trace_id})
    status, found = _poll(
        lambda: _call("GET", f"{t.bucket}/core/events?{query}", t.token),
        lambda r: r[0] == 200 and r[1].get("count", 0) >= 1,
        t.timeout_s,
        "Checking",
        out,
    )
    if status != 200 or found.get("count", 0) < 1:
        _, execution = _call("GET", f"{t.executor}/api/workflow/executions/{trace_id}", t.token)
        hop = "delivery" if isinstance(execution, dict) and execution.get("delivery_state") != "delivered" else "bucket"
        raise HopFailed(hop, f"no event with trace_id {trace_id} in the Bucket after {t.timeout_s:.0f} s", execution)
    event = found["events"][0]
    out(f"OK event reached the Bucket: {event['event_id']} (exactly {found['count']} with this trace id)")
    if found["count"] != 1:
        raise HopFailed(
            "bucket", f"{found['count']} events carry trace_id {trace_id}; expected exactly one", found["events"]
        )

    out("[Step 5] Waiting for Karma to apply it (through the events stream)...")
    status, karma = _poll(
        lambda: _call("GET", f"{t.karma}/api/v1/karma/{user_id}", t.token),
        lambda r: r[0] == 200,
        t.timeout_s,
        "Checking",
        out,
    )
    if status != 200:
        _, stats = _call("GET", f"{t.karma}/v1/stats/system", t.token)
        hop = "karma" if isinstance(stats, dict) and stats.get("events", {}).get("failed") else "stream"
        raise HopFailed(hop, f"Karma has no state for {user_id} after {t.timeout_s:.0f} s", stats)
    balances = ", ".join(f"{k} {round(float(v), 2):g}" for k, v in karma["balances"].items())
    out(f"OK Karma applied it: user {user_id} role {karma['role']} balances {balances}")
    if details:
        out("\nEvent details:")
        out(json.dumps(event, indent=2))
    return {"trace_id": trace_id, "event": event, "karma": karma}


def main(targets: Targets, details: bool = True) -> int:
    try:
        run(targets, details=details)
    except HopFailed as failure:
        print(f"\nFAILED at hop '{failure.hop}': {failure.message}", file=sys.stderr)
        if failure.evidence is not None:
            print("Evidence:", json.dumps(failure.evidence, indent=2, default=str)[:4000], file=sys.stderr)
        return 1
    print(("\n" if details else "") + "SUCCESS: executor -> delivery -> bucket -> stream -> karma all worked.")
    return 0
