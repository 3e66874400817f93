"""Live stacks for the compatibility suite: one with auth off (`--no-auth`), one with auth on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.stack import RunningStack, start_stack


@dataclass
class OldClients:
    """A running stack as the original clients see it: with `auth` on they send the token of the
    requester they are, with it off they send no Authorization header at all."""

    stack: RunningStack
    auth: bool

    def headers(self, requester: str) -> dict[str, str]:
        return self.stack.auth(requester) if self.auth else {}


@pytest.fixture(scope="session")
def stack_without_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("compat-no-auth") / "state", "--no-auth")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def stack_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("compat-auth") / "state")
    yield running
    running.stop()


@pytest.fixture(params=["auth-off", "auth-on"])
def old(request: pytest.FixtureRequest) -> OldClients:
    if request.param == "auth-off":
        return OldClients(request.getfixturevalue("stack_without_auth"), auth=False)
    return OldClients(request.getfixturevalue("stack_with_auth"), auth=True)
