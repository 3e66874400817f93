"""The local stack's Query reads the requested partition only, and answers exactly as moto does."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.dynamodb.models.table import Table

from bhiv.local import moto_patch
from tests.integration.conftest import use_offline_aws

_names = itertools.count()


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as env:
        use_offline_aws(env)
        with mock_aws():
            moto_patch.install()
            yield boto3.client("dynamodb", region_name="us-east-1")


def _table(client: Any) -> str:
    name = f"query-{next(_names)}"
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "g", "AttributeType": "S"},
            {"AttributeName": "n", "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_g",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}, {"AttributeName": "n", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": "by_g_sk",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            },
        ],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    return name


def _pages(client: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    pages = []
    params = dict(params)
    for _ in range(60):
        response = client.query(**params)
        pages.append({k: response.get(k) for k in ("Items", "Count", "ScannedCount", "LastEvaluatedKey")})
        if "LastEvaluatedKey" not in response:
            break
        params["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return pages


def _moto_pages(client: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Table, "query", moto_patch.original_query())
        return _pages(client, params)


def _forbidden(self: Any) -> Any:
    raise AssertionError("the patched Query walked the whole table")


partitions = st.sampled_from(["a", "b", "c"])
sort_keys = st.text(alphabet="hsx#0", min_size=1, max_size=4)
writes = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "update", "delete"]),
        partitions,
        sort_keys,
        st.one_of(st.none(), partitions),
        st.integers(-5, 5),
    ),
    min_size=1,
    max_size=40,
)
conditions = st.sampled_from([None, "EQ", "LT", "LE", "GT", "GE", "BETWEEN", "BEGINS_WITH"])
queries = st.tuples(
    st.sampled_from([None, "by_g", "by_g_sk"]),
    partitions,
    conditions,
    sort_keys,
    sort_keys,
    st.integers(-5, 5),
    st.integers(-5, 5),
    st.one_of(st.none(), st.integers(1, 7)),
    st.booleans(),
    st.booleans(),
)


def _key_condition(
    index: str | None, comparison: str | None, s1: str, s2: str, n1: int, n2: int
) -> tuple[str, dict[str, Any]]:
    hash_attr = "g" if index else "pk"
    range_attr = "n" if index == "by_g" else "sk"
    low: dict[str, str] = {"N": str(min(n1, n2))} if index == "by_g" else {"S": min(s1, s2)}
    high: dict[str, str] = {"N": str(max(n1, n2))} if index == "by_g" else {"S": max(s1, s2)}
    if comparison == "BEGINS_WITH" and index == "by_g":
        comparison = "GE"  # begins_with takes strings only
    expression = {
        None: "",
        "EQ": " AND #r = :a",
        "LT": " AND #r < :a",
        "LE": " AND #r <= :a",
        "GT": " AND #r > :a",
        "GE": " AND #r >= :a",
        "BETWEEN": " AND #r BETWEEN :a AND :b",
        "BEGINS_WITH": " AND begins_with(#r, :a)",
    }[comparison]
    values = {":h": {"S": "x"}, ":a": low, ":b": high}
    used = {k: v for k, v in values.items() if k == ":h" or k in expression}
    names = {"#h": hash_attr, **({"#r": range_attr} if expression else {})}
    return "#h = :h" + expression, {"names": names, "values": used}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=writes, query_list=st.lists(queries, min_size=1, max_size=6))
def test_query_pages_match_moto(
    dynamodb: Any, writes: list[tuple[Any, ...]], query_list: list[tuple[Any, ...]]
) -> None:
    """Items, counts and LastEvaluatedKey of every page, after puts, updates and deletes (the
    indexes are built on the first query and kept up to date by later writes)."""
    table = _table(dynamodb)
    try:
        for round_ in range(2):
            for op, pk, sk, g, n in writes[round_::2]:
                key = {"pk": {"S": pk}, "sk": {"S": sk}}
                if op == "put":
                    item = {**key, "v": {"S": f"{op}{n}"}}
                    if g is not None:
                        item |= {"g": {"S": g}, "n": {"N": str(n)}}
                    dynamodb.put_item(TableName=table, Item=item)
                elif op == "update" and g is not None:
                    dynamodb.update_item(
                        TableName=table,
                        Key=key,
                        UpdateExpression="SET g = :g, n = :n",
                        ExpressionAttributeValues={":g": {"S": g}, ":n": {"N": str(n)}},
                    )
                elif op == "update":
                    dynamodb.update_item(TableName=table, Key=key, UpdateExpression="REMOVE g")
                else:
                    dynamodb.delete_item(TableName=table, Key=key)
            for index, pk, comparison, s1, s2, n1, n2, limit, forward, filtered in query_list:
                condition, parts = _key_condition(index, comparison, s1, s2, n1, n2)
                parts["values"][":h"] = {"S": pk}
                params: dict[str, Any] = {
                    "TableName": table,
                    "KeyConditionExpression": condition,
                    "ExpressionAttributeNames": parts["names"],
                    "ExpressionAttributeValues": parts["values"],
                    "ScanIndexForward": forward,
                }
                if index:
                    params["IndexName"] = index
                if limit:
                    params["Limit"] = limit
                if filtered and index != "by_g_sk":
                    params["FilterExpression"] = "attribute_exists(v)"
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(Table, "all_items", _forbidden)
                    fast = _pages(dynamodb, params)
                assert fast == _moto_pages(dynamodb, params)
    finally:
        dynamodb.delete_table(TableName=table)


def _gsi(i: int) -> dict[str, Any]:
    return {"g": {"S": f"g{i % 50}"}, "n": {"N": str(i)}}


def test_a_page_costs_the_page_not_the_table(dynamodb: Any) -> None:
    """ScannedCount of the newest page of one partition stays at the page size however many items
    the table holds elsewhere (moto alone reads every item of the table for each Query)."""
    table = _table(dynamodb)
    try:
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": f"p{i % 50}"},
                        "sk": {"S": f"{i:06d}"},
                        "g": {"S": f"g{i % 50}"},
                        "n": {"N": str(i)},
                    }
                }
            }
            for i in range(2_000)
        ]
        for start in range(0, len(requests), 25):
            dynamodb.batch_write_item(RequestItems={table: requests[start : start + 25]})
        page = dynamodb.query(
            TableName=table,
            IndexName="by_g",
            KeyConditionExpression="g = :g",
            ExpressionAttributeValues={":g": {"S": "g7"}},
            ScanIndexForward=False,
            Limit=10,
        )
        assert [item["n"]["N"] for item in page["Items"]] == [str(i) for i in range(1_957, 0, -50)][:10]
        assert page["ScannedCount"] == 10
        assert "LastEvaluatedKey" in page

        # the first Query of the table builds its key index once; later writes keep it current
        dynamodb.query(TableName=table, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p0"}})
        dynamodb.put_item(TableName=table, Item={"pk": {"S": "p3"}, "sk": {"S": "001004"}, "v": {"S": "new"}})
        calls: list[int] = []
        original_all_items = Table.all_items

        def counting_all_items(self: Any) -> Any:
            calls.append(1)
            return original_all_items(self)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Table, "all_items", counting_all_items)
            follow = dynamodb.query(
                TableName=table,
                KeyConditionExpression="pk = :p AND sk > :s",
                ExpressionAttributeValues={":p": {"S": "p3"}, ":s": {"S": "001000"}},
                Limit=5,
            )
            deep = dynamodb.query(
                TableName=table,
                IndexName="by_g",
                KeyConditionExpression="g = :g",
                ExpressionAttributeValues={":g": {"S": "g7"}},
                ScanIndexForward=False,
                Limit=10,
                ExclusiveStartKey=page["LastEvaluatedKey"],
            )
        assert calls == []  # no query walked the whole table
        assert [item["sk"]["S"] for item in follow["Items"]] == ["001003", "001004", "001053", "001103", "001153"]
        assert follow["ScannedCount"] == 5
        assert [item["n"]["N"] for item in deep["Items"]] == [str(i) for i in range(1_457, 0, -50)][:10]
    finally:
        dynamodb.delete_table(TableName=table)


def test_a_partition_nobody_reads_is_never_indexed(dynamodb: Any) -> None:
    """The table's own key index is built partition by partition on first read: writes to a
    partition no Query names (the exactly-once markers) cost no index memory or upkeep."""
    table = _table(dynamodb)
    items = [{"pk": {"S": "markers"}, "sk": {"S": f"evt-{i:04d}"}} for i in range(300)]
    items += [{"pk": {"S": "read"}, "sk": {"S": f"{i:04d}"}, "g": {"S": "g"}, "n": {"N": str(i)}} for i in range(30)]
    for start in range(0, len(items), 25):
        dynamodb.batch_write_item(
            RequestItems={table: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]}
        )

    def newest(pk: str) -> list[str]:
        page = dynamodb.query(
            TableName=table,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": pk}},
            ScanIndexForward=False,
            Limit=3,
        )
        return [item["sk"]["S"] for item in page["Items"]]

    assert newest("read") == ["0029", "0028", "0027"]
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "read"}, "sk": {"S": "0030"}})  # kept current
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "markers"}, "sk": {"S": "evt-9999"}})
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": "read"}, "sk": {"S": "0029"}})
    assert newest("read") == ["0030", "0028", "0027"]
    from moto.dynamodb.models import dynamodb_backends

    state = moto_patch._indexes(dynamodb_backends["123456789012"]["us-east-1"].tables[table])
    assert state is not None
    own = state.get(None)
    assert own is not None
    assert [partition[1] for partition in own.partitions] == ["read"]  # markers: never read, never indexed
    assert newest("markers") == ["evt-9999", "evt-0299", "evt-0298"]  # built when first read
