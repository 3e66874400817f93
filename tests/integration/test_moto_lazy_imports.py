"""moto's Lambda and IAM are loaded only when they are used (bhiv.local.moto_memory): DynamoDB
writes to a streamed table and SQS calls leave them out, a table with a moto event source mapping
still takes moto's own path, IAM itself still works, and request authentication still starts
exactly when moto's setting says. Each case runs in a fresh interpreter (imports are
process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, sys
os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(name, None)
import boto3
from moto import mock_aws
from bhiv.local import moto_patch, template
moto_patch.install()
"""


def _run(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_stack_s_services_never_load_iam() -> None:
    out = _run(
        """
        with mock_aws():
            dynamodb, sqs = boto3.client("dynamodb"), boto3.client("sqs")
            queues = template.create_resources(dynamodb, sqs)
            dynamodb.put_item(TableName="BucketStatsTable", Item={"pk": {"S": "a"}, "sk": {"S": "b"}})
            dynamodb.describe_table(TableName="EventsTable")
            url = sqs.list_queues()["QueueUrls"][0]
            sqs.send_message(QueueUrl=url, MessageBody="x")
            sqs.receive_message(QueueUrl=url)
            dynamodb.put_item(TableName="EventsTable", Item={"event_id": {"S": "e1"}})  # a streamed table
            print(hasattr(sys.modules["moto.iam.models"], "load"), "moto.iam.access_control" in sys.modules)
            print("moto.awslambda" in sys.modules)
        """
    )
    assert out.splitlines() == ["True False", "False"]  # IAM's stand-in, no access control, no Lambda


def test_a_table_with_a_moto_event_source_mapping_takes_moto_s_own_path() -> None:
    out = _run(
        """
        from moto.dynamodb.models import dynamodb_backends
        with mock_aws():
            dynamodb = boto3.client("dynamodb")
            template.create_resources(dynamodb, boto3.client("sqs"))
            dynamodb.put_item(TableName="EventsTable", Item={"event_id": {"S": "e1"}})
            print("moto.awslambda" in sys.modules)
            table = dynamodb_backends["123456789012"]["us-east-1"].tables["EventsTable"]
            table.lambda_event_source_mappings["arn:aws:lambda:us-east-1:123456789012:function:f"] = object()
            try:
                dynamodb.put_item(TableName="EventsTable", Item={"event_id": {"S": "e2"}})
            except Exception:
                pass  # moto's Lambda looks for a function that does not exist
            print("moto.awslambda" in sys.modules)
        """
    )
    assert out.splitlines() == ["False", "True"]


def test_iam_used_through_moto_loads_moto_s_own_module_and_keys_map_to_their_account() -> None:
    out = _run(
        """
        stand_in = sys.modules["moto.iam.models"]
        with mock_aws():
            iam = boto3.client("iam")
            iam.create_user(UserName="u")
            key = iam.create_access_key(UserName="u")["AccessKey"]["AccessKeyId"]
            real = sys.modules["moto.iam.models"]
            print(real is not stand_in, real.iam_backends is stand_in.iam_backends)
            print(stand_in.get_account_id_from(key) == real.get_account_id_from(key) == "123456789012")
            stand_in.mark_account_as_visited("123456789012", key, "sqs", "us-east-1")
            print(real.iam_backends["123456789012"]["aws"].access_keys[key].last_used is not None)
            boto3.client("sqs").list_queues()  # moto's request setup, through moto's IAM now
        """
    )
    assert out.splitlines() == ["True True", "True", "True"]


@pytest.mark.parametrize("free_requests", [0, 2])
def test_authentication_starts_when_moto_s_setting_says(free_requests: int) -> None:
    out = _run(
        f"""
        from botocore.exceptions import ClientError
        from moto.core import set_initial_no_auth_action_count

        @set_initial_no_auth_action_count({free_requests})
        def calls():
            with mock_aws():
                sqs = boto3.client("sqs")
                answers = []
                for _ in range(3):
                    try:
                        sqs.list_queues()
                        answers.append("ok")
                    except ClientError as exc:
                        answers.append(exc.response["Error"]["Code"])
                return answers

        print(" ".join(calls()))
        """
    )
    answers = out.split()
    assert answers[:free_requests] == ["ok"] * free_requests
    assert all(answer != "ok" for answer in answers[free_requests:])  # unknown keys: refused
