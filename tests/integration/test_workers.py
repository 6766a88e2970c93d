"""`server.workers: N`: N processes on one port, UDP questions steered to a worker by name."""

from __future__ import annotations

import os
import signal
import time

import dns.message
import dns.query
import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need fork")


def _child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def test_workers_share_the_port_and_each_name_is_fetched_once(fake_upstream, server_factory):
    fake_upstream.answer(*(f"host{i}.example.org. 300 IN A 192.0.2.{i + 1}" for i in range(30)))
    server = server_factory({"server": {"workers": 3}, "upstream_servers": [fake_upstream.address]})
    assert len(_child_pids(server.pid)) == 3
    # dnspython uses a fresh source port per query, so without steering by name the kernel
    # would spread repeats of one name over the workers and each would ask upstream.
    for _ in range(4):
        for i in range(30):
            reply = dns.query.udp(
                dns.message.make_query(f"host{i}.example.org", "A"),
                "127.0.0.1",
                port=server.port,
                timeout=3,
            )
            assert reply.answer[0][0].address == f"192.0.2.{i + 1}"
    assert fake_upstream.calls == 30


def test_sigterm_stops_every_worker(fake_upstream, server_factory):
    fake_upstream.answer("example.org. 300 IN A 192.0.2.1")
    server = server_factory({"server": {"workers": 2}, "upstream_servers": [fake_upstream.address]})
    children = _child_pids(server.pid)
    assert len(children) == 2
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.running:
        time.sleep(0.05)
    # The parent forwarded SIGTERM, reaped every worker and exited cleanly.
    assert server.returncode == 0
    assert not any(os.path.exists(f"/proc/{child}") for child in children)
    assert server.stderr_text().count("fastdns stopped") == 2
