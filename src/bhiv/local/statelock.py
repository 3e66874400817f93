"""One stack per state directory: an exclusive, non-blocking lock taken before anything is touched.

The lock is `flock` on `<state-dir>/stack.lock`, so the kernel releases it when the holder dies,
even by `kill -9`: a stale file never blocks a restart. The file holds the holder's pid and
addresses (JSON), which is what a refused second start reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

LOCK_NAME = "stack.lock"


class StateDirInUse(Exception):
    """Another live process holds the state directory."""

    def __init__(self, state_dir: Path, holder: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.holder = holder
        pid = holder.get("pid", "unknown")
        urls = holder.get("urls") or {}
        where = ", ".join(f"{name} {url}" for name, url in urls.items()) or "still starting"
        super().__init__(
            f"the state dir {state_dir} is in use by a running stack (pid {pid}; {where}). "
            "Stop that stack first (Ctrl-C or `kill <pid>`), or give this one another --state-dir."
        )


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock or raise StateDirInUse at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StateDirInUse(self.path.parent, holder) from None
        self._fd = fd
        self.update(info)

    def update(self, info: dict[str, Any]) -> None:
        if self._fd is None:
            return
        data = json.dumps(info).encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def holder(state_dir: Path) -> dict[str, Any] | None:
    """The live stack holding `state_dir` ({"pid", "urls", ...}), or None when nobody does."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"pid": "unknown"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 65536, 0)
        value = json.loads(data.decode("utf-8")) if data else {}
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}
