"""`bhiv karma show|rebuild` against a running local stack."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

RESET, BOLD, GREEN, RED, DIM = "\033[0m", "\033[1m", "\033[32m", "\033[31m", "\033[2m"


def _colour(text: str, code: str, enabled: bool) -> str:
    return f"{code}{text}{RESET}" if enabled else text


def _stack(state_dir: Path) -> dict[str, Any]:
    from bhiv.tools import running_stack  # not bhiv.local.stack: that imports boto3 (a second)

    info = running_stack(state_dir)
    if not info:
        raise SystemExit(f"bhiv: no running stack found in {state_dir} (start `bhiv up`)")
    return info


def _get(url: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _num(value: float) -> str:
    """A balance or score for people: at most two decimals, no float noise (12.000000000000002 → 12)."""
    return f"{round(float(value), 2):g}"


def render_grid(qtable: dict[str, Any], highlight_state: str | None, colour: bool) -> str:
    actions: list[str] = qtable["actions"]
    width = max(len(a) for a in actions)
    lines = [f"{'':<{width}}  " + "  ".join(f"{s:>9}" for s in qtable["states"])]
    for col, action in enumerate(actions):
        cells = []
        for row, state in enumerate(qtable["states"]):
            value = qtable["values"][row][col]
            cell = f"{value:9.3f}"
            if value > 0:
                cell = _colour(cell, GREEN, colour)
            elif value < 0:
                cell = _colour(cell, RED, colour)
            else:
                cell = _colour(cell, DIM, colour)
            if state == highlight_state:
                cell = _colour(cell, BOLD, colour)
            cells.append(cell)
        lines.append(f"{action:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    info = _stack(args.state_dir)
    tokens = json.loads(Path(info["credentials"]).read_text(encoding="utf-8"))
    token = tokens.get("bhiv_reader") if info.get("auth", True) else None
    base = info["urls"]["karma"]
    status, user = _get(f"{base}/api/v1/karma/{urllib.parse.quote(args.user_id, safe='')}", token)
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    if status == 404:
        print(f"bhiv: no karma recorded for user '{args.user_id}'", file=sys.stderr)
        return 1
    if status != 200:
        print(f"bhiv: Karma answered {status}: {user}", file=sys.stderr)
        return 1
    print(
        _colour(f"user {user['user_id']}", BOLD, colour) + f"  role {user['role']}  merit {_num(user['merit_score'])}"
    )
    print("balances: " + ", ".join(f"{k} {_num(v)}" for k, v in user["balances"].items()))
    print("actions:  " + (", ".join(f"{k} x{v}" for k, v in user["action_stats"].items()) or "none"))
    if user.get("capped_stats"):
        print("capped:   " + ", ".join(f"{k} x{v}" for k, v in user["capped_stats"].items()) + " (over daily caps)")
    best = user["recommended_actions"][0]
    print(f"next:     {best['action']} (Q {best['q_value']:.3f})   last updated {user['last_updated']}")
    status, qtable = _get(f"{base}/api/v1/q-table", token)
    if status != 200:
        print(f"bhiv: Karma answered {status} for the Q-table", file=sys.stderr)
        return 1
    print(
        f"\nQ-table (policy {qtable['policy_version']}, {qtable['updates']} updates, alpha {qtable['alpha']}, "
        f"gamma {qtable['gamma']}):"
    )
    print(render_grid(qtable, user.get("role"), colour))
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    import boto3

    from bhiv.karma.consumer import StoredEvent
    from bhiv.karma.policy import default_policy
    from bhiv.karma.rebuild import application_order, replay
    from bhiv.local.stack import _aws_env
    from bhiv.storage.events import EventQuery, EventStore
    from bhiv.storage.karma import KarmaStore, user_to_item

    info = _stack(args.state_dir)
    if "aws" not in info["urls"]:
        raise SystemExit("bhiv: the stack runs without an AWS endpoint (--moto-port 0); cannot rebuild")
    os.environ.update(_aws_env())
    client = boto3.client("dynamodb", endpoint_url=info["urls"]["aws"])
    events_store, karma_store = EventStore(client, "EventsTable"), KarmaStore(client, "KarmaTable")
    policy = default_policy()

    def log_events() -> Any:
        start = None
        while True:
            page = events_store.query(EventQuery({}, None, None, 1000, False, start))
            for item in page.items:
                yield StoredEvent(
                    item["event_id"], item["event_type"], item["received_at"], json.loads(item["event_data"])
                )
            start = page.next_key
            if not start:
                return

    rebuilt = replay(policy, application_order(log_events(), karma_store.applied_order()))
    live = karma_store.users(list(rebuilt.users))
    differing = [
        u
        for u, s in rebuilt.users.items()
        if u not in live
        or (live[u].balances, live[u].role, live[u].action_stats, live[u].capped_stats)
        != (s.balances, s.role, s.action_stats, s.capped_stats)
    ]
    live_q = karma_store.qtable(policy.version)
    q_equal = live_q is not None and rebuilt.qtable is not None and live_q.values == rebuilt.qtable.values
    print(
        f"replayed the log: {rebuilt.applied} applied, {rebuilt.capped} capped, {rebuilt.ignored} ignored, "
        f"{len(rebuilt.rejected)} rejected, {len(rebuilt.users)} users"
    )
    print(f"users differing from live state: {len(differing)}; Q-table equal: {q_equal}")
    if not args.write:
        return 0 if not differing and q_equal else 1
    for user in rebuilt.users.values():
        current = live.get(user.user_id)
        item = user_to_item(dataclasses.replace(user, version=(current.version + 1) if current else 1))
        client.put_item(TableName="KarmaTable", Item=item)
    if rebuilt.qtable is not None:
        client.put_item(
            TableName="KarmaTable",
            Item={
                "pk": {"S": "qtable"},
                "sk": {"S": policy.version},
                "values": {"S": json.dumps(rebuilt.qtable.values)},
                "updates": {"N": str(rebuilt.qtable.updates)},
                "version": {"N": str((live_q.version + 1) if live_q else 1)},
            },
        )
    print("live state replaced with the rebuilt one")
    return 0


def cmd_karma(args: argparse.Namespace) -> int:
    if args.karma_command == "show":
        return cmd_show(args)
    return cmd_rebuild(args)
