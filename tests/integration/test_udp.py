"""DNS over UDP against a real server process: every record type, header flags, 0x20 echo,
an independent client (dig), and the UDP guards (ACL, per-client rate limit), on each UDP
path (the recvmmsg batch loop and the plain protocol)."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from fastdns._testing import FakeUpstream

from . import (
    LONG_TXT_STRINGS,
    RARE_RDATA,
    RECORD_CASES,
    Started,
    ask,
    assert_reply_header,
    check_record_case,
    checked_servers,
    collect_udp,
    config,
    dig,
    endpoint,
    make_wire,
    parse,
    populate,
    question_bytes,
    send,
    start_pair,
    udp_exchange,
)


@pytest.fixture
def server_factory(server_factory, udp_path):
    """conftest's factory, plus: no server may log a traceback; each UDP path in turn."""
    yield from checked_servers(server_factory, udp_path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, udp_path: str) -> Iterator[Started]:
    started = start_pair(
        tmp_path_factory.mktemp("udp"), populate(FakeUpstream().start()), udp_path=udp_path
    )
    yield started
    started.stop()


@pytest.mark.parametrize(("name", "rdtype"), RECORD_CASES, ids=[f"{n}{t}" for n, t in RECORD_CASES])
def test_record_type_round_trips_over_udp(pair: Started, name: str, rdtype: str) -> None:
    check_record_case(pair.up, pair.server, name, rdtype, tcp=False)


def test_cname_chain_answer_holds_the_whole_chain(pair: Started) -> None:
    reply = ask(pair.server, "www.example.org", "A")
    chain = [
        (r.name.to_text(), dns.rdatatype.to_text(r.rdtype), [rd.to_text() for rd in r])
        for r in reply.answer
    ]
    assert chain == [
        ("www.example.org.", "CNAME", ["alias.example.net."]),
        ("alias.example.net.", "CNAME", ["target.example.org."]),
        ("target.example.org.", "A", ["192.0.2.10"]),
    ]


def test_txt_strings_come_back_exactly(pair: Started) -> None:
    multi = ask(pair.server, "multi.example.org", "TXT")
    assert [rd.strings for rd in multi.answer[0]] == [(b"first string", b"second string", b"third")]
    escaped = ask(pair.server, "escaped.example.org", "TXT")
    assert [rd.strings for rd in escaped.answer[0]] == [
        (b'say "hi"', b"back\\slash", b"\x00\xff\n")
    ]
    long = ask(pair.server, "long.example.org", "TXT", use_edns=0, payload=1232)
    assert [rd.strings for rd in long.answer[0]] == [tuple(s.encode() for s in LONG_TXT_STRINGS)]


def test_unknown_type_passes_through_byte_identical(pair: Started) -> None:
    for _ in range(2):  # miss, then hit
        reply = ask(pair.server, "rare.example.org", "TYPE65534")
        assert reply.rcode() == dns.rcode.NOERROR
        (rrset,) = reply.answer
        assert rrset.rdtype == 65534
        assert [rd.data for rd in rrset] == [RARE_RDATA]


@pytest.mark.parametrize("rd", [True, False], ids=["rd1", "rd0"])
def test_header_id_rd_ra_aa_on_miss_and_hit(pair: Started, rd: bool) -> None:
    # The fake upstream sets AA=1; a forwarder is not authoritative and must clear it.
    name = f"flags-{int(rd)}.example.org."
    pair.up.answer(f"{name} 300 IN A 192.0.2.77")
    for attempt in ("miss", "hit"):
        msg = dns.message.make_query(name, "A")
        msg.id = secrets.randbits(16)
        if not rd:
            msg.flags &= ~dns.flags.RD
        reply = send(pair.server, msg)
        assert_reply_header(reply, msg)
        assert reply.rcode() == dns.rcode.NOERROR, attempt
        assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.77"], attempt


