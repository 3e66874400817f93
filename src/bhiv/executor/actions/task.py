"""`task`: create a task, an item in the DynamoDB table named by env TASKS_TABLE (key `task_id`).

The task id is derived from the workflow's trace id and the step index, and the item is written
only if it does not exist yet: a retry (after a timeout whose write did land, say) finds the task
the earlier attempt created and reports it, never a second task.

Fields: `title` (required, 1..500 characters), `description` (optional string), `due` (optional
ISO 8601 date-time). Output: `{"task_id", "title", "due", "created_at", "created"}`, where
`created` is false when an earlier attempt had already made the task.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from bhiv.executor.actions._common import aws_call, check_date_time, check_text, error_code, setting
from bhiv.executor.actions.base import ActionContext, FieldProblem
from bhiv.storage import aws

MAX_TITLE = 500
MAX_DESCRIPTION = 10_000  # keeps the item far below DynamoDB's 400 KB


def task_id(context: ActionContext) -> str:
    return f"{context.trace_id}:{context.step}"


class TaskAction:
    name: ClassVar[str] = "task"
    required: ClassVar[tuple[str, ...]] = ("title",)

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        check_text(fields, "title", problems, max_len=MAX_TITLE)
        check_text(fields, "description", problems, required=False, max_len=MAX_DESCRIPTION)
        check_date_time(fields, "due", problems, required=False)
        return problems

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        table = setting("TASKS_TABLE")
        key = task_id(context)
        created_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        due = fields.get("due")
        item: dict[str, Any] = {
            "task_id": {"S": key},
            "title": {"S": fields["title"]},
            "trace_id": {"S": context.trace_id},
            "step": {"N": str(context.step)},
            "status": {"S": "open"},
            "created_at": {"S": created_at},
        }
        if fields.get("description") is not None:
            item["description"] = {"S": fields["description"]}
        if due is not None:
            item["due"] = {"S": due}
        if context.user_id is not None:
            item["user_id"] = {"S": context.user_id}
        with aws_call("DynamoDB PutItem (task)"):
            try:
                aws.client("dynamodb").put_item(
                    TableName=table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(task_id)",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                existing = exc.response.get("Item") or aws.client("dynamodb").get_item(
                    TableName=table, Key={"task_id": {"S": key}}, ConsistentRead=True
                ).get("Item", {})
                return _output(key, existing, created=False)
        return _output(key, item, created=True)


def _output(key: str, item: dict[str, Any], *, created: bool) -> dict[str, Any]:
    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value["S"]) if isinstance(value, dict) and "S" in value else None

    return {
        "task_id": key,
        "title": text("title"),
        "due": text("due"),
        "created_at": text("created_at"),
        "created": created,
    }
