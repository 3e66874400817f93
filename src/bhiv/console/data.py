"""What the web console shows, gathered from a running local stack.

Reads go through the services' own HTTP APIs with the stack's read token (`bhiv_reader`), which
stays in this process: the page never sees a token. What no read API offers locally is taken from
the same service layer in-process: the Executor's execution records and outbox (its read route
needs `workflows:execute`, a write scope), the stream pollers' lag and counts, the on-failure
queues' messages, and the top users by merit (a scan of the Karma table: fine for a local stack,
never done by the services themselves).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bhiv.local.requestlog import CONSOLE_USER_AGENT, REQUESTS

# What each stream mapping feeds, for the pipeline view.
MAPPING_TARGETS = {"KarmaStreamFunction": "karma", "BucketStatsFunction": "bucket stats"}
HOP_NAMES = ("execute", "outbox", "bucket", "stream", "karma")


def _json_field(image: dict[str, Any], name: str) -> Any:
    value = image.get(name) or {}
    return value.get("S") if isinstance(value, dict) else None


def summarize_dlq_message(message: dict[str, Any]) -> dict[str, Any]:
    """One on-failure message as {message_id, sent_at, reason, attempts, events: [...]}: what a person
    needs to see first (the full record stays available with `bhiv dlq list --json`)."""
    raw = message.get("body")
    body: dict[str, Any] = raw if isinstance(raw, dict) else {}
    context = body.get("requestContext") or {}
    response = body.get("responseContext") or {}
    events = []
    for record in body.get("records") or []:
        image = (record.get("dynamodb") or {}).get("NewImage") or {}
        try:
            data = json.loads(_json_field(image, "event_data") or "{}")
        except ValueError:
            data = {}
        events.append(
            {
                "event_id": _json_field(image, "event_id"),
                "event_type": data.get("event_type") or _json_field(image, "event_type"),
                "trace_id": data.get("trace_id"),
                "user_id": data.get("user_id"),
                "sequence_number": (record.get("dynamodb") or {}).get("SequenceNumber"),
            }
        )
    return {
        "message_id": message.get("message_id"),
        "sent_at": message.get("sent_at"),
        "function": str(context.get("functionArn", "")).rsplit(":", 1)[-1] or None,
        "condition": context.get("condition"),
        "attempts": context.get("approximateInvokeCount"),
        "reason": response.get("errorMessage") or context.get("condition") or "unknown",
        "events": events,
        "records_omitted": bool(body.get("recordsOmitted")),
    }


_LOG_META = frozenset({"timestamp", "level", "message", "service", "location", "sampling_rate"})


def log_time(stamp: str) -> str:
    """Powertools' `2026-01-02 03:04:05,678+0000` as ISO 8601 (`2026-01-02T03:04:05.678+00:00`)."""
    text = stamp.replace(" ", "T", 1).replace(",", ".", 1)
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    return text


def trace_log_lines(state_dir: Path, needles: list[str]) -> list[dict[str, Any]]:
    """Log lines mentioning any of the needles (a trace id, its event ids), once each, in time order."""
    from bhiv.tools import trace_lines

    found: dict[str, dict[str, Any]] = {}
    for needle in dict.fromkeys(needles):
        for stamp, service, record in trace_lines(state_dir, needle):
            line = {
                "at": log_time(stamp),
                "service": service,
                "level": record.get("level"),
                "message": record.get("message"),
                "fields": {k: v for k, v in record.items() if k not in _LOG_META},
            }
            found.setdefault(json.dumps(line, sort_keys=True, default=str), line)
    return sorted(found.values(), key=lambda line: str(line["at"]))


