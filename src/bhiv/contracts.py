"""Event contracts: the JSON Schemas in contracts/ are the source of truth for event shapes."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any


def contracts_dir() -> Path:
    env = os.environ.get("BHIV_CONTRACTS_DIR")
    if env:
        return Path(env)
    packaged = Path(__file__).parent / "_contracts"
    if packaged.is_dir():  # Lambda layer: contracts are copied into the package at build time
        return packaged
    return Path(__file__).resolve().parents[2] / "contracts"


def load_schema(name: str) -> dict[str, Any]:
    path = contracts_dir() / f"{name}.schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@cache
def event_type_validators() -> dict[str, Any]:
    """event_type -> validator, for every event type with a contract under contracts/events/."""
    validators: dict[str, Any] = {}
    for path in sorted((contracts_dir() / "events").glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        from bhiv.validation import ContractValidator

        validators[path.name.removesuffix(".schema.json")] = ContractValidator(schema)
    return validators


@cache
def _event_type_quick_checks() -> dict[str, Any]:
    from bhiv.validation import quick_check

    return {event_type: quick_check(validator.schema) for event_type, validator in event_type_validators().items()}


def event_type_errors(event_data: dict[str, Any]) -> list[dict[str, str]]:
    """Contract violations of event_data for its event type (none when the type has no contract)."""
    event_type = str(event_data.get("event_type"))
    validator = event_type_validators().get(event_type)
    if validator is None or _event_type_quick_checks()[event_type](event_data):
        return []
    errors = []
    for err in sorted(validator.iter_errors(event_data), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(p) for p in err.absolute_path) or _missing_field(err.message)
        errors.append({"field": f"event_data.{field}" if field else "event_data", "message": err.message})
    return errors


def _missing_field(message: str) -> str:
    # jsonschema reports a missing property as "'name' is a required property"
    if message.endswith("is a required property") and message.startswith("'"):
        return message.split("'")[1]
    return ""
