"""template.yaml as AWS would get it: SAM-transformed offline, linted, and checked against the code.

Everything here runs without an AWS account or network (a socket guard makes sure of it):

* the SAM source is transformed with aws-sam-translator, as CloudFormation's transform would (local
  ``CodeUri``/``ContentUri`` paths are first replaced by S3 URIs, as ``sam package`` does);
* cfn-lint lints the SAM source and the transformed template (cfn-lint 1.54+ skips the ``Events`` of
  SAM functions, so only the transformed template shows the event source mappings to the linter);
* the properties a user relies on are asserted: the events table survives and streams, every stream
  consumer bisects, retries a bounded number of times, reports item failures and parks what it
  cannot process in an SQS queue, and no role grants DynamoDB/SQS/SSM actions on ``Resource: "*"``;
* the local stack's tables (``bhiv.local.template.create_resources`` on moto) match the template's;
* every function's ``Handler`` resolves to a callable in its ``CodeUri``.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cfnlint.api import lint
from cfnlint.config import ManualArgs
from cfnlint.match import Match
from moto import mock_aws
from samtranslator.translator.transform import transform

from bhiv.local import template as local_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
PSEUDO_PARAMETERS = {"AWS::Region": REGION, "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}

# Services whose actions touch stored data or secrets: never on every resource of the account.
DATA_SERVICES = ("dynamodb:", "sqs:", "ssm:")
# AWS managed policies a role may attach. Their documents are not available offline, so each one is
# vetted here by hand: neither grants any DynamoDB, SQS or SSM action. (SAM's generated role for a
# DynamoDB event adds service-role/AWSLambdaDynamoDBExecutionRole, which allows GetRecords & co. on
# "*": the stream consumers therefore have explicit roles in template.yaml.)
VETTED_MANAGED_POLICIES = {
    "service-role/AWSLambdaBasicExecutionRole",  # logs:CreateLogGroup/CreateLogStream/PutLogEvents
    "AWSXrayWriteOnlyAccess",  # xray:PutTraceSegments/PutTelemetryRecords/GetSampling*
}


# --- loading and transforming -------------------------------------------------------------------


class _NoIamManagedPolicyLoader:
    """Stands in for samtranslator's ManagedPolicyLoader, which would list policies through IAM.

    The translator consults it only for managed policy *names* in a function's ``Policies`` that its
    bundled name-to-ARN map lacks; the template uses inline statements, so an empty map is enough.
    """

    def load(self) -> dict[str, str]:
        return {}


def _refuse_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """No socket connections and no AWS configuration: the checks must not need an account."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)
        mp.setattr(socket, "create_connection", _refuse_network)
        mp.setenv("AWS_DEFAULT_REGION", REGION)  # the translator asks a boto3 Session for the region
        for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    """The SAM source, short-form tags (!Ref, !GetAtt, !Sub) expanded as the local stack reads them."""
    doc: dict[str, Any] = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=local_template._CfnLoader)
    return doc


def _packaged(sam_template: dict[str, Any]) -> dict[str, Any]:
    """What ``sam package`` uploads: each local code directory becomes an S3 object."""
    packaged = copy.deepcopy(sam_template)
    for name, resource in packaged["Resources"].items():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            uri = props.get(key)
            if isinstance(uri, str) and not uri.startswith("s3://"):
                assert (ROOT / uri).is_dir(), f"{name}.{key} {uri!r} is not a directory of the repository"
                props[key] = f"s3://bhiv-artifacts/{uri.strip('/')}.zip"
    return packaged


@pytest.fixture(scope="module")
def cfn(sam: dict[str, Any], offline: None) -> dict[str, Any]:
    """The CloudFormation template the SAM transform produces (raises if the transform rejects it)."""
    loader: Any = _NoIamManagedPolicyLoader()  # duck-typed stand-in for ManagedPolicyLoader
    transformed: dict[str, Any] = transform(_packaged(sam), dict(PSEUDO_PARAMETERS), loader)
    return transformed


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def _lint(text: str) -> list[Match]:
    return list(lint(text, config=ManualArgs(regions=[REGION])))


def _describe(matches: list[Match]) -> list[str]:
    return [f"{m.rule.id} {m.message} at {'/'.join(map(str, getattr(m, 'path', [])))}" for m in matches]


# --- 1 and 2: transform and lint ------------------------------------------------------------------


def test_sam_source_lints_clean(offline: None) -> None:
    """cfn-lint validates SAM resources against SAM's own schema (Globals merged)."""
    assert _describe(_lint(TEMPLATE.read_text(encoding="utf-8"))) == []


