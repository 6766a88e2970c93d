"""The UDP batch loop (recvmmsg/sendmmsg) answers hits in C without creating Python objects."""

from __future__ import annotations

import socket
import sys
import tracemalloc

import dns.message
import dns.rrset
import pytest

from fastdns._fastpath import HAVE_MMSG, HitPath, monotonic_now
from fastdns._lru import LruCache
from fastdns.wire import parse_query, prepare_reply

pytestmark = pytest.mark.skipif(not HAVE_MMSG, reason="recvmmsg/sendmmsg are not available here")

ALLOW_ALL = [(bytes(4), 0), (bytes(16), 0)]
POLICY = {"min_ttl": 1, "max_ttl": 86400, "negative_ttl": 300, "default_ttl": 300}


def _cached_hitpath(names: list[str], *, log_enabled: bool = False) -> HitPath:
    lru = LruCache(16 << 20)
    now = monotonic_now()
    for name in names:
        query = dns.message.make_query(name, "A")
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
        prepared = prepare_reply(reply.to_wire(), **POLICY)
        lru.put(parse_query(query.to_wire()).key, prepared.wire, prepared.ttl_offsets, now, 300)
    return HitPath(lru, allowed_networks=ALLOW_ALL, rate_per_s=0.0, log_enabled=log_enabled)


@pytest.fixture
def sockets():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    yield server, client
    server.close()
    client.close()


def _send_queries(client: socket.socket, server: socket.socket, names: list[str]) -> dict[int, str]:
    sent = {}
    for i, name in enumerate(names):
        q = dns.message.make_query(name, "A", id=i + 1)
        client.sendto(q.to_wire(), server.getsockname())
        sent[i + 1] = name
    return sent


def test_batch_answers_every_hit_with_its_own_id(sockets):
    server, client = sockets
    names = [f"host{i}.example.org." for i in range(50)]
    hitpath = _cached_hitpath(names)
    hitpath.on_miss = lambda data, addr: pytest.fail("a cached name was treated as a miss")
    hitpath.attach_udp(server.fileno())
    sent = _send_queries(client, server, names)
    hitpath.on_readable()
    for _ in sent:
        reply = dns.message.from_wire(client.recv(4096))
        assert reply.answer[0].name.to_text() == sent[reply.id]
        assert reply.answer[0][0].address == "192.0.2.1"
    assert hitpath.counters()["cache_hits"] == 50


def test_batch_hands_misses_to_python_with_the_client_address(sockets):
    server, client = sockets
    hitpath = _cached_hitpath(["cached.example.org."])
    misses = []
    hitpath.on_miss = lambda data, addr: misses.append((data, addr))
    hitpath.attach_udp(server.fileno())
    _send_queries(client, server, ["cached.example.org.", "other.example.org."])
    hitpath.on_readable()
    assert len(misses) == 1
    data, addr = misses[0]
    assert dns.message.from_wire(data).question[0].name.to_text() == "other.example.org."
    assert addr == client.getsockname()


def test_batch_hits_allocate_no_python_objects(sockets):
    """DESIGN.md: a hit creates no Python object. 2000 hits through the batch loop leave the
    interpreter's allocated block count where it was (a per-hit object would add ~2000)."""
    server, client = sockets
    names = [f"host{i}.example.org." for i in range(64)]
    hitpath = _cached_hitpath(names)
    hitpath.attach_udp(server.fileno())
    queries = [dns.message.make_query(n, "A").to_wire() for n in names]
    dest = server.getsockname()

    def round_trip() -> None:
        for q in queries:
            client.sendto(q, dest)
        hitpath.on_readable()

    client.setblocking(False)

    def discard_replies() -> int:
        n = 0
        while True:
            try:
                client.recv(4096)
            except BlockingIOError:
                return n
            n += 1

    round_trip()  # warm up: first-use allocations inside CPython/Cython
    assert discard_replies() == 64
    blocks_before = sys.getallocatedblocks()
    hits_before = hitpath.counters()["cache_hits"]
    for _ in range(30):
        round_trip()
        discard_replies()
    blocks_after = sys.getallocatedblocks()
    assert hitpath.counters()["cache_hits"] - hits_before == 30 * 64
    assert blocks_after - blocks_before < 50


def test_batch_records_hits_in_the_log_buffer(sockets):
    server, client = sockets
    hitpath = _cached_hitpath(["logged.example.org."], log_enabled=True)
    hitpath.attach_udp(server.fileno())
    _send_queries(client, server, ["logged.example.org."])
    hitpath.on_readable()
    records = hitpath.drain_log()
    assert len(records) == 1
    _wall, ip, query, reply, hit, upstream, _elapsed_us = records[0]
    assert ip == "127.0.0.1" and hit is True and upstream == -1
    assert dns.message.from_wire(query).question[0].name.to_text() == "logged.example.org."
    assert dns.message.from_wire(reply).answer[0][0].address == "192.0.2.1"
    assert hitpath.drain_log() == []


def test_batch_hits_allocate_nothing_even_transiently(sockets):
    """Stronger than the block count: with tracemalloc on, the traced peak during a batch of
    64 hits never rises above the memory in use before it, so not even a temporary Python
    object (a reply bytes, a tuple, a float) is created per hit."""
    server, client = sockets
    names = [f"host{i}.example.org." for i in range(64)]
    hitpath = _cached_hitpath(names)
    hitpath.attach_udp(server.fileno())
    on_readable = hitpath.on_readable
    queries = [dns.message.make_query(n, "A").to_wire() for n in names]
    dest = server.getsockname()
    for q in queries:  # warm-up batch
        client.sendto(q, dest)
    on_readable()
    tracemalloc.start()
    try:
        for q in queries:
            client.sendto(q, dest)
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        on_readable()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hitpath.counters()["cache_hits"] == 128
    assert peak == before
