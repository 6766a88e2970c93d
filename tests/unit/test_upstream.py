"""One upstream exchange: query building, reply matching, UDP and TCP round trips on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import uvloop

from fastdns._testing.fake_upstream import FakeUpstream, free_port
from fastdns._testing.host import ipv6_loopback_available, open_fds
from fastdns.errors import QnameCaseMismatch, UpstreamFailed, UpstreamTimeout
from fastdns.resolve.question import Question
from fastdns.resolve.upstream import (
    EDNS_UDP_PAYLOAD,
    ReplyMatcher,
    UdpExchange,
    build_query,
    exchange_tcp,
    exchange_udp,
    format_address,
    randomise_case,
    reply_rcode,
    reply_rejects_edns,
    reply_truncated,
)

EXAMPLE_ORG = b"\x07example\x03org\x00"
Q_A = Question(EXAMPLE_ORG, dns.rdatatype.A, dns.rdataclass.IN)

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on a fresh loop of each implementation."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


def reply_to(query_wire: bytes, **changes: Any) -> dns.message.Message:
    """A response to our query, with header/question fields changed as a test needs."""
    query = dns.message.from_wire(query_wire)
    reply = dns.message.make_response(query)
    for key, value in changes.items():
        setattr(reply, key, value)
    return reply


# ------------------------------------------------------------------ build_query


@pytest.mark.parametrize("do", [False, True])
@pytest.mark.parametrize("cd", [False, True])
def test_build_query_sets_rd_cd_and_edns_do(do: bool, cd: bool) -> None:
    q = Question(EXAMPLE_ORG, dns.rdatatype.AAAA, dns.rdataclass.IN, do=do, cd=cd)
    qid, wire = build_query(q)
    msg = dns.message.from_wire(wire)
    assert msg.id == qid
    assert msg.flags & dns.flags.RD
    assert bool(msg.flags & dns.flags.CD) is cd
    assert not msg.flags & dns.flags.QR
    assert msg.edns == 0
    assert msg.payload == EDNS_UDP_PAYLOAD
    assert bool(msg.ednsflags & dns.flags.DO) is do
    assert len(msg.question) == 1
    rrset = msg.question[0]
    assert rrset.name.to_wire() == EXAMPLE_ORG
    assert rrset.rdtype == dns.rdatatype.AAAA
    assert rrset.rdclass == dns.rdataclass.IN


def test_build_query_ids_are_random() -> None:
    ids = {build_query(Q_A)[0] for _ in range(64)}
    assert len(ids) > 32  # 64 draws from 65536 values: collisions are rare, repeats are a bug


def test_question_bytes_is_the_wire_question() -> None:
    assert Q_A.question_bytes == EXAMPLE_ORG + b"\x00\x01\x00\x01"


# ------------------------------------------------------------------ ReplyMatcher


def test_matcher_accepts_the_reply_whatever_the_qname_case() -> None:
    _, query = build_query(Q_A)
    reply = reply_to(query)
    reply.question[0].name = dns.name.from_text("ExAmPlE.OrG.")
    assert ReplyMatcher(query).matches(reply.to_wire())


def test_matcher_rejects_wrong_id() -> None:
    qid, query = build_query(Q_A)
    assert not ReplyMatcher(query).matches(reply_to(query, id=(qid + 1) & 0xFFFF).to_wire())


def test_matcher_rejects_a_query_bounced_back() -> None:
    _, query = build_query(Q_A)
    assert not ReplyMatcher(query).matches(query)  # QR=0


def test_matcher_rejects_other_question() -> None:
    _, query = build_query(Q_A)
    matcher = ReplyMatcher(query)
    for name, rdtype, rdclass in [
        ("example.net.", dns.rdatatype.A, dns.rdataclass.IN),
        ("example.org.", dns.rdatatype.AAAA, dns.rdataclass.IN),
        ("example.org.", dns.rdatatype.A, dns.rdataclass.CH),
        ("www.example.org.", dns.rdatatype.A, dns.rdataclass.IN),
    ]:
        reply = reply_to(query)
        reply.question = [dns.rrset.RRset(dns.name.from_text(name), rdclass, rdtype)]
        assert not matcher.matches(reply.to_wire()), (name, rdtype, rdclass)


def test_matcher_does_not_case_fold_qtype() -> None:
    # qtype 65 is 0x0041 ("A" as a byte): only the name may be compared case-insensitively.
    q = Question(EXAMPLE_ORG, 65, dns.rdataclass.IN)
    _, query = build_query(q)
    reply = bytearray(reply_to(query).to_wire())
    end = 12 + len(EXAMPLE_ORG)
    assert reply[end : end + 2] == b"\x00\x41"
    assert ReplyMatcher(query).matches(bytes(reply))
    reply[end + 1] = 0x61
    assert not ReplyMatcher(query).matches(bytes(reply))


def test_matcher_rejects_short_and_questionless_replies() -> None:
    _, query = build_query(Q_A)
    matcher = ReplyMatcher(query)
    full = reply_to(query).to_wire()
    for cut in range(12 + len(EXAMPLE_ORG) + 4):
        assert not matcher.matches(full[:cut])
    no_question = reply_to(query)
    no_question.question = []
    assert not matcher.matches(no_question.to_wire())
    assert not matcher.matches(b"")


# ------------------------------------------------------------------ DNS 0x20

LONG_NAME = dns.name.from_text("averyveryverylongname.example.org.").to_wire()


def with_qname(reply: dns.message.Message, name: bytes) -> bytes:
    """`reply`'s wire with its qname replaced by `name` (same length, another spelling)."""
    wire = reply.to_wire()
    return wire[:12] + name + wire[12 + len(name) :]


