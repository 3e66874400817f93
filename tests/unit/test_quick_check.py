"""The jsonschema-rs quick check may only ever say "valid" where the jsonschema package agrees:
it lets valid requests skip the slow validator, never lets an invalid one through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bhiv import contracts, validation

EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "examples"
REQUESTS = ["write_event_request", "write_events_request", "workflow_request", "karma_direct_event"]
EVENT_TYPES = sorted(p.name for p in (EXAMPLES / "events").iterdir() if p.is_dir())

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", "a\n", "evt-1\n", "é" * 129, "x" * 129, "2026-12-02T06:00:00Z", "success", "failed"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def _examples(directory: Path) -> list[Any]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def _mutate(document: Any, data: st.DataObject) -> Any:
    """The document with one value somewhere replaced, one key dropped or one key added."""
    if not isinstance(document, dict | list) or not document or data.draw(st.integers(0, 3)) == 0:
        return data.draw(_json)
    copy: Any = json.loads(json.dumps(document))
    if isinstance(copy, dict):
        key = data.draw(st.sampled_from(sorted(copy)))
        action = data.draw(st.sampled_from(["replace", "drop", "add", "descend"]))
        if action == "replace":
            copy[key] = data.draw(_json)
        elif action == "drop":
            del copy[key]
        elif action == "add":
            copy[data.draw(st.text(max_size=8))] = data.draw(_json)
        else:
            copy[key] = _mutate(copy[key], data)
    else:
        index = data.draw(st.integers(0, len(copy) - 1))
        copy[index] = _mutate(copy[index], data)
    return copy


def _python_valid(validator: Any, instance: Any) -> bool:
    return not list(validator.iter_errors(instance))


@pytest.mark.parametrize("name", REQUESTS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_request_quick_check_never_passes_what_the_validator_refuses(name: str, data: st.DataObject) -> None:
    documents = _examples(EXAMPLES / name / "valid") + _examples(EXAMPLES / name / "invalid")
    instance = _mutate(data.draw(st.sampled_from(documents)), data)
    if validation.quick_check(contracts.load_schema(name))(instance):
        assert _python_valid(validation.validator(name), instance), instance


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_event_type_quick_check_never_passes_what_the_validator_refuses(event_type: str, data: st.DataObject) -> None:
    directory = EXAMPLES / "events" / event_type
    documents = _examples(directory / "valid") + _examples(directory / "invalid")
    instance = _mutate(data.draw(st.sampled_from(documents)), data)
    schema = json.loads((contracts.contracts_dir() / "events" / f"{event_type}.schema.json").read_text())
    if validation.quick_check(schema)(instance):
        assert _python_valid(contracts.event_type_validators()[event_type], instance), instance


@pytest.mark.parametrize("name", REQUESTS)
def test_valid_examples_take_the_quick_path(name: str) -> None:
    check = validation.quick_check(contracts.load_schema(name))
    for document in _examples(EXAMPLES / name / "valid"):
        assert check(document), document
    for document in _examples(EXAMPLES / name / "invalid"):
        assert not check(document), document


def test_values_outside_rust_types_agree_with_the_validator() -> None:
    """Lone surrogates and integers over 64 bits: the quick check says what the validator says."""
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "maxLength": 1}, "n": {"type": "integer", "maximum": 10}},
    }
    check = validation.quick_check(schema)
    python = validation.ContractValidator(schema)
    for instance in ({"s": "\ud800"}, {"s": "\ud800a"}, {"n": 2**70}, {"n": 2**63 + 5}, {"n": -(2**70)}):
        assert check(instance) == _python_valid(python, instance), instance
