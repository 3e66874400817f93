"""Items built in one pass (bhiv.local.moto_memory) and the quicker type checks and DynamoType
construction (bhiv.local.moto_patch) give what moto's own code gives: the same attribute types and
values, the same size limit, the same errors, in the same order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto.dynamodb.exceptions import ItemSizeTooLarge
from moto.dynamodb.models import dynamo_type
from moto.dynamodb.models.table import Table

from bhiv.local import moto_memory, moto_patch

moto_patch.install()

NAMES = st.text(min_size=1, max_size=6) | st.sampled_from(["pk", "sk", "N", "S", "NULL", "état"])
TEXT = st.text(max_size=60) | st.sampled_from(["", "x", "é" * 41, "a" * 41, "𝄞"])
NUMBER_TEXT = st.sampled_from(["0", "1", "-1.5", "12.50", " 1", "abc", "1e999", "nan", "", "1" * 39])
SCALARS = st.one_of(
    st.builds(lambda t: {"S": t}, TEXT),
    st.builds(lambda t: {"N": t}, NUMBER_TEXT),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.builds(lambda b: {"NULL": b}, st.booleans()),
    st.builds(lambda t: {"B": t}, st.sampled_from(["AAEC", b"\x00\x01"])),
    st.builds(lambda n: {"N": n}, st.integers() | st.floats(allow_nan=False)),  # what boto3 would refuse
    st.builds(lambda n: {"S": n}, st.integers()),
)
VALUES = st.recursive(
    SCALARS
    | st.builds(lambda v: {"SS": v}, st.lists(TEXT, min_size=1, max_size=3, unique=True))
    | st.builds(lambda v: {"NS": v}, st.lists(st.sampled_from(["1", "2.5", "-3"]), min_size=1, unique=True)),
    lambda inner: (
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3))
        | st.builds(lambda v: {"M": v}, st.dictionaries(NAMES, inner, max_size=3))
    ),
    max_leaves=6,
)
ITEMS = st.dictionaries(NAMES, VALUES, min_size=1, max_size=6)


def _plain(value: Any) -> Any:
    """A DynamoType (or a structure of them) as plain data, to compare across classes."""
    if hasattr(value, "type") and hasattr(value, "value"):
        return (value.type, _plain(value.value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except Exception as exc:  # whatever moto raises: compared
        return ("error", type(exc).__name__, str(exc))


def _moto_item(attrs: dict[str, Any]) -> Any:
    """moto's own Item construction: DynamoType's own constructor, the size checked on every set
    (LimitedSizeDict)."""
    item = dynamo_type.Item.__new__(dynamo_type.Item)
    item.attrs = dynamo_type.LimitedSizeDict()
    for key, value in attrs.items():
        item.attrs[key] = _built_by_moto(dynamo_type.DynamoType, value)
    return item


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ITEMS)
def test_items_are_built_as_moto_builds_them(attrs: dict[str, Any]) -> None:
    ours = _outcome(lambda: _plain(dict(dynamo_type.Item(None, None, attrs).attrs)))
    theirs = _outcome(lambda: _plain(dict(_moto_item(attrs).attrs)))
    assert ours == theirs


@pytest.mark.parametrize("text", ["a", "é", "𝄞"])
def test_the_size_limit_is_moto_s_to_the_byte(text: str) -> None:
    # name "p" (1 byte) + the string's UTF-8 bytes (+ a filler name): exactly at the limit
    width = len(text.encode("utf-8"))
    copies, rest = divmod(moto_memory.ITEM_SIZE_LIMIT - 1, width)
    at_limit = {"p": {"S": text * copies}, **({"q" * rest: {"S": ""}} if rest else {})}
    over = {**at_limit, "z": {"N": "1"}}
    assert _outcome(lambda: len(dynamo_type.Item(None, None, at_limit).attrs)) == ("ok", len(at_limit))
    for attrs in (at_limit, over):
        assert _outcome(lambda a=attrs: len(dynamo_type.Item(None, None, a).attrs)) == _outcome(
            lambda a=attrs: len(_moto_item(a).attrs)
        )
    with pytest.raises(ItemSizeTooLarge):
        dynamo_type.Item(None, None, over)


def test_short_scalars_and_names_are_shared_between_items() -> None:
    name = "".join(["ev", "ent_type"])  # a new string object, equal to one used before
    first = dynamo_type.Item(None, None, {"event_type": {"S": "workflow_execution"}, "n": {"N": "7"}})
    second = dynamo_type.Item(None, None, {name: {"S": "workflow_execution"}, "n": {"N": "7"}})
    assert first.attrs["event_type"] is second.attrs["event_type"]
    assert first.attrs["n"] is second.attrs["n"]
    assert next(iter(first.attrs)) is next(iter(second.attrs))
    long_text = "x" * (moto_memory.SHARE_MAX_LEN + 1)
    one = dynamo_type.Item(None, None, {"p": {"S": long_text}})
    two = dynamo_type.Item(None, None, {"p": {"S": long_text}})
    assert one.attrs["p"] is not two.attrs["p"]  # unlikely to repeat: not kept
    assert one.attrs["p"].value == two.attrs["p"].value == long_text


class _KeyedTable:
    """What Table._validate_item_types reads of its table: the key attributes, the number check,
    and itself for nested values (moto's own walk, in both runs)."""

    table_key_attrs = ["pk", "sk"]
    _validate_number_type = Table._validate_number_type
    _validate_item_types = Table._validate_item_types.__wrapped__  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ITEMS)
