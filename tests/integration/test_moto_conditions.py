"""Conditions parsed once per shape, values bound per use (bhiv.local.moto_patch): every answer is
the one moto's own parser gives for the same expression and values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.dynamodb import comparisons
from moto.dynamodb.models.dynamo_type import DynamoType, Item

from bhiv.local import moto_patch

moto_patch.install()
ORIGINAL = comparisons.ConditionExpressionParser  # the parser itself is not replaced, only its callers

EXPRESSIONS: list[tuple[str, dict[str, str] | None, list[tuple[str, str]]]] = [
    ("version = :v", None, [(":v", "N")]),
    ("attribute_not_exists(pk) OR version = :v", None, [(":v", "N")]),
    ("#s = :running AND lease_until < :now", {"#s": "status"}, [(":running", "S"), (":now", "S")]),
    ("begins_with(sk, :h)", None, [(":h", "S")]),
    ("version BETWEEN :a AND :b", None, [(":a", "N"), (":b", "N")]),
    ("#s IN (:x, :y)", {"#s": "status"}, [(":x", "S"), (":y", "S")]),
    ("size(sk) > :n", None, [(":n", "N")]),
    ("NOT (version <> :v) AND contains(sk, :h)", None, [(":v", "N"), (":h", "S")]),
    ("attribute_type(sk, :t)", None, [(":t", "S")]),
]

_strings = st.sampled_from(["", "a", "h#1", "h#2", "running", "done", "2026-12-02T06:00:00Z", "S", "N"])
_numbers = st.integers(min_value=-3, max_value=5).map(str)


def _item(version: str | None, status: str | None, lease: str | None, sk: str) -> Item:
    attrs: dict[str, Any] = {"pk": {"S": "p"}, "sk": {"S": sk}}
    if version is not None:
        attrs["version"] = {"N": version}
    if status is not None:
        attrs["status"] = {"S": status}
    if lease is not None:
        attrs["lease_until"] = {"S": lease}
    return Item(DynamoType({"S": "p"}), DynamoType({"S": sk}), attrs)


def _moto(expr: str, names: Any, values: Any) -> Any:
    return ORIGINAL(expr, names or {}, values).parse()


@pytest.mark.parametrize("expr,names,shape", EXPRESSIONS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_bound_condition_answers_as_a_fresh_parse(
    expr: str, names: dict[str, str] | None, shape: list[tuple[str, str]], data: st.DataObject
) -> None:
    for _ in range(3):  # the first use builds the template; the next ones bind into it
        values = {name: {kind: data.draw(_numbers if kind == "N" else _strings)} for name, kind in shape}
        item = data.draw(
            st.one_of(
                st.none(),
                st.builds(
                    _item,
                    st.one_of(st.none(), _numbers),
                    st.one_of(st.none(), _strings),
                    st.one_of(st.none(), _strings),
                    _strings,
                ),
            )
        )
        ours = comparisons.get_filter_expression(expr, names or {}, values)
        theirs = _moto(expr, names, values)
        assert _outcome(ours, item) == _outcome(theirs, item)
        assert repr(ours) == repr(theirs)


def _outcome(op: Any, item: Item | None) -> Any:
    try:
        return op.expr(item)
    except Exception as exc:  # moto raises for some (size() of a missing attribute): the same way
        return type(exc).__name__, str(exc)


def test_a_template_is_bound_into_a_copy_never_shared() -> None:
    first = comparisons.get_filter_expression("version = :v", {}, {":v": {"N": "1"}})
    second = comparisons.get_filter_expression("version = :v", {}, {":v": {"N": "2"}})
    third = comparisons.get_filter_expression("version = :v", {}, {":v": {"N": "3"}})
    item = _item("2", None, None, "s")
    assert (first.expr(item), second.expr(item), third.expr(item)) == (False, True, False)


def test_a_condition_shape_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    parse = ORIGINAL.parse

    def counting(self: Any) -> Any:
        calls.append(1)
        return parse(self)

    monkeypatch.setattr(ORIGINAL, "parse", counting)
    expr = "attribute_not_exists(pk) OR counted_version = :cv"  # a shape no other test uses
    for version in range(10):
        comparisons.get_filter_expression(expr, {}, {":cv": {"N": str(version)}})
    assert len(calls) == 2  # the first real values, and the template with stand-ins
