"""A deploy rehearsal on the embedded AWS: the built template as a CloudFormation stack on moto.

`make rehearse` (called by .ci/run after `make test`; too slow for the ~60 s `make test` budget):

1. `scripts/build_template.py`'s template is transformed with aws-sam-translator, as CloudFormation's
   `AWS::Serverless-2016-10-31` transform would, and `make package`'s artifacts (the layer and each
   function's code) are uploaded as zips to S3 on a moto server;
2. the SSM parameters of docs/deploy.md step 2 are created, and the template is created as a stack
   (`create_stack`, no account, no network): every resource moto's CloudFormation can create must
   reach CREATE_COMPLETE; the types it cannot create are listed in ``MOTO_CANNOT_CREATE``, with why;
3. the *built* handlers are invoked in a clean interpreter with the environment the stack gave each
   deployed function (physical table names, queue URLs, ARNs): a write and a read through the
   Bucket's API proxy, the stream records of the stack's events table through both consumers,
   Karma's API;
4. the REST APIs the stack created from the definitions are checked route by route against the
   specs: every operation has its method, a Lambda proxy integration to the deployed function that
   serves it, and the spec's response statuses.

What this cannot show (moto does not model it): IAM evaluation, request validation and gateway
responses at the edge (moto imports paths, methods and integrations only: they are checked on the
generated template in tests/unit/test_build_template.py), throttling, the event source mappings
actually invoking the functions (moto needs Docker for that), alarms, and timing.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.apigateway import models as apigateway_models
from moto.dynamodb.models import dynamodb_backends
from moto.server import ThreadedMotoServer
from samtranslator.translator.transform import transform
from scripts import build_template

from bhiv.auth import hash_token, new_token
from bhiv.local.streams import lambda_record
from tests.package.test_built_artifacts import AWS_ENV, RUNNER, Built, _reset, api_event, built
from tests.unit.test_template import PSEUDO_PARAMETERS, _NoIamManagedPolicyLoader

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "bhiv-dev"
ARTIFACTS_BUCKET = "bhiv-artifacts"
__all__ = ["built"]  # the module-scoped fixture that runs scripts/package.py

pytestmark = [pytest.mark.rehearsal, pytest.mark.filterwarnings("ignore:Tried to parse AWS")]

# Resource types in the transformed template that moto 5.2.5's CloudFormation has no handler for: it
# records them without creating anything (a real deployment creates them).
MOTO_CANNOT_CREATE = {
    "AWS::CloudWatch::Alarm": "moto's CloudFormation has no AWS::CloudWatch::Alarm handler",
    "AWS::ApiGateway::Stage": "no handler: the deployments exist, the stages (and their throttling) do not",
    "AWS::ApiGateway::UsagePlan": "no handler for usage plans",
}


@dataclass
class Stack:
    url: str
    cfn: dict[str, Any]
    physical: dict[str, str]  # logical id -> physical id
    tokens: dict[str, str]

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION)


def _resolve_conditions(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """``Fn::If`` replaced by its branch and ``AWS::NoValue`` dropped, as CloudFormation does.

    moto's CloudFormation leaves ``AWS::NoValue`` in lists (a role's Policies then holds a null
    and its creation fails), so the rehearsal resolves the template's few conditions itself.
    """
    no_value = object()

    def value(node: Any) -> Any:
        if isinstance(node, dict) and "Ref" in node and node["Ref"] in parameters:
            return parameters[node["Ref"]]
        return node

    def holds(condition: dict[str, Any]) -> bool:
        if "Fn::Equals" in condition:
            left, right = (value(side) for side in condition["Fn::Equals"])
            return bool(left == right)
        if "Fn::Not" in condition:
            return not holds(condition["Fn::Not"][0])
        if "Condition" in condition:
            return holds(template["Conditions"][condition["Condition"]])
        raise AssertionError(f"condition the rehearsal cannot evaluate: {condition}")

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                name, when_true, when_false = node["Fn::If"]
                return resolve(when_true if holds(template["Conditions"][name]) else when_false)
            if node == {"Ref": "AWS::NoValue"}:
                return no_value
            resolved = {key: resolve(item) for key, item in node.items()}
            return {key: item for key, item in resolved.items() if item is not no_value}
        if isinstance(node, list):
            return [item for item in map(resolve, node) if item is not no_value]
        return node

    out = copy.deepcopy(template)
    out["Resources"] = resolve(out["Resources"])
    return out


def _create_rest_api_with_its_body(
    cls: Any, /, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **_: Any
) -> Any:
    """moto's AWS::ApiGateway::RestApi ignores ``Body`` (and requires ``Name``): import it, as CloudFormation does."""
    props = cloudformation_json["Properties"]
    body = props.get("Body") or {}
    backend = apigateway_models.apigateway_backends[account_id][region_name]
    api = backend.create_rest_api(name=props.get("Name") or body["info"]["title"], description="")
    if body:
        backend.put_rest_api(api.id, body, fail_on_warnings=False, mode="overwrite")
    return api