def test_reply_id_is_each_clients_own(pair: Started) -> None:
    for qid in (0, 1, 0x1234, 0xFFFF):
        wire = make_wire("example.org.", "A", qid=qid)
        reply = udp_exchange(pair.server, wire)
        assert reply is not None
        assert int.from_bytes(reply[:2], "big") == qid


@pytest.mark.parametrize(
    "spelling", ["MiXeD.ExAmPlE.oRg.", "MIXED.EXAMPLE.ORG.", "mixed.example.org."]
)
def test_question_echoed_with_the_clients_letter_case(pair: Started, spelling: str) -> None:
    # DNS 0x20: miss or hit, the question section is byte-for-byte what the client sent.
    pair.up.answer("mixed.example.org. 300 IN A 192.0.2.88")
    wire = make_wire(spelling, "A")
    reply = udp_exchange(pair.server, wire)
    assert reply is not None
    assert question_bytes(reply) == question_bytes(wire)
    msg = parse(reply)
    assert msg.question[0].name.to_text() == spelling
    assert [rd.to_text() for rd in msg.answer[0]] == ["192.0.2.88"]


def test_dig_gets_the_answer_over_udp(pair: Started) -> None:
    out = dig(pair.server, "example.org", "MX")
    assert "status: NOERROR" in out
    assert " qr rd ra" in out and " aa" not in out.split("flags:")[1].split(";")[0]
    assert "10 mail.example.org." in out
    assert "20 mail2.example.org." in out
    short = dig(pair.server, "+short", "www.example.org", "A")
    assert short.split() == ["alias.example.net.", "target.example.org.", "192.0.2.10"]


# ------------------------------------------------------------------------------- guards


def test_acl_refuses_a_client_outside_allowed_networks(fake_upstream, server_factory) -> None:
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, security={"allowed_networks": ["10.0.0.0/8"]}))
    for tcp in (False, True):
        msg = dns.message.make_query("example.org.", "A")
        reply = send(server, msg, tcp=tcp)
        assert reply.rcode() == dns.rcode.REFUSED
        assert reply.id == msg.id
        assert not reply.answer
    assert fake_upstream.calls == 0


def test_acl_admits_a_client_inside_allowed_networks(fake_upstream, server_factory) -> None:
    populate(fake_upstream)
    server = server_factory(
        config(fake_upstream, security={"allowed_networks": ["10.0.0.0/8", "127.0.0.0/8"]})
    )
    reply = ask(server, "example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]


def test_rate_limit_slips_tc_for_the_excess_and_tcp_still_answers(
    fake_upstream, server_factory
) -> None:
    populate(fake_upstream)
    server = server_factory(
        config(fake_upstream, security={"rate_limit_per_ip": 5, "rate_limit_exempt": []})
    )
    assert ask(server, "example.org", "A", tcp=True).answer  # cache it; TCP is not limited
    time.sleep(1.2)  # let the bucket refill after the start-up probes
    wires = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(endpoint(server))
        sock.setblocking(False)
        for i in range(50):
            wire = make_wire("example.org.", "A", qid=1000 + i)
            wires[1000 + i] = wire
            sock.send(wire)
        got = collect_udp([sock], {0: set(wires)}, time.monotonic() + 5.0)
    assert len(got) == 50, "every query gets a reply (full or TC), none is silently dropped"
    full = tc = 0
    for (_, qid), reply_wire in got.items():
        reply = parse(reply_wire)
        assert reply.id == qid
        assert question_bytes(reply_wire) == question_bytes(wires[qid])
        if reply.flags & dns.flags.TC:
            tc += 1
            assert not reply.answer and not reply.authority
            assert reply.rcode() == dns.rcode.NOERROR
            # No amplification: the slip reply is no larger than the query.
            assert len(reply_wire) <= len(wires[qid])
        else:
            full += 1
            assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]
    assert 1 <= full <= 10, (full, tc)
    assert tc >= 40, (full, tc)
    for _ in range(5):
        reply = ask(server, "example.org", "A", tcp=True)
        assert not reply.flags & dns.flags.TC
        assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]