def rejection_reasons(state_dir: Path, event_ids: list[str]) -> dict[str, str]:
    """event id -> why a consumer refused it, from the services' log lines (the on-failure message
    itself says only that the retries ran out)."""
    wanted = set(event_ids)
    reasons: dict[str, str] = {}
    if not wanted:
        return reasons
    for path in sorted((state_dir / "logs").glob("*.log")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if '"reason"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                event_id = record.get("event_id")
                if event_id in wanted and record.get("reason"):
                    reasons[event_id] = str(record["reason"])
    return reasons


def _applied_detail(entry: dict[str, Any]) -> str:
    text = f"{entry.get('action')}: reward {entry.get('reward')}"
    if "role_before" in entry:
        text += f", role {entry['role_before']} → {entry.get('role_after')}"
    if "q_before" in entry:
        text += f", Q {round(float(entry['q_before']), 3)} → {round(float(entry.get('q_after', 0)), 3)}"
    return text


@dataclass
class _Sample:
    at: float
    counters: dict[str, float]


class ConsoleData:
    """Reads for the console's views. `stack` is a started bhiv.local.stack.LocalStack."""

    def __init__(self, stack: Any) -> None:
        self._stack = stack
        self._lock = threading.Lock()
        self._previous: _Sample | None = None
        self._rates: dict[str, float] = {}
        self._sqs: Any = None
        self._dynamodb: Any = None

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        urls: dict[str, str] = self._stack.urls
        return urls

    def _token(self) -> str | None:
        if not self._stack.config.auth:
            return None
        path: Path = self._stack.credentials_path
        value = json.loads(path.read_text(encoding="utf-8")).get("bhiv_reader")
        return str(value) if value else None

    def get(self, url: str, auth: bool = True, timeout: float = 3) -> tuple[int, Any]:
        request = urllib.request.Request(url, headers={"User-Agent": CONSOLE_USER_AGENT})
        token = self._token() if auth else None
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, None
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
            return 0, {"error": {"code": "unreachable", "message": str(exc)}}

    def _clients(self) -> tuple[Any, Any]:
        if self._sqs is None:
            from bhiv.storage import aws

            self._sqs, self._dynamodb = aws.client("sqs"), aws.client("dynamodb")
        return self._sqs, self._dynamodb

    def _pollers(self) -> list[Any]:
        pollers: list[Any] = self._stack.pollers()
        return pollers

    # --- pipeline ---------------------------------------------------------------------------

    def _rate(self, counters: dict[str, float]) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            previous = self._previous
            if previous is None or now - previous.at >= 0.5:
                if previous is not None:
                    span = now - previous.at
                    self._rates = {
                        name: max(0.0, (value - previous.counters.get(name, value)) / span)
                        for name, value in counters.items()
                    }
                self._previous = _Sample(now, counters)
            return dict(self._rates)

    def pipeline(self) -> dict[str, Any]:
        from bhiv.storage.queues import QueueDepth

        urls = self.urls
        executor_status, executor = self.get(f"{urls['executor']}/healthz", auth=False)
        bucket_status, bucket = self.get(f"{urls['bucket']}/health", auth=False)
        karma_status, _ = self.get(f"{urls['karma']}/health", auth=False)
        _, karma_stats = self.get(f"{urls['karma']}/v1/stats/system")
        _, newest = self.get(f"{urls['bucket']}/core/events?limit=1&order=desc")
        requests = REQUESTS.counts()
        received = ((bucket or {}).get("core_integration") or {}).get("events_received")
        sqs, _ = self._clients()
        pollers = self._pollers()
        counters: dict[str, float] = {
            "executor": requests.get("executor", 0),
            "bucket": float(received or 0),
            **{p.mapping.function: float(p.records_handled + p.records_failed) for p in pollers},
        }
        rates = self._rate(counters)
        mappings = []
        for poller in pollers:
            function = poller.mapping.function
            queue = poller.mapping.on_failure_queue
            mappings.append(
                {
                    "function": function,
                    "target": MAPPING_TARGETS.get(function, function),
                    "running": bool(poller.running),
                    "lag": poller.lag(),
                    "handled": poller.records_handled,
                    "failed": poller.records_failed,
                    "rate": round(rates.get(function, 0.0), 2),
                    "dlq": queue,
                    "dlq_depth": QueueDepth(sqs, queue).depth() if queue else None,
                }
            )
        karma_mapping = next((m for m in mappings if m["function"] == "KarmaStreamFunction"), None)
        events = (newest or {}).get("events") or []
        return {
            "services": [
                {
                    "name": "executor",
                    "url": urls["executor"],
                    "health": "up" if executor_status == 200 else "down",
                    "rate": round(rates.get("executor", 0.0), 2),
                    "rate_unit": "requests/s",
                    "outbox_depth": ((executor or {}).get("outbox") or {}).get("queued"),
                    "bucket_reachable": ((executor or {}).get("bucket") or {}).get("reachable"),
                },
                {
                    "name": "bucket",
                    "url": urls["bucket"],
                    "health": "up" if bucket_status == 200 else "down",
                    "rate": round(rates.get("bucket", 0.0), 2),
                    "rate_unit": "events/s",
                    "events_received": received,
                },
                {
                    "name": "karma",
                    "url": urls["karma"],
                    "health": "up" if karma_status == 200 else "down",
                    "rate": karma_mapping["rate"] if karma_mapping else 0.0,
                    "rate_unit": "events/s",
                    "events": (karma_stats or {}).get("events"),
                    "users": (karma_stats or {}).get("users_total"),
                    "policy_version": (karma_stats or {}).get("policy_version"),
                    "dlq_depth": (karma_stats or {}).get("dlq_depth"),
                },
            ],
            "mappings": mappings,
            "newest_event_id": events[0]["event_id"] if events else None,
            "karma_updates": (karma_mapping or {}).get("handled"),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    # --- events -----------------------------------------------------------------------------

    def events(self, params: dict[str, str]) -> tuple[int, Any]:
        wanted = {k: v for k, v in params.items() if k in ("event_type", "requester_id", "user_id", "trace_id") and v}
        limit = params.get("limit", "50")
        query = urllib.parse.urlencode({**wanted, "limit": limit, "order": "desc"})  # newest first, explicitly
        return self.get(f"{self.urls['bucket']}/core/events?{query}")

    # --- trace ------------------------------------------------------------------------------

    def trace(self, trace_id: str) -> dict[str, Any]:
        from bhiv.errors import ApiError

        urls = self.urls
        execution: dict[str, Any] | None = None
        try:
            from bhiv.auth import load_requesters
            from bhiv.executor import runtime as executor_runtime

            # executions belong to their requester: look under each one that may execute
            for requester_id, scopes in load_requesters().items():
                if "workflows:execute" not in scopes:
                    continue
                try:
                    execution = executor_runtime.service().execution(requester_id, trace_id)
                    break
                except ApiError:
                    continue
        except ApiError:
            execution = None
        status, page = self.get(f"{urls['bucket']}/core/events?" + urllib.parse.urlencode({"trace_id": trace_id}))
        events: list[dict[str, Any]] = (page or {}).get("events") or [] if status == 200 else []
        events = sorted(events, key=lambda e: str(e.get("received_at", "")))
        logs = trace_log_lines(self._stack.state_dir, [trace_id, *(str(e.get("event_id")) for e in events)])
        hops = self._hops(trace_id, execution, events, logs)
        return {
            "trace_id": trace_id,
            "hops": hops,
            "events": events,
            "execution": execution,
            "found": bool(execution or events),
        }

    def _karma_entry(self, event: dict[str, Any]) -> dict[str, Any] | None:
        user = event.get("user_id")
        if not user:
            return None
        quoted = urllib.parse.quote(str(user), safe="")
        status, page = self.get(f"{self.urls['karma']}/api/v1/karma/{quoted}/history?limit=200")
        if status != 200:
            return None
        return next((e for e in page.get("events", []) if e.get("event_id") == event.get("event_id")), None)

    def _hops(
        self,
        trace_id: str,
        execution: dict[str, Any] | None,
        events: list[dict[str, Any]],
        logs: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        def lines(*services: str, words: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> list[dict[str, Any]]:
            chosen = []
            for line in logs:
                message = str(line.get("message") or "")
                if line["service"] not in services:
                    continue
                if words and not any(w in message for w in words):
                    continue
                if without and any(w in message for w in without):
                    continue
                chosen.append(line)
            return chosen

        delivery_words = ("Bucket", "event queued", "Sending")
        hops: list[dict[str, Any]] = []
        if execution is None:
            hops.append(
                {"hop": "execute", "state": "skipped", "detail": "not executed by the Workflow Executor", "logs": []}
            )
            hops.append({"hop": "outbox", "state": "skipped", "detail": "written straight to the Bucket", "logs": []})
        else:
            failed = execution.get("status") == "failed"
            result = execution.get("execution_result") or {}
            hops.append(
                {
                    "hop": "execute",
                    "state": "failed" if failed else "ok",
                    "start": execution.get("created_at"),
                    "end": execution.get("completed_at"),
                    "detail": f"status {execution.get('status')}"
                    + (f": {result.get('error_code')} {result.get('message', '')}" if failed else ""),
                    "logs": lines("executor", without=delivery_words),
                }
            )
            delivery = execution.get("delivery") or {}
            state = execution.get("delivery_state")
            hops.append(
                {
                    "hop": "outbox",
                    "state": {"delivered": "ok", "rejected": "failed"}.get(str(state), "pending"),
                    "start": execution.get("completed_at"),
                    "end": delivery.get("delivered_at"),
                    "detail": f"{state}, {delivery.get('attempts', 0)} attempt(s)"
                    + (f"; last error: {delivery.get('last_error')}" if delivery.get("last_error") else ""),
                    "logs": lines("executor", words=delivery_words),
                }
            )
        upstream_failed = any(h["state"] == "failed" for h in hops)
        event = next((e for e in events if e.get("event_type") == "workflow_execution"), events[0] if events else None)
        if event is None:
            hops.append(
                {
                    "hop": "bucket",
                    "state": "blocked" if upstream_failed else "pending",
                    "detail": "no event with this trace id in the Bucket",
                    "logs": lines("bucket"),
                }
            )
            hops.append(
                {"hop": "stream", "state": "blocked" if upstream_failed else "pending", "detail": "", "logs": []}
            )
            hops.append(
                {"hop": "karma", "state": "blocked" if upstream_failed else "pending", "detail": "", "logs": []}
            )
            return hops
        stored = [line for line in lines("bucket") if str(line.get("message")).startswith("Received event")]
        stored_at = stored[0]["at"] if stored else event.get("received_at")
        hops.append(
            {
                "hop": "bucket",
                "state": "ok",
                "start": event.get("received_at"),
                "end": stored_at,
                "detail": f"stored {event.get('event_id')} ({event.get('event_type')}) from {event.get('requester_id')}"
                + (f"; {len(events)} events carry this trace id" if len(events) > 1 else ""),
                "logs": lines("bucket"),
            }
        )
        entry = self._karma_entry(event)
        karma_logs = lines("karma")
        applied_logs = [line for line in karma_logs if "applied" in str(line.get("message"))]
        applied_at = applied_logs[0]["at"] if applied_logs else (entry or {}).get("applied_at")
        if entry is None and applied_logs:  # older than the history page we read: the log says it
            entry = {"action": applied_logs[0]["fields"].get("action", "applied"), **applied_logs[0]["fields"]}
        # Only an event Karma has not applied is looked for in the on-failure queues (reading them
        # hides their messages for a moment).
        dead = None
        if entry is None and event.get("user_id"):
            dead = next(
                (m for m in self.dlq() if any(e.get("event_id") == event.get("event_id") for e in m["events"])), None
            )
        if dead is not None:
            hops.append(
                {
                    "hop": "stream",
                    "state": "failed",
                    "start": stored_at,
                    "end": dead.get("sent_at"),
                    "detail": f"{dead['function']}: {dead['reason']} after {dead['attempts']} attempt(s); "
                    f"in {dead['queue']}",
                    "logs": [],
                }
            )
            hops.append(
                {
                    "hop": "karma",
                    "state": "failed",
                    "detail": "not applied: the record is in the DLQ",
                    "logs": karma_logs,
                }
            )
        elif entry is not None:
            hops.append(
                {
                    "hop": "stream",
                    "state": "ok",
                    "start": stored_at,
                    "end": applied_at,
                    "detail": "delivered to KarmaStreamFunction",
                    "logs": [],
                }
            )
            hops.append(
                {
                    "hop": "karma",
                    "state": "ok",
                    "start": applied_at,
                    "end": applied_at,
                    "detail": _applied_detail(entry),
                    "logs": karma_logs,
                }
            )
        elif not event.get("user_id"):
            hops.append(
                {
                    "hop": "stream",
                    "state": "ok",
                    "start": event.get("received_at"),
                    "detail": "no user: Karma ignores it",
                    "logs": [],
                }
            )
            hops.append({"hop": "karma", "state": "skipped", "detail": "event without user_id", "logs": karma_logs})
        else:
            hops.append(
                {
                    "hop": "stream",
                    "state": "pending",
                    "start": event.get("received_at"),
                    "detail": "not applied yet",
                    "logs": [],
                }
            )
            hops.append({"hop": "karma", "state": "pending", "detail": "", "logs": karma_logs})
        return hops

    # --- karma ------------------------------------------------------------------------------

    def karma(self, user_id: str | None) -> dict[str, Any]:
        base = self.urls["karma"]
        _, qtable = self.get(f"{base}/api/v1/q-table")
        _, stats = self.get(f"{base}/v1/stats/system")
        result: dict[str, Any] = {
            "qtable": qtable,
            "stats": stats,
            "top": self.top_users(),
            "user": None,
            "history": [],
        }
        if user_id:
            quoted = urllib.parse.quote(user_id, safe="")
            status, user = self.get(f"{base}/api/v1/karma/{quoted}")
            if status == 200:
                result["user"] = user
                _, history = self.get(f"{base}/api/v1/karma/{quoted}/history?limit=20")
                result["history"] = (history or {}).get("events", [])
            else:
                result["user_error"] = ((user or {}).get("error") or {}).get("message") or f"Karma answered {status}"
        return result

    def top_users(self, limit: int = 10, max_items: int = 5000) -> list[dict[str, Any]]:
        from bhiv.karma.policy import default_policy
        from bhiv.storage import aws
        from bhiv.storage.karma import user_from_item

        _, dynamodb = self._clients()
        policy = default_policy()
        params: dict[str, Any] = {
            "TableName": aws.table_name("KARMA_TABLE"),
            "FilterExpression": "sk = :state",
            "ExpressionAttributeValues": {":state": {"S": "state"}},
        }
        users: list[dict[str, Any]] = []
        scanned = 0
        while scanned < max_items:
            page = dynamodb.scan(**params)
            scanned += page.get("ScannedCount", 0)
            for item in page.get("Items", []):
                user = user_from_item(item)
                users.append(
                    {"user_id": user.user_id, "role": user.role, "merit": round(policy.merit(user.balances), 2)}
                )
            if not page.get("LastEvaluatedKey"):
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        users.sort(key=lambda u: (-float(u["merit"]), str(u["user_id"])))
        return users[:limit]

    # --- stuck work -------------------------------------------------------------------------

    def dlq(self) -> list[dict[str, Any]]:
        from bhiv.local.streams import dlq_messages

        sqs, _ = self._clients()
        found = []
        for poller in self._pollers():
            if not poller.queue_url:
                continue
            for message in dlq_messages(sqs, poller.queue_url, max_messages=100):
                found.append({**summarize_dlq_message(message), "queue": poller.mapping.on_failure_queue})
        reasons = rejection_reasons(
            self._stack.state_dir, [str(e["event_id"]) for m in found for e in m["events"] if e.get("event_id")]
        )
        for message in found:
            explained = [reasons[e["event_id"]] for e in message["events"] if e.get("event_id") in reasons]
            if explained:
                message["reason"] = explained[0]
        found.sort(key=lambda m: str(m.get("sent_at") or ""), reverse=True)
        return found

    def stuck(self) -> dict[str, Any]:
        from bhiv.executor import runtime as executor_runtime

        return {"dlq": self.dlq(), "outbox": executor_runtime.service().outbox()}
