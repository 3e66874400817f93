"""The sharded events feed and the stream consumers with several stream shards, on in-process moto.

What DynamoDB does at scale and one moto table does not: the events table splits into partitions,
its stream into one shard per partition, and Lambda runs one consumer per stream shard at once
(ParallelizationFactor 1). An item's records stay in its shard, in order; records of *different*
items (events have their own ids) land in different shards with no order between them. This
simulation reproduces that: events are appended through the sharded feed (``EventStore``), the
stream records are read from moto and dealt into S shards by the hash of their key (as DynamoDB
does by partition), and S threads run the real handlers (``functions/karma/app.py:on_event`` and
``functions/bucket/app.py:on_stats_stream``) on their shard in batches of 100, every third batch
delivered twice (a retry after a timeout). It then checks, and prints:

* the feed: every page of the F-shard feed, newest first and oldest first, is in time order and
  visits every event once; Queries per page;
* exactly once: the Bucket's counters equal the number of events; each user's Karma history has
  one entry per event and the balances and action counts equal a sequential replay of the log;
* ordering: how many events Karma applied in another order than their time order, per user
  (order-dependent results, the role before an action and so the Q-table, can differ from the
  replay; balances cannot);
* contention: Karma transactions cancelled (another consumer changed the same user or the Q-table
  item) invocations that raised and were retried as the event source mapping would (a Karma batch gives up
  after 6 version conflicts on one item), and the throughput with S consumers against S = 1.

Usage: .venv/bin/python bench/bench_shards.py [--events 2000] [--users 100] [--stream-shards 4] [--feed-shards 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
ACTIONS = ("completing_lessons", "helping_peers", "solving_doubts", "selfless_service", "cheat")


def _event_data(i: int, users: int) -> dict[str, Any]:
    user = f"user{i % users:04d}"
    if i % 3 == 0:
        return {
            "event_type": "workflow_execution",
            "trace_id": f"t{i}",
            "user_id": user,
            "action_type": "task",
            "status": "success" if i % 7 else "failed",
            "execution_result": {},
        }
    return {"event_type": "life_event", "user_id": user, "action": ACTIONS[i % len(ACTIONS)], "role": "learner"}


def _stream_shard(record: dict[str, Any], shards: int) -> int:
    key = record["dynamodb"]["Keys"]["event_id"]["S"]
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % shards


class Cancellations:
    """Counts cancelled TransactWriteItems by reason, from every client of the default session."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("Error", {}).get("Code") == "TransactionCanceledException":
            with self._lock:
                for reason in parsed.get("CancellationReasons") or [{"Code": "unknown"}]:
                    if reason.get("Code") not in (None, "None"):
                        self.reasons[str(reason["Code"])] += 1


