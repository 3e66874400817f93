"""The local HTTP servers under concurrency and abuse (issue 9, items 1 and 7).

The Bucket app is served by `bhiv up`'s AppServer on a free port against in-process moto.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from bhiv.local import server as local_server
from tests.conftest import MotoEnv, load_chalice_app

ROUNDS = 20
WRITERS = 16


@pytest.fixture
def bucket(aws_env: MotoEnv) -> Iterator[tuple[str, MotoEnv]]:
    app_server = local_server.AppServer(load_chalice_app("functions/bucket/app.py"), 0, name="bucket")
    app_server.start()
    try:
        yield app_server.url, aws_env
    finally:
        app_server.stop()


def _write(url: str, headers: dict[str, str], event_id: str, barrier: threading.Barrier) -> dict[str, Any]:
    body = {"requester_id": "workflow_executor", "event_id": event_id, "event_data": {"event_type": "probe"}}
    barrier.wait()
    response = requests.post(f"{url}/core/write-event", json=body, headers=headers, timeout=30)
    return {"sent": event_id, "status": response.status_code, "body": response.json()}


def _batch(url: str, headers: dict[str, str], barrier: threading.Barrier) -> int:
    body = {"requester_id": "workflow_executor", "events": [{"event_data": {"event_type": "probe"}}]}
    barrier.wait()
    return requests.post(f"{url}/core/write-events", json=body, headers=headers, timeout=30).status_code


def _health(url: str, barrier: threading.Barrier) -> dict[str, Any]:
    barrier.wait()
    response = requests.get(f"{url}/health", timeout=30)
    return {"status": response.status_code, "body": response.json()}


def test_concurrent_requests_never_see_each_others_data(bucket: tuple[str, MotoEnv]) -> None:
    url, env = bucket
    headers = env.bearer("workflow_executor")
    acknowledged: list[str] = []
    with ThreadPoolExecutor(max_workers=WRITERS + 4) as pool:
        for _ in range(ROUNDS):
            # single writes, batches and unauthenticated health polls released at the same instant
            barrier = threading.Barrier(WRITERS + 4)
            writes = [pool.submit(_write, url, headers, f"evt-{uuid.uuid4().hex}", barrier) for _ in range(WRITERS)]
            batches = [pool.submit(_batch, url, headers, barrier) for _ in range(2)]
            polls = [pool.submit(_health, url, barrier) for _ in range(2)]
            for future in writes:
                result = future.result()
                assert result["status"] in (200, 201), result
                assert result["body"]["event_id"] == result["sent"], result
                acknowledged.append(result["sent"])
            assert all(f.result() == 201 for f in batches)
            for poll in polls:  # its own answer: a health report (503 only if storage lags), not a 401
                result = poll.result()
                assert result["status"] in (200, 503) and "bucket_version" in result["body"], result
    reader = env.bearer("bhiv_reader")
    for event_id in acknowledged:
        response = requests.get(f"{url}/core/events/{event_id}", headers=reader, timeout=30)
        assert response.status_code == 200, event_id


def _raw_request(url: str, head: bytes, timeout: float = 10) -> tuple[int, dict[str, Any], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(fields.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, fields, rest


def test_an_oversized_body_is_refused_before_it_is_read(bucket: tuple[str, MotoEnv]) -> None:
    url, env = bucket
    token = env.tokens["workflow_executor"]
    # 50 MB announced, nothing sent: the answer must come without waiting for the body
    status, fields, body = _raw_request(
        url,
        b"POST /core/write-event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode(),
    )
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert fields.get("connection") == "close"


def test_a_large_body_without_a_token_is_refused_before_it_is_read(bucket: tuple[str, MotoEnv]) -> None:
    url, _ = bucket
    status, _, body = _raw_request(
        url,
        b"POST /core/write-events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {400 * 1024}\r\n\r\n".encode(),
    )
    assert status == 401
    assert json.loads(body)["success"] is False


def test_a_malformed_content_length_is_a_400(bucket: tuple[str, MotoEnv]) -> None:
    url, _ = bucket
    status, _, body = _raw_request(
        url, b"POST /core/write-event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"
    )
    assert status == 400
    assert json.loads(body)["error"]["code"] == "bad_content_length"


def test_slow_clients_are_cut_off_and_others_are_served(
    bucket: tuple[str, MotoEnv], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = bucket
    monkeypatch.setattr(local_server, "HEADER_TIMEOUT_S", 0.5)
    host, port = url.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(20)]
    try:
        for sock in slow:  # a request line and one header, then nothing more (slowloris)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert requests.get(f"{url}/health", timeout=30).status_code == 200
        for sock in slow:  # each is closed by the server once the header deadline passes
            sock.settimeout(30)
            try:
                leftover = sock.recv(1024)
            except ConnectionResetError:
                leftover = b""
            assert leftover == b""
    finally:
        for sock in slow:
            sock.close()


def test_kept_alive_connections_send_without_nagle(
    bucket: tuple[str, MotoEnv], monkeypatch: pytest.MonkeyPatch
) -> None:
    """chalice local writes headers and body separately; with Nagle on, each kept-alive request
    waits for the peer's delayed ACK (~43 ms). The servers' sockets must have TCP_NODELAY (the
    latency itself is measured in bench/, not asserted here)."""
    url, _ = bucket
    seen: list[int] = []
    original = local_server.NoDelayRequestHandler.setup

    def setup(self: local_server.NoDelayRequestHandler) -> None:
        original(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(local_server.NoDelayRequestHandler, "setup", setup)
    session = requests.Session()
    assert all(session.get(f"{url}/health", timeout=30).status_code == 200 for _ in range(5))
    assert seen == [1]  # one kept-alive connection, Nagle off