def _zip(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    original = apigateway_models.RestAPI.create_from_cloudformation_json
    apigateway_models.RestAPI.create_from_cloudformation_json = classmethod(_create_rest_api_with_its_body)  # type: ignore[method-assign,assignment]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        out = tmp_path_factory.mktemp("rehearsal")
        source = build_template.load(ROOT / "template.yaml")
        sam = build_template.build(source, ROOT, ROOT, out)
        s3 = boto3.client("s3", endpoint_url=url, region_name=REGION)
        s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
        for name, resource in sam["Resources"].items():
            props = resource.get("Properties") or {}
            if "ContentUri" in props:  # the layer `make package` built
                s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=f"{name}.zip", Body=_zip(built.layer.parent))
                props["ContentUri"] = f"s3://{ARTIFACTS_BUCKET}/{name}.zip"
            if "CodeUri" in props:
                s3.put_object(
                    Bucket=ARTIFACTS_BUCKET,
                    Key=f"{name}.zip",
                    Body=_zip(built.function_dir(str(source["Resources"][name]["Properties"]["CodeUri"]))),
                )
                props["CodeUri"] = f"s3://{ARTIFACTS_BUCKET}/{name}.zip"
        cfn = transform(sam, dict(PSEUDO_PARAMETERS), _NoIamManagedPolicyLoader())
        parameters = {name: str(spec.get("Default", "")) for name, spec in cfn["Parameters"].items()}
        deployable = _resolve_conditions(cfn, parameters)
        for spec in deployable["Parameters"].values():
            # Ref to an AWS::SSM::Parameter::Name parameter is the name; moto resolves it to the
            # (encrypted) value, so the rehearsal passes the name as a plain String
            if spec["Type"] == "AWS::SSM::Parameter::Name":
                spec["Type"] = "String"

        tokens = {"bhiv_core": new_token(), "workflow_executor": new_token()}
        ssm = boto3.client("ssm", endpoint_url=url, region_name=REGION)
        hashes = {requester: hash_token(token) for requester, token in tokens.items()}
        ssm.put_parameter(Name=parameters["TokenHashesParameter"], Value=json.dumps(hashes), Type="SecureString")
        ssm.put_parameter(
            Name=parameters["ExecutorTokenParameter"], Value=tokens["workflow_executor"], Type="SecureString"
        )

        cloudformation = boto3.client("cloudformation", endpoint_url=url, region_name=REGION)
        cloudformation.create_stack(
            StackName=STACK,
            TemplateBody=json.dumps(deployable),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": "Stage", "ParameterValue": "dev"}],
        )
        deadline = time.monotonic() + 120
        while True:
            status = cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]
            if not status["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling a status, with a deadline
        assert status["StackStatus"] == "CREATE_COMPLETE", status
        resources = cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if r.get("PhysicalResourceId")}
        # moto hands a table's stream records to its event source mappings' functions, which it can
        # only run in Docker: without Docker the records are dropped. The mappings stay (checked
        # below); the rehearsal detaches them and plays their part, as the local stack's poller does.
        table = dynamodb_backends["123456789012"][REGION].tables[physical["EventsTable"]]
        table.lambda_event_source_mappings.clear()
        yield Stack(url=url, cfn=deployable, physical=physical, tokens=tokens)
    finally:
        _reset(url)
        server.stop()
        apigateway_models.RestAPI.create_from_cloudformation_json = original  # type: ignore[method-assign]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_every_resource_moto_can_create_reaches_create_complete(stack: Stack) -> None:
    cloudformation = stack.client("cloudformation")
    described = cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
    created = {r["LogicalResourceId"]: r for r in described if r.get("ResourceType")}
    for logical, resource in stack.cfn["Resources"].items():
        if resource["Type"] in MOTO_CANNOT_CREATE:
            continue
        assert logical in created, f"{logical} ({resource['Type']}) was not created"
        assert created[logical]["ResourceStatus"] == "CREATE_COMPLETE", created[logical]
    # the list is exact: a moto that learns a type makes this fail, so the list (and docs) follow
    not_created = {resource["Type"] for logical, resource in stack.cfn["Resources"].items() if logical not in created}
    assert not_created == set(MOTO_CANNOT_CREATE)
    # what moto does create is what the template describes
    dynamodb = stack.client("dynamodb")
    events = dynamodb.describe_table(TableName=stack.physical["EventsTable"])["Table"]
    assert events["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert {index["IndexName"] for index in events["GlobalSecondaryIndexes"]} == {
        "by_time",
        "by_type",
        "by_requester",
        "by_trace",
        "by_agent",
    }
    lambda_client = stack.client("lambda")
    mappings = lambda_client.list_event_source_mappings()["EventSourceMappings"]
    consumers = {
        m["FunctionArn"].rsplit(":", 1)[-1] for m in mappings if m["EventSourceArn"] == events["LatestStreamArn"]
    }
    assert consumers == {stack.physical["BucketStatsFunction"], stack.physical["KarmaStreamFunction"]}
    for function in ("BucketFunction", "KarmaFunction", "ExecutorFunction"):
        config = lambda_client.get_function_configuration(FunctionName=stack.physical[function])
        assert config["Runtime"] == "python3.11" and config["Handler"] == "app.app", function
    # moto's CloudFormation ignores a function's Layers (and a layer's LayerName): the layer must exist
    (layer,) = lambda_client.list_layers()["Layers"]
    assert layer["LatestMatchingVersion"]["CompatibleRuntimes"] == ["python3.11"]