def run(events: int, users: int, stream_shards: int, feed_shards: int) -> dict[str, Any]:
    import boto3
    from moto import mock_aws

    from bhiv.bucket.domain import build_event
    from bhiv.karma.consumer import StoredEvent
    from bhiv.karma.policy import default_policy
    from bhiv.karma.rebuild import replay
    from bhiv.local import moto_patch, server, template
    from bhiv.local.streams import lambda_record
    from bhiv.storage.events import EventQuery, EventStore

    os.environ.update(AWS_ENV)
    os.environ["EVENTS_FEED_SHARDS"] = str(feed_shards)
    for module in ("bhiv.karma.runtime", "bhiv.bucket.runtime"):
        sys.modules.pop(module, None)  # fresh cached clients and stores for this moto
    with mock_aws():
        moto_patch.install()
        boto3.setup_default_session()
        cancellations = Cancellations()
        boto3.DEFAULT_SESSION.events.register("after-call.dynamodb.TransactWriteItems", cancellations)  # type: ignore[union-attr]
        client = boto3.client("dynamodb")
        template.create_resources(client, boto3.client("sqs"))
        for function in ("KarmaStreamFunction", "BucketStatsFunction"):
            os.environ.update(template.function_environment(function))
        karma = server.resolve_handler("functions/karma/", "app.on_event")
        stats = server.resolve_handler("functions/bucket/", "app.on_stats_stream")

        # 1. appends through the sharded feed
        store = EventStore(client, "EventsTable", shards=feed_shards)
        t0 = datetime(2026, 12, 1, tzinfo=UTC)
        for i in range(events):
            store.append(
                build_event(_event_data(i, users), "workflow_executor", f"e{i:07d}", t0 + timedelta(milliseconds=i))
            )
        ids = [f"e{i:07d}" for i in range(events)]
        feed_check = _check_feed(store, EventQuery, ids)

        # 2. the stream, dealt into shards as DynamoDB does by partition key
        streams = boto3.client("dynamodbstreams")
        arn = client.describe_table(TableName="EventsTable")["Table"]["LatestStreamArn"]
        raw: list[dict[str, Any]] = []
        for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
            iterator = streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                page = streams.get_records(ShardIterator=iterator, Limit=1000)
                raw += page["Records"]
                iterator = page.get("NextShardIterator") if page["Records"] else None
        records = [lambda_record(r, arn, "us-east-1") for r in raw if r["eventName"] == "INSERT"]
        assert len(records) == events, (len(records), events)
        dealt: list[list[dict[str, Any]]] = [[] for _ in range(stream_shards)]
        for record in records:
            dealt[_stream_shard(record, stream_shards)].append(record)

        # 3. one consumer per stream shard, at once
        failures: list[Any] = []
        errors: list[str] = []
        retried_invocations: Counter[str] = Counter()
        applied_order: list[str] = []
        order_lock = threading.Lock()

        def consume(shard_records: list[dict[str, Any]]) -> None:
            try:
                deliver(shard_records)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        def invoke(handler: Any, batch: dict[str, Any]) -> None:
            """As the event source mapping does: a raising invocation is retried (MaximumRetryAttempts 5)."""
            for attempt in range(6):
                try:
                    result = handler(batch, None)
                except Exception as exc:
                    retried_invocations[type(exc).__name__] += 1
                    if attempt == 5:
                        raise
                    continue
                if result.get("batchItemFailures"):
                    failures.append(result)
                return

        def deliver(shard_records: list[dict[str, Any]]) -> None:
            for number, start in enumerate(range(0, len(shard_records), 100)):
                batch = {"Records": shard_records[start : start + 100]}
                for _delivery in range(2 if number % 3 == 2 else 1):
                    for handler in (karma, stats):
                        invoke(handler, batch)
                with order_lock:
                    applied_order.extend(r["dynamodb"]["Keys"]["event_id"]["S"] for r in batch["Records"])

        started = time.perf_counter()
        threads = [threading.Thread(target=consume, args=(shard,)) for shard in dealt]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started

        # 4. exactly once, and what order changed
        policy = default_policy()
        log = [
            StoredEvent(
                f"e{i:07d}",
                _event_data(i, users)["event_type"],
                (t0 + timedelta(milliseconds=i)).isoformat(),
                _event_data(i, users),
            )
            for i in range(events)
        ]
        sequential = replay(policy, log)
        from bhiv.storage.karma import KarmaStore
        from bhiv.storage.stats import StatsStore

        live = KarmaStore(client, "KarmaTable").users(list(sequential.users))
        stats_totals = StatsStore(client, "BucketStatsTable").totals()
        exactly_once = stats_totals["total_events"] == events and all(
            live[u].action_stats == s.action_stats and live[u].events_applied == s.events_applied
            for u, s in sequential.users.items()
        )
        balances_differ = sum(
            1
            for u, s in sequential.users.items()
            if {k: round(v, 6) for k, v in live[u].balances.items()} != {k: round(v, 6) for k, v in s.balances.items()}
        )
        live_q = KarmaStore(client, "KarmaTable").qtable(policy.version)
        assert live_q is not None and sequential.qtable is not None
        q_gap = max(
            abs(live_q.get(state, action, 0.0) - sequential.qtable.get(state, action, 0.0))
            for state in policy.states
            for action in policy.action_names
        )
        roles_differ = sum(1 for u, s in sequential.users.items() if live[u].role != s.role)
        position = {event_id: n for n, event_id in enumerate(applied_order)}
        inversions = 0
        per_user: dict[str, list[str]] = defaultdict(list)
        for i in range(events):
            per_user[f"user{i % users:04d}"].append(f"e{i:07d}")
        for user_events in per_user.values():
            applied = sorted(user_events, key=lambda event_id: position.get(event_id, -1))
            inversions += sum(1 for a, b in zip(applied, user_events, strict=True) if a != b)
        return {
            "events": events,
            "stream_shards": stream_shards,
            "feed_shards": feed_shards,
            "applied_per_s": events / elapsed,
            "feed": feed_check,
            "stats_total_events": stats_totals["total_events"],
            "exactly_once": exactly_once,
            "users": len(sequential.users),
            "users_balances_differ_from_replay": balances_differ,
            "users_role_differs_from_replay": roles_differ,
            "q_table_max_gap_to_replay": round(q_gap, 6),
            "thread_errors": errors,
            "invocations_retried": dict(retried_invocations),
            "events_out_of_user_order": inversions,
            "batch_item_failures": len(failures),
            "cancelled_transactions": dict(cancellations.reasons),
        }


