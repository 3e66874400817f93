"""moto's region discovery shares boto3's default session (bhiv.local.moto_memory): botocore's
endpoint data and service models are held once, and every backend knows the same regions."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from bhiv.local import moto_patch
from tests.integration.conftest import use_offline_aws


@pytest.fixture
def _moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_offline_aws(monkeypatch)
    with mock_aws():
        moto_patch.install()
        yield


def _regions(session: boto3.Session, service: str) -> list[str]:
    """moto's own discovery (BackendDict._generate_regions), with a given session."""
    return [
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions(service, partition_name=partition)
    ]


@pytest.mark.usefixtures("_moto")
def test_moto_discovers_regions_with_the_default_session_and_finds_the_same() -> None:
    from moto.core.base_backend import AccountSpecificBackend
    from moto.dynamodb.models import dynamodb_backends
    from moto.sqs.models import sqs_backends

    boto3.client("dynamodb")  # the default session exists once a client was made
    assert AccountSpecificBackend.get_session() is boto3.DEFAULT_SESSION
    fresh = boto3.Session()  # what moto's own get_session returns
    for service, backends in (("dynamodb", dynamodb_backends), ("sqs", sqs_backends)):
        expected = _regions(fresh, service)
        assert expected and _regions(AccountSpecificBackend.get_session(), service) == expected
        account = backends["123456789012"]
        assert account.regions[: len(expected)] == expected
        assert "us-east-1" in account and account["us-east-1"] is not None


@pytest.mark.usefixtures("_moto")
def test_without_a_default_session_one_is_made_as_boto3_would() -> None:
    from moto.core.base_backend import AccountSpecificBackend

    saved = boto3.DEFAULT_SESSION
    boto3.DEFAULT_SESSION = None
    try:
        session = AccountSpecificBackend.get_session()
        assert isinstance(session, boto3.Session) and session is boto3.DEFAULT_SESSION
        assert _regions(session, "dynamodb") == _regions(boto3.Session(), "dynamodb")
    finally:
        boto3.DEFAULT_SESSION = saved
