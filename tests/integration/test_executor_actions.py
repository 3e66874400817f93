"""The Executor's action adapters against moto: each one's real effect, idempotent retries, and
how failures are classified (retryable or not)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.models import MockAWS
from moto.ses.models import ses_backends
from moto.sns.models import sns_backends

from bhiv.executor.actions import REGISTRY
from bhiv.executor.actions.ai import AiAction, DeterministicLocalBackend
from bhiv.executor.actions.base import Action, ActionContext, ActionFailed
from bhiv.executor.actions.email import EmailAction
from bhiv.executor.actions.reminder import ReminderAction, schedule_name
from bhiv.executor.actions.task import TaskAction
from bhiv.executor.actions.whatsapp import WhatsAppAction
from bhiv.executor.engine import run_plan
from bhiv.executor.plan import Plan, RetryPolicy, Step
from bhiv.local.template import create_resources
from bhiv.storage import aws

REGION = "us-east-1"
_CLIENTS = aws.client  # the cached factory (a test may swap `aws.client` for another one)
SENDER = "no-reply@bhiv.example.com"
ROLE = "arn:aws:iam::123456789012:role/bhiv-scheduler"


@dataclass
class Moto:
    dynamodb: Any
    sqs: Any
    queue_arn: str


@pytest.fixture(scope="module")
def _moto_module() -> Iterator[tuple[MockAWS, Any, Any]]:
    """One in-process moto for the module, so boto3 clients (slow to build) are built once."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in {
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
            "BHIV_LOCAL": "1",
            "TASKS_TABLE": "TasksTable",
            "EMAIL_SENDER": SENDER,
            "REMINDER_ROLE_ARN": ROLE,
        }.items():
            env.setenv(key, value)
        for key in (
            "BHIV_AWS_ENDPOINT_URL",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AI_BACKEND",
            "REMINDER_SCHEDULE_GROUP",
        ):
            env.delenv(key, raising=False)
        _CLIENTS.cache_clear()
        try:
            with mock_aws() as mock:
                yield mock, boto3.client("dynamodb"), boto3.client("sqs")
        finally:
            _CLIENTS.cache_clear()


@pytest.fixture
def moto_env(_moto_module: tuple[MockAWS, Any, Any], monkeypatch: pytest.MonkeyPatch) -> Moto:
    """A fresh AWS for each test: every moto backend emptied, the template's tables and queues."""
    mock, dynamodb, sqs = _moto_module
    mock.reset()
    queues = create_resources(dynamodb, sqs)
    queue_arn = sqs.get_queue_attributes(QueueUrl=queues["ReminderQueue"], AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    monkeypatch.setenv("REMINDER_TARGET_ARN", queue_arn)
    return Moto(dynamodb, sqs, queue_arn)


def ctx(trace: str = "trace-1", step: int = 0, attempt: int = 1, user: str | None = "u-1") -> ActionContext:
    return ActionContext(trace_id=trace, user_id=user, step=step, attempt=attempt)


def tasks(moto: Moto) -> list[dict[str, Any]]:
    return list(moto.dynamodb.scan(TableName="TasksTable")["Items"])


@contextmanager
def answer_lost_once(client: Any, event: str) -> Iterator[None]:
    """The next call reaches the service and takes effect, but its answer is lost (a read timeout)."""
    state = {"fired": False}

    def handler(**kwargs: Any) -> None:
        if not state["fired"]:
            state["fired"] = True
            raise ReadTimeoutError(endpoint_url="https://aws.example")

    client.meta.events.register(f"after-call.{event}", handler)
    try:
        yield
    finally:
        client.meta.events.unregister(f"after-call.{event}", handler)


def in_future(minutes: int = 30) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).replace(microsecond=0).isoformat()


# --- task: DynamoDB ------------------------------------------------------------------------------


def test_task_is_stored_in_the_tasks_table(moto_env: Moto) -> None:
    fields = {"title": "Review lesson 4", "description": "before Friday", "due": "2030-06-07T17:00:00+05:30"}
    out = TaskAction().run(fields, ctx("trace-task", step=2))
    assert out["task_id"] == "trace-task:2" and out["created"] is True and out["title"] == "Review lesson 4"
    item = moto_env.dynamodb.get_item(TableName="TasksTable", Key={"task_id": {"S": "trace-task:2"}})["Item"]
    assert {k: next(iter(v.values())) for k, v in item.items()} == {
        "task_id": "trace-task:2",
        "title": "Review lesson 4",
        "description": "before Friday",
        "due": "2030-06-07T17:00:00+05:30",
        "user_id": "u-1",
        "trace_id": "trace-task",
        "step": "2",
        "status": "open",
        "created_at": out["created_at"],
    }
    json.dumps(out)  # the output goes into the workflow event


