"""Fixtures of the deploy tests: dev certificates, and a private namespace network for netns tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.launcher.netns import PrivateNetwork, netns_unavailable_reason, private_network


@pytest.fixture(scope="session")
def netns_ok() -> None:
    """Skip, with the reason, where network namespaces cannot be made."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def federation_net(netns_ok: None, request: pytest.FixtureRequest) -> Iterator[PrivateNetwork]:
    """Namespaces ``aggregator``, ``site-a``, ``site-b`` plus the test itself as ``researcher``."""
    with private_network(["aggregator", "site-a", "site-b"], root_role="researcher") as net:
        # Belt and braces: removal is idempotent, and a finaliser runs even if teardown is odd.
        request.addfinalizer(net.remove)
        yield net
