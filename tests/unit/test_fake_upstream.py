"""Tests of the test helpers: FakeUpstream over real loopback sockets, and the ServerProcess
harness against tiny stand-in commands (the real server is not needed here)."""

from __future__ import annotations

import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from fastdns._testing import (
    FakeUpstream,
    ServerProcess,
    ServerStartError,
    free_port,
    query,
)

SOA = "example.org. 3600 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 120"


@pytest.fixture
def up(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.answer(
        "example.org. 300 IN A 192.0.2.1",
        "example.org. 300 IN A 192.0.2.2",
        "www.example.org. 60 IN CNAME example.org.",
        "example.org. 300 IN MX 10 mail.example.org.",
    )
    fake_upstream.zone_soa(SOA)
    return fake_upstream


def ask(up: FakeUpstream, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return query(up, name, rdtype, timeout=5.0, **kw)


def raw_udp(up: FakeUpstream, wire: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, (up.host, up.port))
        return sock.recv(65535)


def frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed mid-frame")
            data += chunk
        return data

    return exactly(int.from_bytes(exactly(2), "big"))


def rdata_texts(message: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in message.answer for rd in rrset)


# ----------------------------------------------------------------------------- answers


def test_answer_mode_echoes_id_question_and_flags(up: FakeUpstream) -> None:
    q = dns.message.make_query("example.org.", "A")
    r = dns.query.udp(q, up.host, port=up.port, timeout=5)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.AA and r.flags & dns.flags.RA
    assert r.flags & dns.flags.RD
    assert r.question == q.question
    assert rdata_texts(r) == ["192.0.2.1", "192.0.2.2"]
    assert r.edns < 0  # no OPT to a query without one


def test_rd_is_echoed_not_forced(up: FakeUpstream) -> None:
    r = ask(up, "example.org.", flags=0)
    assert not r.flags & dns.flags.RD


def test_edns_is_echoed_with_our_payload_and_do(up: FakeUpstream) -> None:
    r = ask(up, "example.org.", use_edns=0, payload=4096, want_dnssec=True)
    assert r.edns == 0
    assert r.payload == 1232
    assert r.ednsflags & dns.flags.DO
    record = up.queries[-1]
    assert record.has_edns and record.do_bit and record.edns_payload == 4096


def test_other_rr_types(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(
        """
        example.org. 300 IN TXT "hello world" "two"
        example.org. 300 IN AAAA 2001:db8::1
        _sip._udp.example.org. 300 IN SRV 10 5 5060 sip.example.org.
        1.2.0.192.in-addr.arpa. 300 IN PTR host.example.org.
        example.org. 300 IN CAA 0 issue "ca.example.net"
        odd.example.org. 300 IN TYPE65534 \\# 3 010203
        multi.example.org. 300 IN TXT ( "a;b"
                                          "c" ) ; comment
        """
    )
    assert rdata_texts(ask(fake_upstream, "example.org", "TXT")) == ['"hello world" "two"']
    assert rdata_texts(ask(fake_upstream, "example.org", "AAAA")) == ["2001:db8::1"]
    srv = ask(fake_upstream, "_sip._udp.example.org", "SRV")
    assert rdata_texts(srv) == ["10 5 5060 sip.example.org."]
    ptr = ask(fake_upstream, "1.2.0.192.in-addr.arpa", "PTR")
    assert rdata_texts(ptr) == ["host.example.org."]
    assert rdata_texts(ask(fake_upstream, "example.org", "CAA")) == ['0 issue "ca.example.net"']
    assert rdata_texts(ask(fake_upstream, "odd.example.org", "TYPE65534")) == ["\\# 3 010203"]
    assert rdata_texts(ask(fake_upstream, "multi.example.org", "TXT")) == ['"a;b" "c"']


def test_records_without_ttl_or_class_and_blank_owner(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer("host.example.org A 192.0.2.7\n    AAAA 2001:db8::7")
    a = ask(fake_upstream, "host.example.org", "A")
    assert a.answer[0].ttl == 300
    assert rdata_texts(ask(fake_upstream, "host.example.org", "AAAA")) == ["2001:db8::7"]


def test_bad_records_raise_value_error(fake_upstream: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        fake_upstream.answer("example.org. 300 IN A not-an-address")
    with pytest.raises(ValueError, match="SOA records only"):
        fake_upstream.zone_soa("example.org. 300 IN A 192.0.2.1")


def test_mx_and_any(up: FakeUpstream) -> None:
    assert rdata_texts(ask(up, "example.org", "MX")) == ["10 mail.example.org."]
    types = {rrset.rdtype for rrset in ask(up, "example.org", "ANY").answer}
    assert {dns.rdatatype.A, dns.rdatatype.MX, dns.rdatatype.SOA} <= types


def test_cname_is_chased_inside_own_data(up: FakeUpstream) -> None:
    up.answer("a.example.org. 60 IN CNAME www.example.org.")
    r = ask(up, "a.example.org.")
    assert [rrset.rdtype for rrset in r.answer] == [
        dns.rdatatype.CNAME,
        dns.rdatatype.CNAME,
        dns.rdatatype.A,
    ]
    assert r.rcode() == dns.rcode.NOERROR
    # Asking for the CNAME itself gives just the CNAME.
    cname = ask(up, "www.example.org.", "CNAME")
    assert rdata_texts(cname) == ["example.org."]


def test_cname_chain_is_bounded_and_loops_stop(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(
        *(f"c{i}.example.org. 60 IN CNAME c{i + 1}.example.org." for i in range(20))
    )
    fake_upstream.answer("loop1.example.org. 60 CNAME loop2.example.org.")
    fake_upstream.answer("loop2.example.org. 60 CNAME loop1.example.org.")
    assert len(ask(fake_upstream, "c0.example.org.").answer) == 8
    assert len(ask(fake_upstream, "loop1.example.org.").answer) == 2


def test_cname_to_missing_name_is_nxdomain(up: FakeUpstream) -> None:
    up.answer("dangling.example.org. 60 IN CNAME gone.example.org.")
    r = ask(up, "dangling.example.org.")
    assert r.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: rcode of the last name in the chain
    assert [rrset.rdtype for rrset in r.answer] == [dns.rdatatype.CNAME]
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_nxdomain_carries_soa(up: FakeUpstream) -> None:
    r = ask(up, "nope.example.org.")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.answer == []
    assert len(r.authority) == 1
    assert r.authority[0].to_text() == SOA


def test_nodata_carries_soa(up: FakeUpstream) -> None:
    r = ask(up, "example.org.", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_longest_matching_soa_wins(up: FakeUpstream) -> None:
    up.zone_soa("sub.example.org. 60 IN SOA ns.sub.example.org. h.example.org. 2 1 1 1 30")
    r = ask(up, "x.sub.example.org.")
    assert r.authority[0].name == dns.name.from_text("sub.example.org.")


def test_negative_without_soa_outside_any_zone(up: FakeUpstream) -> None:
    r = ask(up, "nothing.example.net.")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority == []


def test_empty_non_terminal_is_nodata(up: FakeUpstream) -> None:
    up.answer("a.b.example.org. 60 IN A 192.0.2.9")
    r = ask(up, "b.example.org.")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []


def test_lookup_is_case_insensitive_and_0x20_case_is_echoed(up: FakeUpstream) -> None:
    q = dns.message.make_query("ExAmPlE.OrG.", "A")
    wire = raw_udp(up, q.to_wire())
    # The question bytes come back exactly as sent (offset 12, same length).
    qlen = len(q.to_wire()) - 12
    assert wire[12 : 12 + qlen] == q.to_wire()[12:]
    r = dns.message.from_wire(wire)
    assert r.question[0].name.to_text() == "ExAmPlE.OrG."
    assert rdata_texts(r) == ["192.0.2.1", "192.0.2.2"]
    assert up.queries[-1].qname == "ExAmPlE.OrG."


def test_records_merge_and_clear(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer("example.org. 300 IN A 192.0.2.1")
    fake_upstream.answer("example.org. 100 IN A 192.0.2.2")
    r = ask(fake_upstream, "example.org.")
    assert rdata_texts(r) == ["192.0.2.1", "192.0.2.2"]
    assert r.answer[0].ttl == 100
    fake_upstream.clear()
    assert ask(fake_upstream, "example.org.").rcode() == dns.rcode.NXDOMAIN


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("mode", "rcode"),
    [
        ("servfail", dns.rcode.SERVFAIL),
        ("refused", dns.rcode.REFUSED),
        ("formerr", dns.rcode.FORMERR),
    ],
)
def test_rcode_modes(up: FakeUpstream, mode: str, rcode: int) -> None:
    up.mode = mode
    r = ask(up, "example.org.")
    assert r.rcode() == rcode
    assert r.answer == []
    assert r.question[0].name == dns.name.from_text("example.org.")


def test_silent_mode_counts_but_does_not_reply(up: FakeUpstream) -> None:
    up.mode = "silent"
    with pytest.raises(dns.exception.Timeout):
        query(up, "example.org.", "A", timeout=0.3)
    assert up.calls == 1


def test_garbage_mode_sends_unparseable_bytes(up: FakeUpstream) -> None:
    up.mode = "garbage"
    q = dns.message.make_query("example.org.", "A")
    wire = raw_udp(up, q.to_wire())
    assert wire[:2] == q.to_wire()[:2]  # gets past an ID check, then must fail to match
    try:
        matched = q.is_response(dns.message.from_wire(wire))
    except (dns.exception.DNSException, ValueError):
        matched = False
    assert not matched


def test_garbage_mode_over_tcp_is_framed(up: FakeUpstream) -> None:
    up.mode = "garbage"
    q = dns.message.make_query("example.org.", "A")
    with socket.create_connection((up.host, up.port), timeout=5) as sock:
        sock.sendall(frame(q.to_wire()))
        assert len(read_frame(sock)) == 32


def test_wrong_id_mode(up: FakeUpstream) -> None:
    up.mode = "wrong_id"
    q = dns.message.make_query("example.org.", "A")
    r = dns.message.from_wire(raw_udp(up, q.to_wire()))
    assert r.id != q.id
    assert r.question == q.question
    assert rdata_texts(r) == ["192.0.2.1", "192.0.2.2"]
    with pytest.raises(dns.query.BadResponse):
        dns.query.udp(q, up.host, port=up.port, timeout=5)


def test_wrong_question_mode(up: FakeUpstream) -> None:
    up.mode = "wrong_question"
    q = dns.message.make_query("example.org.", "A")
    r = dns.message.from_wire(raw_udp(up, q.to_wire()))
    assert r.id == q.id
    assert r.question[0].name != q.question[0].name
    assert not q.is_response(r)


def test_unknown_mode_is_rejected() -> None:
    up = FakeUpstream()
    with pytest.raises(ValueError, match="unknown mode"):
        up.mode = "sulky"


def test_only_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeUpstream(host="192.0.2.1")


# ----------------------------------------------------------------------------- truncation & TCP


def test_truncate_udp_then_tcp_gets_full_answer(up: FakeUpstream) -> None:
    up.truncate_udp = True
    udp = ask(up, "example.org.", use_edns=0)
    assert udp.flags & dns.flags.TC
    assert udp.answer == [] and udp.authority == []
    assert udp.question[0].name == dns.name.from_text("example.org.")
    tcp = query(up, "example.org.", "A", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert rdata_texts(tcp) == ["192.0.2.1", "192.0.2.2"]
    assert (up.udp_calls, up.tcp_calls, up.calls) == (1, 1, 2)


def test_oversized_udp_reply_is_truncated_to_the_requesters_size(
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.answer(*(f'big.example.org. 60 IN TXT "{i:03d}{"x" * 60}"' for i in range(20)))
    small = ask(fake_upstream, "big.example.org.", "TXT")  # no EDNS: 512 bytes
    assert small.flags & dns.flags.TC and small.answer == []
    large = ask(fake_upstream, "big.example.org.", "TXT", use_edns=0, payload=4096)
    assert not large.flags & dns.flags.TC and len(large.answer[0]) == 20


def test_pipelined_tcp_queries_on_one_connection(up: FakeUpstream) -> None:
    queries = [
        dns.message.make_query(name, "A")
        for name in ("example.org.", "www.example.org.", "nope.example.org.")
    ]
    with socket.create_connection((up.host, up.port), timeout=5) as sock:
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))
        replies = [dns.message.from_wire(read_frame(sock)) for _ in queries]
    assert sorted(r.id for r in replies) == sorted(q.id for q in queries)
    by_id = {r.id: r for r in replies}
    assert by_id[queries[2].id].rcode() == dns.rcode.NXDOMAIN
    assert up.tcp_calls == 3
    assert up.tcp_connections == 1


def test_tcp_query_split_across_segments(up: FakeUpstream) -> None:
    wire = frame(dns.message.make_query("example.org.", "A").to_wire())
    with socket.create_connection((up.host, up.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start, end in ((0, 1), (1, 7), (7, len(wire))):
            sock.sendall(wire[start:end])
            time.sleep(0.02)  # let each piece arrive as its own segment
        assert dns.message.from_wire(read_frame(sock)).rcode() == dns.rcode.NOERROR


def test_reply_after_client_half_close(up: FakeUpstream) -> None:
    up.delay_s = 0.2
    q = dns.message.make_query("example.org.", "A")
    with socket.create_connection((up.host, up.port), timeout=5) as sock:
        sock.sendall(frame(q.to_wire()))
        sock.shutdown(socket.SHUT_WR)
        assert dns.message.from_wire(read_frame(sock)).id == q.id
        assert sock.recv(1) == b""  # and then the fake closes its side


# ----------------------------------------------------------------------------- delay


def test_delay_does_not_block_other_queries_udp(up: FakeUpstream) -> None:
    slow = dns.message.make_query("example.org.", "A")
    fast = dns.message.make_query("example.org.", "MX")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        up.delay_s = 1.0
        sock.sendto(slow.to_wire(), (up.host, up.port))
        up.wait_for_calls(1)
        up.delay_s = 0.0
        sock.sendto(fast.to_wire(), (up.host, up.port))
        first = dns.message.from_wire(sock.recv(65535))
        second = dns.message.from_wire(sock.recv(65535))
    assert (first.id, second.id) == (fast.id, slow.id)


def test_delay_does_not_block_other_queries_on_the_same_tcp_connection(up: FakeUpstream) -> None:
    slow = dns.message.make_query("example.org.", "A")
    fast = dns.message.make_query("example.org.", "MX")
    with socket.create_connection((up.host, up.port), timeout=10) as sock:
        up.delay_s = 1.0
        sock.sendall(frame(slow.to_wire()))
        up.wait_for_calls(1)
        up.delay_s = 0.0
        sock.sendall(frame(fast.to_wire()))
        ids = [dns.message.from_wire(read_frame(sock)).id for _ in range(2)]
    assert ids == [fast.id, slow.id]  # RFC 7766 §6.2.1.1: replies may come out of order


def test_stop_with_delayed_replies_pending_does_not_hang() -> None:
    up = FakeUpstream(delay_s=60.0).answer("example.org. 300 IN A 192.0.2.1").start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(dns.message.make_query("example.org.", "A").to_wire(), (up.host, up.port))
        with socket.create_connection((up.host, up.port), timeout=5) as tcp:
            tcp.sendall(frame(dns.message.make_query("example.org.", "A").to_wire()))
            up.wait_for_calls(2)
            up.stop()
            assert tcp.recv(1) == b""  # closed, not answered
    assert not any(t.name.startswith("FakeUpstream") for t in threading.enumerate())


# ----------------------------------------------------------------------------- counters & hooks


def test_counts_and_query_records(up: FakeUpstream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        src_port = sock.getsockname()[1]
        q = dns.message.make_query("Example.org.", "MX", use_edns=0)
        dns.query.udp(q, up.host, port=up.port, timeout=5, sock=sock)
    query(up, "www.example.org.", "A", tcp=True, want_dnssec=True)
    assert (up.calls, up.udp_calls, up.tcp_calls) == (2, 1, 1)
    first, second = up.queries
    assert first.transport == "udp" and second.transport == "tcp"
    assert (first.qname, first.qtype, first.id, first.src_port) == (
        "Example.org.",
        "MX",
        q.id,
        src_port,
    )
    assert first.has_edns and not first.do_bit and first.rd_bit and not first.cd_bit
    assert second.has_edns and second.do_bit
    assert dns.message.from_wire(first.wire).id == q.id
    up.reset_counts()
    assert (up.calls, up.udp_calls, up.tcp_calls, up.queries) == (0, 0, 0, [])


def test_unparseable_and_response_packets_are_ignored(up: FakeUpstream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01junk", (up.host, up.port))
        response = dns.message.make_response(dns.message.make_query("example.org.", "A"))
        sock.sendto(response.to_wire(), (up.host, up.port))
    assert ask(up, "example.org.").rcode() == dns.rcode.NOERROR
    assert up.calls == 1


def test_answer_fn_message_bytes_and_silence(up: FakeUpstream) -> None:
    seen: list[str] = []

    def compute(q: dns.message.Message) -> dns.message.Message | bytes | None:
        name = q.question[0].name.to_text().lower()
        seen.append(name)
        if name.startswith("silent."):
            return None
        if name.startswith("raw."):
            reply = dns.message.make_response(q)
            reply.set_rcode(dns.rcode.NOTIMP)
            return reply.to_wire()
        if name.startswith("records."):
            return up.build_answer(q)
        reply = dns.message.make_response(q)
        reply.set_rcode(dns.rcode.YXDOMAIN)
        return reply

    up.answer_fn(compute)
    assert ask(up, "other.example.org.").rcode() == dns.rcode.YXDOMAIN
    assert ask(up, "raw.example.org.").rcode() == dns.rcode.NOTIMP
    up.answer("records.example.org. 60 IN A 192.0.2.5")
    assert rdata_texts(ask(up, "records.example.org.")) == ["192.0.2.5"]
    with pytest.raises(dns.exception.Timeout):
        query(up, "silent.example.org.", "A", timeout=0.3)
    up.answer_fn(None)
    assert rdata_texts(ask(up, "example.org.")) == ["192.0.2.1", "192.0.2.2"]
    assert len(seen) == 4


def test_answer_fn_errors_are_raised_by_stop() -> None:
    up = FakeUpstream().start()

    def broken(q: dns.message.Message) -> None:
        raise KeyError("test bug")

    up.answer_fn(broken)
    with pytest.raises(dns.exception.Timeout):
        query(up, "example.org.", "A", timeout=0.3)
    with pytest.raises(RuntimeError, match="error") as info:
        up.stop()
    assert isinstance(info.value.__cause__, KeyError)


def test_wait_for_calls_times_out(fake_upstream: FakeUpstream) -> None:
    with pytest.raises(TimeoutError):
        fake_upstream.wait_for_calls(1, timeout=0.05)


def test_restart_on_same_port_and_context_manager() -> None:
    up = FakeUpstream().answer("example.org. 300 IN A 192.0.2.1")
    with up:
        port = up.port
        assert up.address == f"127.0.0.1:{port}"
        assert ask(up, "example.org.").rcode() == dns.rcode.NOERROR
    with pytest.raises(dns.exception.Timeout):
        query(("127.0.0.1", port), "example.org.", "A", timeout=0.3)
    with up:
        assert up.port == port
        assert ask(up, "example.org.").rcode() == dns.rcode.NOERROR
        assert query(f"127.0.0.1:{port}", "example.org.", "A", tcp=True).answer
    assert up.calls == 2 + 1  # counters survive a restart


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = FakeUpstream().port


def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with FakeUpstream(host="::1").answer("example.org. 300 IN AAAA 2001:db8::1") as up:
        assert up.address == f"[::1]:{up.port}"
        assert rdata_texts(query(up, "example.org.", "AAAA")) == ["2001:db8::1"]
        assert rdata_texts(query(up.address, "example.org.", "AAAA", tcp=True)) == ["2001:db8::1"]


def test_free_port_is_free_for_udp_and_tcp() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))


def test_query_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        query("192.0.2.1:53", "example.org.", "A")


def test_fake_upstream_factory_fixture(fake_upstream_factory: Callable[..., FakeUpstream]) -> None:
    a = fake_upstream_factory(mode="servfail")
    b = fake_upstream_factory()
    assert a.port != b.port
    assert ask(a, "example.org.").rcode() == dns.rcode.SERVFAIL
    assert ask(b, "example.org.").rcode() == dns.rcode.NXDOMAIN


# ----------------------------------------------------------------------------- ServerProcess

# A stand-in for `fastdns serve`: reads the config, answers every UDP packet NOTIMP, accepts
# TCP, writes one JSON query-log line per packet, and exits 0 on SIGTERM.
STAND_IN_SERVER = textwrap.dedent(
    """
    import json, os, selectors, signal, socket, sys
    import dns.message, dns.rcode, yaml
    config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
    print("argv", sys.argv[1:], "fastdns_env", sorted(k for k in os.environ if k.startswith("FASTDNS_")), flush=True)
    host, port = config["server"]["bind_address"], config["server"]["dns_port"]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((host, port))
    tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port)); tcp.listen()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ); sel.register(tcp, selectors.EVENT_READ)
    log = open(config["logging"]["file"], "a")
    while True:
        for key, _ in sel.select():
            if key.fileobj is tcp:
                tcp.accept()[0].close()
                continue
            wire, peer = udp.recvfrom(65535)
            try:
                q = dns.message.from_wire(wire)
                name = q.question[0].name.to_text(omit_final_dot=True)
            except Exception:
                udp.sendto(wire[:2] + b"\\x81\\x01" + wire[4:12], peer)
                continue
            r = dns.message.make_response(q); r.set_rcode(dns.rcode.NOTIMP)
            udp.sendto(r.to_wire(), peer)
            log.write(json.dumps({"domain": name, "response_code": "NOTIMP"}) + "\\n"); log.flush()
    """
)


@pytest.fixture
def stand_in(tmp_path: Path) -> list[str]:
    script = tmp_path / "stand_in_server.py"
    script.write_text(STAND_IN_SERVER)
    return [sys.executable, str(script)]


def test_server_process_writes_config_with_test_defaults(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    server = ServerProcess(
        {"upstream_servers": [fake_upstream], "cache": {"max_ttl": 60}, "server": {"workers": 2}},
        tmp_path,
    )
    written = yaml.safe_load(server.config_path.read_text())
    assert written["server"]["bind_address"] == "127.0.0.1"
    assert written["server"]["dns_port"] == server.port
    assert written["server"]["workers"] == 2
    assert written["logging"]["file"] == str(tmp_path / "query.log")
    assert written["security"]["rate_limit_per_ip"] == 0
    assert written["upstream_servers"] == [fake_upstream.address]
    assert written["cache"] == {"max_ttl": 60}
    assert server.argv[-3:] == ["serve", "--config", str(server.config_path)]
    assert server.argv[:3] == [sys.executable, "-m", "fastdns"]


def test_server_process_never_defaults_to_public_upstreams(tmp_path: Path) -> None:
    server = ServerProcess({}, tmp_path)
    (upstream,) = server.config["upstream_servers"]
    assert upstream.startswith("127.0.0.1:")


@pytest.mark.parametrize(
    "config",
    [
        {"upstream_servers": ["8.8.8.8"]},
        {"upstream_servers": ["[2001:db8::1]:53"]},
        {"upstream_servers": ["127.0.0.1:5300"], "resolver": {"mode": "recursive"}},
    ],
)
def test_server_process_refuses_configs_that_leave_loopback(
    tmp_path: Path, config: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        ServerProcess(config, tmp_path)


def test_server_process_refuses_root_hints_that_leave_loopback(tmp_path: Path) -> None:
    hints = tmp_path / "root.hints"
    hints.write_text(". 3600000 NS a.root-servers.net.\na.root-servers.net. 3600000 A 198.41.0.4\n")
    with pytest.raises(ValueError, match="non-loopback"):
        ServerProcess({"resolver": {"mode": "recursive", "root_hints": str(hints)}}, tmp_path)


def test_server_process_reports_immediate_exit_with_stderr(tmp_path: Path) -> None:
    server = ServerProcess(
        {},
        tmp_path,
        argv=[
            sys.executable,
            "-c",
            "import sys; sys.stderr.write('fastdns: configuration error\\n'); sys.exit(2)",
        ],
    )
    with pytest.raises(ServerStartError) as info:
        server.start(timeout=10)
    message = str(info.value)
    assert "exited with code 2" in message
    assert "fastdns: configuration error" in message
    assert info.value.returncode == 2
    assert server.returncode == 2
    assert not server.running


def test_server_process_times_out_and_stops_the_child(tmp_path: Path) -> None:
    server = ServerProcess({}, tmp_path, argv=[sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ServerStartError, match="did not answer"):
        server.start(timeout=0.5)
    assert server.returncode is not None  # terminated, reaped


def test_server_process_runs_probes_queries_and_stops(
    server_factory: Callable[..., ServerProcess],
    stand_in: list[str],
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FASTDNS_UPSTREAM_SERVERS", "8.8.8.8")  # must not reach the child
    server = server_factory(
        {"upstream_servers": [fake_upstream.address]}, argv=stand_in, env={"FASTDNS_X": "1"}
    )
    assert server.running and server.pid > 0
    reply = server.query("ExAmPlE.org.", "A")
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.question[0].name.to_text() == "ExAmPlE.org."
    lines = server.wait_for_query_log(1)
    assert lines == [{"domain": "ExAmPlE.org", "response_code": "NOTIMP"}]
    assert any(
        line["domain"] == "fastdns-probe.invalid"
        for line in server.query_log_lines(include_probes=True)
    )
    assert "fastdns_env ['FASTDNS_X']" in server.stdout_text()
    assert server.start() is server  # already running: no-op
    assert server.stop() == 0
    assert server.stop() == 0
    server.start()  # again, same port
    assert server.query("example.org.", "A", tcp=False).rcode() == dns.rcode.NOTIMP


def test_server_factory_can_build_without_starting(
    server_factory: Callable[..., ServerProcess], stand_in: list[str]
) -> None:
    first = server_factory(argv=stand_in, start=False)
    second = server_factory(argv=stand_in, start=False)
    assert not first.running and first.returncode is None
    assert first.tmp_path != second.tmp_path and first.port != second.port
    with first:
        assert first.running
    assert first.returncode == 0
