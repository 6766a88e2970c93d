"""`server.workers: N`: N processes on one port, UDP questions steered to a worker by name."""

from __future__ import annotations

import os
import signal
import time

import dns.message
import dns.query
import pytest

from . import UDP_PATHS, deep_merge

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need fork")

NAMES = 30
HOST_RECORDS = [f"host{i}.example.org. 300 IN A 192.0.2.{i + 1}" for i in range(NAMES)]


def _child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _ask_host(port: int, i: int) -> None:
    reply = dns.query.udp(
        dns.message.make_query(f"host{i}.example.org", "A"), "127.0.0.1", port=port, timeout=3
    )
    assert reply.answer[0][0].address == f"192.0.2.{i + 1}"


def _udp_socket_owner(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the IPv4 UDP socket from `local_port` to `remote_port` (Linux
    /proc: the socket's inode in /proc/net/udp, then the process with a descriptor on it)."""
    inode = None
    with open("/proc/net/udp") as table:
        next(table)  # header
        for line in table:
            fields = line.split()  # sl local_address rem_address st ... uid timeout inode
            local, remote = fields[1], fields[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue  # closed since listdir
    return None


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs Linux /proc")
def test_questions_are_answered_by_every_worker(fake_upstream, server_factory, udp_path):
    # A worker answers a miss itself: it asks upstream from its own fresh socket and replies
    # to the client. So the process holding the socket an upstream query came from, while the
    # fake is answering it, is the worker that received the client's question.
    workers: list[int] = []
    fetched_by: dict[str, int | None] = {}

    def answer(query: dns.message.Message) -> dns.message.Message:
        sent = next(q for q in reversed(fake_upstream.queries) if q.id == query.id)
        owner = _udp_socket_owner(sent.src_port, fake_upstream.port, workers)
        fetched_by[query.question[0].name.to_text().lower()] = owner
        return fake_upstream.build_answer(query)

    fake_upstream.answer(*HOST_RECORDS)
    fake_upstream.answer_fn(answer)
    config = {"server": {"workers": 2}, "upstream_servers": [fake_upstream.address]}
    server = server_factory(deep_merge(config, UDP_PATHS[udp_path]))
    workers.extend(_child_pids(server.pid))
    assert len(workers) == 2
    for i in range(NAMES):
        _ask_host(server.port, i)
    assert sorted(fetched_by) == sorted(f"host{i}.example.org." for i in range(NAMES))
    assert set(fetched_by.values()) <= set(workers)  # every fetch traced to a worker
    # The names are steered by hash, so both workers must have had some to answer.
    assert set(fetched_by.values()) == set(workers)


def test_workers_share_the_port_and_each_name_is_fetched_once(fake_upstream, server_factory):
    fake_upstream.answer(*HOST_RECORDS)
    server = server_factory({"server": {"workers": 3}, "upstream_servers": [fake_upstream.address]})
    assert len(_child_pids(server.pid)) == 3
    # dnspython uses a fresh source port per query, so without steering by name the kernel
    # would spread repeats of one name over the workers and each would ask upstream.
    for _ in range(4):
        for i in range(NAMES):
            _ask_host(server.port, i)
    assert fake_upstream.calls == NAMES


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
