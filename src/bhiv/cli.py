"""The `bhiv` command: run the local stack and look inside it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BANNER_WIDTH = 72


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (but not an empty one, nor off for a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool):
            return action.help or ""
        return str(super()._get_help_string(action))


def _sub(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, formatter_class=_HelpFormatter, **kwargs)
    return parser


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".bhiv"),
        help="where credentials, checkpoints and logs live",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bhiv", description="BHIV event pipeline: local stack and tools", formatter_class=_HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = _sub(sub, "up", help="start the local stack in the foreground (Ctrl-C stops it)")
    _state_dir_arg(up)
    up.add_argument("--bucket-port", type=int, default=8001, help="the Bucket's HTTP port")
    up.add_argument("--karma-port", type=int, default=8000, help="Karma's HTTP port")
    up.add_argument("--executor-port", type=int, default=8003, help="the Workflow Executor's HTTP port")
    up.add_argument(
        "--executor-bucket-url",
        default=None,
        help="send the Executor's events to this Bucket URL instead of the stack's own (testing)",
    )
    up.add_argument(
        "--moto-port",
        type=int,
        default=8005,
        help="port of the embedded AWS endpoint (moto server) for the AWS CLI and `bhiv` tools; 0 = off",
    )
    up.add_argument(
        "--console-port",
        type=int,
        default=8010,
        help="port of the read-only web console (loopback only); 0 = off",
    )
    up.add_argument(
        "--log-format",
        choices=("human", "json"),
        default="human",
        help="console output: one short line per request (human) or the services' JSON log lines (json); "
        "<state-dir>/logs/ always gets JSON",
    )
    up.add_argument(
        "--no-auth", action="store_true", help="accept requests without tokens (loopback only; for legacy clients)"
    )
    up.add_argument(
        "--ephemeral", action="store_true", help="keep state in memory only (no journal): everything is gone at stop"
    )
    up.add_argument(
        "--compact-every",
        type=int,
        default=5000,
        help=(
            "fold the journal into the snapshot every N item writes while running, or half the "
            "snapshot if larger (bounds restart time; default 5000)"
        ),
    )
    up.add_argument("--demo", action="store_true", help="after start, write an event and read it back")

    dlq = _sub(sub, "dlq", help="records that exhausted their stream retries")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, text in (
        ("list", "one line per dead-lettered message: when, reason, attempts, events"),
        ("redrive", "re-deliver them to their handler"),
    ):
        cmd = _sub(dlq_sub, name, help=text)
        _state_dir_arg(cmd)
        if name == "list":
            cmd.add_argument("--json", action="store_true", help="every message in full, one JSON object per line")

    karma = _sub(sub, "karma", help="Karma's state")
    karma_sub = karma.add_subparsers(dest="karma_command", required=True)
    show = _sub(karma_sub, "show", help="a user's karma and the Q-table as a grid")
    _state_dir_arg(show)
    show.add_argument("user_id", help="the user to show")
    rebuild = _sub(karma_sub, "rebuild", help="recompute users and the Q-table from the Bucket's event log")
    _state_dir_arg(rebuild)
    rebuild.add_argument(
        "--write",
        action="store_true",
        help="replace the live state with the rebuilt one (stop writers first); default: compare",
    )

    diag = _sub(sub, "diagnose", help="follow a fresh workflow through executor, bucket, stream and karma")
    _state_dir_arg(diag)
    diag.add_argument("--executor-url", help="default: the local stack's (from <state-dir>/stack.json)")
    diag.add_argument("--bucket-url", help="default: the local stack's")
    diag.add_argument("--karma-url", help="default: the local stack's")
    diag.add_argument(
        "--token",
        help="a token with workflows:execute, events:read, karma:read "
        "(default: bhiv_core's from <state-dir>/credentials.json)",
    )
    diag.add_argument("--timeout", type=float, default=10.0, help="seconds to wait at each hop")

    outbox = _sub(sub, "outbox", help="workflow events waiting for delivery to the Bucket")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    for name, text in (("list", "show queued events"), ("redrive", "deliver them now")):
        _state_dir_arg(_sub(outbox_sub, name, help=text))

    logs = _sub(sub, "logs", help="every log line of one trace across the services, in time order")
    _state_dir_arg(logs)
    logs.add_argument("trace_id", help="the trace id (or an event id) to look for")

    events = _sub(sub, "events", help="the Bucket's events")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    tail = _sub(events_sub, "tail", help="follow new events as they arrive (Ctrl-C stops)")
    _state_dir_arg(tail)
    for name in ("event_type", "requester_id", "trace_id", "user_id"):
        tail.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"only events with this {name}")
    tail.add_argument("--last", type=int, default=10, help="show the last N events first")
    tail.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")

    status = _sub(sub, "status", help="per service: up or down, events, outbox, DLQ, stream lag")
    _state_dir_arg(status)

    reset = _sub(sub, "reset", help="empty the state directory (events, karma, outbox, tokens)")
    _state_dir_arg(reset)
    reset.add_argument("--yes", action="store_true", help="do not ask")

    token = _sub(sub, "token", help="print a requester's local token")
    _state_dir_arg(token)
    token.add_argument("requester_id", nargs="?", default="bhiv_core", help="whose token to print")
    return parser


def _quiet_tool_logs(state_dir: Path) -> None:
    """A tool's output is its answer: log lines of the code it runs in-process (a redrive, the
    outbox) go to <state-dir>/logs/ only, never to the terminal."""
    import os

    os.environ["BHIV_CONSOLE_LOG"] = "off"
    if state_dir.is_dir():
        os.environ["BHIV_LOG_DIR"] = str(state_dir / "logs")
    logging.getLogger("bhiv").addHandler(logging.NullHandler())
    logging.getLogger("bhiv").propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return cmd_up(args)
    _quiet_tool_logs(args.state_dir)
    if args.command == "dlq":
        return cmd_dlq(args)
    if args.command == "token":
        return cmd_token(args)
    if args.command in ("logs", "events", "status"):
        from bhiv import tools

        if args.command == "logs":
            return tools.cmd_logs(args)
        if args.command == "events":
            return tools.cmd_tail(args)
        return tools.cmd_status(args)
    if args.command == "reset":
        return cmd_reset(args)
    if args.command == "diagnose":
        return cmd_diagnose(args)
    if args.command == "outbox":
        return cmd_outbox(args)
    if args.command == "karma":
        from bhiv.karma.cli import cmd_karma

        return cmd_karma(args)
    return 2


# --- up -------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    import os

    from bhiv.local.requestlog import REQUESTS

    os.environ["BHIV_CONSOLE_LOG"] = args.log_format
    REQUESTS.print_lines = args.log_format == "human"
    from bhiv.local.stack import LocalStack, StackConfig
    from bhiv.local.statelock import StateDirInUse

    config = StackConfig(
        state_dir=args.state_dir,
        bucket_port=args.bucket_port,
        karma_port=args.karma_port,
        executor_port=args.executor_port,
        executor_bucket_url=args.executor_bucket_url,
        durable=not args.ephemeral,
        moto_port=args.moto_port,
        console_port=args.console_port,
        auth=not args.no_auth,
        compact_every=max(1, args.compact_every),
    )
    stack = LocalStack(config)
    print(f"Starting the local stack in {args.state_dir} ...", flush=True)
    from bhiv.local import durability

    durability.progress_hook = lambda message: print(f"  restoring state: {message} ...", flush=True)
    try:
        stack.start()
    except StateDirInUse as exc:
        print(f"bhiv up: {exc}", file=sys.stderr)
        return 1
    except durability.SnapshotError as exc:
        print(f"bhiv up: {exc}", file=sys.stderr)
        stack.stop()  # releases the state dir; the unreadable snapshot is left as it is
        return 1
    except OSError as exc:
        print(f"bhiv up: cannot start: {exc} (is another stack running on these ports?)", file=sys.stderr)
        stack.stop()
        return 1
    print("=" * BANNER_WIDTH)
    print("BHIV local stack is up")
    for name, url in stack.urls.items():
        print(f"  {name:<10} {url}")
    print(f"  state dir  {stack.state_dir}")
    if config.durable:
        print(
            f"  restored   {stack.durable.loaded_items} items from the snapshot + {stack.durable.replayed} "
            f"journal writes in {stack.restore_seconds:.2f} s (generation {stack.durable.generation})"
        )
    else:
        print("  state      in memory only (--ephemeral): everything is gone at stop")
    print(f"  tokens     {stack.credentials_path}  (Authorization: Bearer <token>)")
    print(f"  logs       {stack.state_dir / 'logs'}  (JSON lines; `bhiv logs <trace_id>`)")
    if "console" in stack.urls:
        print(f"  open       {stack.urls['console']}  in a browser: the live console")
    if not config.auth:
        print("!" * BANNER_WIDTH)
        print("!! WARNING: --no-auth: every request is accepted without a token.")
        print("!! Listening on 127.0.0.1 only. Never expose this stack to a network.")
        print("!" * BANNER_WIDTH)
    print("Press Ctrl-C to stop.")
    print("=" * BANNER_WIDTH, flush=True)

    def _on_signal(signum: int, frame: Any) -> None:
        # Unwind the main thread (demo or wait) into the `finally` below. A flag set here and
        # waited on with threading.Event can deadlock: the handler runs inside Event.wait.
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    code = 0
    try:
        if args.demo:
            REQUESTS.paused = True  # the demo tells its own story; request lines resume after it
            code = run_demo(stack.urls, stack.credentials_path)
            if code == 0:
                from bhiv import diagnose

                print("[demo] 5. bhiv diagnose: a fresh workflow through every hop", flush=True)
                token = json.loads(stack.credentials_path.read_text(encoding="utf-8"))["bhiv_core"]
                code = diagnose.main(
                    diagnose.Targets(
                        stack.urls["executor"],
                        stack.urls["bucket"],
                        stack.urls["karma"],
                        token if config.auth else None,
                    ),
                    details=False,
                )
            REQUESTS.paused = False
            if "console" in stack.urls:
                print(f"\nSee it in the console: {stack.urls['console']}  (Events, Trace, Karma)")
            print("The stack keeps running; requests are shown one line each below. Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nStopping the local stack...", flush=True)
        stack.stop()
        print("Stopped.", flush=True)
    return code


def _request(method: str, url: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def run_demo(urls: dict[str, str], credentials_path: Path) -> int:
    """Write a workflow event as the executor, read it back, and watch the stream reach Karma."""
    bucket, karma = urls["bucket"], urls["karma"]
    tokens = json.loads(credentials_path.read_text(encoding="utf-8"))
    trace_id = f"demo_{int(time.time() * 1000)}"
    user_id = f"demo_user_{trace_id[-6:]}"
    event = {
        "event_type": "workflow_execution",
        "trace_id": trace_id,
        "user_id": user_id,
        "action_type": "task",
        "status": "success",
        "execution_result": {"task": "created"},
        "duration_ms": 12,
    }
    status, body = _request(
        "POST",
        f"{bucket}/core/write-event",
        tokens["workflow_executor"],
        {"requester_id": "workflow_executor", "event_data": event},
    )
    if status not in (200, 201) or not (isinstance(body, dict) and body.get("success")):
        print(f"[demo] FAILED at the Bucket: the event was not stored ({status} {json.dumps(body)})", file=sys.stderr)
        return 1
    print(f"[demo] 1. wrote a workflow_execution event as workflow_executor: {body['event_id']} (trace {trace_id})")
    status, page = _request("GET", f"{bucket}/core/events?trace_id={trace_id}", tokens["bhiv_reader"])
    found = page.get("events", []) if status == 200 and isinstance(page, dict) else []
    if len(found) != 1:
        print(f"[demo] FAILED: the event could not be read back ({status})", file=sys.stderr)
        return 1
    print(f"[demo] 2. read it back by its trace id: 1 event, received at {found[0].get('received_at')}")
    started = time.monotonic()
    deadline = started + 5
    status, user = _request("GET", f"{karma}/api/v1/karma/{user_id}", tokens["bhiv_reader"])
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        status, user = _request("GET", f"{karma}/api/v1/karma/{user_id}", tokens["bhiv_reader"])
    if status != 200:
        print(f"[demo] FAILED at the stream: Karma has no state for {user_id} after 5 s", file=sys.stderr)
        return 1
    waited = (time.monotonic() - started) * 1000
    balances = ", ".join(f"{k} {round(float(v), 2):g}" for k, v in user["balances"].items())
    print(
        f"[demo] 3. Karma applied it from the stream after {waited:.0f} ms: {user_id} is a {user['role']} "
        f"with {balances}"
    )
    received = 0
    while time.monotonic() < deadline and received < 1:
        _, stats = _request("GET", f"{bucket}/core/stats", tokens["bhiv_core"])
        received = ((stats or {}).get("stats") or {}).get("events_received") or 0
        time.sleep(0.05)
    print(f"[demo] 4. the Bucket's stats, aggregated from the stream: {received} event(s) received")
    print("[demo] OK: stored once, read back by trace id, applied by Karma from the stream.", flush=True)
    return 0


# --- dlq / token ------------------------------------------------------------------------------


def _remote_clients(state_dir: Path) -> tuple[Any, Any]:
    """boto3 clients against the running stack's embedded AWS endpoint."""
    import os

    import boto3

    from bhiv.local.stack import _aws_env, read_stack_file

    info = read_stack_file(state_dir)
    if not info or "aws" not in info.get("urls", {}):
        raise SystemExit(f"bhiv: no running stack with an AWS endpoint found in {state_dir} (start `bhiv up`)")
    os.environ.update(_aws_env())
    os.environ["BHIV_AWS_ENDPOINT_URL"] = info["urls"]["aws"]
    endpoint = info["urls"]["aws"]
    return boto3.client("sqs", endpoint_url=endpoint), boto3.client("dynamodb", endpoint_url=endpoint)


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.dlq_command == "list" and not args.json and _dlq_list_from_console(args.state_dir):
        return 0
    import os

    from bhiv.console.data import rejection_reasons, summarize_dlq_message
    from bhiv.local import server, template
    from bhiv.local.streams import dlq_messages, dlq_redrive

    sqs, _ = _remote_clients(args.state_dir)
    tmpl = template.load_template()
    failures = 0
    for mapping in template.stream_mappings(tmpl):
        if not mapping.on_failure_queue:
            continue
        queue_url = sqs.get_queue_url(QueueName=mapping.on_failure_queue)["QueueUrl"]
        if args.dlq_command == "list":
            messages = dlq_messages(sqs, queue_url)
            if args.json:
                for message in messages:
                    print(json.dumps({"queue": mapping.on_failure_queue, **message}))
                continue
            summaries = [summarize_dlq_message(m) for m in messages]
            reasons = rejection_reasons(
                args.state_dir, [str(e["event_id"]) for m in summaries for e in m["events"] if e["event_id"]]
            )
            for summary in summaries:
                summary["reason"] = next(
                    (reasons[e["event_id"]] for e in summary["events"] if e["event_id"] in reasons), summary["reason"]
                )
            _print_dlq(mapping.on_failure_queue, mapping.function, summaries)
        else:
            os.environ.update(template.function_environment(mapping.function, tmpl))
            handler = server.resolve_handler(mapping.code_uri, mapping.handler)
            redriven, failing = dlq_redrive(sqs, queue_url, handler)
            print(f"{mapping.on_failure_queue}: redriven {redriven}, still failing {failing}")
            failures += failing
    return 1 if failures else 0