def test_randomise_case_changes_only_the_case_of_letters() -> None:
    name = b"\x03w-1\x07example\x03org\x00"
    spellings = {randomise_case(name) for _ in range(200)}
    assert all(s.lower() == name for s in spellings)
    # 11 letters: 2048 spellings, each letter up or down by its own random bit.
    assert len(spellings) > 100
    for i, byte in enumerate(name):
        assert {s[i] for s in spellings} == (
            {byte, byte ^ 0x20} if chr(byte).isalpha() else {byte}
        ), i


def test_exact_matcher_takes_only_the_case_that_was_sent() -> None:
    sent = randomise_case(LONG_NAME)
    _, query = build_query(Question(sent, dns.rdatatype.A, dns.rdataclass.IN))
    exact = ReplyMatcher(query, exact_case=True)
    echoed = reply_to(query)
    assert exact.matches(echoed.to_wire()) and not exact.case_differs(echoed.to_wire())
    for other in (LONG_NAME, LONG_NAME.upper(), bytes(b ^ 0x20 if chr(b).isalpha() else b
                                                      for b in sent)):
        reply = with_qname(echoed, other)
        assert not exact.matches(reply)
        assert exact.case_differs(reply)  # the reply, but for the case: a failed attempt
        assert ReplyMatcher(query).matches(reply)  # the default stays case-insensitive
        assert not ReplyMatcher(query).case_differs(reply)


def test_exact_matcher_case_differs_only_for_the_right_reply_in_another_case() -> None:
    sent = randomise_case(LONG_NAME)
    qid, query = build_query(Question(sent, dns.rdatatype.A, dns.rdataclass.IN))
    exact = ReplyMatcher(query, exact_case=True)
    lowered = with_qname(reply_to(query), LONG_NAME)
    wrong_id = with_qname(reply_to(query, id=(qid + 1) & 0xFFFF), LONG_NAME)
    wrong_type = bytearray(lowered)
    wrong_type[12 + len(sent) + 1] = dns.rdatatype.NS
    for reply in (wrong_id, bytes(wrong_type), query.lower(), lowered[:20], b""):
        assert not exact.case_differs(reply)
    assert exact.case_differs(lowered)


def _lowercasing(query: dns.message.Message) -> dns.message.Message:
    """A server that does not preserve the case of the question."""
    reply = dns.message.make_response(query)
    question = reply.question[0]
    reply.question = [dns.rrset.RRset(dns.name.from_text(question.name.to_text().lower()),
                                      question.rdclass, question.rdtype)]
    return reply


