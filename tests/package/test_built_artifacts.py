"""The deployment artifacts `make package` builds work on their own, as Lambda would run them.

scripts/package.py builds the layer and the function directories into a temporary directory. Each
handler template.yaml names is then imported and invoked in a *clean* interpreter (`python -S`: no
site-packages, so neither the venv nor the repo's editable `src/` is importable) whose only paths
are the function's code directory and the layer, as `/var/task` and `/opt/python` are on Lambda.
The events are the shapes Lambda delivers: API Gateway REST (v1) proxy events and DynamoDB stream
records. AWS is a moto server in this process (moto is not in the layer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from bhiv.auth import hash_token, new_token
from bhiv.local import moto_patch, template

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STAGE = "dev"
STREAM_LABEL = "2026-01-01T00:00:00.000"
AWS_ENV = {
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",  # moto does not know account-based endpoints
}

# Runs inside the clean interpreter: import the handler as Lambda does ("module.attribute", with
# the function's directory first on sys.path), invoke it with each event, write what came back.
RUNNER = """
import importlib, importlib.util, json, sys
out_path, handler_name = sys.argv[1], sys.argv[2]
events = json.load(sys.stdin)
module_name, _, attribute = handler_name.rpartition(".")
handler = getattr(importlib.import_module(module_name), attribute)

class Context:
    function_name = "bhiv-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bhiv-test"
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-4000-8000-000000000000"
    log_group_name = "/aws/lambda/bhiv-test"
    log_stream_name = "2026/01/01/[$LATEST]0"
    def get_remaining_time_in_millis(self):
        return 30000

results = [handler(event, Context()) for event in events]
import bhiv
with open(out_path, "w", encoding="utf-8") as f:
    json.dump({
        "results": results,
        "bhiv": bhiv.__file__,
        "module": sys.modules[module_name].__file__,
        "moto_importable": importlib.util.find_spec("moto") is not None,
        "sys_path": sys.path,
    }, f, default=str)
"""


@dataclass
class Built:
    out: Path
    layer: Path

    def function_dir(self, code_uri: str) -> Path:
        return self.out / "functions" / Path(code_uri.rstrip("/")).name


@dataclass
class Cloud:
    url: str
    dynamodb: Any
    tokens: dict[str, str]


def _pip_reaches_index(tmp: Path) -> bool:
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--dest",
            str(tmp),
            "six==1.17.0",
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("package")
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    if run.returncode != 0:
        if not _pip_reaches_index(tmp_path_factory.mktemp("probe")):
            pytest.skip("pip cannot reach the package index: the layer's wheels cannot be downloaded")
        pytest.fail(f"scripts/package.py failed:\n{run.stdout}\n{run.stderr}")
    return Built(out=out, layer=out / "layer" / "python")


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    """A moto server on a free loopback port with the template's tables and queues."""
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    moto_patch.install()  # the local stack's faster TransactWriteItems (moto runs in this process)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    _reset(url)
    try:
        dynamodb = boto3.client("dynamodb", endpoint_url=url, region_name=REGION)
        template.create_resources(dynamodb, boto3.client("sqs", endpoint_url=url, region_name=REGION))
        tokens = {"bhiv_core": new_token(), "workflow_executor": new_token()}
        boto3.client("ssm", endpoint_url=url, region_name=REGION).put_parameter(
            Name=_parameter_default("ExecutorTokenParameter"),
            Value=tokens["workflow_executor"],
            Type="SecureString",
        )
        yield Cloud(url=url, dynamodb=dynamodb, tokens=tokens)
    finally:
        _reset(url)
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()


def _parameter_default(name: str) -> str:
    return str(template.load_template()["Parameters"][name]["Default"])


def _handlers() -> dict[str, tuple[str, str]]:
    """Logical id -> (CodeUri, Handler) of every function in template.yaml."""
    return {
        name: (str(res["Properties"]["CodeUri"]), str(res["Properties"]["Handler"]))
        for name, res in template.resources("AWS::Serverless::Function").items()
    }


def _function_for(handler: str, code_dir: str) -> str:
    matches = [
        name for name, (uri, h) in _handlers().items() if h == handler and Path(uri.rstrip("/")).name == code_dir
    ]
    assert len(matches) == 1, f"template.yaml has no single function with Handler {handler} in {code_dir}"
    return matches[0]


