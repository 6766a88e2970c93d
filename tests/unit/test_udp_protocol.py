"""The plain UDP edge (fastdns.transport.UdpProtocol): one datagram per call through the same
compiled guards, cache and render as the batch loop, replies by transport.sendto, misses to
on_miss, the batch loop's counters and log records; and the server's choice between the two.
Datagrams are handed in directly (a recording transport); one test uses real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from fastdns import server as server_mod
from fastdns._fastpath import HAVE_MMSG, HitPath, monotonic_now
from fastdns._lru import LruCache
from fastdns.config import load_settings
from fastdns.transport import UdpProtocol
from fastdns.wire import parse_query, prepare_reply

ALLOW_ALL = [(bytes(4), 0), (bytes(16), 0)]
POLICY = {"min_ttl": 1, "max_ttl": 86400, "negative_ttl": 300, "default_ttl": 300}
CLIENT = ("192.0.2.7", 53000)
CLIENT6 = ("2001:db8::7", 53001, 0, 0)


class RecordingTransport:
    """What UdpProtocol needs of a DatagramTransport: sendto, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


def cached_hitpath(names: list[str], *, log: bool = False, **kwargs: object) -> HitPath:
    lru = LruCache(1 << 20)
    now = monotonic_now()
    for name in names:
        q = dns.message.make_query(name, "A")
        reply = dns.message.make_response(q)
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
        prepared = prepare_reply(reply.to_wire(), **POLICY)
        lru.put(parse_query(q.to_wire()).key, prepared.wire, prepared.ttl_offsets, now, 300)
    options: dict = {"allowed_networks": ALLOW_ALL, "rate_per_s": 0.0, "seed": 7, **kwargs}
    return HitPath(lru, log_enabled=log, **options)


def edge(hitpath: HitPath) -> tuple[UdpProtocol, RecordingTransport]:
    protocol = UdpProtocol(hitpath)
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def wire(name: str, qid: int, **kwargs: object) -> bytes:
    return dns.message.make_query(name, "A", id=qid, **kwargs).to_wire()  # type: ignore[arg-type]


def test_is_a_datagram_protocol() -> None:
    assert isinstance(UdpProtocol(cached_hitpath([])), asyncio.DatagramProtocol)


@pytest.mark.parametrize("addr", [CLIENT, CLIENT6], ids=["v4", "v6"])
def test_hit_is_answered_with_sendto_to_the_client(addr: tuple) -> None:
    hitpath = cached_hitpath(["example.org."])
    hitpath.on_miss = lambda data, addr: pytest.fail("a cached name was treated as a miss")
    protocol, transport = edge(hitpath)
    protocol.datagram_received(wire("Example.ORG.", 0x4242), addr)
    ((reply_wire, to),) = transport.sent
    assert to == addr
    reply = dns.message.from_wire(reply_wire)
    assert reply.id == 0x4242
    assert reply.question[0].name.to_text() == "Example.ORG."  # 0x20 case echoed
    assert reply.answer[0][0].address == "192.0.2.1"
    assert hitpath.counters()["udp_queries"] == 1
    assert hitpath.counters()["cache_hits"] == 1


def test_miss_goes_to_on_miss_with_the_datagram_and_address() -> None:
    hitpath = cached_hitpath([])
    misses: list[tuple[bytes, tuple]] = []
    hitpath.on_miss = lambda data, addr: misses.append((data, addr))
    protocol, transport = edge(hitpath)
    query = wire("other.example.org.", 7)
    protocol.datagram_received(query, CLIENT6)
    assert misses == [(query, CLIENT6)]
    assert transport.sent == []
    assert hitpath.counters()["cache_misses"] == 1