def test_udp_exact_case_fails_at_once_on_a_reply_in_another_case(run: Runner) -> None:
    seen: list[bytes] = []
    with FakeUpstream().answer_fn(_lowercasing) as up:
        q = Question(LONG_NAME.upper(), dns.rdatatype.A, dns.rdataclass.IN)
        _, query = build_query(q)
        # Not a timeout: the reply came, in the wrong case.
        with pytest.raises(QnameCaseMismatch, match=up.address):
            run(exchange_udp(up.host, up.port, query, 30.0, exact_case=True,
                             on_mismatch=seen.append))
        assert len(seen) == 1
        got = run(exchange_udp(up.host, up.port, query, 2.0))  # case-insensitive by default
        assert got[12 : 12 + len(LONG_NAME)] == LONG_NAME


def test_tcp_exact_case_fails_on_a_reply_in_another_case(run: Runner) -> None:
    with FakeUpstream().answer_fn(_lowercasing) as up:
        _, query = build_query(Question(LONG_NAME.upper(), dns.rdatatype.A, dns.rdataclass.IN))
        with pytest.raises(QnameCaseMismatch, match="tcp"):
            run(exchange_tcp(up.host, up.port, query, 30.0, exact_case=True))
        assert ReplyMatcher(query).matches(run(exchange_tcp(up.host, up.port, query, 2.0)))


def test_exact_case_accepts_an_echo_of_the_random_case(run: Runner) -> None:
    with FakeUpstream().answer("averyveryverylongname.example.org. 300 IN A 192.0.2.1") as up:
        sent = randomise_case(LONG_NAME)
        _, query = build_query(Question(sent, dns.rdatatype.A, dns.rdataclass.IN))
        got = run(exchange_udp(up.host, up.port, query, 2.0, exact_case=True))
        assert got[12 : 12 + len(sent)] == sent
        assert up.queries[0].wire[12 : 12 + len(sent)] == sent


def test_rcode_and_tc_helpers() -> None:
    _, query = build_query(Q_A)
    reply = reply_to(query)
    reply.set_rcode(dns.rcode.SERVFAIL)
    reply.flags |= dns.flags.TC
    wire = reply.to_wire()
    assert reply_rcode(wire) == dns.rcode.SERVFAIL
    assert reply_truncated(wire)
    assert not reply_truncated(reply_to(query).to_wire())


def test_format_address() -> None:
    assert format_address("127.0.0.1", 53) == "127.0.0.1:53"
    assert format_address("::1", 5353) == "[::1]:5353"


# ------------------------------------------------------------------ exchange_udp


def test_udp_returns_the_exact_bytes_received(run: Runner) -> None:
    sent: list[bytes] = []

    def answer(query: dns.message.Message) -> bytes:
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        # 0x20-style case change and an unusual but valid layout: returned untouched.
        reply.question[0].name = dns.name.from_text("EXAMPLE.org.")
        wire = reply.to_wire()
        sent.append(wire)
        return wire

    with FakeUpstream().answer_fn(answer) as up:
        _, query = build_query(Q_A)
        got = run(exchange_udp(up.host, up.port, query, 2.0))
    assert got == sent[0]
    assert up.udp_calls == 1


def test_udp_ignores_mismatches_and_reports_them(run: Runner) -> None:
    for mode in ("garbage", "wrong_id", "wrong_question"):
        seen: list[bytes] = []
        with FakeUpstream(mode=mode).answer("example.org. 300 IN A 192.0.2.1") as up:
            _, query = build_query(Q_A)
            with pytest.raises(UpstreamTimeout):
                run(exchange_udp(up.host, up.port, query, 0.3, on_mismatch=seen.append))
        assert up.calls == 1
        assert len(seen) == 1, mode


class _ScriptedUpstream(asyncio.DatagramProtocol):
    """Answers each query with a forged reply (wrong ID), then the real one.

    Before both, a perfect reply with a different answer arrives from another port: the
    connected socket of the exchange must never let it in.
    """

    def __init__(self) -> None:
        self.transport: Any = None
        self.good: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        query = dns.message.from_wire(data)
        evil = dns.message.make_response(query)
        evil.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "A", "203.0.113.66"))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_port:
            other_port.sendto(evil.to_wire(), addr)
        forged = dns.message.make_response(query)
        forged.id = (query.id + 1) & 0xFFFF
        self.transport.sendto(forged.to_wire(), addr)
        good = dns.message.make_response(query)
        good.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "A", "192.0.2.1"))
        self.good.append(good.to_wire())
        self.transport.sendto(self.good[-1], addr)


