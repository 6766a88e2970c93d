"""EDNS0 (RFC 6891) against a real server: OPT echoed only to EDNS clients, our advertised
size, BADVERS, DO echo, and the client's UDP size honoured (TC=1, then the whole answer on TCP)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from fastdns._testing import FakeUpstream

from . import (
    Started,
    allow_large_replies,
    ask,
    checked_servers,
    dig,
    make_wire,
    parse,
    populate,
    send,
    start_pair,
    tcp_exchange,
    udp_exchange,
)


@pytest.fixture
def server_factory(server_factory, udp_path):
    """conftest's factory, plus: no server may log a traceback; each UDP path in turn."""
    yield from checked_servers(server_factory, udp_path)


BIG_STRINGS = [f"{i:02d}" + "z" * 247 for i in range(12)]  # 12 x 250 = 3000 bytes of RDATA
MEDIUM_STRINGS = ["m" * 255, "n" * 255, "o" * 90]  # ~600 bytes: above 512, below 1232


def txt_strings_for_rdlen(rdlen: int) -> list[str]:
    """TXT character-strings whose RDATA is exactly `rdlen` bytes."""
    strings = []
    while rdlen > 256:
        strings.append("e" * 255)
        rdlen -= 256
    strings.append("f" * (rdlen - 1))
    return strings


def reply_size(name: str, rdlen: int, *, edns: bool) -> int:
    """Size of a one-TXT-record reply: header, question, RR (owner compressed), OPT."""
    qname = len(dns.name.from_text(name).to_wire())
    return 12 + qname + 4 + 2 + 10 + rdlen + (11 if edns else 0)


def edge_records() -> list[str]:
    """TXT records whose reply is exactly at, or one byte over, the 512 and 1232 limits."""
    out = []
    for limit, edns in ((512, False), (1232, True)):
        for extra, tag in ((0, "at"), (1, "over")):
            name = f"{tag}{limit}.example.org."
            base = reply_size(name, 0, edns=edns)
            strings = txt_strings_for_rdlen(limit + extra - base)
            out.append(f"{name} 300 IN TXT " + " ".join(f'"{s}"' for s in strings))
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, udp_path: str) -> Iterator[Started]:
    up = populate(FakeUpstream().start())
    up.answer("big.example.org. 300 IN TXT " + " ".join(f'"{s}"' for s in BIG_STRINGS))
    up.answer("medium.example.org. 300 IN TXT " + " ".join(f'"{s}"' for s in MEDIUM_STRINGS))
    up.answer(*edge_records())
    allow_large_replies(up)
    started = start_pair(tmp_path_factory.mktemp("edns"), up, udp_path=udp_path)
    yield started
    started.stop()


def txt(msg: dns.message.Message) -> list[str]:
    return [s.decode() for rrset in msg.answer for rd in rrset for s in rd.strings]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_reply_has_opt_iff_the_query_had_one(pair: Started, tcp: bool) -> None:
    for attempt in ("miss", "hit"):
        plain = ask(pair.server, "example.org", "AAAA", tcp=tcp)
        assert plain.edns == -1, f"{attempt}: OPT sent to a client that sent none"
        assert plain.answer
        edns = ask(pair.server, "example.org", "AAAA", tcp=tcp, use_edns=0)
        assert edns.edns == 0, attempt
        assert edns.answer


@pytest.mark.parametrize("use_edns", [False, 0], ids=["plain", "edns"])
def test_error_replies_follow_the_same_opt_rule(pair: Started, use_edns) -> None:
    expect = -1 if use_edns is False else 0
    axfr = ask(pair.server, "example.org", "AXFR", use_edns=use_edns)
    assert axfr.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTIMP)
    assert axfr.edns == expect
    notify = dns.message.make_query("example.org.", "SOA", use_edns=use_edns)
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = parse(udp_exchange(pair.server, notify.to_wire()))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.edns == expect


@pytest.mark.parametrize("payload", [512, 1232, 4096, 65535])
def test_we_advertise_1232(pair: Started, payload: int) -> None:
    reply = ask(pair.server, "example.org", "A", use_edns=0, payload=payload)
    assert reply.edns == 0
    assert reply.payload == 1232


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_edns_version_1_gets_badvers_with_opt(pair: Started, tcp: bool) -> None:
    calls = pair.up.calls
    msg = dns.message.make_query("badvers.example.org.", "A", use_edns=1)
    reply = send(pair.server, msg, tcp=tcp)
    assert reply.rcode() == dns.rcode.BADVERS  # 16: 4 bits in the header, 8 in OPT
    assert reply.edns == 0, "BADVERS carries an OPT with the version we support"
    assert not reply.answer
    assert reply.id == msg.id
    assert pair.up.calls == calls, "nothing is forwarded"


def test_do_bit_is_echoed_in_opt(pair: Started) -> None:
    with_do = ask(pair.server, "example.org", "A", use_edns=0, want_dnssec=True)
    assert with_do.ednsflags & dns.flags.DO
    without = ask(pair.server, "example.org", "A", use_edns=0)
    assert not without.ednsflags & dns.flags.DO


