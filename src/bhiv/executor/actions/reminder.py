"""`reminder`: a one-time Amazon EventBridge Scheduler schedule that fires at `remind_at`.

At that time the scheduler sends the reminder (JSON: type, message, user_id, trace_id, step,
remind_at) to the target in env REMINDER_TARGET_ARN (the template's ReminderQueue, an SQS queue),
assuming the role in env REMINDER_ROLE_ARN. The schedule deletes itself after it has fired.

The schedule's name is derived from the trace id and the step, so a retry of the step names the
same schedule: the ConflictException it gets means an earlier attempt already scheduled the
reminder, and the step succeeds without a second one.

Fields: `message` (1..4,096 characters), `remind_at` (ISO 8601 date-time with a timezone, in the
future when validated; scheduled to the second, in UTC). `validate` reads the clock, which is
injectable (`ReminderAction(clock=...)`). Optional env REMINDER_SCHEDULE_GROUP (default "default").
Output: `{"schedule_name", "schedule_arn", "group", "schedule_expression", "remind_at", "created"}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from bhiv.executor.actions._common import aws_call, check_date_time, check_text, error_code, parse_date_time, setting
from bhiv.executor.actions.base import ActionContext, ActionFailed, FieldProblem
from bhiv.storage import aws

MAX_MESSAGE = 4096
NAME_MAX = 64  # EventBridge Scheduler: names match [0-9a-zA-Z-_.]+, 1..64 characters


def _utc_now() -> datetime:
    return datetime.now(UTC)


def schedule_name(trace_id: str, step: int) -> str:
    """Deterministic and unique per (trace id, step), within the Scheduler's charset and length.

    The readable part is the sanitised trace id; the hash keeps two trace ids that sanitise alike
    (`a:b`, `a/b`) apart.
    """
    digest = hashlib.sha256(f"{trace_id}\x00{step}".encode()).hexdigest()[:12]
    suffix = f"-{step}-{digest}"
    readable = re.sub(r"[^0-9A-Za-z_.-]+", "-", trace_id).strip("-.") or "trace"
    return f"bhiv-{readable[: NAME_MAX - len('bhiv-') - len(suffix)]}{suffix}"


def at_expression(when: datetime) -> str:
    return f"at({when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')})"


class ReminderAction:
    name: ClassVar[str] = "reminder"
    required: ClassVar[tuple[str, ...]] = ("message", "remind_at")

    def __init__(self, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        check_text(fields, "message", problems, max_len=MAX_MESSAGE)
        when = check_date_time(fields, "remind_at", problems)
        if when is not None:
            now = self._clock()
            now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
            if when <= now:
                problems.append(
                    FieldProblem(
                        "remind_at",
                        f"must be in the future (now is {now.astimezone(UTC).isoformat(timespec='seconds')})",
                    )
                )
        return problems

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        target_arn = setting("REMINDER_TARGET_ARN")
        role_arn = setting("REMINDER_ROLE_ARN")
        group = os.environ.get("REMINDER_SCHEDULE_GROUP") or "default"
        when = parse_date_time(str(fields["remind_at"]))
        if when is None or when.utcoffset() is None:  # validate() guarantees it; never schedule garbage
            raise ActionFailed("remind_at is not an ISO 8601 date-time with a timezone", retryable=False)
        remind_at = when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        name = schedule_name(context.trace_id, context.step)
        expression = at_expression(when)
        payload = {
            "type": "reminder",
            "message": fields["message"],
            "user_id": context.user_id,
            "trace_id": context.trace_id,
            "step": context.step,
            "remind_at": remind_at,
        }
        scheduler = aws.client("scheduler")
        created = True
        with aws_call("EventBridge Scheduler CreateSchedule"):
            try:
                arn = scheduler.create_schedule(
                    Name=name,
                    GroupName=group,
                    ScheduleExpression=expression,
                    ScheduleExpressionTimezone="UTC",
                    FlexibleTimeWindow={"Mode": "OFF"},
                    ActionAfterCompletion="DELETE",
                    Description=f"bhiv reminder for trace {context.trace_id}"[:512],
                    Target={"Arn": target_arn, "RoleArn": role_arn, "Input": json.dumps(payload)},
                    ClientToken=hashlib.sha256(name.encode()).hexdigest()[:64],
                )["ScheduleArn"]
            except ClientError as exc:
                if error_code(exc) != "ConflictException":
                    raise
                created = False  # an earlier attempt of this step already scheduled it
                arn = scheduler.get_schedule(Name=name, GroupName=group)["Arn"]
        return {
            "schedule_name": name,
            "schedule_arn": str(arn),
            "group": group,
            "schedule_expression": expression,
            "remind_at": remind_at,
            "created": created,
        }