def _check_feed(store: Any, query_type: Any, ids: list[str]) -> dict[str, Any]:
    queries = 0
    real_query = store._client.query

    def counting(**params: Any) -> Any:
        nonlocal queries
        queries += 1
        return real_query(**params)

    store._client.query = counting
    try:
        result: dict[str, Any] = {}
        for newest_first, expected in ((True, list(reversed(ids))), (False, ids)):
            seen: list[str] = []
            cursor = None
            pages = 0
            queries = 0
            while True:
                page = store.query(query_type({}, None, None, 100, newest_first, cursor))
                seen += [item["event_id"] for item in page.items]
                pages += 1
                cursor = page.next_key
                if not cursor:
                    break
            name = "newest_first" if newest_first else "oldest_first"
            result[name] = {"in_order_once": seen == expected, "pages": pages, "queries_per_page": queries / pages}
        return result
    finally:
        del store._client.query


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--stream-shards", type=int, default=4)
    parser.add_argument("--feed-shards", type=int, default=4)
    parser.add_argument("--one", action="store_true", help="run one configuration and print its JSON")
    args = parser.parse_args()
    if args.one:
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        logging.disable(logging.INFO)
        print(json.dumps(run(args.events, args.users, args.stream_shards, args.feed_shards), sort_keys=True))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, moto in-process")
    results = []
    for stream_shards, feed_shards in ((1, 1), (args.stream_shards, args.feed_shards)):
        # each configuration in its own interpreter: fresh moto, clients and caches
        command = [sys.executable, __file__, "--one", "--events", str(args.events), "--users", str(args.users)]
        command += ["--stream-shards", str(stream_shards), "--feed-shards", str(feed_shards)]
        env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING"}
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1], sort_keys=True))
    baseline, sharded = results
    ok = all(
        r["feed"][order]["in_order_once"]
        and r["exactly_once"]
        and not r["thread_errors"]
        and not r["batch_item_failures"]
        for r in results
        for order in ("newest_first", "oldest_first")
    )
    print(
        f"feed: {sharded['feed_shards']} shards, pages in time order, every event once: "
        f"{sharded['feed']['newest_first']['in_order_once'] and sharded['feed']['oldest_first']['in_order_once']}; "
        f"Queries per page {sharded['feed']['newest_first']['queries_per_page']:.1f}"
    )
    print(
        f"stream consumers: {sharded['stream_shards']} shards apply {sharded['applied_per_s']:.0f} events/s = "
        f"{sharded['applied_per_s'] / baseline['applied_per_s']:.2f} x one shard (same machine; one GIL, one moto)"
    )
    print(
        f"exactly once (counters, per-user counts, redelivered batches): {'holds' if ok else 'BROKEN'}; "
        f"events applied out of their user's time order: {baseline['events_out_of_user_order']} with 1 shard, "
        f"{sharded['events_out_of_user_order']} with {sharded['stream_shards']}; users whose balances differ from "
        f"a sequential replay: {sharded['users_balances_differ_from_replay']} of {sharded['users']}; "
        f"Q-table max gap {sharded['q_table_max_gap_to_replay']}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
