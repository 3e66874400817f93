"""`bhiv up`: embedded DynamoDB/SQS (moto), the functions' HTTP APIs, and the stream pollers."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhiv.auth import load_requesters, new_token
from bhiv.local.durability import DurableState, activate
from bhiv.local.statelock import StateDirLock, holder
from bhiv.logs import attach_stack_logging

log = logging.getLogger("bhiv.local")

# Function logical id in template.yaml -> (port attribute of StackConfig, service name)
HTTP_FUNCTIONS = {
    "BucketFunction": ("bucket_port", "bucket"),
    "KarmaFunction": ("karma_port", "karma"),
    "ExecutorFunction": ("executor_port", "executor"),
}
REDRIVE_INTERVAL_S = 1.0
COMPACT_CHECK_S = 1.0
GC_THRESHOLDS = (20_000, 20, 20)  # gen0 every 20k allocations (default 700): writes allocate in bulk


@contextlib.contextmanager
def _naming_the_port(service: str, port: int) -> Iterator[None]:
    """An error binding a port says which service's port it was."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or str(port) in str(exc):
            raise
        raise OSError(exc.errno, f"{exc.strerror} ({service} port {port})") from exc


@dataclass
class StackConfig:
    state_dir: Path = Path(".bhiv")
    bucket_port: int = 8001
    karma_port: int = 8000
    executor_port: int = 8003
    executor_bucket_url: str | None = None  # where the Executor sends events (default: this stack's Bucket)
    moto_port: int = 8005
    console_port: int = 0  # the web console (bhiv.console); 0 = off (`bhiv up` defaults to 8010)
    auth: bool = True
    host: str = "127.0.0.1"
    poll_interval_s: float = 0.05
    durable: bool = True  # journal + snapshot in the state dir; False: in memory only (benchmarks)
    compact_every: int = 5000  # journal writes between compactions while running (bounds restart time)
    extra_env: dict[str, str] = field(default_factory=dict)


CPU_AFFINITY_ENV = "BHIV_CPU_AFFINITY"


def pin_to_one_cpu(setting: str) -> int | None:
    """Run the whole stack on one CPU (every thread, now and later); returns it, or None.

    The stack is one Python process: its threads take turns on the GIL, so it never runs Python on
    two cores at once. Left to migrate, each hand-over of the GIL wakes a thread on the other core,
    and that costs as much CPU as the work itself (measured: a median 3.9 s against 1.6 s of CPU for
    the same 1,000 single-event writes, 4 runs each; docs/benchmarks.md). `auto` takes the CPU,
    of those the process may use, that was idlest over the last 0.1 s (clients and other processes
    get the rest; two stacks started one after the other land on different CPUs); a number names
    the CPU; `off` leaves scheduling to the kernel.
    """
    if setting == "off" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    try:
        cpu = _idlest(allowed) if setting == "auto" else int(setting)
        if cpu not in allowed:
            raise ValueError(f"CPU {cpu} is not one this process may use ({allowed})")
        for task in os.listdir("/proc/self/task"):  # threads started before us (pid 0: this one only)
            os.sched_setaffinity(int(task), {cpu})
    except (OSError, ValueError) as exc:
        log.warning(f"{CPU_AFFINITY_ENV}={setting}: not pinned ({exc})")
        return None
    return cpu


