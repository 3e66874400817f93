"""Structured JSON logging (Powertools Logger): one line per record, with the trace id.

Where the lines go depends on BHIV_CONSOLE_LOG:
* ``json`` (default, as in Lambda): JSON lines on stdout;
* ``human`` (`bhiv up`'s default): only warnings and errors on the console, as one short line each
  (the HTTP server prints a short line per request);
* ``off`` (the `bhiv` tools): nothing on the console, so a command's output is only its answer.
With BHIV_LOG_DIR set, every record also goes to <BHIV_LOG_DIR>/<service>.log as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from aws_lambda_powertools import Logger

from bhiv import fastjson

CONSOLE_MODES = ("json", "human", "off")
_SKIPPED_KEYS = frozenset({"timestamp", "level", "message", "service", "location", "sampling_rate"})


class HumanConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints a record as `HH:MM:SS service LEVEL message key=value ...` instead of JSON.

    It keeps Powertools' JSON formatter (append_keys works through it) and rewrites its output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = json.loads(self.format(record))
        except Exception:
            self.handleError(record)
            return
        clock = str(data.get("timestamp", ""))[11:19]
        extras = " ".join(
            f"{key}={value}" for key, value in data.items() if key not in _SKIPPED_KEYS and value not in (None, "")
        )
        line = f"{clock} {data.get('service', ''):<8} {data.get('level', '')} {data.get('message', '')}"
        try:
            self.stream.write(f"{line}  {extras}\n" if extras else f"{line}\n")
            self.flush()
        except Exception:
            self.handleError(record)


def console_mode() -> str:
    mode = os.environ.get("BHIV_CONSOLE_LOG", "json")
    return mode if mode in CONSOLE_MODES else "json"


def get_logger(service: str) -> Logger:
    mode = console_mode()
    handler: logging.Handler | None = None
    if mode == "off":
        handler = logging.NullHandler()
    elif mode == "human":
        handler = HumanConsoleHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
    logger = Logger(
        service=service,
        level=os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"),
        logger_handler=handler,
        json_serializer=fastjson.log_line,
    )
    log_dir = os.environ.get("BHIV_LOG_DIR")
    if log_dir and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        os.makedirs(log_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(log_dir, f"{service}.log"), encoding="utf-8")
        file_handler.setFormatter(logger.registered_formatter)
        logger.addHandler(file_handler)
    return logger


def attach_stack_logging(log_dir: str) -> None:
    """JSON lines for the local runtime's own loggers (`bhiv.local.*`: journal, compaction, stream
    mappings; `bhiv.console`) in <log_dir>/stack.log, like the services' logs; on the console as
    BHIV_CONSOLE_LOG says (human: warnings as short lines; json: every line; off: nothing)."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    runtime = logging.getLogger("bhiv")
    if getattr(runtime, "_bhiv_attached", False):
        return
    os.makedirs(log_dir, exist_ok=True)
    formatter = LambdaPowertoolsFormatter(service="stack", json_serializer=fastjson.log_line)
    handlers: list[logging.Handler] = [logging.FileHandler(os.path.join(log_dir, "stack.log"), encoding="utf-8")]
    mode = console_mode()
    if mode == "json":
        handlers.append(logging.StreamHandler())
    elif mode == "human":
        human = HumanConsoleHandler(sys.stderr)
        human.setLevel(logging.WARNING)
        handlers.append(human)
    for handler in handlers:
        handler.setFormatter(formatter)
        runtime.addHandler(handler)
    runtime.setLevel(logging.INFO)
    runtime.propagate = False
    runtime._bhiv_attached = True  # type: ignore[attr-defined]
