"""Reads template.yaml: the local stack creates exactly the tables and queues the cloud gets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

# libyaml's loader parses template.yaml in ~25 ms instead of ~700 ms: every `bhiv` command reads it.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_BaseLoader):  # type: ignore[misc]
    """YAML loader that keeps CloudFormation short-form tags (!Ref, !GetAtt, !Sub, ...)."""


def _cfn_tag(loader: Any, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def template_path() -> Path:
    env = os.environ.get("BHIV_TEMPLATE")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "template.yaml"


@lru_cache(maxsize=4)
def load_template(path: str | None = None) -> dict[str, Any]:
    text = Path(path or template_path()).read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.load(text, Loader=_CfnLoader)
    return doc


def resources(kind: str, template: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    template = template or load_template()
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


@dataclass(frozen=True)
class StreamMapping:
    """A DynamoDB event source mapping of a function, as the template configures it."""

    function: str
    handler: str
    code_uri: str
    table: str
    batch_size: int
    batching_window_s: float
    bisect_on_error: bool
    max_retries: int
    max_record_age_s: int
    report_item_failures: bool
    on_failure_queue: str | None
    starting_position: str


def table_create_args(name: str, props: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if props.get("StreamSpecification"):
        args["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    if props.get("DeletionProtectionEnabled"):
        args["DeletionProtectionEnabled"] = True
    return args


def _ref_name(value: Any) -> str | None:
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
    return None


LOCAL_ACCOUNT = "123456789012"  # moto's default account


def local_arn(name: str, kind: str, region: str = "us-east-1") -> str:
    """The ARN a resource named by its logical id has in the local stack."""
    if kind == "AWS::SQS::Queue":
        return f"arn:aws:sqs:{region}:{LOCAL_ACCOUNT}:{name}"
    if kind == "AWS::IAM::Role":
        return f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{name}"
    if kind == "AWS::DynamoDB::Table":
        return f"arn:aws:dynamodb:{region}:{LOCAL_ACCOUNT}:table/{name}"
    return f"arn:aws:local:{region}:{LOCAL_ACCOUNT}:{name}"


def function_environment(function: str, template: dict[str, Any] | None = None) -> dict[str, str]:
    """A function's environment with each !Ref/!GetAtt of a resource replaced by its local name."""
    template = template or load_template()
    props = template["Resources"][function]["Properties"]
    env: dict[str, str] = {}
    for key, value in ((props.get("Environment") or {}).get("Variables") or {}).items():
        ref = _ref_name(value)
        if isinstance(value, dict) and "Fn::GetAtt" in value and ref is not None and ref in template["Resources"]:
            env[key] = local_arn(ref, template["Resources"][ref]["Type"])
        elif ref is not None and ref in template["Resources"]:
            env[key] = ref
        elif ref is not None and "Default" in (template.get("Parameters") or {}).get(ref, {}):
            env[key] = str(template["Parameters"][ref]["Default"])
        elif isinstance(value, str):
            env[key] = value
    return env


def stream_mappings(template: dict[str, Any] | None = None) -> list[StreamMapping]:
    template = template or load_template()
    mappings = []
    for name, res in resources("AWS::Serverless::Function", template).items():
        props = res["Properties"]
        for event in (props.get("Events") or {}).values():
            if event.get("Type") != "DynamoDB":
                continue
            ev = event["Properties"]
            on_failure = ((ev.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
            mappings.append(
                StreamMapping(
                    function=name,
                    handler=props["Handler"],
                    code_uri=props["CodeUri"],
                    table=_ref_name(ev["Stream"]) or "",
                    batch_size=int(ev.get("BatchSize", 100)),
                    batching_window_s=float(ev.get("MaximumBatchingWindowInSeconds", 0)),
                    bisect_on_error=bool(ev.get("BisectBatchOnFunctionError", False)),
                    max_retries=int(ev.get("MaximumRetryAttempts", -1)),
                    max_record_age_s=int(ev.get("MaximumRecordAgeInSeconds", -1)),
                    report_item_failures="ReportBatchItemFailures" in (ev.get("FunctionResponseTypes") or []),
                    on_failure_queue=_ref_name(on_failure),
                    starting_position=str(ev.get("StartingPosition", "TRIM_HORIZON")),
                )
            )
    return mappings


def create_resources(dynamodb: Any, sqs: Any, template: dict[str, Any] | None = None) -> dict[str, str]:
    """Create every table and queue of the template (named by logical id); returns queue URLs."""
    template = template or load_template()
    existing = set(dynamodb.list_tables().get("TableNames", []))
    for name, res in resources("AWS::DynamoDB::Table", template).items():
        if name in existing:
            continue
        props = res["Properties"]
        dynamodb.create_table(**table_create_args(name, props))
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    urls = {}
    for name in resources("AWS::SQS::Queue", template):
        urls[name] = sqs.create_queue(QueueName=name)["QueueUrl"]
    return urls
