"""Strict JSON for request bodies: exactly RFC 8259 interoperable JSON, or a ValueError.

Python's json module is lenient where other parsers are not, and each leniency reached a user:
* `NaN`, `Infinity` (and `1e999`, which becomes inf) are accepted, stored, and written back out as
  bare `NaN`, which strict parsers refuse: one writer broke every reader's listing;
* duplicate keys: the last one wins, so `{"event_type": "a", "event_type": "b"}` means one thing
  to a contract check that saw the first and another to code that sees the last;
* `"\\ud800"` (a lone surrogate) decodes to a str that cannot be encoded as UTF-8 later;
* deep nesting (10,000 `[`) raises RecursionError in the parser or anywhere that walks the value.

`loads` refuses all of them with a ValueError whose message says what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # arrays/objects inside each other; documented in every OpenAPI spec


class StrictJSONError(ValueError):
    """The body is not strict JSON; the message is meant for the client."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise StrictJSONError(f"duplicate key {key!r} in an object")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number; only finite numbers are allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"number {text[:40]} is out of range (not finite as a double)")
    return value


def _has_surrogate(text: str) -> bool:
    # a well-formed str from JSON holds surrogate code points only when one was unpaired
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _check_tree(value: Any) -> None:
    """Depth and unpaired surrogates, iteratively (no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                raise StrictJSONError("string holds an unpaired UTF-16 surrogate (e.g. \\ud800)")
        elif isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels")
            for key, item in node.items():
                if _has_surrogate(key):
                    raise StrictJSONError("object key holds an unpaired UTF-16 surrogate (e.g. \\ud800)")
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in node)


def _openers_exceed_depth(raw: bytes | str) -> bool:
    """Cheap pre-check: fewer openers than MAX_DEPTH cannot nest too deep (skips the depth scan)."""
    if isinstance(raw, bytes):
        return raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    return raw.count("[") + raw.count("{") > MAX_DEPTH


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _scan_depth(raw: bytes | str) -> None:
    """Refuse nesting over MAX_DEPTH before the parser recurses into it (strings skipped)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


# An unpaired surrogate in bytes of UTF-8 can only come from a \uD800-\uDFFF escape.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# One decoder for every call: json.loads with hooks builds a new JSONDecoder each time.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_float=_finite_float)


def _decode(raw: bytes | str) -> Any:
    """json.loads(raw, <the hooks above>), with the decoder built once."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        return _DECODER.decode(raw)
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def loads(raw: bytes | str) -> Any:
    """Parse strict JSON; StrictJSONError (a ValueError) with a client-facing reason otherwise."""
    if _openers_exceed_depth(raw):
        _scan_depth(raw)
    try:
        value = _decode(raw)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StrictJSONError(str(exc)) from None
    # Nesting was bounded before parsing (few openers, or the scan). Bytes without a surrogate
    # escape cannot hold an unpaired surrogate: nothing left to walk.
    if isinstance(raw, bytes) and not _SURROGATE_ESCAPE.search(raw):
        return value
    _check_tree(value)
    return value
