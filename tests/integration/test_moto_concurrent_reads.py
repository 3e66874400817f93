"""moto reads that loop over a table (DescribeTable's item count, Scan) while other threads add
items: no "dictionary changed size during iteration" (bhiv.local.moto_patch), same answers."""

from __future__ import annotations

import threading

import boto3
from moto import mock_aws

from bhiv.local import moto_patch

moto_patch.install()


def _table(client: object, name: str, range_key: bool) -> None:
    schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attrs = [{"AttributeName": "pk", "AttributeType": "S"}]
    if range_key:
        schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attrs.append({"AttributeName": "sk", "AttributeType": "S"})
    client.create_table(  # type: ignore[attr-defined]
        TableName=name, KeySchema=schema, AttributeDefinitions=attrs, BillingMode="PAY_PER_REQUEST"
    )


def test_counting_and_scanning_while_partitions_are_added() -> None:
    from moto.dynamodb.models import dynamodb_backends

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        _table(client, "Flat", range_key=False)
        _table(client, "Ranged", range_key=True)
        backend = dynamodb_backends["123456789012"]["us-east-1"]
        flat, ranged = backend.tables["Flat"], backend.tables["Ranged"]
        done = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i in range(20_000):
                    flat.put_item({"pk": {"S": f"p{i}"}})
                    ranged.put_item({"pk": {"S": f"p{i % 500}"}, "sk": {"S": f"s{i}"}})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        writer = threading.Thread(target=write)
        writer.start()
        reads = 0
        try:
            while not done.is_set():
                for table in (flat, ranged):
                    count = len(table)
                    items = table.all_items()
                    assert len(items) >= count - 1  # a put may land between the two reads
                    table.describe()
                reads += 1
        finally:
            writer.join()
        assert not errors
        assert reads > 0
        assert len(flat) == 20_000 and len(ranged) == 20_000
        assert len(flat.all_items()) == 20_000 and len(ranged.all_items()) == 20_000
        assert [i.hash_key.value for i in flat.all_items()] == sorted(f"p{i}" for i in range(20_000))
