"""strictjson's one shared decoder answers exactly as json.loads with the same hooks."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bhiv import strictjson


def _reference(raw: bytes | str) -> Any:
    return json.loads(
        raw,
        object_pairs_hook=strictjson._no_duplicates,
        parse_constant=strictjson._no_constants,
        parse_float=strictjson._finite_float,
    )


def _outcome(parse: Any, raw: bytes | str) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)
    except Exception as exc:  # the same type and message, whatever it is
        return type(exc).__name__, str(exc)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
TEXTS = st.one_of(
    JSONISH.map(json.dumps),
    st.text(alphabet=st.sampled_from('{}[]":,0123456789.eE+-truefalsnNIaiy \\u\ufeff\ud800'), max_size=24),
)
ENCODINGS = st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])


@settings(max_examples=500, deadline=None)
@given(TEXTS, ENCODINGS, st.booleans())
def test_the_shared_decoder_matches_json_loads(text: str, encoding: str, as_bytes: bool) -> None:
    raw: bytes | str = text
    if as_bytes:
        try:
            raw = text.encode(encoding, "surrogatepass")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
    assert _outcome(strictjson._decode, raw) == _outcome(_reference, raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=24))
def test_any_bytes_decode_as_json_loads_does(raw: bytes) -> None:
    assert _outcome(strictjson._decode, raw) == _outcome(_reference, raw)


def test_duplicates_and_constants_are_still_refused() -> None:
    samples: list[bytes | str] = [b'{"a": 1, "a": 2}', b"[NaN]", b"[1e999]", "\ufeff{}"]
    for raw in samples:
        kind, _ = _outcome(strictjson._decode, raw)
        assert kind != "ok", raw