def _deployed_environment(stack: Stack, function: str) -> dict[str, str]:
    config = stack.client("lambda").get_function_configuration(FunctionName=stack.physical[function])
    # moto keeps a Ref to a Number parameter as a number; CloudFormation passes strings
    return {name: str(value) for name, value in config["Environment"]["Variables"].items()}


def _invoke(stack: Stack, built: Built, function: str, events: list[dict[str, Any]], tmp_path: Path) -> list[Any]:
    """The built handler in a clean interpreter with the deployed function's environment."""
    resource = stack.cfn["Resources"][function]["Properties"]
    source = build_template.load(ROOT / "template.yaml")["Resources"][function]["Properties"]
    code = built.function_dir(str(source["CodeUri"]))
    env = {
        **AWS_ENV,
        "PYTHONPATH": os.pathsep.join([str(code), str(built.layer)]),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_LAMBDA_FUNCTION_NAME": stack.physical[function],
        "BHIV_AWS_ENDPOINT_URL": stack.url,
        **_deployed_environment(stack, function),
    }
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    out = tmp_path / f"{function}-{time.monotonic_ns()}.json"
    run = subprocess.run(
        [sys.executable, "-S", "-c", RUNNER, str(out), str(resource["Handler"])],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, f"{function} failed:\n{run.stdout}\n{run.stderr}"
    results: list[Any] = json.loads(out.read_text(encoding="utf-8"))["results"]
    return results


def test_built_handlers_run_against_the_stack(stack: Stack, built: Built, tmp_path: Path) -> None:
    """Write through the Bucket, feed the stack's stream records to both consumers, read Karma."""
    env = _deployed_environment(stack, "BucketFunction")
    assert env["EVENTS_TABLE"] == stack.physical["EventsTable"] != "EventsTable"
    assert env["EVENTS_FEED_SHARDS"] == "4"
    core = stack.tokens["bhiv_core"]
    trace = f"rehearsal-{time.monotonic_ns()}"
    event_data = {
        "event_type": "workflow_execution",
        "trace_id": trace,
        "user_id": "rehearsal-user",
        "action_type": "task",
        "status": "success",
        "execution_result": {"success": True},
    }
    write = api_event(
        "POST", "/core/write-event", token=core, body={"requester_id": "bhiv_core", "event_data": event_data}
    )
    read = api_event("GET", "/core/events", token=core)
    read["queryStringParameters"] = read["multiValueQueryStringParameters"] = None
    written, listed = _invoke(stack, built, "BucketFunction", [write, read], tmp_path)
    assert written["statusCode"] == 200, written  # a stored write is 200 (old clients)
    page = json.loads(listed["body"])
    assert [event["trace_id"] for event in page["events"]] == [trace]

    # the stack's events table streamed the insert: hand it to the consumers as Lambda would
    dynamodb, streams = stack.client("dynamodb"), stack.client("dynamodbstreams")
    arn = dynamodb.describe_table(TableName=stack.physical["EventsTable"])["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    raw = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    assert [record["eventName"] for record in raw] == ["INSERT"]
    batch = {"Records": [lambda_record(record, arn, REGION) for record in raw]}
    (stats,) = _invoke(stack, built, "BucketStatsFunction", [batch], tmp_path)
    (applied,) = _invoke(stack, built, "KarmaStreamFunction", [batch], tmp_path)
    assert stats == {"batchItemFailures": []} and applied == {"batchItemFailures": []}

    karma = api_event("GET", "/api/v1/karma/{user_id}", {"user_id": "rehearsal-user"}, token=core)
    (profile,) = _invoke(stack, built, "KarmaFunction", [karma], tmp_path)
    assert profile["statusCode"] == 200, profile
    assert json.loads(profile["body"])["balances"]["DharmaPoints"] == 2
    stats_read = api_event("GET", "/core/stats", token=core)
    (answer,) = _invoke(stack, built, "BucketFunction", [stats_read], tmp_path)
    assert json.loads(answer["body"])["stats"]["total_events"] == 1


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_the_stacks_rest_apis_match_the_specs_route_by_route(stack: Stack, api: str) -> None:
    spec = yaml.safe_load((ROOT / build_template.APIS[api]).read_text(encoding="utf-8"))
    apigateway = stack.client("apigateway")
    resources = apigateway.get_resources(restApiId=stack.physical[api], limit=500)["items"]
    deployed = {
        (resource["path"], method.lower()): resource["id"]
        for resource in resources
        for method in resource.get("resourceMethods", {})
    }
    operations = {
        (path, method): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in build_template.HTTP_METHODS
    }
    assert set(deployed) == set(operations)
    served = build_template.api_routes(build_template.load(ROOT / "template.yaml"), api)
    for (path, method), operation in operations.items():
        integration = apigateway.get_integration(
            restApiId=stack.physical[api], resourceId=deployed[(path, method)], httpMethod=method.upper()
        )
        assert integration["type"].upper() == "AWS_PROXY" and integration["httpMethod"] == "POST", (path, method)
        function = stack.physical[served[(path, method)]]
        assert f":function:{function}/invocations" in integration["uri"], (path, method, integration["uri"])
        responses = apigateway.get_method(
            restApiId=stack.physical[api], resourceId=deployed[(path, method)], httpMethod=method.upper()
        ).get("methodResponses", {})
        assert set(responses) == {str(status) for status in operation["responses"]}, (path, method)
