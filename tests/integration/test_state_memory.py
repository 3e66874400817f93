"""Smaller, faster local state (issue 12): snapshot version 3, consumed stream records dropped,
moto items built and held cheaply, compaction reading the tables as they were at the cut."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bhiv.local import durability, moto_memory
from tests.integration.conftest import use_offline_aws
from tests.integration.test_durable_state import _event, _key, _picture, _restart, _start, _workload

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_offline_aws(monkeypatch)
    yield
    durability.activate(None)


def _backend() -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[durability.ACCOUNT][REGION]


def _shard() -> Any:
    return _backend().tables["EventsTable"].stream_shard


def _sequence_numbers() -> list[int]:
    return [int(r.to_json()["dynamodb"]["SequenceNumber"]) for r in _shard().items]


def test_the_snapshot_is_version_3_json_lines_and_round_trips(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        state.compact()
        live = _picture()
        state.close()
    lines = (tmp_path / "snapshot.json").read_bytes().splitlines()
    header, trailer = json.loads(lines[0]), json.loads(lines[-1])
    assert (header["format"], header["version"], header["generation"]) == ("bhiv-snapshot", 3, 1)
    assert trailer["end"] is True and trailer["lines"] == len(lines) - 1
    assert live["streams"]["EventsTable"]["records"]  # no horizon: every record is kept
    assert _restart(tmp_path) == live
    assert (tmp_path / "journal.jsonl").read_bytes() == b""


def test_a_version_2_snapshot_still_loads_and_the_next_compaction_writes_version_3(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        live = _picture()
        # the snapshot as version 2 wrote it: one JSON document
        backend = _backend()
        shard = _shard()
        v2 = {
            "version": 2,
            "generation": 1,
            "created_at": 0,
            "tables": {
                name: [item.to_json()["Attributes"] for item in table.all_items()]
                for name, table in backend.tables.items()
            },
            "streams": {
                "EventsTable": {
                    "next_sequence": shard.starting_sequence_number + len(shard.items),
                    "records": [r.to_json() for r in shard.items],
                }
            },
        }
        state.close()
    (tmp_path / "snapshot.json").write_text(json.dumps(v2, default=durability._json_default), encoding="utf-8")
    (tmp_path / "journal.jsonl").write_bytes(b"")
    assert _restart(tmp_path) == live
    durability.activate(None)
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        assert state.generation == 1 and state.loaded_items == sum(len(t) for t in live["tables"].values())
        state.compact()
        state.close()
    assert json.loads((tmp_path / "snapshot.json").read_bytes().splitlines()[0])["version"] == 3
    assert _restart(tmp_path) == live


def _compacted(tmp_path: Path) -> bytes:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        state.compact()
        state.close()
    return (tmp_path / "snapshot.json").read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data.replace(b'"probe', b'"prube', 1), id="a changed byte"),
        pytest.param(lambda data: data[: len(data) // 2], id="cut short"),
        pytest.param(lambda data: data[: data.rindex(b"\n", 0, len(data) - 1) + 1], id="no end line"),
        pytest.param(lambda data: b"{not json\n" + data, id="not JSON"),
        pytest.param(lambda data: data.replace(b'"version": 3', b'"version": 4', 1), id="a newer version"),
    ],
)
def test_a_damaged_snapshot_is_refused_and_never_overwritten(tmp_path: Path, damage: Any) -> None:
    damaged = damage(_compacted(tmp_path))
    (tmp_path / "snapshot.json").write_bytes(damaged)
    durability.activate(None)
    with mock_aws():
        with pytest.raises(durability.SnapshotError, match="Refusing to start"):
            _start(tmp_path)
        state = durability.DurableState(tmp_path, REGION)
        with pytest.raises(durability.SnapshotError):
            state.restore(boto3.client("dynamodb", region_name=REGION), boto3.client("sqs", region_name=REGION))
        with pytest.raises(durability.SnapshotError):
            state.compact()
    assert (tmp_path / "snapshot.json").read_bytes() == damaged


def test_records_every_consumer_has_read_are_dropped_and_numbering_goes_on(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        numbers = _sequence_numbers()
        assert len(numbers) >= 8
        assert state.trim_streams({"EventsTable": None}) == 0  # a consumer without a position: keep all
        assert _sequence_numbers() == numbers
        dropped = state.trim_streams({"EventsTable": numbers[4]})
        assert dropped == 5
        assert _sequence_numbers() == numbers[5:]
        streams = boto3.client("dynamodbstreams", region_name=REGION)
        stream_arn = streams.list_streams(TableName="EventsTable")["Streams"][0]["StreamArn"]
        shard_id = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn,
            ShardId=shard_id,
            ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            SequenceNumber=str(numbers[4]),
        )["ShardIterator"]
        read = streams.get_records(ShardIterator=iterator)["Records"]
        assert [int(r["dynamodb"]["SequenceNumber"]) for r in read] == numbers[5:]
        _workload(dynamodb, 1000)
        assert _sequence_numbers()[: len(numbers) - 5] == numbers[5:]
        assert _sequence_numbers()[len(numbers) - 5] == numbers[-1] + 1
        live = _picture()
        state.close()
    # after kill -9 the journal replays every record since the last compaction, the dropped ones too
    # (below every consumer's position, so never delivered again, and dropped again by the next trim)
    restarted = _restart(tmp_path)
    assert restarted["tables"] == live["tables"]
    kept = live["streams"]["EventsTable"]
    assert restarted["streams"]["EventsTable"]["next"] == kept["next"]
    assert restarted["streams"]["EventsTable"]["records"][-len(kept["records"]) :] == kept["records"]


def test_a_compaction_reads_the_tables_as_they_were_at_the_cut(tmp_path: Path) -> None:
    """Items are serialised after the write lock is released: an UpdateItem that changes an item in
    place, a put that replaces one and a delete must not reach the copy."""
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        dynamodb.put_item(TableName="BucketStatsTable", Item={"pk": {"S": "c"}, "sk": {"S": "1"}, "n": {"N": "1"}})
        before = _picture()["tables"]
        copy = moto_memory.TableCopy(_backend().tables, moto_memory.encode_item)
        try:
            dynamodb.update_item(
                TableName="BucketStatsTable",
                Key={"pk": {"S": "c"}, "sk": {"S": "1"}},
                UpdateExpression="SET n = :two, extra = :x",
                ExpressionAttributeValues={":two": {"N": "2"}, ":x": {"S": "new"}},
            )
            dynamodb.put_item(TableName="EventsTable", Item=_event(7000))
            dynamodb.delete_item(TableName="EventsTable", Key=_key(2))
            dynamodb.put_item(TableName="EventsTable", Item={**_event(3), "extra": {"S": "replaced"}})
            copied = {
                name: sorted(json.dumps(_attributes(json.loads(line)), sort_keys=True) for line in copy.lines(name))
                for name in copy.counts()
            }
        finally:
            copy.close()
        assert copied == before
        assert _picture()["tables"] != before
        state.close()


def _attributes(flat: list[Any]) -> dict[str, Any]:
    return {flat[i]: {flat[i + 1]: flat[i + 2]} for i in range(0, len(flat), 3)}


ITEM: dict[str, dict[str, Any]] = {
    "pk": {"S": "p"},
    "sk": {"S": "s"},
    "n": {"N": "1.50"},
    "yes": {"BOOL": True},
    "none": {"NULL": True},
    "m": {"M": {"a": {"S": "x"}, "l": {"L": [{"N": "1"}, {"S": "y"}, {"M": {}}]}}},
    "l": {"L": [{"S": "a"}, {"BOOL": False}]},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2"]},
    "b": {"B": "AAEC"},
    "empty": {"S": ""},
}


def test_items_built_for_a_load_are_the_items_moto_builds() -> None:
    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    flat = [part for name, typed in ITEM.items() for kind, value in typed.items() for part in (name, kind, value)]
    built = moto_memory.make_item("pk", "sk", flat)
    native = Item(DynamoType(ITEM["pk"]), DynamoType(ITEM["sk"]), ITEM)
    assert built == native
    assert built.to_json() == native.to_json()
    assert built.hash_key == native.hash_key and built.range_key == native.range_key
    assert list(built.attrs) == list(native.attrs)
    for name in ITEM:
        assert type(built.attrs[name]) is DynamoType
        assert (built.attrs[name].type, built.attrs[name].value) == (native.attrs[name].type, native.attrs[name].value)
        assert built.attrs[name].size() == native.attrs[name].size()
    assert built.size() == native.size()
    assert moto_memory.flat_attributes(native) == flat
    hashless = moto_memory.make_item("pk", None, flat)
    assert hashless.range_key is None


def test_written_items_share_their_names_and_short_strings_and_answer_the_same(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        for i in range(2):
            dynamodb.put_item(TableName="EventsTable", Item=_event(i))
        table = _backend().tables["EventsTable"]
        first, second = (table.get_item(*durability._key_values(table, _key(i))) for i in range(2))
        for name in first.attrs:
            other = next(n for n in second.attrs if n == name)
            assert other is name
        assert first.attrs["event_type"].value is second.attrs["event_type"].value
        for i in range(2):
            got = dynamodb.get_item(TableName="EventsTable", Key=_key(i))["Item"]
            assert got == _event(i)
        state.close()


def test_dynamo_type_has_slots_everywhere_moto_uses_it() -> None:
    import moto.dynamodb.models as models
    import moto.dynamodb.models.dynamo_type as dynamo_type
    import moto.dynamodb.models.table as table_module

    from bhiv.local import moto_patch

    moto_patch.install()  # installs moto_memory first
    assert dynamo_type.DynamoType.__slots__ == ("type", "value")
    assert models.DynamoType is dynamo_type.DynamoType
    assert table_module.DynamoType is dynamo_type.DynamoType
    value = dynamo_type.DynamoType({"M": {"a": {"L": [{"S": "x"}]}}})
    assert type(value.value["a"]) is dynamo_type.DynamoType
    assert dynamo_type.DynamoType(value) == value  # moto's copy constructor still recognises it
    assert value.size() > 0


def test_an_update_of_a_shared_scalar_changes_only_its_own_item(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        keys = [{"pk": {"S": "p"}, "sk": {"S": str(i)}} for i in range(3)]
        for key in keys:
            dynamodb.put_item(
                TableName="BucketStatsTable",
                Item={**key, "n": {"N": "1"}, "kind": {"S": "same"}, "m": {"M": {"a": {"S": "same"}}}},
            )
        table = _backend().tables["BucketStatsTable"]
        items = [table.get_item(*durability._key_values(table, key)) for key in keys]
        assert items[0].attrs["kind"] is items[1].attrs["kind"]  # one object for the repeated scalar
        assert items[0].attrs["n"] is items[1].attrs["n"]
        dynamodb.update_item(
            TableName="BucketStatsTable",
            Key=keys[0],
            UpdateExpression="ADD n :one SET kind = :other, m.a = :other",
            ExpressionAttributeValues={":one": {"N": "1"}, ":other": {"S": "changed"}},
        )
        dynamodb.update_item(
            TableName="BucketStatsTable",
            Key=keys[1],
            UpdateExpression="REMOVE kind",
        )
        got = [dynamodb.get_item(TableName="BucketStatsTable", Key=key)["Item"] for key in keys]
        assert (got[0]["n"], got[0]["kind"], got[0]["m"]) == (
            {"N": "2"},
            {"S": "changed"},
            {"M": {"a": {"S": "changed"}}},
        )
        assert "kind" not in got[1] and got[1]["n"] == {"N": "1"}
        assert got[2] == {**keys[2], "n": {"N": "1"}, "kind": {"S": "same"}, "m": {"M": {"a": {"S": "same"}}}}
        state.close()


def test_items_stream_records_and_iterators_are_not_kept_after_use(tmp_path: Path) -> None:
    """moto keeps every model instance in a class-wide list: every replaced item, every Query copy,
    every stream record, however long ago it was dropped."""
    import gc
    import weakref

    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import StreamRecord

    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        table = _backend().tables["EventsTable"]
        replaced = weakref.ref(table.get_item(*durability._key_values(table, _key(3))))
        records = [weakref.ref(r) for r in _shard().items]
        dynamodb.put_item(TableName="EventsTable", Item={**_event(3), "extra": {"S": "x"}})
        dynamodb.query(
            TableName="EventsTable",
            IndexName="by_time",
            KeyConditionExpression="feed = :f",
            ExpressionAttributeValues={":f": _event(3)["feed"]},
        )
        state.trim_streams({"EventsTable": int(_shard().items[-1].to_json()["dynamodb"]["SequenceNumber"])})
        gc.collect()
        assert replaced() is None
        assert records and [r for r in records if r() is not None] == []
        assert Item.instances_tracked == [] and StreamRecord.instances_tracked == []
        state.close()


def test_compact_stream_records_read_back_exactly_as_moto_builds_them(tmp_path: Path) -> None:
    from moto.dynamodb.models import table as table_module

    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        dynamodb.put_item(TableName="EventsTable", Item={**_event(9), "m": {"M": {"a": {"L": [{"S": "x"}]}}}})
        shard = _shard()
        assert shard.items
        assert all(isinstance(r, table_module.StreamRecord) and "_packed" in r.__dict__ for r in shard.items)
        table = _backend().tables["EventsTable"]
        item = table.get_item(*durability._key_values(table, _key(9)))
        moto_class = table_module.StreamRecord.__mro__[1]
        for old, new in ((None, item), (item, item), (item, None)):
            native = moto_class(table, "NEW_AND_OLD_IMAGES", "MODIFY", old, new, 7).record
            packed = moto_memory.pack_record(native)
            assert packed is not None
            rebuilt = moto_memory.unpack_record(packed)
            assert json.dumps(rebuilt, default=str) == json.dumps(native, default=str)  # same keys, same order
            assert rebuilt is not moto_memory.unpack_record(packed)
        record = shard.items[-1]
        assert record.record == record.to_json()
        assert record.to_json()["dynamodb"]["NewImage"]["m"] == {"M": {"a": {"L": [{"S": "x"}]}}}
        assert moto_memory.pack_record({"eventID": "x"}) is None  # another shape: kept as it is
        state.close()


def test_reading_from_below_the_trimmed_start_reads_what_is_kept(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        numbers = _sequence_numbers()
        state.trim_streams({"EventsTable": numbers[4]})
        kept = [int(r["dynamodb"]["SequenceNumber"]) for r in _shard().get(numbers[1], 100)]
        assert kept == numbers[5:]
        state.close()