def test_udp_accepts_only_the_real_reply_from_the_real_source(run: Runner) -> None:
    seen: list[bytes] = []

    async def go() -> tuple[bytes, list[bytes]]:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            _ScriptedUpstream, local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            _, query = build_query(Q_A)
            got = await exchange_udp("127.0.0.1", port, query, 2.0, on_mismatch=seen.append)
            return got, server.good
        finally:
            transport.close()

    got, good = run(go())
    assert got == good[0]
    assert len(seen) == 1  # the forged ID; the other port's datagram never arrived


def test_udp_closed_port_fails_fast(run: Runner) -> None:
    _, query = build_query(Q_A)
    with pytest.raises(UpstreamFailed):
        run(exchange_udp("127.0.0.1", free_port(), query, 5.0))


def test_udp_source_ports_and_ids_differ(run: Runner) -> None:
    async def five(host: str, port: int) -> None:
        for _ in range(5):
            _, query = build_query(Q_A)
            await exchange_udp(host, port, query, 2.0)

    with FakeUpstream().answer("example.org. 300 IN A 192.0.2.1") as up:
        run(five(up.host, up.port))
    assert len({r.src_port for r in up.queries}) > 1
    assert len({r.id for r in up.queries}) > 1


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_udp_over_ipv6(run: Runner) -> None:
    with FakeUpstream(host="::1").answer("example.org. 300 IN A 192.0.2.1") as up:
        _, query = build_query(Q_A)
        got = run(exchange_udp("::1", up.port, query, 2.0))
    assert dns.message.from_wire(got).answer[0].to_text() == "example.org. 300 IN A 192.0.2.1"


