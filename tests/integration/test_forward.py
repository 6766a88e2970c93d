"""Forwarding (SPEC §2): failover between upstreams, health, bogus replies, SERVFAIL in bounded
time, TCP retry on TC, coalescing of identical questions, and query randomisation."""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import free_port

from . import (
    SOA_ORG,
    ask,
    checked_servers,
    collect_udp,
    config,
    endpoint,
    frame,
    make_wire,
    parse,
    populate,
    question_bytes,
    send,
    tcp_connect,
)


@pytest.fixture
def server_factory(server_factory):
    """conftest's factory, plus: no server may log a traceback."""
    yield from checked_servers(server_factory)


FAILOVER = {"timeout_s": 2.0, "retry_interval_s": 0.3}


def answers(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


def test_silent_first_upstream_fails_over_to_the_second(fake_upstream_factory, server_factory):
    silent = fake_upstream_factory(mode="silent")
    good = populate(fake_upstream_factory())
    server = server_factory(config(silent, good, resolver=FAILOVER))
    reply = ask(server, "example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert answers(reply) == ["192.0.2.1"]
    assert silent.calls == 1, "the first configured upstream is asked first"
    assert good.calls == 1


def test_unreachable_first_upstream_fails_over_to_the_second(fake_upstream_factory, server_factory):
    good = populate(fake_upstream_factory())
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: ICMP port unreachable
    server = server_factory(config(dead, good, resolver=FAILOVER))
    reply = ask(server, "example.org", "MX")
    assert sorted(answers(reply)) == ["10 mail.example.org.", "20 mail2.example.org."]


def test_dead_upstream_stops_being_asked_on_every_query(fake_upstream_factory, server_factory):
    silent = fake_upstream_factory(mode="silent")
    good = fake_upstream_factory()
    names = [f"n{i}.example.org." for i in range(10)]
    good.answer(*[f"{name} 300 IN A 192.0.2.{i + 1}" for i, name in enumerate(names)])
    server = server_factory(config(silent, good, resolver=FAILOVER))
    for i, name in enumerate(names):
        reply = ask(server, name, "A")
        assert answers(reply) == [f"192.0.2.{i + 1}"]
    assert good.calls == len(names)
    assert silent.calls <= len(names) // 2, f"dead upstream asked {silent.calls} times"


def test_faster_upstream_is_preferred(fake_upstream_factory, server_factory):
    slow = populate(fake_upstream_factory(delay_s=0.2))
    fast = populate(fake_upstream_factory())
    server = server_factory(
        config(slow, fast, resolver={"timeout_s": 2.0, "retry_interval_s": 1.0})
    )
    for i in range(10):
        slow.answer(f"pref{i}.example.org. 300 IN A 192.0.2.{i + 1}")
        fast.answer(f"pref{i}.example.org. 300 IN A 192.0.2.{i + 1}")
        assert answers(ask(server, f"pref{i}.example.org", "A")) == [f"192.0.2.{i + 1}"]
    assert slow.calls <= 2, f"slow upstream asked {slow.calls} of 10 times"
    assert fast.calls >= 8


@pytest.mark.parametrize("mode", ["servfail", "refused", "formerr"])
def test_failure_rcode_from_first_upstream_fails_over(fake_upstream_factory, server_factory, mode):
    bad = populate(fake_upstream_factory(mode=mode))
    good = populate(fake_upstream_factory())
    server = server_factory(config(bad, good, resolver=FAILOVER))
    reply = ask(server, "example.org", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert answers(reply) == ["2001:db8::1"]
    assert bad.calls == 1
    assert good.calls == 1


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [("nope.example.org", "A", dns.rcode.NXDOMAIN), ("example.org", "MX", dns.rcode.NOERROR)],
    ids=["nxdomain", "nodata"],
)
def test_negative_answer_is_an_answer_not_a_failure(
    fake_upstream_factory, server_factory, name, rdtype, rcode
):
    # RFC 2308: NXDOMAIN and NODATA end the search; asking the next upstream would be wrong.
    first = fake_upstream_factory().zone_soa(SOA_ORG)  # only the SOA: NXDOMAIN / NODATA
    second = populate(fake_upstream_factory())
    server = server_factory(config(first, second, resolver=FAILOVER))
    reply = ask(server, name, rdtype)
    assert reply.rcode() == rcode
    assert not reply.answer
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
    assert first.calls == 1
    assert second.calls == 0


@pytest.mark.parametrize("mode", ["garbage", "wrong_id", "wrong_question"])
def test_bogus_replies_from_the_only_upstream_give_servfail(
    fake_upstream_factory, server_factory, mode
):
    up = populate(fake_upstream_factory(mode=mode))
    server = server_factory(config(up, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3}))
    for tcp in (False, True):
        started = time.monotonic()
        reply = ask(server, "example.org", "A", tcp=tcp, timeout=5.0)
        assert time.monotonic() - started < 5.0
        assert reply.rcode() == dns.rcode.SERVFAIL, mode
        assert not reply.answer, "the bogus data must never reach the client"
        assert reply.flags & dns.flags.RA
    assert up.calls >= 2


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_all_upstreams_silent_gives_servfail_not_silence(
    fake_upstream_factory, server_factory, tcp
):
    a = fake_upstream_factory(mode="silent")
    b = fake_upstream_factory(mode="silent")
    server = server_factory(config(a, b, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3}))
    reply = ask(server, "Example.ORG", "A", tcp=tcp, timeout=5.0, use_edns=0)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.edns == 0, "the error reply keeps the client's EDNS"
    assert reply.question[0].name.to_text() == "Example.ORG."
    assert a.calls >= 1 and b.calls >= 1, "both upstreams were tried"