def _translator_artifact(match: Match, cfn: dict[str, Any]) -> bool:
    """W1020 on a layer's LayerName is the transform's doing, not the template's.

    SAM resolves parameter references inside a LayerVersion's LayerName and leaves the Fn::Sub in
    place, so ``!Sub bhiv-shared-${Stage}`` comes out as ``{"Fn::Sub": "bhiv-shared-dev"}``, which
    W1020 ("Sub isn't needed") flags. The source's Sub has a variable; the SAM-source lint above
    still runs W1020 on it.
    """
    path = list(getattr(match, "path", []))
    if match.rule.id != "W1020" or len(path) < 4 or path[0] != "Resources":
        return False
    resource = cfn["Resources"].get(path[1]) or {}
    return resource.get("Type") == "AWS::Lambda::LayerVersion" and path[2:4] == ["Properties", "LayerName"]


def test_transformed_template_lints_clean(cfn: dict[str, Any]) -> None:
    matches = _lint(json.dumps(cfn))
    assert _describe([m for m in matches if not _translator_artifact(m, cfn)]) == []


# --- 3: properties of the deployed resources ------------------------------------------------------


def test_events_table_is_durable_and_streams_new_images(cfn: dict[str, Any]) -> None:
    table = cfn["Resources"]["EventsTable"]
    props = table["Properties"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert props["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    assert table.get("DeletionPolicy") == "Retain"
    assert table.get("UpdateReplacePolicy") == "Retain"


def _ref(value: Any) -> str | None:
    """Logical id named by a Ref or GetAtt, else None."""
    if isinstance(value, dict) and len(value) == 1:
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else target.split(".", 1)[0])
    return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _inline_statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    props = resource.get("Properties") or {}
    if resource["Type"] == "AWS::IAM::Role":
        policies = []
        for policy in props.get("Policies") or []:
            # a conditional policy ({"Fn::If": [condition, policy, AWS::NoValue]}) counts as granted
            branches = policy["Fn::If"][1:] if "Fn::If" in policy else [policy]
            policies += [branch for branch in branches if "PolicyDocument" in branch]
        documents = [policy["PolicyDocument"] for policy in policies]
    else:  # AWS::IAM::Policy, AWS::IAM::ManagedPolicy
        documents = [props["PolicyDocument"]]
    return [statement for doc in documents for statement in _as_list(doc.get("Statement") or [])]


def _allows(role: dict[str, Any], action: str, resource: Any) -> bool:
    for statement in _inline_statements(role):
        if statement.get("Effect") != "Allow":
            continue
        if action in _as_list(statement.get("Action")) and resource in _as_list(statement.get("Resource")):
            return True
    return False


def _stream_mappings(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function logical id -> properties of its DynamoDB-stream event source mapping."""
    mappings: dict[str, dict[str, Any]] = {}
    for name, mapping in _of_type(cfn, "AWS::Lambda::EventSourceMapping").items():
        props = mapping["Properties"]
        source = _ref(props["EventSourceArn"])
        if source and cfn["Resources"][source]["Type"] == "AWS::DynamoDB::Table":
            function = _ref(props["FunctionName"])
            assert function is not None, f"{name} names its function without a Ref"
            assert function not in mappings, f"{function} has two stream mappings"
            mappings[function] = props
    return mappings


def test_stream_consumers_bisect_retry_boundedly_and_park_failures(cfn: dict[str, Any]) -> None:
    mappings = _stream_mappings(cfn)
    assert "BucketStatsFunction" in mappings
    assert "KarmaStreamFunction" in mappings
    for function, props in mappings.items():
        assert props["BisectBatchOnFunctionError"] is True, function
        retries = props["MaximumRetryAttempts"]
        assert isinstance(retries, int) and 0 <= retries <= 10_000, function  # -1 (the default) is infinite
        age = props["MaximumRecordAgeInSeconds"]
        assert isinstance(age, int) and 60 <= age <= 604_800, function  # -1 (the default) is infinite
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function
        queue = _ref(props["DestinationConfig"]["OnFailure"]["Destination"])
        assert queue is not None, function
        assert cfn["Resources"][queue]["Type"] == "AWS::SQS::Queue", function

        # The role must let the function read that stream and park records in that queue, or
        # CloudFormation fails to create the mapping / Lambda fails to deliver to the destination.
        role_name = _ref(cfn["Resources"][function]["Properties"]["Role"])
        assert role_name is not None, function
        role = cfn["Resources"][role_name]
        for action in ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"):
            allowed = _allows(role, action, props["EventSourceArn"])
            assert allowed, f"{role_name} has no inline statement allowing {action} on {function}'s stream"
        allowed = _allows(role, "sqs:SendMessage", {"Fn::GetAtt": [queue, "Arn"]})
        assert allowed, f"{role_name} has no inline statement allowing sqs:SendMessage to {queue}"


def _managed_policy_name(arn: Any) -> str:
    text = arn if isinstance(arn, str) else str((arn or {}).get("Fn::Sub", arn))
    return text.split(":policy/", 1)[-1]


def test_no_role_grants_data_actions_on_every_resource(cfn: dict[str, Any]) -> None:
    policy_types = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    holders = {name: res for name, res in cfn["Resources"].items() if res["Type"] in policy_types}
    assert len(_of_type(cfn, "AWS::IAM::Role")) >= len(_of_type(cfn, "AWS::Lambda::Function"))

    broad: list[str] = []
    for name, resource in holders.items():
        for arn in (resource.get("Properties") or {}).get("ManagedPolicyArns") or []:
            if _managed_policy_name(arn) not in VETTED_MANAGED_POLICIES:
                broad.append(f"{name}: managed policy {arn} (not vetted; its contents cannot be checked offline)")
        for statement in _inline_statements(resource):
            if statement.get("Effect") != "Allow":
                continue
            actions = [str(a).lower() for a in _as_list(statement.get("Action") or statement.get("NotAction"))]
            touches_data = "NotAction" in statement or any(a == "*" or a.startswith(DATA_SERVICES) for a in actions)
            resources = _as_list(statement.get("Resource", []))
            if touches_data and ("NotResource" in statement or "*" in resources):
                broad.append(f"{name}: {statement}")
    assert broad == []


# --- 4: the local stack's tables are the template's --------------------------------------------------


def _attributes(definitions: list[dict[str, str]]) -> list[tuple[str, str]]:
    return sorted((d["AttributeName"], d["AttributeType"]) for d in definitions)


def _keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def _projection(projection: dict[str, Any]) -> tuple[str, list[str]]:
    return projection["ProjectionType"], sorted(projection.get("NonKeyAttributes") or [])


def _indexes(indexes: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {ix["IndexName"]: (_keys(ix["KeySchema"]), _projection(ix["Projection"])) for ix in indexes or []}


@pytest.fixture
def local_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "BHIV_TEMPLATE", "BHIV_AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        yield boto3.client


def test_local_stack_creates_the_templates_tables(cfn: dict[str, Any], local_aws: Callable[[str], Any]) -> None:
    dynamodb = local_aws("dynamodb")
    local_template.create_resources(dynamodb, local_aws("sqs"))

    tables = _of_type(cfn, "AWS::DynamoDB::Table")
    assert sorted(dynamodb.list_tables()["TableNames"]) == sorted(tables)
    for name, resource in tables.items():
        want = resource["Properties"]
        got = dynamodb.describe_table(TableName=name)["Table"]
        assert _keys(got["KeySchema"]) == _keys(want["KeySchema"]), name
        assert _attributes(got["AttributeDefinitions"]) == _attributes(want["AttributeDefinitions"]), name
        assert _indexes(got.get("GlobalSecondaryIndexes")) == _indexes(want.get("GlobalSecondaryIndexes")), name
        assert _indexes(got.get("LocalSecondaryIndexes")) == _indexes(want.get("LocalSecondaryIndexes")), name
        want_stream = (want.get("StreamSpecification") or {}).get("StreamViewType")
        got_stream = got.get("StreamSpecification") or {}
        assert (got_stream.get("StreamViewType") if got_stream.get("StreamEnabled") else None) == want_stream, name
        want_ttl = want.get("TimeToLiveSpecification") or {}
        got_ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if want_ttl.get("Enabled"):
            assert got_ttl.get("TimeToLiveStatus") == "ENABLED", name
            assert got_ttl.get("AttributeName") == want_ttl["AttributeName"], name
        else:
            assert got_ttl.get("TimeToLiveStatus") in (None, "DISABLED"), name


# --- 5: every Handler resolves ------------------------------------------------------------------------


def _load_module(code_dir: Path, module: str, unique_name: str) -> Any:
    """Import ``module`` from ``code_dir`` as Lambda would (code dir first on sys.path).

    Under a unique name: every function's entry module is called ``app`` (see ARCHITECTURE.md 5).
    Sibling modules imported from ``code_dir`` are dropped again so that functions do not share them.
    """
    path = code_dir / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{path} does not exist"
    spec = importlib.util.spec_from_file_location(unique_name, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.path.insert(0, str(code_dir))
    try:
        spec.loader.exec_module(loaded)
    finally:
        sys.path.remove(str(code_dir))
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if Path(origin).resolve().is_relative_to(code_dir.resolve()):
                del sys.modules[name]
    return loaded


def test_every_function_handler_resolves_to_a_callable(sam: dict[str, Any]) -> None:
    globals_ = (sam.get("Globals") or {}).get("Function") or {}
    functions = _of_type(sam, "AWS::Serverless::Function")
    assert functions
    modules: dict[tuple[str, str], Any] = {}
    for name, resource in functions.items():
        props = {**globals_, **resource["Properties"]}
        code_dir = ROOT / props["CodeUri"]
        module_name, _, attribute = props["Handler"].rpartition(".")
        assert module_name and attribute, f"{name}: Handler {props['Handler']!r} is not module.attribute"
        key = (str(code_dir), module_name)
        if key not in modules:
            unique = f"_template_handler_{len(modules)}_{code_dir.name}_{module_name.replace('.', '_')}"
            modules[key] = _load_module(code_dir, module_name, unique)
        handler = getattr(modules[key], attribute, None)
        assert callable(handler), f"{name}: {props['Handler']} in {props['CodeUri']} is not callable"
        inspect.signature(handler).bind({}, None)  # Lambda calls handler(event, context)


# --- 6: alarms and log retention ------------------------------------------------------------------------


def _alarms(cfn: dict[str, Any], namespace: str, metric: str) -> dict[str, dict[str, Any]]:
    """Logical id of the resource an alarm watches (its only dimension) -> the alarm's properties."""
    watched: dict[str, dict[str, Any]] = {}
    for props in (res["Properties"] for res in _of_type(cfn, "AWS::CloudWatch::Alarm").values()):
        if props.get("Namespace") == namespace and props.get("MetricName") == metric:
            (dimension,) = props["Dimensions"]
            target = _ref(dimension["Value"])
            assert target is not None, props
            watched[target] = props
    return watched


def _notifies_the_topic(props: dict[str, Any]) -> bool:
    topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    return props.get("AlarmActions") == topic


def test_every_dead_letter_queue_alarms_when_it_holds_a_message(cfn: dict[str, Any]) -> None:
    queues = {_ref(p["DestinationConfig"]["OnFailure"]["Destination"]) for p in _stream_mappings(cfn).values()}
    assert queues == {"BucketStatsDLQ", "KarmaDLQ"}
    alarms = _alarms(cfn, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
    for queue in queues:
        props = alarms[str(queue)]
        assert props["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
        assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0), queue
        assert _notifies_the_topic(props), queue


def test_every_stream_consumer_alarms_when_it_falls_behind(cfn: dict[str, Any]) -> None:
    alarms = _alarms(cfn, "AWS/Lambda", "IteratorAge")
    for function in _stream_mappings(cfn):
        props = alarms[function]
        assert props["Dimensions"][0]["Name"] == "FunctionName"
        assert props["Statistic"] == "Maximum", function
        assert props["ComparisonOperator"] == "GreaterThanThreshold", function
        assert 0 < props["Threshold"] <= 300_000, function  # milliseconds behind the stream
        assert _notifies_the_topic(props), function


def test_every_function_alarms_on_errors_and_keeps_logs_for_a_bounded_time(cfn: dict[str, Any]) -> None:
    functions = set(_of_type(cfn, "AWS::Lambda::Function"))
    assert len(functions) == 6
    alarms = _alarms(cfn, "AWS/Lambda", "Errors")
    assert set(alarms) == functions
    for function, props in alarms.items():
        assert props["Dimensions"][0]["Name"] == "FunctionName"
        assert (props["Statistic"], props["ComparisonOperator"], props["Threshold"]) == (
            "Sum",
            "GreaterThanThreshold",
            0,
        ), function
        assert _notifies_the_topic(props), function

    groups = {
        res["Properties"]["LogGroupName"]["Fn::Sub"]: res["Properties"]
        for res in _of_type(cfn, "AWS::Logs::LogGroup").values()
    }
    assert set(groups) == {f"/aws/lambda/${{{function}}}" for function in functions}
    for props in groups.values():
        assert props["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
    assert cfn["Parameters"]["LogRetentionInDays"]["Default"] == 30
    assert cfn["Parameters"]["AlarmTopicArn"]["Default"] == ""
