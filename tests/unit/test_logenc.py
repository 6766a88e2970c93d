"""fastdns._logenc against fastdns.querylog.encode: the C encoder must write the very same
bytes (request ids injected into both), for well-formed records it renders itself and for
everything it hands back to Python; plus the server-side write path."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdns import _logenc, querylog
from fastdns._fastpath import HitPath, pack_sockaddr
from fastdns._lru import LruCache
from fastdns.querylog import QueryLog

T0 = 1704110400.0  # 2024-01-01T12:00:00Z
NAMES = ["192.0.2.53:53", "[2001:db8::53]:53", 'odd"name\\x']

# (wall_time, client_ip, query_wire, reply_wire, cache_hit, upstream index, elapsed_s)
Rec = tuple[float, str, bytes, bytes, bool, int, float]


def exchange(qname: str, rdtype: str, *answers: str, rcode: int = 0,
             authority: tuple[str, ...] = (), edns: bool = False) -> tuple[bytes, bytes]:
    query = dns.message.make_query(qname, rdtype, use_edns=0 if edns else None)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.Rcode.make(rcode))
    for text in answers:
        name, ttl, rdclass, rrtype, rdata = text.split(None, 4)
        reply.answer.append(dns.rrset.from_text(name, int(ttl), rdclass, rrtype, rdata))
    for text in authority:
        name, ttl, rdclass, rrtype, rdata = text.split(None, 4)
        reply.authority.append(dns.rrset.from_text(name, int(ttl), rdclass, rrtype, rdata))
    return query.to_wire(), reply.to_wire()


def python_lines(records: list[Rec], random_bytes: bytes) -> bytes:
    ids = querylog._request_ids(len(records), random_bytes)
    out = []
    for (wall, ip, q, r, hit, up, elapsed_s), rid in zip(records, ids):
        name = NAMES[up] if 0 <= up < len(NAMES) else None
        out.append(querylog.encode((wall, ip, q, r, hit, name, int(elapsed_s * 1e6)), rid))
    return b"".join(out)


def c_lines(records: list[Rec], random_bytes: bytes) -> bytes:
    buf = b"".join(_logenc.pack_record(*rec) for rec in records)
    return _logenc.encode_buffer(buf, NAMES, random_bytes)


def assert_same(records: list[Rec]) -> None:
    random_bytes = os.urandom(16 * len(records))
    expected = python_lines(records, random_bytes)
    got = c_lines(records, random_bytes)
    assert got.splitlines() == expected.splitlines()
    assert got == expected


def rec(q: bytes, r: bytes, **kw: object) -> Rec:
    base: dict[str, object] = {"wall": T0 + 0.0123, "ip": "192.0.2.100", "hit": True,
                               "up": -1, "elapsed": 0.000045}
    base.update(kw)
    return (base["wall"], base["ip"], q, r, base["hit"], base["up"], base["elapsed"])  # type: ignore[return-value]


SOA = "example.org. 3600 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 120"
HAND_PICKED = [
    exchange("example.org", "A", "example.org. 300 IN A 192.0.2.1", "example.org. 300 IN A 192.0.2.255"),
    exchange("example.org", "AAAA", "example.org. 300 IN AAAA 2001:db8::1",
             "example.org. 300 IN AAAA ::ffff:192.0.2.1", "example.org. 300 IN AAAA ::"),
    exchange("www.example.org", "A", "www.example.org. 300 IN CNAME a.example.net.",
             "a.example.net. 300 IN CNAME b.example.net.", "b.example.net. 60 IN A 192.0.2.7"),
    exchange("example.org", "NS", "example.org. 300 IN NS ns1.example.org.",
             "example.org. 300 IN NS ns2.example.net."),
    exchange("1.2.0.192.in-addr.arpa", "PTR", "1.2.0.192.in-addr.arpa. 300 IN PTR host.example.org."),
    exchange("example.org", "MX", "example.org. 300 IN MX 10 example.org.",
             "example.org. 300 IN MX 65535 mx.example.org."),
    exchange("example.org", "TXT", 'example.org. 300 IN TXT "a \\"quoted\\" \\\\ b" "\\255\\009" ""',
             'example.org. 300 IN TXT "v=spf1 -all"'),
    exchange("example.org", "SOA", SOA),
    exchange("_sip._udp.example.org", "SRV", "_sip._udp.example.org. 300 IN SRV 0 5 5060 sip.example.org.",
             "_sip._udp.example.org. 300 IN SRV 65535 65535 65535 ."),
    exchange("nope.example.org", "A", rcode=dns.rcode.NXDOMAIN, authority=(SOA,)),
    exchange("nope.example.org", "A", rcode=dns.rcode.NXDOMAIN, authority=(SOA,), edns=True),
    exchange("example.org", "A", rcode=dns.rcode.SERVFAIL, edns=True),
    exchange("example.org", "A", "example.org. 300 IN CNAME .", edns=True),
    exchange("ExAmPle.ORG", "A", "example.org. 300 IN A 192.0.2.1"),
    exchange("a\\.b\\\"c\\\\d\\(e\\)f\\;g\\@h\\$i\\000\\255 .example.org", "TXT",
             'example.org. 300 IN TXT "x"'),
    exchange(".", "NS", ". 300 IN NS a.root-servers.net."),
    exchange("example.org", "HINFO", 'example.org. 300 IN HINFO "cpu" "os"'),  # dnspython type
    exchange("example.org", "TYPE65280", "example.org. 300 IN TYPE65280 \\# 2 abcd"),  # unknown
    exchange("example.org", "NSAP-PTR", "example.org. 300 IN NSAP-PTR foo."),
    exchange("example.org", "CAA", 'example.org. 300 IN CAA 0 issue "ca.example.net"'),
    exchange("example.org", "A", "example.org. 300 IN A 192.0.2.1",
             "example.org. 300 IN HINFO \"cpu\" \"os\""),  # one unhandled rdata among handled
]


@pytest.mark.parametrize("pair", HAND_PICKED, ids=range(len(HAND_PICKED)))
def test_hand_picked_replies_match_python(pair: tuple[bytes, bytes]) -> None:
    q, r = pair
    assert_same([rec(q, r), rec(q, r, ip="2001:db8::53", hit=False, up=0),
                 rec(q, r, up=2, elapsed=1.5), rec(q, r, up=7)])


def test_badvers_extended_rcode() -> None:
    query = dns.message.make_query("example.org", "A", use_edns=0)
    reply = dns.message.make_response(query)
    reply.use_edns(0)
    reply.set_rcode(dns.rcode.BADVERS)
    assert_same([rec(query.to_wire(), reply.to_wire())])


def test_every_truncation_and_empty_bytes_match() -> None:
    q, r = HAND_PICKED[2]
    records = [rec(q, r[:n]) for n in range(len(r) + 1)]
    records += [rec(q[:n], r) for n in range(len(q) + 1)]
    records += [rec(b"", b""), rec(b"\0" * 12, b"\0" * 12)]
    assert_same(records)


def test_times_and_clients() -> None:
    q, r = HAND_PICKED[0]
    walls = [T0, T0 + 0.0005, T0 + 0.0015, T0 + 0.9995, T0 + 0.9999, 0.0, 1e-3, 4102444800.123,
             -1.0, float("nan"), float("inf"), 1e12]
    elapsed = [0.0, 1e-6, 0.0009999, 0.001, 0.0015, 0.25, 1.0, 123.456789, 999999.999, 1e7,
               -0.5, -1e-7]
    ips = ["0.0.0.0", "255.255.255.255", "::", "::1", "::ffff:192.0.2.1", "2001:db8:0:1::ab"]
    records = [rec(q, r, wall=w) for w in walls] + [rec(q, r, elapsed=e) for e in elapsed]
    records += [rec(q, r, ip=ip) for ip in ips]
    assert_same(records)


def test_common_records_do_not_fall_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> bytes:
        raise AssertionError("fell back to querylog.encode")

    records = [rec(q, r) for q, r in HAND_PICKED[:14]]
    random_bytes = os.urandom(16 * len(records))
    expected = python_lines(records, random_bytes)
    monkeypatch.setattr(querylog, "encode", boom)
    assert c_lines(records, random_bytes) == expected


def test_random_bytes_must_cover_every_record() -> None:
    q, r = HAND_PICKED[0]
    with pytest.raises(ValueError):
        c_lines([rec(q, r), rec(q, r)], b"x" * 16)


# ------------------------------------------------------------------------------ hypothesis

labels = st.binary(min_size=1, max_size=20)
names = st.lists(labels, min_size=0, max_size=5)


def name_wire(parts: list[bytes]) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\0"


def rr(owner: bytes, rtype: int, rclass: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, 300, len(rdata)) + rdata


@st.composite
def rdatas(draw: st.DrawFn) -> tuple[int, int, bytes]:
    rtype = draw(st.sampled_from([1, 28, 5, 2, 12, 15, 16, 6, 33, 13, 99, 65280, 41]))
    rclass = draw(st.sampled_from([1, 1, 1, 3, 255]))
    target = name_wire(draw(names))
    if draw(st.integers(0, 4)) == 0:
        target = target[:-1] + b"\xc0\x0c"  # compression pointer into the question
    shapes = {
        1: draw(st.binary(min_size=4, max_size=4)),
        28: draw(st.binary(min_size=16, max_size=16)),
        5: target, 2: target, 12: target,
        15: struct.pack("!H", draw(st.integers(0, 65535))) + target,
        16: b"".join(bytes([len(s)]) + s for s in draw(st.lists(st.binary(max_size=30), min_size=1, max_size=3))),
        6: target + name_wire(draw(names)) + struct.pack("!5I", *draw(st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=5))),
        33: struct.pack("!3H", *draw(st.lists(st.integers(0, 65535), min_size=3, max_size=3))) + target,
    }
    rdata = shapes.get(rtype, draw(st.binary(max_size=12)))
    if draw(st.integers(0, 5)) == 0:
        rdata = draw(st.binary(max_size=20))  # malformed for its type
    return rtype, rclass, rdata


@st.composite
def records(draw: st.DrawFn) -> Rec:
    qname = name_wire(draw(names))
    qtype = draw(st.sampled_from([1, 28, 5, 15, 16, 6, 33, 255, 23, 65280, 32769, 0]))
    header = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), 0x0100, 1, 0, 0, 0)
    query = header + qname + struct.pack("!HH", qtype, 1)
    answers = draw(st.lists(rdatas(), max_size=4))
    rcode = draw(st.integers(0, 15))
    body = b"".join(rr(b"\xc0\x0c", t, c, d) for t, c, d in answers)
    additional = b""
    arcount = 0
    if draw(st.booleans()):
        additional = b"\0" + struct.pack("!HHIH", 41, 1232, draw(st.integers(0, 255)) << 24, 0)
        arcount = 1
    reply = (struct.pack("!HHHHHH", 0, 0x8180 | rcode, 1, len(answers), 0, arcount)
             + qname + struct.pack("!HH", qtype, 1) + body + additional)
    if draw(st.integers(0, 6)) == 0:
        cut = draw(st.integers(0, len(reply)))
        reply = reply[:cut]
    if draw(st.integers(0, 8)) == 0:
        at = draw(st.integers(0, len(reply)))
        reply = reply[:at] + draw(st.binary(min_size=1, max_size=3)) + reply[at + 1:]
    return (
        T0 + draw(st.integers(0, 10**9)) / 1000.0 + draw(st.sampled_from([0.0, 0.0004, 0.0005])),
        draw(st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.9"])),
        query,
        reply,
        draw(st.booleans()),
        draw(st.sampled_from([-1, 0, 1, 2, 9])),
        draw(st.floats(0, 100, allow_nan=False)),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=8))
def test_random_records_match_python(batch: list[Rec]) -> None:
    assert_same(batch)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=120))
def test_random_bytes_match_python(q: bytes, r: bytes) -> None:
    assert_same([rec(q, r), rec(q + b"\0", b"\x00\x00\x81\x80" + r)])


# ------------------------------------------------------------------- HitPath and QueryLog


def test_hitpath_drain_log_json_matches_drain_log() -> None:
    hp = HitPath(LruCache(1 << 20), allowed_networks=[], rate_per_s=0.0, log_enabled=True)
    q, r = HAND_PICKED[0]
    hp.log_miss(q, r, pack_sockaddr(("192.0.2.9", 53)), 0.25, 1)
    hp.log_miss(q, r, pack_sockaddr(("2001:db8::9", 53, 0, 0)), 0.5, -1)
    out = hp.drain_log_json(NAMES, b"\x11" * 32)
    assert hp.drain_log_json(NAMES) == b""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["client_ip"], x["upstream_server"], x["response_time_ms"], x["cache_hit"])
            for x in lines] == [("192.0.2.9", NAMES[1], 250.0, False),
                                ("2001:db8::9", None, 500.0, False)]
    assert lines[0]["request_id"] == querylog._request_ids(1, b"\x11" * 16)[0]
    assert lines[0]["response_data"] == ["192.0.2.1", "192.0.2.255"]


def test_write_encoded_counts_and_writes() -> None:
    stream = io.StringIO()
    qlog = QueryLog(None, stream=stream)
    qlog.write_encoded(b'{"a":1}\n{"a":2}\n', 2)
    qlog.write_encoded(b"", 0)
    assert stream.getvalue() == '{"a":1}\n{"a":2}\n'
    assert (qlog.written, qlog.dropped) == (2, 0)


def test_write_encoded_rotates_at_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    qlog = QueryLog(str(path), max_size_bytes=25, backup_count=2)
    qlog.write_encoded(b"one-line-1\ntwo-line-2\nthree-line\n", 3)
    asyncio.run(qlog.close())
    assert path.read_bytes() == b"three-line\n"
    assert (tmp_path / "q.log.1").read_bytes() == b"one-line-1\ntwo-line-2\n"
    assert qlog.written == 3


def test_write_encoded_after_close_is_dropped() -> None:
    qlog = QueryLog(None, stream=io.StringIO())
    asyncio.run(qlog.close())
    qlog.write_encoded(b"x\n", 1)
    assert (qlog.written, qlog.dropped) == (0, 1)


def test_write_encoded_counts_write_errors() -> None:
    class Broken(io.StringIO):
        def write(self, _s: str) -> int:
            raise OSError("disk full")

    qlog = QueryLog(None, stream=Broken())
    qlog.write_encoded(b"x\ny\n", 2)
    assert (qlog.written, qlog.dropped, qlog.write_errors) == (0, 2, 1)


def test_hitpath_drains_in_bounded_chunks_oldest_first() -> None:
    hp = HitPath(LruCache(1 << 20), allowed_networks=[], rate_per_s=0.0, log_enabled=True)
    q, r = HAND_PICKED[0]
    for i in range(10):
        hp.log_miss(q, r, pack_sockaddr((f"192.0.2.{i}", 53)), 0.25, 1)
    one = hp.log_pending_bytes // 10
    chunks = []
    while hp.log_pending_bytes:
        chunks.append(hp.drain_log_json(NAMES, None, 3 * one + 1))
    assert [chunk.count(b"\n") for chunk in chunks] == [3, 3, 3, 1]
    clients = [json.loads(line)["client_ip"] for chunk in chunks for line in chunk.splitlines()]
    assert clients == [f"192.0.2.{i}" for i in range(10)]
    # A bound below one record still moves the pump on by one record.
    hp.log_miss(q, r, pack_sockaddr(("192.0.2.99", 53)), 0.25, 1)
    assert hp.drain_log_json(NAMES, None, 1).count(b"\n") == 1 and hp.log_pending_bytes == 0


def test_records_logged_between_bounded_drains_come_out_in_order() -> None:
    # The pump drains in chunks while the hit path keeps appending behind them; once the
    # pump is past half the buffer the rest moves to the front, and nothing is lost.
    hp = HitPath(LruCache(1 << 20), allowed_networks=[], rate_per_s=0.0, log_enabled=True,
                 log_buffer_bytes=4096)
    q, r = HAND_PICKED[0]
    hp.log_miss(q, r, pack_sockaddr(("192.0.2.0", 53)), 0.25, 1)
    size = hp.log_pending_bytes
    for i in range(1, 4096 // size):
        hp.log_miss(q, r, pack_sockaddr((f"192.0.2.{i}", 53)), 0.25, 1)
    logged = 4096 // size
    out: list[str] = []
    for step in range(4 * logged):
        # One record out per step, and one in every other step, until the buffer is drained.
        out += [json.loads(line)["client_ip"]
                for line in hp.drain_log_json(NAMES, None, size).splitlines()]
        if step % 2 and logged < 200:
            hp.log_miss(q, r, pack_sockaddr((f"192.0.2.{logged}", 53)), 0.25, 1)
            logged += 1
        if not hp.log_pending_bytes:
            break
    assert out == [f"192.0.2.{i}" for i in range(logged)]
    assert logged > 4096 // size  # appended after the buffer was first full
    assert hp.counters()["log_dropped"] == 0