def test_task_without_optional_fields_or_user(moto_env: Moto) -> None:
    TaskAction().run({"title": "Just a title"}, ctx("trace-min", user=None))
    [item] = tasks(moto_env)
    assert set(item) == {"task_id", "title", "trace_id", "step", "status", "created_at"}


def test_task_retry_never_creates_a_second_task(moto_env: Moto) -> None:
    action = TaskAction()
    first = action.run({"title": "once"}, ctx(attempt=1))
    again = action.run({"title": "once"}, ctx(attempt=2))
    assert len(tasks(moto_env)) == 1
    assert again == {**first, "created": False}
    # another step of the same workflow is another task
    action.run({"title": "second step"}, ctx(step=1))
    assert sorted(i["task_id"]["S"] for i in tasks(moto_env)) == ["trace-1:0", "trace-1:1"]


def test_task_write_that_landed_but_timed_out_is_found_on_retry(moto_env: Moto) -> None:
    action = TaskAction()
    with answer_lost_once(aws.client("dynamodb"), "dynamodb.PutItem"), pytest.raises(ActionFailed) as failed:
        action.run({"title": "landed"}, ctx(attempt=1))
    assert failed.value.retryable is True
    out = action.run({"title": "landed"}, ctx(attempt=2))
    assert out["created"] is False and out["title"] == "landed"
    assert len(tasks(moto_env)) == 1