def test_type_checks_refuse_what_moto_refuses_first(attrs: dict[str, Any]) -> None:
    table = _KeyedTable()
    ours = _outcome(lambda: Table._validate_item_types(table, attrs))  # type: ignore[arg-type]
    theirs = _outcome(lambda: Table._validate_item_types.__wrapped__(table, attrs))  # type: ignore[attr-defined]
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(VALUES | st.builds(lambda t: {"S": t, "N": "1"}, TEXT))
def test_dynamo_types_are_built_as_moto_builds_them(value: dict[str, Any]) -> None:
    cls: Any = dynamo_type.DynamoType
    ours = _outcome(lambda: _plain(cls(value)))
    theirs = _outcome(lambda: _plain(_built_by_moto(cls, value)))
    assert ours == theirs


def _built_by_moto(cls: Any, value: Any) -> Any:
    made = cls.__new__(cls)
    cls.__init__.__wrapped__(made, value)
    return made


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ITEMS)
def test_a_compaction_flattens_an_item_as_moto_serialises_it(attrs: dict[str, Any]) -> None:
    try:
        item = dynamo_type.Item(None, None, attrs)
        item.to_json()
    except Exception:  # what moto refuses to build or to serialise is never stored
        return
    expected = [
        x for name, typed in item.to_json()["Attributes"].items() for kind, v in typed.items() for x in (name, kind, v)
    ]
    assert moto_memory.flat_attributes(item) == expected


def _stream_after_writes(add: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stream records (without their random id and time) after puts, an overwrite, updates and a
    delete on a NEW_AND_OLD_IMAGES table, with StreamShard.add as given."""
    import boto3
    from moto import mock_aws
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models import table as table_module

    from tests.integration.conftest import use_offline_aws

    use_offline_aws(monkeypatch)
    monkeypatch.setattr(table_module.StreamShard, "add", add)
    # a record's SizeBytes counts its creation time as text: the same instant in both runs
    instant = datetime(2026, 12, 2, 12, 0, 0, 123456)
    monkeypatch.setattr(table_module, "utcnow", lambda: instant)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="S",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        client.put_item(TableName="S", Item={"pk": {"S": "a"}, "n": {"N": "1"}, "m": {"M": {"x": {"L": [{"S": "é"}]}}}})
        client.put_item(TableName="S", Item={"pk": {"S": "a"}, "n": {"N": "2"}})  # MODIFY
        client.update_item(
            TableName="S",
            Key={"pk": {"S": "b"}},
            UpdateExpression="ADD c :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        client.delete_item(TableName="S", Key={"pk": {"S": "a"}})
        shard = dynamodb_backends["123456789012"]["us-east-1"].tables["S"].stream_shard
        records = []
        for record in shard.items:
            data = record.to_json()
            data.pop("eventID")
            records.append(data)
        return records


def test_stream_records_are_added_as_moto_adds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models import table as table_module

    ours = _stream_after_writes(table_module.StreamShard.add, monkeypatch)
    theirs = _stream_after_writes(table_module.StreamShard.add.__wrapped__, monkeypatch)  # type: ignore[attr-defined]
    assert {r["eventName"] for r in ours} == {"INSERT", "MODIFY", "REMOVE"} and len(ours) >= 4
    assert ours == theirs