def test_ipv6_loopback_listener_and_upstream(server_factory, fake_upstream_factory) -> None:
    up = populate(fake_upstream_factory(host="::1"))
    assert up.address.startswith("[::1]:")
    server = server_factory(config(up, server={"bind_address": "::1"}))
    assert server.host == "::1"
    for tcp in (False, True):
        reply = ask(server, "example.org", "AAAA", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rd in reply.answer[0]] == ["2001:db8::1"]
    assert up.calls == 1
    assert server.stop() == 0
    miss, hit = server.query_log_lines()
    assert miss["client_ip"] == hit["client_ip"] == "::1"
    assert miss["upstream_server"] == up.address
    assert hit["upstream_server"] is None


def test_root_name_question(pair: Started) -> None:
    pair.up.answer(". 300 IN NS a.root-servers.net.")
    for tcp in (False, True):
        reply = ask(pair.server, ".", "NS", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rd in reply.answer[0]] == ["a.root-servers.net."]


def test_longest_legal_name_is_answered(pair: Started) -> None:
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 61]  # 255 octets in wire form
    name = ".".join(labels) + "."
    assert len(dns.name.from_text(name).to_wire()) == 255
    pair.up.answer(f"{name} 300 IN A 192.0.2.255")
    reply = ask(pair.server, name, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.255"]


def test_only_ascii_letters_are_case_folded(pair: Started) -> None:
    # RFC 4343: case-insensitivity is for A-Z only; 0xC1 and 0xE1 are different labels.
    pair.up.answer(
        "\\193x.example.org. 300 IN A 192.0.2.193", "\\225x.example.org. 300 IN A 192.0.2.225"
    )
    upper = ask(pair.server, "\\193x.example.org", "A")
    lower = ask(pair.server, "\\225x.example.org", "A")
    assert [rd.to_text() for rd in upper.answer[0]] == ["192.0.2.193"]
    assert [rd.to_text() for rd in lower.answer[0]] == ["192.0.2.225"]
    wire = make_wire("\\193X.Example.org.", "A")
    raw = udp_exchange(pair.server, wire)
    assert raw is not None and question_bytes(raw) == question_bytes(wire)
    assert [rd.to_text() for rd in parse(raw).answer[0]] == ["192.0.2.193"]


@pytest.mark.parametrize(
    ("allowed", "rcode"),
    [(["127.0.0.0/8"], dns.rcode.REFUSED), (["::1/128"], dns.rcode.NOERROR)],
    ids=["v4-only", "v6-loopback"],
)
def test_acl_applies_to_ipv6_clients(fake_upstream, server_factory, allowed, rcode) -> None:
    populate(fake_upstream)
    server = server_factory(
        config(
            fake_upstream,
            server={"bind_address": "::1"},
            security={"allowed_networks": allowed},
        )
    )
    for tcp in (False, True):
        assert ask(server, "example.org", "A", tcp=tcp).rcode() == rcode


def test_loopback_clients_are_not_rate_limited_by_default(fake_upstream, server_factory) -> None:
    """Loopback sources cannot be spoofed from the network, so they cannot be used for
    amplification: security.rate_limit_exempt covers 127.0.0.0/8 and ::1 by default."""
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, security={"rate_limit_per_ip": 5}))
    assert ask(server, "example.org", "A").answer
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(endpoint(server))
        sock.setblocking(False)
        wires = {}
        for i in range(50):
            wires[2000 + i] = make_wire("example.org.", "A", qid=2000 + i)
            sock.send(wires[2000 + i])
        got = collect_udp([sock], {0: set(wires)}, time.monotonic() + 5.0)
    assert len(got) == 50
    assert not any(parse(w).flags & dns.flags.TC for w in got.values())
