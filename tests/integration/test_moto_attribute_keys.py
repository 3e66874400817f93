"""Table.attribute_keys kept between reads (bhiv.local.moto_patch) answers as moto computes it,
also after UpdateTable adds or drops an index."""

from __future__ import annotations

from typing import Any

import boto3
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.dynamodb.models import dynamodb_backends

from bhiv.local import moto_patch

moto_patch.install()


def _computed(table: object) -> list[str]:
    fieldnames = list(table.table_key_attrs)  # type: ignore[attr-defined]
    for index in table.indexes + table.global_indexes:  # type: ignore[attr-defined]
        fieldnames += [attr["AttributeName"] for attr in index.schema]
    return fieldnames


def _table_with_an_index() -> tuple[Any, Any]:
    """Table T (pk, sk) with a GSI on `a`, in the current mock: its client and moto's Table."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="T",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "a")],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-a",
                "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return client, dynamodb_backends["123456789012"]["us-east-1"].tables["T"]


def test_attribute_keys_follow_index_changes() -> None:
    with mock_aws():
        client, table = _table_with_an_index()
        assert table.attribute_keys == _computed(table) == ["pk", "sk", "a"]
        assert table.attribute_keys is table.attribute_keys  # kept between reads
        client.update_table(
            TableName="T",
            AttributeDefinitions=[{"AttributeName": "b", "AttributeType": "S"}],
            GlobalSecondaryIndexUpdates=[
                {
                    "Create": {
                        "IndexName": "by-b",
                        "KeySchema": [{"AttributeName": "b", "KeyType": "HASH"}],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                }
            ],
        )
        assert table.attribute_keys == _computed(table) == ["pk", "sk", "a", "b"]
        client.update_table(TableName="T", GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by-a"}}])
        assert table.attribute_keys == _computed(table) == ["pk", "sk", "b"]
        # an empty string in an index key is still refused, as moto refuses it
        try:
            client.put_item(TableName="T", Item={"pk": {"S": "p"}, "sk": {"S": "s"}, "b": {"S": ""}})
        except client.exceptions.ClientError as exc:
            assert "empty string" in str(exc)
        else:
            raise AssertionError("an empty index key was accepted")


_VALUES = st.one_of(
    st.builds(lambda kind, text: {kind: text}, st.sampled_from(["S", "N", "B"]), st.sampled_from(["", "x", "0"])),
    st.just({"BOOL": True}),
    st.just({"S": "", "N": "1"}),  # malformed: two types
    st.just({}),
    st.just({"M": {"x": {"S": ""}}}),
    st.just({"SS": []}),
    st.just({"NS": []}),
    st.just({"SS": ["a"]}),
    st.just({"M": {"x": {"NS": []}}}),
    st.just({"L": [{"SS": []}]}),
    st.just({"S": {"SS": []}}),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["pk", "sk", "a", "b", "other"]), _VALUES, max_size=5))
def test_the_empty_key_and_set_checks_refuse_exactly_what_moto_refuses(item: dict[str, Any]) -> None:
    import moto.dynamodb.responses as responses

    checks = [responses.validate_put_has_empty_keys, responses.validate_put_has_empty_attrs]
    with mock_aws():
        _, table = _table_with_an_index()
        for check in checks:
            outcomes: list[tuple[str, str] | None] = []
            for validate in (check, check.__wrapped__):  # type: ignore[attr-defined]
                try:
                    validate(item, table)
                    outcomes.append(None)
                except Exception as exc:
                    outcomes.append((type(exc).__name__, str(exc)))
            assert outcomes[0] == outcomes[1], (check.__name__, item)
