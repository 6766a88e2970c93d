"""Fixtures for the integration tests that run against each UDP path the server has."""

from __future__ import annotations

import pytest

from fastdns._fastpath import HAVE_MMSG


@pytest.fixture(scope="module", params=["batch", "plain"])
def udp_path(request: pytest.FixtureRequest) -> str:
    """How the server under test answers UDP: `batch` (recvmmsg/sendmmsg in C) or `plain`
    (an asyncio protocol, one datagram per call: `server.udp_batching: false`). Module
    scoped, so a module's shared server starts once per path."""
    if request.param == "batch" and not HAVE_MMSG:
        pytest.skip("recvmmsg/sendmmsg are not available on this platform")
    return str(request.param)