def test_responses_runts_and_oversized_datagrams_are_dropped_silently() -> None:
    hitpath = cached_hitpath(["example.org."])
    protocol, transport = edge(hitpath)
    response = dns.message.make_response(dns.message.make_query("example.org.", "A")).to_wire()
    protocol.datagram_received(response, CLIENT)  # QR=1: never answered (no reflection loops)
    protocol.datagram_received(b"\x00\x01\x02", CLIENT)
    protocol.datagram_received(wire("example.org.", 1) + bytes(5000), CLIENT)  # > 4096 bytes
    assert transport.sent == []
    counters = hitpath.counters()
    assert counters["udp_queries"] == 3
    assert counters["dropped"] == 3


def test_acl_refuses_and_formerr_is_answered() -> None:
    hitpath = cached_hitpath(["example.org."], allowed_networks=[(bytes([10, 0, 0, 0]), 8)])
    protocol, transport = edge(hitpath)
    protocol.datagram_received(wire("example.org.", 1), CLIENT)
    (reply_wire, _), = transport.sent
    assert dns.message.from_wire(reply_wire).rcode() == dns.rcode.REFUSED
    assert hitpath.counters()["acl_refused"] == 1


def test_rate_limit_slips_an_empty_tc_reply_no_larger_than_the_query() -> None:
    hitpath = cached_hitpath(["example.org."], rate_per_s=2.0)
    protocol, transport = edge(hitpath)
    queries = [wire("example.org.", i) for i in range(10)]
    for q in queries:
        protocol.datagram_received(q, CLIENT)
    replies = [dns.message.from_wire(data) for data, _ in transport.sent]
    assert len(replies) == 10
    slipped = [r for r in replies if r.flags & dns.flags.TC]
    assert len(slipped) == 8 and all(not r.answer for r in slipped)
    assert all(len(data) <= len(queries[0]) for data, _ in transport.sent[2:])
    assert hitpath.counters()["rate_limited"] == 8


def test_edns_size_is_honoured_with_tc() -> None:
    lru = LruCache(1 << 20)
    q = dns.message.make_query("big.example.org.", "TXT", use_edns=0, payload=512)
    reply = dns.message.make_response(q)
    reply.use_edns(False)
    strings = " ".join(f'"{"x" * 200}"' for _ in range(5))
    reply.answer.append(dns.rrset.from_text("big.example.org.", 300, "IN", "TXT", strings))
    prepared = prepare_reply(reply.to_wire(), **POLICY)
    lru.put(parse_query(q.to_wire()).key, prepared.wire, prepared.ttl_offsets, monotonic_now(), 300)
    hitpath = HitPath(lru, allowed_networks=ALLOW_ALL, rate_per_s=0.0, log_enabled=False)
    protocol, transport = edge(hitpath)
    protocol.datagram_received(q.to_wire(), CLIENT)
    (data, _), = transport.sent
    assert len(data) <= 512
    assert dns.message.from_wire(data).flags & dns.flags.TC


def test_hits_and_errors_are_logged_like_the_batch_loop() -> None:
    hitpath = cached_hitpath(["logged.example.org."], log=True)
    hitpath.on_miss = lambda data, addr: None
    protocol, transport = edge(hitpath)
    protocol.datagram_received(wire("logged.example.org.", 1), CLIENT)
    protocol.datagram_received(wire("missed.example.org.", 2), CLIENT)  # logged by the miss path
    protocol.datagram_received(b"\x00\x03" + bytes(10) + b"\xff", CLIENT)  # FORMERR
    records = hitpath.drain_log()
    assert [(ip, hit, upstream) for _w, ip, _q, _r, hit, upstream, _e in records] == [
        ("192.0.2.7", True, -1),
        ("192.0.2.7", False, -1),
    ]
    assert [r[3] for r in records] == [data for data, _ in transport.sent]
    assert all(r[6] >= 0 for r in records)


def test_full_send_buffer_drops_replies_and_counts_them() -> None:
    hitpath = cached_hitpath(["example.org."])
    protocol, transport = edge(hitpath)
    protocol.pause_writing()
    protocol.datagram_received(wire("example.org.", 1), CLIENT)
    assert transport.sent == []
    protocol.resume_writing()
    protocol.datagram_received(wire("example.org.", 2), CLIENT)
    assert len(transport.sent) == 1
    protocol.error_received(OSError("unreachable"))
    assert hitpath.counters()["send_errors"] == 2


