"""Structured JSON logging (Powertools Logger): one line per record, with the trace id."""

from __future__ import annotations

import logging
import os

from aws_lambda_powertools import Logger


def get_logger(service: str) -> Logger:
    logger = Logger(service=service, level=os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))
    log_dir = os.environ.get("BHIV_LOG_DIR")
    if log_dir and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        os.makedirs(log_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(log_dir, f"{service}.log"), encoding="utf-8")
        file_handler.setFormatter(logger.registered_formatter)
        logger.addHandler(file_handler)
    return logger


def attach_stack_logging(log_dir: str) -> None:
    """JSON lines for the local runtime's own loggers (`bhiv.local.*`: journal, compaction, stream
    mappings), on the console and in <log_dir>/stack.log, like the services' logs."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    runtime = logging.getLogger("bhiv.local")
    if getattr(runtime, "_bhiv_attached", False):
        return
    os.makedirs(log_dir, exist_ok=True)
    formatter = LambdaPowertoolsFormatter(service="stack")
    for handler in (logging.StreamHandler(), logging.FileHandler(os.path.join(log_dir, "stack.log"), encoding="utf-8")):
        handler.setFormatter(formatter)
        runtime.addHandler(handler)
    runtime.setLevel(logging.INFO)
    runtime.propagate = False
    runtime._bhiv_attached = True  # type: ignore[attr-defined]
