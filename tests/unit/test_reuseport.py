"""Name-based steering of UDP queries across SO_REUSEPORT workers (fastdns.reuseport)."""

from __future__ import annotations

import collections
import socket
import sys
import time

import dns.message
import pytest

from fastdns.reuseport import attach_name_steering, name_hash_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux cBPF")

WORKERS = 4


@pytest.fixture
def group():
    socks = []
    port = 0
    for _ in range(WORKERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.setblocking(False)
        socks.append(s)
    attach_name_steering(socks[0], WORKERS)
    yield socks, port
    for s in socks:
        s.close()


def _send_from_fresh_port(port: int, name: str, **kw) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(dns.message.make_query(name, "A", **kw).to_wire(), ("127.0.0.1", port))


def _collect(socks: list[socket.socket], expected: int) -> dict[str, set[int]]:
    where: dict[str, set[int]] = collections.defaultdict(set)
    got = 0
    deadline = time.monotonic() + 3
    while got < expected and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            where[dns.message.from_wire(data).question[0].name.to_text().lower()].add(i)
            got += 1
    assert got == expected
    return where


def test_a_name_always_reaches_the_same_worker_whatever_port_case_or_edns(group):
    socks, port = group
    names = [f"host{i}.example.org." for i in range(40)] + [".", "a.io.", "x" * 63 + ".example.net."]
    variants = [{}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}]
    for kw in variants:
        for name in names:
            _send_from_fresh_port(port, name.upper() if kw else name, **kw)
    where = _collect(socks, len(names) * len(variants))
    assert all(len(workers) == 1 for workers in where.values())


def test_names_spread_over_every_worker(group):
    socks, port = group
    names = [f"spread{i}.example.org." for i in range(200)]
    for name in names:
        _send_from_fresh_port(port, name)
    where = _collect(socks, len(names))
    per_worker = collections.Counter(next(iter(w)) for w in where.values())
    assert set(per_worker) == set(range(WORKERS))


def test_program_fits_classic_bpf_limits():
    prog = name_hash_program(WORKERS)
    assert len(prog) <= 4096  # BPF_MAXINSNS
    assert all(jt <= 255 and jf <= 255 for _, jt, jf, _ in prog)