def test_task_into_a_missing_table_is_not_retried(moto_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_TABLE", "NoSuchTable")
    with pytest.raises(ActionFailed) as failed:
        TaskAction().run({"title": "x"}, ctx())
    assert failed.value.retryable is False and "ResourceNotFoundException" in str(failed.value)


def test_task_without_configuration_is_not_retried(moto_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKS_TABLE")
    with pytest.raises(ActionFailed) as failed:
        TaskAction().run({"title": "x"}, ctx())
    assert failed.value.retryable is False and "TASKS_TABLE" in str(failed.value)


# --- email: SES ----------------------------------------------------------------------------------


def test_email_is_sent_through_ses(moto_env: Moto) -> None:
    ses = aws.client("ses")
    assert SENDER not in ses.list_identities()["Identities"]
    action = EmailAction()
    fields = {"recipient": "asha@example.org", "subject": "Your lesson", "body": "Lesson 4 is ready.\nSee you."}
    out = action.run(fields, ctx())
    assert set(out) == {"message_id"} and out["message_id"]
    assert SENDER in ses.list_identities()["Identities"]  # verified lazily, in the local stack only
    [sent] = ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages
    assert (sent.id, sent.source, sent.destinations["ToAddresses"]) == (out["message_id"], SENDER, ["asha@example.org"])
    assert (sent.subject, sent.body) == ("Your lesson", "Lesson 4 is ready.\nSee you.")
    action.run({**fields, "subject": "Second"}, ctx(step=1))
    assert ses.get_send_quota()["SentLast24Hours"] == 2


def test_email_from_an_unverified_sender_in_the_cloud_is_rejected(
    moto_env: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BHIV_LOCAL")  # in the cloud the identity is provisioned, never verified here
    with pytest.raises(ActionFailed) as failed:
        EmailAction().run({"recipient": "a@example.org", "subject": "s", "body": "b"}, ctx())
    assert failed.value.retryable is False and "MessageRejected" in str(failed.value)
    assert ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages == []
    assert SENDER not in aws.client("ses").list_identities()["Identities"]


def test_email_throttling_and_outage_are_retryable(moto_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BHIV_LOCAL")
    fields = {"recipient": "a@example.org", "subject": "s", "body": "b"}
    with Stubber(aws.client("ses")) as stub:
        stub.add_client_error("send_email", "Throttling", "Maximum sending rate exceeded.", 400)
        stub.add_client_error("send_email", "ServiceUnavailable", "Service unavailable", 503)
        stub.add_client_error("send_email", "AccessDenied", "not authorized to perform ses:SendEmail", 403)
        outcomes = []
        for _ in range(3):
            with pytest.raises(ActionFailed) as failed:
                EmailAction().run(fields, ctx())
            outcomes.append(failed.value.retryable)
    assert outcomes == [True, True, False]


# --- whatsapp: SNS SMS ---------------------------------------------------------------------------


def test_whatsapp_message_is_published_as_sms(moto_env: Moto) -> None:
    out = WhatsAppAction().run({"recipient": "+919876543210", "message": "Lesson 4 is ready"}, ctx())
    assert set(out) == {"message_id"}
    backend = sns_backends[DEFAULT_ACCOUNT_ID][REGION]
    assert backend.sms_messages[out["message_id"]] == ("+919876543210", "Lesson 4 is ready")


def test_whatsapp_longest_valid_message_is_accepted_by_sns(moto_env: Moto) -> None:
    action = WhatsAppAction()
    fields = {"recipient": "+14155552671", "message": "m" * 1600}
    assert action.validate(fields) == []
    out = action.run(fields, ctx())
    assert sns_backends[DEFAULT_ACCOUNT_ID][REGION].sms_messages[out["message_id"]][1] == "m" * 1600


def test_whatsapp_throttling_is_retryable_and_a_bad_number_is_not(moto_env: Moto) -> None:
    fields = {"recipient": "+919876543210", "message": "hi"}
    with Stubber(aws.client("sns")) as stub:
        stub.add_client_error("publish", "ThrottledException", "Rate exceeded", 400)
        stub.add_client_error("publish", "InvalidParameter", "Invalid parameter: PhoneNumber", 400)
        outcomes = []
        for _ in range(2):
            with pytest.raises(ActionFailed) as failed:
                WhatsAppAction().run(fields, ctx())
            outcomes.append(failed.value.retryable)
    assert outcomes == [True, False]


# --- ai: pluggable backend -----------------------------------------------------------------------


def test_ai_deterministic_local_backend_is_reproducible_and_says_what_it_is(moto_env: Moto) -> None:
    action = AiAction()
    first = action.run({"prompt": "Summarise lesson 4 in one sentence."}, ctx())
    assert first == action.run({"prompt": "Summarise lesson 4 in one sentence."}, ctx("other-trace", attempt=2))
    assert first["backend"] == "deterministic-local" and "not a model" in first["response"]
    assert set(first) == {"backend", "model", "response", "response_id", "prompt_sha256"}
    other = action.run({"prompt": "Something else", "model": "small-1"}, ctx())
    assert other["response_id"] != first["response_id"] and other["model"] == "small-1"


def test_ai_unknown_backend_fails_without_retry(moto_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_BACKEND", "gpt-in-the-cloud")
    with pytest.raises(ActionFailed) as failed:
        AiAction().run({"prompt": "hi"}, ctx())
    assert failed.value.retryable is False and "gpt-in-the-cloud" in str(failed.value)


def test_ai_backend_is_pluggable(moto_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    class Echo:
        name = "echo"

        def complete(self, prompt: str, model: str | None, context: ActionContext) -> dict[str, Any]:
            return {"response": prompt.upper(), "trace": context.trace_id}

    action = AiAction(backends={"echo": Echo, "deterministic-local": DeterministicLocalBackend})
    monkeypatch.setenv("AI_BACKEND", "echo")
    assert action.run({"prompt": "hi"}, ctx()) == {
        "backend": "echo",
        "model": None,
        "response": "HI",
        "trace": "trace-1",
    }


# --- reminder: EventBridge Scheduler -------------------------------------------------------------


def test_reminder_is_a_one_time_schedule_targeting_the_reminder_queue(moto_env: Moto) -> None:
    remind_at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    local = remind_at.astimezone(__import__("datetime").timezone(timedelta(hours=5, minutes=30)))
    out = ReminderAction().run({"message": "Lesson 4 starts soon", "remind_at": local.isoformat()}, ctx("trace-rem"))
    expected_at = remind_at.strftime("%Y-%m-%dT%H:%M:%S")
    assert out["created"] is True and out["schedule_expression"] == f"at({expected_at})"
    assert out["remind_at"] == expected_at + "Z" and out["schedule_name"] == schedule_name("trace-rem", 0)
    schedule = aws.client("scheduler").get_schedule(Name=out["schedule_name"])
    assert schedule["Arn"] == out["schedule_arn"]
    assert (schedule["ScheduleExpression"], schedule["ScheduleExpressionTimezone"]) == (f"at({expected_at})", "UTC")
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"} and schedule["ActionAfterCompletion"] == "DELETE"
    target = schedule["Target"]
    assert (target["Arn"], target["RoleArn"]) == (moto_env.queue_arn, ROLE)
    assert json.loads(target["Input"]) == {
        "type": "reminder",
        "message": "Lesson 4 starts soon",
        "user_id": "u-1",
        "trace_id": "trace-rem",
        "step": 0,
        "remind_at": expected_at + "Z",
    }


def test_reminder_retry_schedules_once(moto_env: Moto) -> None:
    action, fields = ReminderAction(), {"message": "m", "remind_at": in_future()}
    first = action.run(fields, ctx(attempt=1))
    again = action.run(fields, ctx(attempt=2))
    assert again == {**first, "created": False}
    assert [s["Name"] for s in aws.client("scheduler").list_schedules()["Schedules"]] == [first["schedule_name"]]


def test_reminder_created_but_answer_lost_is_found_on_retry(moto_env: Moto) -> None:
    action, fields = ReminderAction(), {"message": "m", "remind_at": in_future()}
    with answer_lost_once(aws.client("scheduler"), "scheduler.CreateSchedule"), pytest.raises(ActionFailed) as failed:
        action.run(fields, ctx(attempt=1))
    assert failed.value.retryable is True
    out = action.run(fields, ctx(attempt=2))
    assert out["created"] is False
    assert len(aws.client("scheduler").list_schedules()["Schedules"]) == 1


def test_reminder_names_survive_awkward_trace_ids(moto_env: Moto) -> None:
    action = ReminderAction()
    for trace in ("diag:2030/06/01 12:00", "x" * 200):
        out = action.run({"message": "m", "remind_at": in_future()}, ctx(trace))
        assert aws.client("scheduler").get_schedule(Name=out["schedule_name"])["Name"] == out["schedule_name"]


def test_reminder_errors_are_classified(moto_env: Moto) -> None:
    fields = {"message": "m", "remind_at": in_future()}
    with Stubber(aws.client("scheduler")) as stub:
        stub.add_client_error("create_schedule", "InternalServerException", "oops", 500)
        stub.add_client_error("create_schedule", "ValidationException", "bad role", 400)
        outcomes = []
        for _ in range(2):
            with pytest.raises(ActionFailed) as failed:
                ReminderAction().run(fields, ctx())
            outcomes.append(failed.value.retryable)
    assert outcomes == [True, False]


# --- transport failures --------------------------------------------------------------------------


@contextmanager
def _unanswered_endpoint() -> Iterator[str]:
    """A port that accepts connections (into the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def _closed_endpoint() -> Iterator[str]:
    """A port nothing listens on (bound a moment ago, then released): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield url


def _client_at(endpoint: str) -> Any:
    config = Config(connect_timeout=0.5, read_timeout=0.2, retries={"max_attempts": 1})
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = boto3.client(service, region_name=REGION, endpoint_url=endpoint, config=config)
        return clients[service]

    return client


@pytest.mark.parametrize(
    ("endpoint", "error"), [("closed", "EndpointConnectionError"), ("unanswered", "ReadTimeoutError")]
)
def test_connection_refused_and_timeouts_are_retryable(
    moto_env: Moto, monkeypatch: pytest.MonkeyPatch, endpoint: str, error: str
) -> None:
    runs: list[tuple[Action, dict[str, Any]]] = [
        (TaskAction(), {"title": "x"}),
        (WhatsAppAction(), {"recipient": "+919876543210", "message": "m"}),
        (ReminderAction(), {"message": "m", "remind_at": in_future()}),
    ]
    with _closed_endpoint() if endpoint == "closed" else _unanswered_endpoint() as url:
        monkeypatch.setattr(aws, "client", _client_at(url))
        for action, fields in runs:
            with pytest.raises(ActionFailed) as failed:
                action.run(fields, ctx())
            assert failed.value.retryable is True, (action.name, str(failed.value))
            assert error in str(failed.value)


# --- all five through the registry and the engine ------------------------------------------------


def test_a_workflow_of_every_adapter_runs_through_the_registry(moto_env: Moto) -> None:
    steps_fields = [
        ("task", {"title": "Prepare lesson 5"}),
        ("email", {"recipient": "asha@example.org", "subject": "Lesson 5", "body": "Ready"}),
        ("whatsapp", {"recipient": "+919876543210", "message": "Lesson 5 is ready"}),
        ("ai", {"prompt": "Summarise lesson 5"}),
        ("reminder", {"message": "Lesson 5 tomorrow", "remind_at": in_future(60 * 24)}),
    ]
    for name, fields in steps_fields:
        assert REGISTRY[name].validate(fields) == [], name
    steps = tuple(Step(i, name, fields, RetryPolicy(3, 0.0, 1.0)) for i, (name, fields) in enumerate(steps_fields))
    result = run_plan(Plan("wf-all", "u-7", steps, single=False), REGISTRY, sleep=lambda s: None)
    assert result.status == "success", [s.to_json() for s in result.steps]
    assert [(s.action_type, s.status, s.attempts) for s in result.steps] == [
        (name, "succeeded", 1) for name, _ in steps_fields
    ]
    json.dumps([s.to_json() for s in result.steps])
    assert [i["task_id"]["S"] for i in tasks(moto_env)] == ["wf-all:0"]
    assert len(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages) == 1
    assert len(sns_backends[DEFAULT_ACCOUNT_ID][REGION].sms_messages) == 1
    assert aws.client("scheduler").get_schedule(Name=schedule_name("wf-all", 4))["Target"]["Arn"] == moto_env.queue_arn