def invoke(built: Built, cloud: Cloud, function: str, events: list[dict[str, Any]], tmp_path: Path) -> list[Any]:
    """Import `function`'s handler from the built artifacts in a clean interpreter and invoke it."""
    code_uri, handler = _handlers()[function]
    code = built.function_dir(code_uri)
    assert (code / "app.py").is_file(), f"{code} was not built"
    env = {
        **AWS_ENV,
        # /var/task first, then the layer's /opt/python: nothing else
        "PYTHONPATH": os.pathsep.join([str(code), str(built.layer)]),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "BHIV_STAGE": STAGE,
        "BHIV_AWS_ENDPOINT_URL": cloud.url,
        "BHIV_TOKEN_HASHES": json.dumps({rid: hash_token(token) for rid, token in cloud.tokens.items()}),
        **template.function_environment(function),
    }
    workdir = tmp_path / "cwd"  # `python -c` puts the cwd on sys.path: an empty one
    workdir.mkdir(exist_ok=True)
    out = tmp_path / f"{function}-{uuid.uuid4().hex}.json"
    run = subprocess.run(
        [sys.executable, "-S", "-c", RUNNER, str(out), handler],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, f"{function} ({handler}) failed in a clean interpreter:\n{run.stdout}\n{run.stderr}"
    report = json.loads(out.read_text(encoding="utf-8"))
    assert Path(report["bhiv"]).is_relative_to(built.layer), f"bhiv came from {report['bhiv']}, not the layer"
    assert Path(report["module"]).is_relative_to(code), f"{handler} came from {report['module']}"
    assert not report["moto_importable"], "moto is importable from the built artifacts"
    assert not any(Path(p).is_relative_to(ROOT) for p in report["sys_path"] if p), report["sys_path"]
    results: list[Any] = report["results"]
    return results


def api_event(
    method: str,
    resource: str,
    path_parameters: dict[str, str] | None = None,
    *,
    token: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST API (v1 payload) Lambda proxy event, as the gateway sends it."""
    path = resource
    for name, value in (path_parameters or {}).items():
        path = path.replace("{" + name + "}", value)
    headers = {
        "Accept": "application/json",
        "Authorization": f"Bearer {token}",
        "Host": "abcdef1234.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "bhiv-test",
        "X-Amzn-Trace-Id": "Root=1-5f84c7a1-0123456789abcdef01234567",
        "X-Forwarded-For": "203.0.113.10",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    now = time.time()
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abcdef1234",
            "extendedRequestId": "Ab1CdEfGhIjKlMn=",
            "httpMethod": method,
            "identity": {"sourceIp": "203.0.113.10", "userAgent": "bhiv-test", "accessKey": None, "user": None},
            "path": f"/{STAGE}{path}",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": "a1b2c3",
            "resourcePath": resource,
            "stage": STAGE,
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def stream_event(item: dict[str, Any], key: str = "event_id") -> dict[str, Any]:
    """A DynamoDB stream event (Lambda's shape) carrying the INSERT of `item` (DynamoDB JSON)."""
    return {
        "Records": [
            {
                "eventID": uuid.uuid4().hex,
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": REGION,
                "dynamodb": {
                    "ApproximateCreationDateTime": int(time.time()),
                    "Keys": {key: item[key]},
                    "NewImage": item,
                    "SequenceNumber": "100000000000000000001",
                    "SizeBytes": len(json.dumps(item)),
                    "StreamViewType": "NEW_IMAGE",
                },
                "eventSourceARN": f"arn:aws:dynamodb:{REGION}:123456789012:table/EventsTable/stream/{STREAM_LABEL}",
            }
        ]
    }


def _json(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def test_layer_holds_the_package_and_the_locked_runtime_dependencies_only(built: Built) -> None:
    layer = built.layer
    assert (layer / "bhiv" / "requesters.yaml").is_file()
    assert (layer / "bhiv" / "karma" / "policy.yaml").is_file()
    assert sorted((layer / "bhiv" / "_contracts").rglob("*.schema.json")), "contracts/ was not copied"
    assert not (layer / "moto").exists()
    assert not list(layer.glob("moto-*.dist-info")), "moto is in the layer"
    assert sorted(p.name for p in (layer / "chalice").iterdir()) == ["__init__.py", "app.py"]
    # compiled for Lambda's platform (manylinux2014 x86_64, CPython 3.11), not for this machine
    assert list((layer / "pydantic_core").glob("*.cpython-311-x86_64-linux-gnu.so"))
    pinned = {line.split("==")[0] for line in (built.out / "layer-requirements.txt").read_text().splitlines()}
    assert {"boto3", "botocore", "chalice", "pydantic", "aws-lambda-powertools", "jsonschema", "pyyaml"} <= pinned
    for dist in layer.glob("*.dist-info"):
        name = dist.name.rsplit("-", 1)[0].split("-")[0].lower().replace("_", "-")
        assert any(name == p.lower().replace("_", "-") for p in pinned), f"{dist.name} is not in uv.lock's pins"


def test_every_template_handler_imports_from_the_built_artifacts(built: Built, tmp_path: Path) -> None:
    """Every Handler of template.yaml resolves in its built code directory + the layer (no events)."""
    probe = (
        "import importlib, sys\n"
        "module, _, attribute = sys.argv[1].rpartition('.')\n"
        "assert callable(getattr(importlib.import_module(module), attribute))\n"
    )
    for function, (code_uri, handler) in _handlers().items():
        code = built.function_dir(code_uri)
        run = subprocess.run(
            [sys.executable, "-S", "-c", probe, handler],
            env={"PYTHONPATH": os.pathsep.join([str(code), str(built.layer)]), **AWS_ENV},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert run.returncode == 0, f"{function}: {handler} does not import from {code}:\n{run.stderr}"


def test_bucket_write_read_then_stream_consumers_from_the_built_artifacts(
    built: Built, cloud: Cloud, tmp_path: Path
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    token = cloud.tokens["bhiv_core"]
    body = {
        "requester_id": "bhiv_core",
        "event_data": {
            "event_type": "workflow_execution",
            "trace_id": f"t-{user}",
            "user_id": user,
            "action_type": "task",
            "status": "success",
            "execution_result": {},
            "duration_ms": 3,
        },
    }

    # The Bucket's API: POST /core/write-event, then GET /core/events/{event_id}
    bucket = _function_for("app.app", "bucket")
    (written,) = invoke(
        built, cloud, bucket, [api_event("POST", "/core/write-event", token=token, body=body)], tmp_path
    )
    assert written["statusCode"] == 200, written
    event_id = _json(written)["event_id"]
    (read,) = invoke(
        built,
        cloud,
        bucket,
        [api_event("GET", "/core/events/{event_id}", {"event_id": event_id}, token=token)],
        tmp_path,
    )
    assert read["statusCode"] == 200, read
    assert _json(read)["event"]["event_id"] == event_id

    # The stream record DynamoDB would deliver for that write, built from the stored item
    item = cloud.dynamodb.get_item(TableName="EventsTable", Key={"event_id": {"S": event_id}}, ConsistentRead=True)
    stream = stream_event(item["Item"])

    (stats,) = invoke(built, cloud, _function_for("app.on_stats_stream", "bucket"), [stream], tmp_path)
    assert stats == {"batchItemFailures": []}

    (applied,) = invoke(built, cloud, _function_for("app.on_event", "karma"), [stream], tmp_path)
    assert applied == {"batchItemFailures": []}

    (karma,) = invoke(
        built,
        cloud,
        _function_for("app.app", "karma"),
        [api_event("GET", "/api/v1/karma/{user_id}", {"user_id": user}, token=token)],
        tmp_path,
    )
    assert karma["statusCode"] == 200, karma
    assert _json(karma)["action_stats"] == {"workflow_success": 1}


def test_executor_api_and_scheduled_redriver_from_the_built_artifacts(
    built: Built, cloud: Cloud, tmp_path: Path
) -> None:
    (health,) = invoke(
        built,
        cloud,
        _function_for("app.app", "executor"),
        [api_event("GET", "/healthz", token=cloud.tokens["bhiv_core"])],
        tmp_path,
    )
    assert health["statusCode"] == 200, health

    scheduled = {  # what an EventBridge schedule (`rate(1 minute)`) delivers
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/bhiv-redrive"],
        "detail": {},
    }
    (counts,) = invoke(built, cloud, _function_for("app.redrive_outbox", "executor"), [scheduled], tmp_path)
    assert isinstance(counts, dict)
    assert not any(counts.values()), counts  # nothing waits in the outbox