def _dlq_list_from_console(state_dir: Path) -> bool:
    """The running stack's console has the dead letters summarised already (no boto3 to import)."""
    from bhiv import tools

    info = tools.running_stack(state_dir)
    console = (info or {}).get("urls", {}).get("console")
    if not console:
        return False
    status, pipeline = tools._get(f"{console}/api/pipeline", None, timeout=30)
    status2, stuck = tools._get(f"{console}/api/stuck", None, timeout=30)
    if status != 200 or status2 != 200:
        return False
    for mapping in pipeline["mappings"]:
        if mapping.get("dlq"):
            entries = [m for m in stuck["dlq"] if m.get("queue") == mapping["dlq"]]
            _print_dlq(mapping["dlq"], mapping["function"], entries)
    return True


def _print_dlq(queue: str, function: str, summaries: list[dict[str, Any]]) -> None:
    print(f"{queue} ({function}): {len(summaries)} message(s)")
    for line in dlq_lines(summaries):
        print(f"  {line}")


def dlq_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """One line per on-failure message (see bhiv.console.data.summarize_dlq_message): when, the
    reason, attempts, and its events."""
    lines = []
    for summary in sorted(summaries, key=lambda s: str(s.get("sent_at") or "")):
        events = summary["events"]
        shown = ", ".join(f"{e['event_id']} ({e['event_type']}, trace {e['trace_id']})" for e in events[:3])
        if len(events) > 3:
            shown += f" and {len(events) - 3} more"
        lines.append(
            f"{summary['sent_at']}  {summary['message_id']}  attempts {summary['attempts']}  "
            f"reason: {summary['reason']}  events: {shown or 'records omitted (too large)'}"
        )
    return lines


