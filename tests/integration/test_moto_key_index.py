"""The Query key indexes hold only the items and read each row's key from its item; an item whose
keys UpdateItem changes in place (or tries to, and is refused) must leave every index sorted, with
exactly the items the table holds, and every Query answering as moto's own."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto.dynamodb.models.table import Table

from bhiv.local import moto_patch
from tests.integration.test_moto_query import _moto_pages, _pages, _table, dynamodb  # noqa: F401

partitions = st.sampled_from(["a", "b", "c"])
sort_keys = st.text(alphabet="hsx#0", min_size=1, max_size=3)
operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "update", "update-if", "update-remove", "delete", "transact"]),
        partitions,
        sort_keys,
        st.one_of(st.none(), partitions),
        st.integers(-4, 4),
    ),
    min_size=1,
    max_size=40,
)


def _backend_table(name: str) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends["123456789012"]["us-east-1"].tables[name]


def _check_indexes(table: Any) -> None:
    """Every built partition sorted (strictly: keys are unique), each row the very item the table
    holds, and a secondary index holding every item that has its key attributes."""
    state = moto_patch._indexes(table)
    assert state is not None
    stored = [item for partition in table.items.values() for item in partition.values()]
    for name, index in state.by_name.items():
        assert index is not None
        indexed = []
        for partition, rows in index.partitions.items():
            assert rows, "an empty partition is dropped"
            keys = [index.sort_key(row) for row in rows]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
            for row in rows:
                found = index.entry(row)
                assert found is not None and found[0] == partition
                assert table.get_item(row.hash_key, row.range_key) is row
            indexed += rows
        if name is not None:
            expected = [item for item in stored if index.entry(item) is not None]
            assert sorted(map(id, indexed)) == sorted(map(id, expected))
        else:
            for rows in index.partitions.values():
                assert {id(i) for i in rows} == {id(i) for i in table.items[rows[0].hash_key].values()}


def _write(client: Any, table: str, op: str, pk: str, sk: str, g: str | None, n: int) -> None:
    key = {"pk": {"S": pk}, "sk": {"S": sk}}
    set_g = {
        "UpdateExpression": "SET g = :g, n = :n",
        "ExpressionAttributeValues": {":g": {"S": g or "a"}, ":n": {"N": str(n)}},
    }
    if op == "put":
        item = {**key, "v": {"S": f"v{n}"}}
        if g is not None:
            item |= {"g": {"S": g}, "n": {"N": str(n)}}
        client.put_item(TableName=table, Item=item)
    elif op == "update":  # creates the item when it is not there
        client.update_item(TableName=table, Key=key, **set_g)
    elif op == "update-if":  # refused when n is not below the new value: nothing changes
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            client.update_item(
                TableName=table,
                Key=key,
                ConditionExpression="attribute_not_exists(n) OR n < :n",
                **set_g,
            )
    elif op == "update-remove":
        client.update_item(TableName=table, Key=key, UpdateExpression="REMOVE g")
    elif op == "delete":
        client.delete_item(TableName=table, Key=key)
    else:
        other = {"pk": {"S": pk}, "sk": {"S": sk + "t"}}
        with contextlib.suppress(client.exceptions.TransactionCanceledException):
            client.transact_write_items(
                TransactItems=[
                    {"Update": {"TableName": table, "Key": key, **set_g}},
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {**other, "g": {"S": g or "b"}, "n": {"N": str(-n)}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, query_partition=partitions)
def test_indexes_stay_exact_under_in_place_updates(dynamodb: Any, ops: list[Any], query_partition: str) -> None:  # noqa: F811
    table = _table(dynamodb)
    try:
        for index in (None, "by_g", "by_g_sk"):  # build every index first: writes keep them current
            hash_attr = "g" if index else "pk"
            params: dict[str, Any] = {
                "TableName": table,
                "KeyConditionExpression": "#h = :h",
                "ExpressionAttributeNames": {"#h": hash_attr},
                "ExpressionAttributeValues": {":h": {"S": query_partition}},
            }
            if index:
                params["IndexName"] = index
            dynamodb.query(**params)
        for op in ops:
            _write(dynamodb, table, *op)
            _check_indexes(_backend_table(table))
        for index in (None, "by_g", "by_g_sk"):
            for forward in (True, False):
                params = {
                    "TableName": table,
                    "KeyConditionExpression": "#h = :h",
                    "ExpressionAttributeNames": {"#h": "g" if index else "pk"},
                    "ExpressionAttributeValues": {":h": {"S": query_partition}},
                    "ScanIndexForward": forward,
                    "Limit": 3,
                }
                if index:
                    params["IndexName"] = index
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(Table, "all_items", lambda self: pytest.fail("walked the table"))
                    fast = _pages(dynamodb, params)
                assert fast == _moto_pages(dynamodb, params)
    finally:
        dynamodb.delete_table(TableName=table)


def test_a_row_costs_one_reference(dynamodb: Any) -> None:  # noqa: F811
    """The index keeps no key tuples: each row of a partition is the item itself."""
    table = _table(dynamodb)
    try:
        for i in range(50):
            dynamodb.put_item(
                TableName=table,
                Item={"pk": {"S": "p"}, "sk": {"S": f"{i:03d}"}, "g": {"S": "g"}, "n": {"N": str(50 - i)}},
            )
        dynamodb.query(
            TableName=table,
            IndexName="by_g",
            KeyConditionExpression="g = :g",
            ExpressionAttributeValues={":g": {"S": "g"}},
        )
        moto_table = _backend_table(table)
        state = moto_patch._indexes(moto_table)
        assert state is not None
        index = state.get("by_g")
        assert index is not None
        (rows,) = index.partitions.values()
        assert [row.attrs["n"].value for row in rows] == [str(i) for i in range(1, 51)]
        assert all(row is moto_table.items[row.hash_key][row.range_key] for row in rows)
    finally:
        dynamodb.delete_table(TableName=table)