def test_big_answer_truncated_for_1232_then_whole_over_tcp(pair: Started) -> None:
    reply = ask(pair.server, "big.example.org", "TXT", use_edns=0, payload=1232)
    assert reply.flags & dns.flags.TC
    assert not reply.answer
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.edns == 0
    full = ask(pair.server, "big.example.org", "TXT", tcp=True, use_edns=0, payload=1232)
    assert not full.flags & dns.flags.TC
    assert sorted(txt(full)) == BIG_STRINGS
    asked = [q for q in pair.up.queries if q.qname.lower() == "big.example.org."]
    assert [q.transport for q in asked] == ["udp", "tcp"], "one resolution, re-asked over TCP"


def test_big_answer_fits_a_4096_client_over_udp(pair: Started) -> None:
    for _ in range(2):
        reply = ask(pair.server, "big.example.org", "TXT", use_edns=0, payload=4096)
        assert not reply.flags & dns.flags.TC
        assert sorted(txt(reply)) == BIG_STRINGS


def test_over_512_without_edns_is_truncated(pair: Started) -> None:
    wire = make_wire("medium.example.org.", "TXT")
    raw = udp_exchange(pair.server, wire)
    assert raw is not None and len(raw) <= 512
    reply = parse(raw)
    assert reply.flags & dns.flags.TC
    assert not reply.answer
    assert reply.id == int.from_bytes(wire[:2], "big")
    with_edns = ask(pair.server, "medium.example.org", "TXT", use_edns=0, payload=1232)
    assert not with_edns.flags & dns.flags.TC
    assert txt(with_edns) == MEDIUM_STRINGS
    over_tcp = parse(tcp_exchange(pair.server, wire))
    assert txt(over_tcp) == MEDIUM_STRINGS


def test_payload_below_512_counts_as_512(pair: Started) -> None:
    # RFC 6891 §6.2.5: a requestor's size below 512 is treated as 512.
    reply = ask(pair.server, "example.org", "MX", use_edns=0, payload=100)
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 2


@pytest.mark.parametrize(
    ("name", "edns", "truncated"),
    [
        ("at512.example.org.", False, False),
        ("over512.example.org.", False, True),
        ("at1232.example.org.", True, False),
        ("over1232.example.org.", True, True),
    ],
)
def test_truncation_boundary_is_exact(
    pair: Started, name: str, edns: bool, truncated: bool
) -> None:
    kw = {"use_edns": 0, "payload": 1232} if edns else {}
    for _ in range(2):  # miss, then hit
        raw = udp_exchange(pair.server, make_wire(name, "TXT", **kw))
        assert raw is not None
        reply = parse(raw)
        assert bool(reply.flags & dns.flags.TC) == truncated, len(raw)
        if not truncated:
            assert len(raw) == (1232 if edns else 512)
            assert reply.answer


def test_dig_retries_over_tcp_after_truncation(pair: Started) -> None:
    out = dig(pair.server, "+bufsize=1232", "big.example.org", "TXT")
    assert "Truncated, retrying in TCP mode" in out
    assert "status: NOERROR" in out
    assert all(s in out for s in BIG_STRINGS)


def test_client_do_bit_is_passed_upstream(pair: Started) -> None:
    pair.up.answer("do.example.org. 300 IN A 192.0.2.44")
    ask(pair.server, "do.example.org", "A", use_edns=0, want_dnssec=True)
    (asked,) = [q for q in pair.up.queries if q.qname.lower() == "do.example.org."]
    assert asked.has_edns and asked.do_bit
    assert asked.edns_payload == 1232


def test_query_with_edns_options_is_answered(pair: Started) -> None:
    # RFC 7873 cookie and RFC 7871 client-subnet options: understood or not, never an error.
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8)))
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    pair.up.answer("opts.example.org. 300 IN A 192.0.2.45")
    for _ in range(2):  # miss, then hit
        reply = ask(pair.server, "opts.example.org", "A", use_edns=0, options=[cookie, ecs])
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.edns == 0
        assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.45"]


def test_coalesced_waiters_each_get_their_own_size_treatment(fake_upstream, server_factory):
    fake_upstream.answer("big.example.org. 300 IN TXT " + " ".join(f'"{s}"' for s in BIG_STRINGS))
    allow_large_replies(fake_upstream).delay_s = 0.5
    server = server_factory(
        {
            "upstream_servers": [fake_upstream],
            "resolver": {"timeout_s": 3.0, "retry_interval_s": 2.0},
        }
    )
    small = make_wire("big.example.org.", "TXT", qid=1)
    large = make_wire("big.example.org.", "TXT", qid=2, use_edns=0, payload=4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.connect((server.host, server.port))
        sock.send(small)
        sock.send(large)
        tcp_reply = parse(tcp_exchange(server, make_wire("big.example.org.", "TXT", qid=3)))
        got = {}
        for _ in range(2):
            msg = parse(sock.recv(65535))
            got[msg.id] = msg
    assert got[1].flags & dns.flags.TC and not got[1].answer
    assert not got[2].flags & dns.flags.TC and sorted(txt(got[2])) == BIG_STRINGS
    assert sorted(txt(tcp_reply)) == BIG_STRINGS
    assert [q.transport for q in fake_upstream.queries] == ["udp", "tcp"], "one resolution"