def cmd_diagnose(args: argparse.Namespace) -> int:
    from bhiv import diagnose
    from bhiv.local.stack import read_stack_file

    info = read_stack_file(args.state_dir) or {}
    urls = info.get("urls", {})
    token = args.token
    if token is None and info.get("auth", True):
        creds = args.state_dir / "credentials.json"
        if creds.exists():
            token = json.loads(creds.read_text(encoding="utf-8")).get("bhiv_core")
    targets = diagnose.Targets(
        executor=args.executor_url or urls.get("executor", "http://127.0.0.1:8003"),
        bucket=args.bucket_url or urls.get("bucket", "http://127.0.0.1:8001"),
        karma=args.karma_url or urls.get("karma", "http://127.0.0.1:8000"),
        token=token,
        timeout_s=args.timeout,
    )
    return diagnose.main(targets)


def cmd_outbox(args: argparse.Namespace) -> int:
    if args.outbox_command == "list":
        from bhiv import tools

        info = tools.running_stack(args.state_dir)
        console = (info or {}).get("urls", {}).get("console")
        status, stuck = tools._get(f"{console}/api/stuck", None, timeout=30) if console else (0, None)
        if status == 200 and isinstance(
            stuck, dict
        ):  # the running stack's own view: no boto3, no Executor to import here
            _print_outbox(stuck["outbox"])
            return 0
    import os

    from bhiv.local import template

    _remote_clients(args.state_dir)
    os.environ.update(template.function_environment("ExecutorRedriveFunction"))
    info = read_stack_file_or_exit(args.state_dir)
    os.environ["BUCKET_URL"] = info["urls"]["bucket"]
    os.environ["BHIV_CREDENTIALS_FILE"] = info["credentials"]
    from bhiv.executor import runtime

    service = runtime.service()
    if args.outbox_command == "list":
        _print_outbox(service.outbox())
        return 0
    counts = service.redrive(due_only=False, limit=1000)
    print(f"delivered {counts['delivered']}, rejected {counts['rejected']}, still queued {counts['queued']}")
    return 1 if counts["queued"] else 0


