"""What `bhiv up` prints on its terminal: one short human line per request, warnings as short lines."""

from __future__ import annotations

import io
import json
import logging

from bhiv.console.data import log_time, summarize_dlq_message
from bhiv.local.requestlog import CONSOLE_USER_AGENT, RequestLog
from bhiv.logs import HumanConsoleHandler


def test_a_request_is_one_short_line_with_its_trace_and_error_code() -> None:
    out = io.StringIO()
    log = RequestLog(out)
    log.print_lines = True
    log.record("bucket", "POST", "/core/write-event", 201, 0.0021, "curl", b'{"event_data": {"trace_id": "t-9"}}', "{}")
    body = json.dumps({"success": False, "error": {"code": "user_not_found"}})
    log.record("karma", "GET", "/api/v1/karma/nobody", 404, 0.001, "curl", None, body)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "bucket" in lines[0] and "POST" in lines[0] and " 201 " in lines[0] and lines[0].endswith("trace=t-9")
    assert lines[1].endswith("user_not_found") and not lines[1].startswith("{")
    assert log.counts() == {"bucket": 1, "karma": 1}


def test_the_consoles_own_requests_and_health_probes_are_not_printed_or_counted() -> None:
    out = io.StringIO()
    log = RequestLog(out)
    log.print_lines = True
    log.record("bucket", "GET", "/core/events", 200, 0.001, CONSOLE_USER_AGENT, None, "{}")
    log.record("bucket", "GET", "/health", 200, 0.001, "python-urllib3", None, "{}")
    log.paused = True
    log.record("bucket", "GET", "/core/events", 200, 0.001, "curl", None, "{}")
    assert out.getvalue() == ""
    assert log.counts() == {"bucket": 1}  # paused lines still count for the console's rates


def test_warnings_are_printed_as_one_human_line() -> None:
    from aws_lambda_powertools import Logger

    stream = io.StringIO()
    handler = HumanConsoleHandler(stream)
    logger = Logger(service="human-test", logger_handler=handler)
    handler.setLevel(logging.WARNING)
    logger.info("not shown")
    logger.warning("Karma rejected event", event_id="evt_1", reason="unknown action")
    (line,) = stream.getvalue().splitlines()
    assert "human-test" in line and "WARNING Karma rejected event" in line
    assert "event_id=evt_1" in line and "reason=unknown action" in line and "{" not in line


def test_powertools_timestamps_become_iso_8601() -> None:
    assert log_time("2026-01-02 03:04:05,678+0000") == "2026-01-02T03:04:05.678+00:00"


def test_a_dead_letter_is_summarised_with_its_events() -> None:
    image = {"event_id": {"S": "evt_1"}, "event_data": {"S": json.dumps({"event_type": "life_event", "user_id": "u"})}}
    message = {
        "message_id": "m-1",
        "sent_at": "2026-01-01T00:00:00Z",
        "body": {
            "requestContext": {
                "functionArn": "arn:aws:lambda:x:1:function:KarmaStreamFunction",
                "approximateInvokeCount": 6,
            },
            "responseContext": {"errorMessage": "batchItemFailures: 1 item(s)"},
            "records": [{"dynamodb": {"NewImage": image, "SequenceNumber": "1"}}],
        },
    }
    summary = summarize_dlq_message(message)
    assert summary["function"] == "KarmaStreamFunction" and summary["attempts"] == 6
    assert summary["events"][0]["event_id"] == "evt_1" and summary["events"][0]["user_id"] == "u"