def test_truncated_udp_reply_is_retried_over_tcp(fake_upstream_factory, server_factory):
    up = populate(fake_upstream_factory(truncate_udp=True))
    server = server_factory(config(up, resolver=FAILOVER))
    reply = ask(server, "example.org", "MX")
    assert not reply.flags & dns.flags.TC
    assert sorted(answers(reply)) == ["10 mail.example.org.", "20 mail2.example.org."]
    assert up.udp_calls == 1
    assert up.tcp_calls == 1
    assert [q.transport for q in up.queries] == ["udp", "tcp"]


def test_identical_questions_in_flight_are_coalesced(fake_upstream_factory, server_factory):
    up = populate(fake_upstream_factory(delay_s=0.5))
    server = server_factory(config(up, resolver={"timeout_s": 3.0, "retry_interval_s": 2.0}))
    spellings = ["example.org.", "EXAMPLE.ORG.", "Example.Org.", "eXaMpLe.oRg."]
    wires = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(endpoint(server))
        sock.setblocking(False)
        for i in range(20):
            qid = 0x4000 + i
            wires[qid] = make_wire(spellings[i % 4], "A", qid=qid)
            sock.send(wires[qid])
        got = collect_udp([sock], {0: set(wires)}, time.monotonic() + 5.0)
    assert len(got) == 20
    for (_, qid), reply_wire in got.items():
        assert question_bytes(reply_wire) == question_bytes(wires[qid])
        assert answers(parse(reply_wire)) == ["192.0.2.1"]
    assert up.calls == 1


def test_upstream_queries_use_random_ids_and_source_ports(fake_upstream_factory, server_factory):
    up = fake_upstream_factory()
    names = [f"rand{i}.example.org." for i in range(8)]
    up.answer(*[f"{name} 300 IN A 192.0.2.9" for name in names])
    server = server_factory(config(up, resolver=FAILOVER))
    for name in names:
        msg = dns.message.make_query(name, "A")
        msg.id = 0x0101  # the same client ID every time: upstream IDs must not follow it
        reply = send(server, msg)
        assert answers(reply) == ["192.0.2.9"]
    seen = up.queries
    assert len(seen) == len(names)
    ids = [q.id for q in seen]
    ports = [q.src_port for q in seen]
    assert len(set(ids)) >= len(names) - 1, ids
    assert len(set(ports)) >= len(names) - 1, ports
    assert sorted(ids) != list(range(min(ids), min(ids) + len(ids))), "IDs must not be sequential"
    assert ids.count(0x0101) <= 1, "upstream IDs do not copy the client's ID"
    assert all(q.rd_bit for q in seen), "a forwarder asks with RD=1"


