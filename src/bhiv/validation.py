"""Request validation against the JSON Schemas in contracts/, so the API accepts exactly what the
contracts (and the OpenAPI specs built from the same shapes) say."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

try:
    import jsonschema_rs
except ImportError:  # pragma: no cover - every request is then checked by the jsonschema package
    jsonschema_rs = None  # type: ignore[assignment]
from jsonschema.protocols import Validator

from bhiv import strictjson
from bhiv.contracts import load_schema
from bhiv.errors import BadRequest, PayloadTooLarge, Unprocessable


@cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262: a final `$` matches only at the very end of the string,
    # where Python's `$` also matches before a trailing newline ("evt-1\n" would pass).
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


ContractValidator = validators.extend(Draft202012Validator, validators={"pattern": _pattern})


@cache
def validator(name: str) -> Validator:
    validator_instance: Validator = ContractValidator(load_schema(name))
    return validator_instance


def quick_check(schema: dict[str, Any]) -> Callable[[Any], bool]:
    """A fast "is this certainly valid?" for a schema: jsonschema-rs (about 50x faster than the
    jsonschema package on our contracts). True means valid; False means "ask the jsonschema
    package", which gives the errors a client reads. Anything it cannot take (a lone surrogate, an
    integer over 64 bits) is False, so the answer never depends on it."""
    if jsonschema_rs is None:
        return lambda instance: False
    try:
        fast = jsonschema_rs.Draft202012Validator(schema)
    except Exception:  # a schema it cannot compile: always ask the jsonschema package
        return lambda instance: False

    def check(instance: Any) -> bool:
        try:
            return bool(fast.is_valid(instance))
        except Exception:
            return False

    return check


@cache
def _quick(name: str) -> Callable[[Any], bool]:
    return quick_check(load_schema(name))


def schema_errors(name: str, instance: Any, prefix: str = "") -> list[dict[str, str]]:
    if _quick(name)(instance):
        return []
    errors = []
    for err in validator(name).iter_errors(instance):
        path = ".".join(str(p) for p in err.absolute_path)
        if (err.validator == "required" and err.message.startswith("'")) or (
            err.validator == "additionalProperties" and "'" in err.message
        ):
            path = ".".join(p for p in (path, err.message.split("'")[1]) if p)
        field = ".".join(p for p in (prefix, path) if p)
        errors.append({"field": field or "body", "message": err.message})
    errors.sort(key=lambda e: e["field"])
    return errors


def raise_for_errors(errors: list[dict[str, str]]) -> None:
    if errors:
        first = errors[0]
        raise Unprocessable(
            f"Invalid field '{first['field']}': {first['message']}",
            field=first["field"],
            errors=errors,
        )


def parse_json_body(raw: bytes | None, max_bytes: int) -> Any:
    """A request body as strict JSON (bhiv.strictjson): 400 empty/malformed, 413 over max_bytes."""
    if raw is None or raw == b"":
        raise BadRequest("Request body is empty; a JSON object is required", code="invalid_json")
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body is {len(raw)} bytes; the limit is {max_bytes}", limit_bytes=max_bytes)
    try:
        return strictjson.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"Malformed JSON: {exc}", code="invalid_json") from None
