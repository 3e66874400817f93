"""moto's Item and LimitedSizeDict replaced by slotted copies (bhiv.local.moto_memory): no per-object
dict, and every method answers as moto's own class does."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bhiv.local import moto_memory, moto_patch
from tests.integration.conftest import use_offline_aws

ITEM = {
    "pk": {"S": "p"},
    "sk": {"S": "s#1"},
    "n": {"N": "12.50"},
    "flag": {"BOOL": True},
    "none": {"NULL": True},
    "m": {"M": {"a": {"L": [{"S": "x"}, {"N": "1"}]}, "b": {"SS": ["u", "v"]}}},
    "ns": {"NS": ["1", "2"]},
    "b": {"B": "AAEC"},
}


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as env:
        use_offline_aws(env)
        with mock_aws():
            moto_patch.install()
            client = boto3.client("dynamodb", region_name="us-east-1")
            client.create_table(
                TableName="slots",
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            )
            yield client


def test_item_and_its_dict_have_slots_everywhere_moto_uses_them(dynamodb: Any) -> None:
    import moto.dynamodb.comparisons as comparisons
    import moto.dynamodb.models as models
    import moto.dynamodb.models.dynamo_type as dynamo_type
    import moto.dynamodb.models.table as table_module
    import moto.dynamodb.parsing.validators as validators

    item_class, dict_class = dynamo_type.Item, dynamo_type.LimitedSizeDict
    assert item_class.__slots__ == ("hash_key", "range_key", "attrs", "__weakref__")
    assert dict_class.__slots__ == ("__weakref__",)
    for module in (comparisons, models, table_module, validators):
        assert getattr(module, "Item", item_class) is item_class
        assert getattr(module, "LimitedSizeDict", dict_class) is dict_class
    dynamodb.put_item(TableName="slots", Item=ITEM)
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends["123456789012"]["us-east-1"].tables["slots"]
    (stored,) = table.items[dynamo_type.DynamoType({"S": "p"})].values()
    assert type(stored) is item_class and type(stored.attrs) is dict_class
    for value in (stored, stored.attrs):
        assert not hasattr(value, "__dict__")
        assert weakref.ref(value)() is value  # as moto's own classes allow
    with pytest.raises(AttributeError):
        stored.other = 1  # moto never sets another field on an item: it would fail loudly


def _both(attrs: dict[str, Any]) -> tuple[Any, Any]:
    """The same item built by moto's own classes and by the slotted ones."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    original_item: Any = moto_memory.ORIGINAL_CLASSES["Item"]
    original_dict: Any = moto_memory.ORIGINAL_CLASSES["LimitedSizeDict"]
    theirs = original_item.__new__(original_item)
    theirs.hash_key, theirs.range_key = DynamoType(attrs["pk"]), DynamoType(attrs["sk"])
    theirs.attrs = original_dict()
    ours = Item.__new__(Item)
    ours.hash_key, ours.range_key = DynamoType(attrs["pk"]), DynamoType(attrs["sk"])
    ours.attrs = LimitedSizeDict()
    for name, value in attrs.items():
        theirs.attrs[name] = DynamoType(value)  # LimitedSizeDict.__setitem__: size check, then super()
        ours.attrs[name] = DynamoType(value)
    return theirs, ours


def test_every_method_answers_as_moto_s_own_classes() -> None:
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType

    theirs, ours = _both(ITEM)
    assert ours.to_json() == theirs.to_json()
    assert ours.to_regular_json() == theirs.to_regular_json()
    assert ours.describe_attrs(None) == theirs.describe_attrs(None)
    assert ours.size() == theirs.size()
    assert repr(ours) == repr(theirs)
    assert ours == theirs and list(ours.attrs) == list(theirs.attrs)
    assert ours.project([["m", "a"], ["n"]]).to_json() == theirs.project([["m", "a"], ["n"]]).to_json()
    assert ours.is_within_segment((0, 2)) == theirs.is_within_segment((0, 2))
    copied = copy.deepcopy(ours)
    assert type(copied) is type(ours) and type(copied.attrs) is type(ours.attrs)
    assert copied == ours and copied.to_json() == ours.to_json() and copied is not ours
    updates = {"n": {"Action": "ADD", "Value": {"N": "2"}}, "flag": {"Action": "DELETE"}}
    ours.update_with_attribute_updates(copy.deepcopy(updates))
    theirs.update_with_attribute_updates(copy.deepcopy(updates))
    assert ours.to_json() == theirs.to_json()
    big = {"S": "x" * 300_000}
    for item in (ours, theirs):
        item.attrs["big"] = DynamoType(big)
        with pytest.raises(ItemSizeTooLarge):  # LimitedSizeDict's own check, through the slotted copy
            item.attrs["bigger"] = type(item.attrs["big"])(big)
    assert ours.to_json() == theirs.to_json()


def test_size_limits_and_updates_through_the_api(dynamodb: Any) -> None:
    key = {"pk": {"S": "u"}, "sk": {"S": "1"}}
    dynamodb.put_item(TableName="slots", Item={**key, "a": {"S": "x" * 200_000}})
    dynamodb.update_item(
        TableName="slots", Key=key, UpdateExpression="SET b = :b", ExpressionAttributeValues={":b": {"N": "1"}}
    )
    with pytest.raises(dynamodb.exceptions.ClientError, match="size"):
        dynamodb.update_item(
            TableName="slots",
            Key=key,
            UpdateExpression="SET c = :c",
            ExpressionAttributeValues={":c": {"S": "y" * 250_000}},
        )
    with pytest.raises(dynamodb.exceptions.ClientError, match="size"):
        dynamodb.put_item(TableName="slots", Item={**key, "a": {"S": "x" * 420_000}})
    got = dynamodb.get_item(TableName="slots", Key=key)["Item"]
    assert set(got) == {"pk", "sk", "a", "b"} and got["b"] == {"N": "1"}