def _idlest(cpus: list[int], window_s: float = 0.1) -> int:
    """The CPU with the most idle time over `window_s` (/proc/stat), the last one if unknown."""

    def idle() -> dict[int, int]:
        found = {}
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                for line in stat:
                    name, *fields = line.split()
                    if name.startswith("cpu") and name[3:].isdigit():
                        found[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle + iowait
        except (OSError, ValueError, IndexError):
            return {}
        return found

    before = idle()
    time.sleep(window_s)
    after = idle()
    spare = {cpu: after[cpu] - before[cpu] for cpu in cpus if cpu in before and cpu in after}
    return max(reversed(cpus), key=lambda cpu: spare.get(cpu, -1))


def ensure_credentials(state_dir: Path) -> Path:
    """A token per known requester in <state-dir>/credentials.json (0600); new requesters get one."""
    path = state_dir / "credentials.json"
    tokens: dict[str, str] = {}
    if path.exists():
        tokens = json.loads(path.read_text(encoding="utf-8"))
    missing = [rid for rid in load_requesters() if rid not in tokens]
    if missing or not path.exists():
        for rid in missing:
            tokens[rid] = new_token()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(tokens, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


def _aws_env() -> dict[str, str]:
    return {
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "AWS_ACCESS_KEY_ID": "bhiv-local",
        "AWS_SECRET_ACCESS_KEY": "bhiv-local",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.urls: dict[str, str] = {}
        self.credentials_path = self.state_dir / "credentials.json"
        self._mock: Any = None
        self._moto_server: Any = None
        self._servers: list[Any] = []
        self._pollers: list[Any] = []
        self._stopped = threading.Event()
        self._redriver: threading.Thread | None = None
        self._compactor: threading.Thread | None = None
        self._console: Any = None
        self.durable = DurableState(self.state_dir, "us-east-1", enabled=False)
        self.restore_seconds = 0.0
        self.cpu: int | None = None  # the CPU the stack runs on (pin_to_one_cpu), or None
        self._lock = StateDirLock(self.state_dir)
        self._owns_state_dir = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        import boto3
        from moto import mock_aws

        # Before anything in the state dir is read or written: a second stack on the same dir
        # would truncate the running one's journal (raises StateDirInUse, touching nothing).
        self._lock.acquire(self._lock_info())
        self._owns_state_dir = True

        from bhiv.local import moto_memory, moto_patch, server, template
        from bhiv.storage import aws

        os.chmod(self.state_dir, 0o700)
        attach_stack_logging(str(self.state_dir / "logs"))
        ensure_credentials(self.state_dir)
        env = {
            **_aws_env(),
            "BHIV_CREDENTIALS_FILE": str(self.credentials_path),
            "BHIV_AUTH_DISABLED": "0" if self.config.auth else "1",
            "BHIV_LOG_DIR": str(self.state_dir / "logs"),
            "BHIV_LOCAL": "1",
            "BHIV_LOCAL_FAST_CLIENT": "1",  # DynamoDB and its streams in-process, without HTTP plumbing
            "BUCKET_URL": self.config.executor_bucket_url or f"http://{self.config.host}:{self.config.bucket_port}",
            **self.config.extra_env,
        }
        os.environ.update(env)
        os.environ.pop("BHIV_AWS_ENDPOINT_URL", None)  # in-process: the mock intercepts boto3

        self._mock = mock_aws()
        self._mock.start()
        moto_memory.install()  # slotted DynamoType, shared scalars, copy-on-write compactions
        moto_patch.install()
        if self.config.moto_port:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            self._moto_server = ThreadedMotoServer(
                ip_address=self.config.host, port=self.config.moto_port, verbose=False
            )
            with _naming_the_port("moto", self.config.moto_port):
                self._moto_server.start()
            self.urls["aws"] = f"http://{self.config.host}:{self.config.moto_port}"

        dynamodb = aws.client("dynamodb")  # in-process fast client: the journal replays through it too
        sqs = boto3.client("sqs")
        queue_urls = template.create_resources(dynamodb, sqs)
        started = time.monotonic()
        self.durable = DurableState(self.state_dir, os.environ["AWS_DEFAULT_REGION"], enabled=self.config.durable)
        if self.config.durable:
            self.durable.restore(dynamodb, sqs, horizons=self._saved_horizons())  # collector off, result frozen
            activate(self.durable)
        gc.set_threshold(*GC_THRESHOLDS)  # writes allocate in bulk: collect the young less often
        self.restore_seconds = time.monotonic() - started
        if self.config.durable:
            log.info(
                "State restored",
                extra={
                    "snapshot_items": self.durable.loaded_items,
                    "journal_writes": self.durable.replayed,
                    "generation": self.durable.generation,
                    "seconds": round(self.restore_seconds, 3),
                },
            )
        tmpl = template.load_template()
        for function in template.resources("AWS::Serverless::Function", tmpl):
            os.environ.update(template.function_environment(function, tmpl))

        for function, (port_attr, name) in HTTP_FUNCTIONS.items():
            props = tmpl["Resources"][function]["Properties"]
            app = server.resolve_handler(props["CodeUri"], props["Handler"])
            with _naming_the_port(name, getattr(self.config, port_attr)):
                app_server = server.AppServer(app, getattr(self.config, port_attr), self.config.host, name)
                app_server.start()
            self._servers.append(app_server)
            self.urls[name] = app_server.url

        self._start_pollers(dynamodb, sqs, queue_urls, tmpl)
        self._start_redriver(tmpl)
        self._start_compactor()  # trims consumed stream records; compacts only a durable stack
        if self.config.console_port:
            from bhiv.console.server import start_console

            with _naming_the_port("console", self.config.console_port):
                self._console = start_console(self)
            self.urls["console"] = self._console.url
        # Last, once every port is bound (choosing the CPU watches the machine for 0.1 s): threads
        # started so far are moved, and those started later inherit it.
        self.cpu = pin_to_one_cpu(os.environ.get(CPU_AFFINITY_ENV, "auto"))
        log.info("Stack CPU", extra={"cpu": self.cpu, CPU_AFFINITY_ENV: os.environ.get(CPU_AFFINITY_ENV, "auto")})
        self._write_stack_file()

    def _start_redriver(self, tmpl: dict[str, Any]) -> None:
        """The local stand-in for the scheduled ExecutorRedriveFunction: deliver the outbox."""
        from bhiv.local import server

        props = tmpl["Resources"]["ExecutorRedriveFunction"]["Properties"]
        handler = server.resolve_handler(props["CodeUri"], props["Handler"])

        def loop() -> None:
            while not self._stopped.wait(REDRIVE_INTERVAL_S):
                try:
                    handler({"source": "bhiv.local.redriver"}, None)
                except Exception:
                    log.exception("outbox redrive failed")

        self._redriver = threading.Thread(target=loop, name="outbox-redriver", daemon=True)
        self._redriver.start()

    def _start_compactor(self) -> None:
        """Fold the journal into a snapshot every `compact_every` writes, so a restart after a crash
        replays a bounded journal however long the stack has run."""

        def loop() -> None:
            while not self._stopped.wait(COMPACT_CHECK_S):
                try:  # consumed stream records are only memory: drop them every second
                    self.durable.trim_streams(self.stream_horizons())
                except Exception:
                    log.exception("trimming the streams failed")
                if not self.config.durable:
                    continue
                # Every `compact_every` item writes, or half the snapshot's size if that is more: the
                # replay after a crash then costs at most half a snapshot load, and compactions of a
                # large state stay rare (each copies every item).
                due = max(self.config.compact_every, self.durable.items_at_compaction // 2)
                if self.durable.writes_since_compaction < due:
                    continue
                try:
                    self.durable.compact(self.stream_horizons())
                    log.info("State compacted", extra={"generation": self.durable.generation})
                except Exception:
                    log.exception("compaction failed; the journal is kept")

        self._compactor = threading.Thread(target=loop, name="compactor", daemon=True)
        self._compactor.start()

    def _saved_horizons(self) -> dict[str, int | None]:
        """stream_horizons() from the checkpoint files, before the pollers start."""
        from bhiv.local import template
        from bhiv.local.streams import Checkpoints

        horizons: dict[str, int | None] = {}
        for mapping in template.stream_mappings(template.load_template()):
            path = self.durable.checkpoint_dir() / f"{mapping.function}.json"
            positions = list(Checkpoints(path, log).positions(mapping.table).values()) if path.exists() else []
            position = min(int(p) for p in positions if p) if positions and all(positions) else None
            current = horizons.get(mapping.table, position)
            horizons[mapping.table] = None if position is None or current is None else min(current, position)
        return horizons

    def stream_horizons(self) -> dict[str, int | None]:
        """Per table: the lowest sequence number all of its stream's consumers have checkpointed."""
        horizons: dict[str, int | None] = {}
        for poller in self._pollers:
            table = poller.mapping.table
            positions = list(poller.checkpoints.positions(table).values())
            position = min(int(p) for p in positions) if positions and all(positions) else None
            current = horizons.get(table, position)
            horizons[table] = None if position is None or current is None else min(current, position)
        return horizons

    def _start_pollers(self, dynamodb: Any, sqs: Any, queue_urls: dict[str, str], tmpl: dict[str, Any]) -> None:
        from bhiv.local import server, template
        from bhiv.local.streams import StreamPoller
        from bhiv.storage import aws

        streams = aws.client("dynamodbstreams")  # the fast in-process reader (bhiv.local.fast_client)
        checkpoints = self.durable.checkpoint_dir()
        checkpoints.mkdir(parents=True, exist_ok=True)
        for mapping in template.stream_mappings(tmpl):
            handler = server.resolve_handler(mapping.code_uri, mapping.handler)
            poller = StreamPoller(
                mapping=mapping,
                handler=handler,
                dynamodb=dynamodb,
                streams=streams,
                sqs=sqs,
                queue_url=queue_urls.get(mapping.on_failure_queue or ""),
                checkpoint_path=checkpoints / f"{mapping.function}.json",
                poll_interval_s=self.config.poll_interval_s,
            )
            poller.start()
            self._pollers.append(poller)
            log.info(
                "Stream mapping started",
                extra={
                    "function": mapping.function,
                    "table": mapping.table,
                    "resume_after": poller.checkpoints.positions(mapping.table) or None,
                },
            )

    def _lock_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "urls": self.urls, "auth": self.config.auth, "started_at": time.time()}

    def _write_stack_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "urls": self.urls,
            "auth": self.config.auth,
            "credentials": str(self.credentials_path),
        }
        self._lock.update(self._lock_info())
        (self.state_dir / "stack.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking requests, let the stream consumers catch up, compact the state, stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if not self._owns_state_dir:
            return  # never started (the state dir belongs to another stack): touch nothing
        if self._console is not None:
            self._console.stop()
        if self._redriver is not None:
            self._redriver.join(timeout=5)
        if self._compactor is not None:
            self._compactor.join(timeout=60)
        for app_server in self._servers:
            app_server.stop()
        for poller in self._pollers:
            poller.stop()
        drained = self._drain(drain_timeout_s)
        for poller in self._pollers:
            log.info(
                "Stream mapping stopped",
                extra={
                    "function": poller.mapping.function,
                    "table": poller.mapping.table,
                    "records_handled": poller.records_handled,
                    "invocations": poller.invocations,
                    "records_failed": poller.records_failed,
                },
            )
        if self._mock is not None and self.config.durable and self.durable.refused is None:
            if not drained:
                log.warning("stream consumers did not catch up; their unread records are kept in the snapshot")
            try:
                self.durable.compact(self.stream_horizons())
            except OSError:  # a full disk, say: the last snapshot and the journal are left as they were
                log.exception("final compaction failed; the next start replays the journal")
        self.durable.close()
        activate(None)
        if self._moto_server is not None:
            self._moto_server.stop()
        if self._mock is not None:
            self._mock.stop()
        (self.state_dir / "stack.json").unlink(missing_ok=True)
        self._lock.release()
        self._owns_state_dir = False

    def _drain(self, timeout_s: float) -> bool:
        """Deliver what the stream still holds (synchronously); True when nothing is left."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if sum(poller.poll_once() for poller in self._pollers) == 0 and all(
                    poller.lag() == 0 for poller in self._pollers
                ):
                    return True
        except Exception:
            log.exception("draining the streams failed")
        return False

    def pollers(self) -> list[Any]:
        return list(self._pollers)


def read_stack_file(state_dir: Path) -> dict[str, Any] | None:
    """The running stack's addresses; None when no live process holds the state dir (a stack.json
    left behind by `kill -9` is stale)."""
    path = state_dir / "stack.json"
    if not path.exists() or holder(state_dir) is None:
        return None
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return info
