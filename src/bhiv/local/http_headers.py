"""HTTP header parsing for the local servers without the email package's parser.

`http.server` parses every request's headers with `http.client.parse_headers`, which hands them to
`email.parser.Parser`: a general MIME parser that costs about a quarter of the local stack's CPU
per single-event write (py-spy, issue 12). Request headers are nearly always plain `Name: value`
lines of printable ASCII; for those this builds the same `HTTPMessage` the email parser builds
(same header list, payload and defects: `tests/unit/test_http_headers.py` compares them on
generated input). Anything else (folded lines, non-ASCII bytes, a line without a colon, no blank
line at the end) goes through the email parser exactly as before, so odd or hostile headers are
read the standard way.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import Any

# A header line the fast path takes: a non-empty field name (printable ASCII except ':', as the
# email parser's header pattern), then printable ASCII or tabs, then the line end. Excludes every
# character str.splitlines() would split on, so the email parser would see the same single line.
_PLAIN_LINE = re.compile(rb"[!-9;-~]+:[\t -~]*\r?\n\Z")
_original_parse_headers = http.client.parse_headers


def parse_headers(fp: Any, _class: Any = http.client.HTTPMessage) -> Any:
    """`http.client.parse_headers`, with the plain case built directly."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # the limits it enforces stay
    if lines[-1] in (b"\r\n", b"\n") and all(_PLAIN_LINE.match(line) for line in lines[:-1]):
        message = _class()
        for line in lines[:-1]:
            name, value = line.decode("ascii").split(":", 1)
            # compat32's header_source_parse, as the email parser's set_raw receives it
            message._headers.append((name, value.lstrip(" \t").rstrip("\r\n")))
        message.set_payload("")  # the parser's payload: what follows the blank line (nothing)
        return message
    return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))


def install() -> None:
    """Route `http.client.parse_headers` (used by http.server and http.client alike) through the fast path."""
    http.client.parse_headers = parse_headers  # type: ignore[assignment]
