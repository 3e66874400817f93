"""bhiv.fastjson: orjson on the hot paths, with the standard library's meaning kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bhiv import fastjson

_dynamo_json = st.recursive(
    st.one_of(
        st.builds(lambda s: {"S": s}, st.text()),
        st.builds(lambda n: {"N": str(n)}, st.integers()),
        st.builds(lambda b: {"BOOL": b}, st.booleans()),
    ),
    lambda inner: st.one_of(
        st.builds(lambda items: {"L": items}, st.lists(inner, max_size=4)),
        st.builds(lambda m: {"M": m}, st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=10), _dynamo_json, max_size=6))
def test_round_trip_means_what_the_standard_library_means(item: dict[str, Any]) -> None:
    text = fastjson.dumps(item)
    assert json.loads(text) == item
    assert fastjson.loads(text) == item
    assert fastjson.loads(text.encode("utf-8")) == json.loads(json.dumps(item))


def test_integers_over_64_bits_keep_their_value() -> None:
    big = 1100000000017454423009 * 10**5
    assert fastjson.loads(json.dumps({"n": big, "f": 1.5})) == {"n": big, "f": 1.5}
    assert json.loads(fastjson.dumps({"n": big})) == {"n": big}


def test_datetimes_go_to_default_like_the_standard_library() -> None:
    moment = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    assert json.loads(fastjson.dumps({"t": moment}, default=lambda v: "converted")) == {"t": "converted"}


def test_lone_surrogates_and_non_string_keys_are_written_as_json_would() -> None:
    assert json.loads(fastjson.dumps({"s": "\ud800"})) == {"s": "\ud800"}
    assert json.loads(fastjson.dumps({1: "a"})) == {"1": "a"}


def test_log_lines_are_compact_and_stringify_the_unknown() -> None:
    line = fastjson.log_line({"message": "Workflow event logged to Bucket", "extra": {1, 2} - {1, 2}})
    assert line == '{"message":"Workflow event logged to Bucket","extra":"set()"}'
