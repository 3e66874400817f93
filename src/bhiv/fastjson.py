"""JSON for hot paths (moto's answers, the local fast client, the journal, log lines): orjson.

The standard library's encoder was about a fifth of the local stack's CPU per write. orjson writes
the same JSON for what these paths carry (DynamoDB JSON: strings, small integers, lists and
objects), compact; anything it does not take goes to the standard library, so nothing changes
meaning. Not for data whose exact bytes are stored or hashed (bhiv.bucket.domain.canonical_json).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a runtime without the wheel still works, slower
    orjson = None  # type: ignore[assignment]

# datetimes and dataclasses go to `default`, as with the standard library (orjson would write
# ISO strings and field dicts of its own); keys that are not strings are written as json does.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS if orjson else 0


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    return dumps_bytes(value, default).decode("utf-8")


def dumps_bytes(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    if orjson is None:
        return json.dumps(value, default=default, separators=(",", ":")).encode("utf-8")
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer over 64 bits, a lone surrogate
        return json.dumps(value, default=default, separators=(",", ":")).encode("utf-8")


def loads(text: str | bytes) -> Any:
    """Parse JSON. orjson makes floats of integers over 64 bits: text where a number of 19 digits or
    more may start (after `[`, `:` or `,`, perhaps inside a string) is parsed by the standard library."""
    long_digits = _LONG_DIGITS_BYTES if isinstance(text, bytes) else _LONG_DIGITS
    if orjson is None or long_digits.search(text):  # type: ignore[arg-type]
        return json.loads(text)
    return orjson.loads(text)


_LONG_DIGITS = re.compile(r"(?:^|[\[:,])\s*-?[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"(?:^|[\[:,])\s*-?[0-9]{19}")


def log_line(record: Any) -> str:
    """Powertools' serialiser for a log record: compact JSON, anything unknown as str()."""
    return dumps(record, default=str)