def _print_outbox(items: list[dict[str, Any]]) -> None:
    print(f"{len(items)} event(s) waiting for delivery")
    for item in items:
        print(json.dumps(item))


def read_stack_file_or_exit(state_dir: Path) -> dict[str, Any]:
    from bhiv.local.stack import read_stack_file

    info = read_stack_file(state_dir)
    if not info:
        raise SystemExit(f"bhiv: no running stack found in {state_dir} (start `bhiv up`)")
    return info


def cmd_reset(args: argparse.Namespace) -> int:
    import shutil

    from bhiv.local.stack import read_stack_file
    from bhiv.local.statelock import holder

    state_dir: Path = args.state_dir
    if not state_dir.exists():
        print(f"{state_dir} does not exist; nothing to reset")
        return 0
    if read_stack_file(state_dir) or holder(state_dir):
        print(f"bhiv: a stack is running on {state_dir}; stop it first (Ctrl-C)", file=sys.stderr)
        return 1
    if not args.yes:
        answer = input(f"Delete everything in {state_dir.resolve()} (events, karma, outbox, DLQ, tokens)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    shutil.rmtree(state_dir)
    print(f"Deleted {state_dir}.")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    path = args.state_dir / "credentials.json"
    if not path.exists():
        print(f"bhiv: {path} does not exist yet; start the stack once with `bhiv up`", file=sys.stderr)
        return 1
    tokens = json.loads(path.read_text(encoding="utf-8"))
    if args.requester_id not in tokens:
        print(f"bhiv: unknown requester '{args.requester_id}' (known: {', '.join(sorted(tokens))})", file=sys.stderr)
        return 1
    print(tokens[args.requester_id])
    return 0


if __name__ == "__main__":
    sys.exit(main())
