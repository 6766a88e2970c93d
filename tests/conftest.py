"""Shared fixtures: fake upstreams and real server processes, all on loopback, all cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fastdns._testing import FakeUpstream, ServerProcess


def _stop_all(items: list[Any]) -> None:
    # Stop every one even if some fail, then report the first failure.
    first: BaseException | None = None
    for item in reversed(items):
        try:
            item.stop()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the rest are stopped
            first = first or exc
    if first is not None:
        raise first


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A started FakeUpstream on 127.0.0.1 (no records yet); stopped after the test."""
    up = FakeUpstream().start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def fake_upstream_factory() -> Iterator[Callable[..., FakeUpstream]]:
    """Make as many started FakeUpstreams as a test needs: `make(mode="silent")`."""
    made: list[FakeUpstream] = []

    def make(**kwargs: Any) -> FakeUpstream:
        up = FakeUpstream(**kwargs).start()
        made.append(up)
        return up

    yield make
    _stop_all(made)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Build ServerProcess objects, each in its own directory under tmp_path; stop all after.

    `make(config, env=None, *, start=True, **kw)` returns a started server unless start=False.
    """
    made: list[ServerProcess] = []

    def make(
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        start: bool = True,
        **kwargs: Any,
    ) -> ServerProcess:
        server = ServerProcess(config, tmp_path / f"server{len(made)}", env, **kwargs)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    _stop_all(made)
