"""`bhiv logs`, `bhiv events tail` and `bhiv status`: seeing what happened in a local stack."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def _line_time(record: dict[str, Any]) -> str:
    return str(record.get("timestamp", ""))


def trace_lines(state_dir: Path, trace_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(timestamp, service, record) of every log line of one trace, across services, in time order."""
    found = []
    for path in sorted((state_dir / "logs").glob("*.log")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if trace_id not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if trace_id in (record.get("trace_id"), record.get("event_id")) or trace_id in json.dumps(record):
                    found.append((_line_time(record), path.stem, record))
    found.sort(key=lambda item: item[0])
    return found


def cmd_logs(args: argparse.Namespace) -> int:
    lines = trace_lines(args.state_dir, args.trace_id)
    if not lines:
        print(f"no log lines mention {args.trace_id} in {args.state_dir / 'logs'}", file=sys.stderr)
        return 1
    for stamp, service, record in lines:
        extra = {k: v for k, v in record.items() if k not in ("timestamp", "message", "level", "service", "location")}
        when, level, message = stamp.replace(" ", "T"), record.get("level", ""), record.get("message", "")
        print(f"{when}  {service:<8} {level:<7} {message}  {json.dumps(extra)}")
    return 0


def _stack(state_dir: Path) -> dict[str, Any]:
    from bhiv.local.stack import read_stack_file

    info = read_stack_file(state_dir)
    if not info:
        raise SystemExit(f"bhiv: no running stack found in {state_dir} (start `bhiv up`)")
    return info


def _token(info: dict[str, Any], requester: str) -> str | None:
    if not info.get("auth", True):
        return None
    value = json.loads(Path(info["credentials"]).read_text(encoding="utf-8")).get(requester)
    return str(value) if value else None


def _get(url: str, token: str | None, timeout: float = 3) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError):
        return 0, None


def cmd_tail(args: argparse.Namespace) -> int:
    info = _stack(args.state_dir)
    token = _token(info, "bhiv_reader")
    base = info["urls"]["bucket"]
    filters = {
        k: v
        for k, v in (
            ("event_type", args.event_type),
            ("requester_id", args.requester_id),
            ("trace_id", args.trace_id),
            ("user_id", args.user_id),
        )
        if v
    }
    _, latest = _get(f"{base}/core/events?" + urllib.parse.urlencode({**filters, "limit": args.last}), token)
    events = list(reversed((latest or {}).get("events", [])))
    seen: set[str] = set()
    since = None
    try:
        while True:
            for event in events:
                if event["event_id"] in seen:
                    continue
                seen.add(event["event_id"])
                since = event["received_at"]
                print(
                    json.dumps(event)
                    if args.json
                    else f"{event['received_at']}  {event['event_type']:<20} {event['requester_id']:<20} "
                    f"trace={event.get('trace_id')} user={event.get('user_id')} id={event['event_id']}",
                    flush=True,
                )
            time.sleep(args.interval)
            params = {**filters, "order": "asc", "limit": 1000, **({"since": since} if since else {})}
            status, page = _get(f"{base}/core/events?" + urllib.parse.urlencode(params), token)
            if status != 200:
                print(f"bhiv: the Bucket answered {status or 'nothing'}; retrying", file=sys.stderr)
                events = []
                continue
            events = page["events"]
    except KeyboardInterrupt:
        return 0


def _stream_lag(info: dict[str, Any], state_dir: Path) -> dict[str, int | str]:
    """Records in the events stream not yet checkpointed, per consumer (up to 1000)."""
    import boto3
    from botocore.config import Config

    from bhiv.local.stack import _aws_env

    if "aws" not in info["urls"]:
        return {}
    import os

    os.environ.update(_aws_env())
    config = Config(account_id_endpoint_mode="disabled", retries={"max_attempts": 1})
    dynamodb = boto3.client("dynamodb", endpoint_url=info["urls"]["aws"], config=config)
    streams = boto3.client("dynamodbstreams", endpoint_url=info["urls"]["aws"], config=config)
    arn = dynamodb.describe_table(TableName="EventsTable")["Table"]["LatestStreamArn"]
    shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    lags: dict[str, int | str] = {}
    for path in sorted((state_dir / "checkpoints").glob("*.json")):
        saved = json.loads(path.read_text(encoding="utf-8")).get("tables", {})
        positions = {shard_id: entry.get("sequence_number") for shard_id, entry in saved.get("EventsTable", {}).items()}
        total = 0
        for shard in shards:
            seq = positions.get(shard["ShardId"])
            kind = (
                {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": seq}
                if seq
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], **kind)["ShardIterator"]
            total += len(streams.get_records(ShardIterator=iterator, Limit=1000)["Records"])
        lags[path.stem] = total if total < 1000 else "1000+"
    return lags


def cmd_status(args: argparse.Namespace) -> int:
    from bhiv.local.stack import read_stack_file

    info = read_stack_file(args.state_dir)
    if not info:
        print(f"no stack running on {args.state_dir}")
        return 1
    urls, reader, core = info["urls"], _token(info, "bhiv_reader"), _token(info, "bhiv_core")
    down = 0
    status, health = _get(f"{urls['bucket']}/health", None)
    received = (health or {}).get("core_integration", {}).get("events_received")
    print(f"bucket    {'up' if status == 200 else 'DOWN':<5} {urls['bucket']:<28} events received: {received}")
    down += status != 200
    status, health = _get(f"{urls['executor']}/healthz", None)
    outbox = (health or {}).get("outbox", {}).get("queued")
    print(f"executor  {'up' if status == 200 else 'DOWN':<5} {urls['executor']:<28} outbox depth: {outbox}")
    down += status != 200
    status, _ = _get(f"{urls['karma']}/health", None)
    _, stats = _get(f"{urls['karma']}/v1/stats/system", reader or core)
    dlq = (stats or {}).get("dlq_depth")
    applied = (stats or {}).get("events", {})
    print(f"karma     {'up' if status == 200 else 'DOWN':<5} {urls['karma']:<28} DLQ depth: {dlq}  events: {applied}")
    down += status != 200
    try:
        for consumer, lag in _stream_lag(info, args.state_dir).items():
            print(f"stream    {consumer:<34} lag: {lag} record(s)")
    except Exception as exc:
        print(f"stream    lag unknown ({type(exc).__name__}: {exc})")
    return 1 if down else 0