def test_spoofed_reply_from_another_port_is_ignored(fake_upstream_factory, server_factory):
    # RFC 5452 §9.1: a reply counts only from the address and port the query went to.
    up = populate(fake_upstream_factory(delay_s=0.6))
    server = server_factory(config(up, resolver={"timeout_s": 3.0, "retry_interval_s": 2.0}))
    wire = make_wire("example.org.", "A")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer,
    ):
        client.settimeout(5.0)
        client.sendto(wire, endpoint(server))
        up.wait_for_calls(1)
        (seen,) = up.queries
        forged = dns.message.make_query(seen.qname, "A")
        forged.id = seen.id  # right ID, right question: only the source port is wrong
        forged_reply = dns.message.make_response(forged)
        forged_reply.answer.append(dns.rrset.from_text(seen.qname, 300, "IN", "A", "192.0.2.66"))
        for _ in range(3):
            spoofer.sendto(forged_reply.to_wire(), ("127.0.0.1", seen.src_port))
        reply = parse(client.recv(65535))
    assert answers(reply) == ["192.0.2.1"], "the forged answer must not be accepted"
    assert answers(ask(server, "example.org", "A")) == ["192.0.2.1"], "nor cached"


def test_waiters_survive_the_first_waiter_going_away(fake_upstream_factory, server_factory):
    # The TCP client that started the resolution resets its connection; the UDP client that
    # joined it must still get the answer.
    up = fake_upstream_factory(delay_s=0.6).answer("slow.example.org. 300 IN A 192.0.2.70")
    server = server_factory(config(up, resolver={"timeout_s": 3.0, "retry_interval_s": 2.0}))
    first = tcp_connect(server)
    first.sendall(frame(make_wire("slow.example.org.", "A")))
    up.wait_for_calls(1)
    wire = make_wire("slow.example.org.", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.settimeout(5.0)
        second.sendto(wire, endpoint(server))
        time.sleep(0.1)
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()  # RST
        reply = parse(second.recv(65535))
    assert reply.id == int.from_bytes(wire[:2], "big")
    assert reply.rcode() == dns.rcode.NOERROR
    assert answers(reply) == ["192.0.2.70"]
    assert up.calls <= 2


def _opt_before_glue(q: dns.message.Message) -> bytes:
    """A reply whose additional section holds OPT first, then a glue A record."""
    reply = dns.message.make_response(q, recursion_available=True)
    reply.use_edns(False)
    reply.answer.append(
        dns.rrset.from_text(q.question[0].name, 300, "IN", "MX", "10 mail.example.org.")
    )
    reply.additional.append(dns.rrset.from_text("mail.example.org.", 300, "IN", "A", "192.0.2.25"))
    wire = reply.to_wire()
    pos = 12
    while wire[pos]:
        pos += 1 + wire[pos]
    pos += 5  # root label, qtype, qclass
    (rdlength,) = struct.unpack_from("!H", wire, pos + 10)
    answer_end = pos + 12 + rdlength  # owner is a 2-byte pointer
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    out = bytearray(wire[:answer_end] + opt + wire[answer_end:])
    struct.pack_into("!H", out, 10, 2)  # ARCOUNT: OPT + glue
    return bytes(out)


def test_upstream_opt_anywhere_in_additional_is_accepted(fake_upstream, server_factory):
    # RFC 6891 §6.1.1: "The OPT RR MAY be placed anywhere within the additional data section."
    fake_upstream.answer_fn(_opt_before_glue)
    direct = dns.message.from_wire(_opt_before_glue(dns.message.make_query("example.org.", "MX")))
    assert direct.edns == 0 and direct.additional  # a well-formed message, as dnspython reads it
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3})
    )
    for tcp in (False, True):
        reply = ask(server, "example.org", "MX", tcp=tcp, use_edns=0)
        assert reply.rcode() == dns.rcode.NOERROR
        assert answers(reply) == ["10 mail.example.org."]
        assert reply.edns == 0