def test_udp_leaves_no_socket_behind(run: Runner) -> None:
    async def go(host: str, port: int) -> None:
        _, query = build_query(Q_A)
        with pytest.raises(UpstreamTimeout):
            await exchange_udp(host, port, query, 0.2)
        task = asyncio.ensure_future(exchange_udp(host, port, query, 5.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = open_fds()
    with FakeUpstream(mode="silent") as up:
        run(go(up.host, up.port))
    assert open_fds() == before


# ------------------------------------------------------------------ exchange_tcp


def test_tcp_round_trip(run: Runner) -> None:
    with FakeUpstream().answer("example.org. 300 IN A 192.0.2.1") as up:
        _, query = build_query(Q_A)
        got = run(exchange_tcp(up.host, up.port, query, 2.0))
    assert ReplyMatcher(query).matches(got)
    assert up.tcp_calls == 1 and up.udp_calls == 0
    assert dns.message.from_wire(got).answer[0].to_text() == "example.org. 300 IN A 192.0.2.1"


def test_tcp_skips_non_matching_messages(run: Runner) -> None:
    with FakeUpstream(mode="wrong_id").answer("example.org. 300 IN A 192.0.2.1") as up:
        _, query = build_query(Q_A)
        with pytest.raises(UpstreamTimeout):
            run(exchange_tcp(up.host, up.port, query, 0.3))


def test_tcp_closed_port_fails(run: Runner) -> None:
    _, query = build_query(Q_A)
    with pytest.raises(UpstreamFailed):
        run(exchange_tcp("127.0.0.1", free_port(), query, 5.0))


def test_tcp_silent_times_out_and_closes(run: Runner) -> None:
    before = open_fds()
    with FakeUpstream(mode="silent") as up:
        _, query = build_query(Q_A)
        with pytest.raises(UpstreamTimeout):
            run(exchange_tcp(up.host, up.port, query, 0.2))
    assert open_fds() == before


# ------------------------------------------------------------------ UdpExchange and its poller


def test_concurrent_exchanges_share_one_poller_that_closes_when_idle(run: Runner) -> None:
    from fastdns.resolve import upstream

    async def go(host: str, port: int) -> list[bytes]:
        before = open_fds()  # counted inside the loop: uvloop opens a pipe once per process
        queries = [build_query(Q_A)[1] for _ in range(20)]
        tasks = [asyncio.ensure_future(exchange_udp(host, port, q, 2.0)) for q in queries]
        await asyncio.sleep(0)  # every exchange has sent its query and is waiting
        assert list(upstream._pollers) == [asyncio.get_running_loop()]
        replies = await asyncio.gather(*tasks)
        for query, reply in zip(queries, replies):
            assert ReplyMatcher(query).matches(reply)
        assert upstream._pollers == {}  # closed with the last exchange
        assert open_fds() == before
        return replies

    with FakeUpstream().answer("example.org. 300 IN A 192.0.2.1") as up:
        replies = run(go(up.host, up.port))
    assert len(replies) == 20 and up.udp_calls == 20
    assert len({r.src_port for r in up.queries}) > 1


class _Recorder(UdpExchange):
    """A UdpExchange that records what it is told."""

    def __init__(self, *args: Any) -> None:
        self.events: list[tuple[str, object]] = []
        super().__init__(*args)

    def reply_received(self, reply: bytes) -> None:
        self.events.append(("reply", reply))

    def error_received(self, exc: OSError) -> None:
        self.events.append(("error", exc))

    def mismatch_received(self, data: bytes) -> None:
        self.events.append(("mismatch", data))


async def _first_event(host: str, port: int) -> tuple[list[tuple[str, object]], bool]:
    """Start an exchange, wait (bounded) for its first event; return the events so far and
    whether the exchange had closed itself. The exchange is closed (twice: idempotent), and
    no file descriptor is left open."""
    loop = asyncio.get_running_loop()
    before = open_fds()
    _, query = build_query(Q_A)
    ex = _Recorder(loop, host, port, query, ReplyMatcher(query))
    try:
        for _ in range(3000):
            if ex.events:
                break
            await asyncio.sleep(0.01)
        return list(ex.events), ex.closed
    finally:
        ex.close()
        ex.close()
        assert open_fds() == before


def test_udp_exchange_reports_the_reply_and_closes_itself(run: Runner) -> None:
    with FakeUpstream().answer("example.org. 300 IN A 192.0.2.1") as up:
        events, closed_by_itself = run(_first_event(up.host, up.port))
    assert [kind for kind, _ in events] == ["reply"]
    assert closed_by_itself


def test_udp_exchange_reports_mismatches_and_keeps_waiting(run: Runner) -> None:
    with FakeUpstream(mode="wrong_id").answer("example.org. 300 IN A 192.0.2.1") as up:
        events, closed_by_itself = run(_first_event(up.host, up.port))
    assert [kind for kind, _ in events] == ["mismatch"]
    assert not closed_by_itself


def test_udp_exchange_reports_a_closed_port_as_an_error(run: Runner) -> None:
    events, closed_by_itself = run(_first_event("127.0.0.1", free_port()))
    assert [kind for kind, _ in events] == ["error"]
    assert isinstance(events[0][1], ConnectionRefusedError)
    assert closed_by_itself


def test_a_query_without_edns_has_no_opt_record() -> None:
    q = Q_A._replace(do=True)
    _, wire = build_query(q, edns=False)
    message = dns.message.from_wire(wire)
    assert message.edns == -1 and len(wire) == 12 + len(q.qname_wire) + 4


@pytest.mark.parametrize(
    ("rcode", "with_opt", "rejects"),
    [(dns.rcode.FORMERR, False, True), (dns.rcode.NOTIMP, False, True),
     (dns.rcode.FORMERR, True, False), (dns.rcode.SERVFAIL, False, False),
     (dns.rcode.NOERROR, False, False)],
)
def test_only_formerr_or_notimp_without_opt_rejects_edns(rcode: int, with_opt: bool,
                                                         rejects: bool) -> None:
    query = dns.message.make_query("example.org.", "A", use_edns=0)
    reply = dns.message.make_response(query)
    if not with_opt:
        reply.use_edns(False)
    reply.set_rcode(rcode)
    assert reply_rejects_edns(reply.to_wire()) is rejects
