"""Run one function outside `bhiv up` (e.g. `chalice local`) against a running local stack.

`bhiv up` publishes `<state-dir>/stack.json` (its AWS endpoint, URLs, auth mode, credentials).
A function started on its own calls `attach_from_env()` when its module loads: with
`BHIV_STATE_DIR` (or the `BHIV_LOCAL_STACK` that `.chalice/config.json` sets) naming that state
dir, it points boto3 at the stack's endpoint and takes the same tables, credentials and auth mode
the stack gives its own copy of the function. In Lambda neither variable is set: nothing happens.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("bhiv.local.attach")

DEFAULT_ENDPOINT = "http://127.0.0.1:8005"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bhiv-local", "AWS_SECRET_ACCESS_KEY": "bhiv-local"}


def attach_from_env(function: str | None = None) -> dict[str, str]:
    """Set this process's environment from a running stack; returns what was set ({} when off)."""
    state = os.environ.get("BHIV_STATE_DIR") or os.environ.get("BHIV_LOCAL_STACK")
    function = function or os.environ.get("BHIV_FUNCTION")
    if not state or not function:
        return {}
    env = stack_environment(Path(state).expanduser().resolve(), function)
    os.environ.update(env)
    return env


def stack_environment(state_dir: Path, function: str) -> dict[str, str]:
    """The environment `bhiv up` gives `function` (a logical id in template.yaml), reached over
    the stack's AWS endpoint instead of in-process."""
    from bhiv.local import template

    info: dict[str, Any] = {}
    stack_file = state_dir / "stack.json"
    if stack_file.exists():
        info = json.loads(stack_file.read_text(encoding="utf-8"))
    else:
        log.warning("no running stack at %s (stack.json missing): start `bhiv up` first", state_dir)
    urls: dict[str, str] = info.get("urls") or {}
    env = {
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "BHIV_AWS_ENDPOINT_URL": urls.get("aws", DEFAULT_ENDPOINT),
        "BHIV_CREDENTIALS_FILE": str(info.get("credentials") or state_dir / "credentials.json"),
        "BHIV_AUTH_DISABLED": "0" if info.get("auth", True) else "1",
        "BHIV_LOCAL": "1",
        **template.function_environment(function),
    }
    if "bucket" in urls and not os.environ.get("BUCKET_URL"):
        env["BUCKET_URL"] = urls["bucket"]
    for key, value in LOCAL_CREDENTIALS.items():  # moto takes any; never a real account's keys
        env[key] = value
    return env