def test_after_stop_serving_datagrams_are_ignored() -> None:
    hitpath = cached_hitpath(["example.org."])
    protocol, transport = edge(hitpath)
    protocol.stop_serving()
    protocol.datagram_received(wire("example.org.", 1), CLIENT)
    assert transport.sent == []
    assert hitpath.counters()["udp_queries"] == 0


def test_unusable_address_is_dropped() -> None:
    hitpath = cached_hitpath(["example.org."])
    protocol, transport = edge(hitpath)
    protocol.datagram_received(wire("example.org.", 1), ("not-an-ip", 53))
    protocol.datagram_received(wire("example.org.", 1), "/tmp/unix")  # type: ignore[arg-type]
    assert transport.sent == []
    assert hitpath.counters()["dropped"] == 2


@pytest.mark.skipif(not HAVE_MMSG, reason="recvmmsg/sendmmsg are Linux-only")
def test_same_replies_counters_and_log_records_as_the_batch_loop() -> None:
    """The same datagrams through the batch loop and through the plain edge: byte-identical
    replies, equal counters, equal log records (but for the clocks)."""
    names = ["a.example.org.", "b.example.org."]
    datagrams = [
        wire("a.example.org.", 1),
        wire("B.example.org.", 2, use_edns=0),
        wire("c.example.org.", 3),  # miss
        wire("a.example.org.", 4, use_edns=1),  # BADVERS
        b"\x00\x05\x01\x00" + bytes(8),  # no question: FORMERR
        dns.message.make_response(dns.message.make_query("a.example.org.", "A")).to_wire(),
    ]
    batch = cached_hitpath(names, log=True)
    batch.on_miss = lambda data, addr: None
    plain = cached_hitpath(names, log=True)
    plain.on_miss = lambda data, addr: None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as client:
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        batch.attach_udp(srv.fileno())
        for d in datagrams:
            client.sendto(d, srv.getsockname())
        batch.on_readable()
        batch_replies = [client.recv(4096) for _ in range(4)]
        protocol, transport = edge(plain)
        for d in datagrams:
            protocol.datagram_received(d, client.getsockname())
    assert [data for data, _ in transport.sent] == batch_replies
    assert plain.counters() == batch.counters()

    def comparable(records: list) -> list:
        return [r[1:6] for r in records]  # all but wall time and elapsed

    assert comparable(plain.drain_log()) == comparable(batch.drain_log())


@pytest.mark.parametrize("loop_impl", ["asyncio", "uvloop"])
def test_serves_a_real_socket_on_each_loop(loop_impl: str) -> None:
    if loop_impl == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner = uvloop.run
    else:
        runner = asyncio.run
    hitpath = cached_hitpath(["example.org."])

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(hitpath), sock=sock)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.setblocking(False)
                client.connect(sock.getsockname())
                client.send(wire("example.org.", 99))
                return await asyncio.wait_for(loop.sock_recv(client, 4096), 2.0)
        finally:
            transport.close()

    reply = dns.message.from_wire(runner(main()))
    assert reply.id == 99 and reply.answer[0][0].address == "192.0.2.1"


# -- the server's choice ------------------------------------------------------------------------


def test_udp_batching_defaults_to_true_and_false_selects_the_plain_path() -> None:
    assert load_settings(environ={}, overrides={}).server.udp_batching is True
    off = load_settings(environ={}, overrides={"server": {"udp_batching": False}})
    assert server_mod._use_udp_batching(off, have_mmsg=True) is False


def test_without_mmsg_batching_falls_back_with_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    on = load_settings(environ={}, overrides={})
    with caplog.at_level(logging.INFO, logger="fastdns"):
        assert server_mod._use_udp_batching(on, have_mmsg=False) is False
        assert server_mod._use_udp_batching(load_settings(environ={}, overrides={}), have_mmsg=True) is True
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "recvmmsg" in record.getMessage()

