"""The fast header parser builds exactly what the email parser builds (bhiv.local.http_headers)."""

from __future__ import annotations

import email.parser
import http.client
import io
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from bhiv.local import http_headers

ORIGINAL = http_headers._original_parse_headers


def _both(raw: bytes) -> tuple[Any, Any]:
    return http_headers.parse_headers(io.BytesIO(raw)), ORIGINAL(io.BytesIO(raw))


def _same(raw: bytes) -> None:
    fast, slow = _both(raw)
    assert type(fast) is type(slow)
    # defects are compared by type below (they have no equality of their own)
    assert {k: v for k, v in vars(fast).items() if k != "defects"} == {
        k: v for k, v in vars(slow).items() if k != "defects"
    }, raw
    assert fast.items() == slow.items()
    assert fast.get_payload() == slow.get_payload()
    assert [type(d) for d in fast.defects] == [type(d) for d in slow.defects]


NAMES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"), min_size=1)
ANY_BYTES = st.binary(max_size=40)
VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.text(alphabet=st.sampled_from(" \t\r\x0b\x0c\x85\x1c:ab\xe9"), max_size=12),
)
LINE = st.one_of(
    st.builds(lambda n, v, end: f"{n}:{v}".encode("latin-1") + end, NAMES, VALUES, st.sampled_from([b"\r\n", b"\n"])),
    st.builds(lambda b: b + b"\r\n", ANY_BYTES),  # anything at all, including folded and odd lines
)


@settings(max_examples=600, deadline=None)
@given(st.lists(LINE, max_size=8), st.sampled_from([b"\r\n", b"\n", b""]))
def test_any_header_block_parses_as_the_email_parser_does(lines: list[bytes], end: bytes) -> None:
    _same(b"".join(lines) + end + b"body that is not read")


def test_typical_request_headers_take_the_fast_path_and_match() -> None:
    raw = (
        b"Host: 127.0.0.1:8000\r\nUser-Agent: python-requests/2.32\r\nAccept-Encoding: gzip, deflate\r\n"
        b"Accept: */*\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer abc.def\r\nContent-Length: 17\r\nX-Empty:\r\nX-Tab:\t v \t\r\n\r\n"
    )
    _same(raw)
    with mock.patch.object(email.parser, "Parser", side_effect=AssertionError("slow path")):
        message = http_headers.parse_headers(io.BytesIO(raw))
    assert message["content-length"] == "17" and message.get("X-Tab") == "v \t"


def test_folded_and_unusual_headers_match() -> None:
    for raw in [
        b"X-Folded: a\r\n  b\r\n\r\n",
        b"From nobody Mon Jan 1\r\nHost: x\r\n\r\n",
        b"Bad Header: x\r\nHost: y\r\n\r\n",
        b": empty name\r\n\r\n",
        b"X-Latin: caf\xe9\r\n\r\n",
        b"X-Cr: a\rb\r\n\r\n",
        b"X-Nel: a\x85b\r\n\r\n",
        b"Host: x\r\n",  # no blank line: the connection ended
        b"\r\n",
        b"",
    ]:
        _same(raw)


def test_the_limits_of_http_client_still_apply() -> None:
    too_many = b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n"
    try:
        http_headers.parse_headers(io.BytesIO(too_many))
    except http.client.HTTPException as exc:
        assert "more than 100 headers" in str(exc)
    else:
        raise AssertionError("101 headers were accepted")
    long_line = b"H: " + b"v" * 70_000 + b"\r\n\r\n"
    try:
        http_headers.parse_headers(io.BytesIO(long_line))
    except http.client.LineTooLong:
        pass
    else:
        raise AssertionError("a 70 KB header line was accepted")


def test_installed_for_http_server() -> None:
    import bhiv.local.server  # noqa: F401  installs it

    assert http.client.parse_headers is http_headers.parse_headers
