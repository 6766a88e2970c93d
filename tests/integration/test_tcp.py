"""DNS over TCP (RFC 1035 §4.2.2, RFC 7766) against a real server process: every record
type, pipelining, partial frames, half-close, idle timeout, large answers, many connections."""

from __future__ import annotations

import secrets
import selectors
import socket
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import FakeUpstream

from . import (
    RECORD_CASES,
    Started,
    allow_large_replies,
    ask,
    check_record_case,
    checked_servers,
    config,
    dig,
    frame,
    make_wire,
    parse,
    populate,
    question_bytes,
    raise_nofile,
    read_frame,
    start_pair,
    tcp_connect,
)


@pytest.fixture
def server_factory(server_factory):
    """conftest's factory, plus: no server may log a traceback."""
    yield from checked_servers(server_factory)


def synth_a(query: dns.message.Message) -> dns.message.Message:
    """Answer any A question under example.org with an address derived from its first label."""
    reply = dns.message.make_response(query, recursion_available=True)
    name = query.question[0].name
    if query.question[0].rdtype == dns.rdatatype.A:
        n = int(name.labels[0].decode().split("-")[-1]) % 250
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", f"198.51.100.{n + 1}"))
    return reply


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    started = start_pair(
        tmp_path_factory.mktemp("tcp"),
        populate(FakeUpstream().start()),
        server={"tcp_idle_timeout_s": 5.0},
    )
    yield started
    started.stop()


@pytest.mark.parametrize(("name", "rdtype"), RECORD_CASES, ids=[f"{n}{t}" for n, t in RECORD_CASES])
def test_record_type_round_trips_over_tcp(pair: Started, name: str, rdtype: str) -> None:
    check_record_case(pair.up, pair.server, name, rdtype, tcp=True)


def test_pipelined_queries_on_one_connection(pair: Started) -> None:
    for i in range(5):
        pair.up.answer(f"pipe-hit-{i}.example.org. 300 IN A 192.0.2.{100 + i}")
        ask(pair.server, f"pipe-hit-{i}.example.org", "A")  # cached now
        pair.up.answer(f"pipe-miss-{i}.example.org. 300 IN A 192.0.2.{110 + i}")
    names = {}
    wires = []
    for i in range(5):
        for kind, base in (("hit", 100), ("miss", 110)):
            qid = secrets.randbits(16)
            while qid in names:
                qid = secrets.randbits(16)
            names[qid] = (f"pipe-{kind}-{i}.example.org.", f"192.0.2.{base + i}")
            wires.append(make_wire(names[qid][0], "A", qid=qid))
    calls_before = pair.up.calls
    with tcp_connect(pair.server) as sock:
        sock.sendall(b"".join(frame(w) for w in wires))  # all ten back to back
        replies = [read_frame(sock) for _ in range(10)]
    seen = {}
    for wire in replies:
        msg = parse(wire)
        assert msg.id in names and msg.id not in seen
        seen[msg.id] = msg
        want_name, want_addr = names[msg.id]
        assert msg.question[0].name.to_text() == want_name
        assert msg.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rd in msg.answer[0]] == [want_addr]
    assert len(seen) == 10
    assert pair.up.calls - calls_before == 5, "only the five misses reach upstream"


def test_partial_frame_then_the_rest(pair: Started) -> None:
    wire = make_wire("example.org.", "AAAA")
    data = frame(wire)
    with tcp_connect(pair.server) as sock:
        sock.sendall(data[:1])  # half of the length prefix
        time.sleep(0.2)
        sock.sendall(data[1:7])
        time.sleep(0.2)
        sock.sendall(data[7:])
        msg = parse(read_frame(sock))
    assert msg.id == int.from_bytes(wire[:2], "big")
    assert [rd.to_text() for rd in msg.answer[0]] == ["2001:db8::1"]


def test_two_frames_and_a_half_in_one_segment(pair: Started) -> None:
    w1, w2, w3 = (make_wire("example.org.", t, qid=i) for i, t in ((1, "A"), (2, "MX"), (3, "NS")))
    blob = frame(w1) + frame(w2) + frame(w3)
    cut = len(frame(w1) + frame(w2)) + 5
    with tcp_connect(pair.server) as sock:
        sock.sendall(blob[:cut])
        first = {parse(read_frame(sock)).id for _ in range(2)}
        sock.sendall(blob[cut:])
        third = parse(read_frame(sock))
    assert first == {1, 2}
    assert third.id == 3 and third.answer[0].rdtype == dns.rdatatype.NS


def test_half_close_still_gets_the_pending_answer(fake_upstream, server_factory) -> None:
    # RFC 7766 §6.2.4: a client may send its query and shut down its sending side.
    fake_upstream.answer("example.org. 300 IN A 192.0.2.1").delay_s = 0.4
    server = server_factory(config(fake_upstream))
    wire = make_wire("example.org.", "A")
    with tcp_connect(server) as sock:
        sock.sendall(frame(wire))
        sock.shutdown(socket.SHUT_WR)
        msg = parse(read_frame(sock))
        assert sock.recv(1) == b"", "server closes after the last pending answer"
    assert [rd.to_text() for rd in msg.answer[0]] == ["192.0.2.1"]


def test_large_answer_comes_back_whole_over_tcp(fake_upstream, server_factory) -> None:
    # ~20 KB: far above any UDP size; the server itself must fetch it from upstream over TCP.
    strings = [f"{i:03d}-" + "x" * 240 for i in range(80)]
    fake_upstream.answer(*[f'big.example.org. 300 IN TXT "{s}"' for s in strings])
    allow_large_replies(fake_upstream)
    server = server_factory(config(fake_upstream))
    for _ in range(2):  # miss, then hit
        msg = ask(server, "big.example.org", "TXT", tcp=True)
        assert msg.rcode() == dns.rcode.NOERROR
        got = sorted(rd.strings[0].decode() for rd in msg.answer[0])
        assert got == strings
    assert fake_upstream.tcp_calls == 1


def test_idle_connection_is_closed(fake_upstream, server_factory) -> None:
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, server={"tcp_idle_timeout_s": 1}))
    with tcp_connect(server, timeout=8.0) as sock:
        # Nothing sent: the server hangs up on its own (RFC 7766 §6.2.3).
        assert sock.recv(1) == b""
    with tcp_connect(server, timeout=8.0) as sock:
        sock.sendall(frame(make_wire("example.org.", "A")))
        assert parse(read_frame(sock)).answer
        assert sock.recv(1) == b"", "idle again after the answer: closed"


def test_active_connection_outlives_the_idle_timeout(fake_upstream, server_factory) -> None:
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, server={"tcp_idle_timeout_s": 1}))
    with tcp_connect(server) as sock:
        for i in range(6):  # 2.4 s in all, but never 1 s idle
            wire = make_wire("example.org.", "A", qid=i)
            sock.sendall(frame(wire))
            msg = parse(read_frame(sock))
            assert msg.id == i and msg.answer
            time.sleep(0.4)


def test_connection_waiting_on_upstream_is_not_idle(fake_upstream, server_factory) -> None:
    fake_upstream.answer("slow.example.org. 300 IN A 192.0.2.5").delay_s = 1.5
    server = server_factory(
        config(
            fake_upstream,
            server={"tcp_idle_timeout_s": 1},
            resolver={"timeout_s": 4.0, "retry_interval_s": 2.0},
        )
    )
    with tcp_connect(server, timeout=8.0) as sock:
        sock.sendall(frame(make_wire("slow.example.org.", "A")))
        msg = parse(read_frame(sock))
    assert [rd.to_text() for rd in msg.answer[0]] == ["192.0.2.5"]


def test_dig_over_tcp(pair: Started) -> None:
    out = dig(pair.server, "+tcp", "example.org", "SOA")
    assert "status: NOERROR" in out
    assert "ns1.example.org. hostmaster.example.org. 2024010101 7200 900 1209600 120" in out


def test_500_parallel_connections_are_all_answered(fake_upstream, server_factory) -> None:
    raise_nofile(4096)
    fake_upstream.answer("example.org. 300 IN A 192.0.2.1").answer_fn(
        lambda q: (
            fake_upstream.build_answer(q)
            if q.question[0].name.labels[0] == b"example"
            else synth_a(q)
        )
    )
    server = server_factory(config(fake_upstream))
    assert ask(server, "example.org", "A").answer  # cached: most connections are hits
    socks: list[socket.socket] = []
    expected: dict[int, tuple[int, str]] = {}
    try:
        for _ in range(500):
            socks.append(tcp_connect(server, timeout=10.0))
        # All 500 are open at once; now each sends one query.
        for i, sock in enumerate(socks):
            name = f"conn-{i}.example.org." if i % 10 == 0 else "example.org."
            addr = f"198.51.100.{i % 250 + 1}" if i % 10 == 0 else "192.0.2.1"
            qid = secrets.randbits(16)
            expected[i] = (qid, addr)
            sock.sendall(frame(make_wire(name, "A", qid=qid)))
        answered = 0
        with selectors.DefaultSelector() as sel:
            buffers = {}
            for i, sock in enumerate(socks):
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, i)
                buffers[i] = bytearray()
            deadline = time.monotonic() + 15.0
            pending = set(range(500))
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(1.0):
                    i = key.data
                    try:
                        chunk = socks[i].recv(4096)
                    except BlockingIOError:
                        continue
                    assert chunk, f"connection {i} closed before its answer"
                    buffers[i] += chunk
                    buf = buffers[i]
                    if len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                        msg = parse(bytes(buf[2:]))
                        qid, addr = expected[i]
                        assert msg.id == qid
                        assert [rd.to_text() for rd in msg.answer[-1]] == [addr]
                        sel.unregister(socks[i])
                        pending.discard(i)
                        answered += 1
        assert answered == 500, f"{len(pending)} connections got no answer"
    finally:
        for sock in socks:
            sock.close()


def test_question_echoed_with_client_case_over_tcp(pair: Started) -> None:
    wire = make_wire("ExAmPlE.OrG.", "MX")
    with tcp_connect(pair.server) as sock:
        sock.sendall(frame(wire))
        reply = read_frame(sock)
    assert question_bytes(reply) == question_bytes(wire)


def test_many_pipelined_misses_on_one_connection(fake_upstream, server_factory):
    # More misses in flight than the per-connection limit: reading pauses, then resumes.
    fake_upstream.answer_fn(synth_a).delay_s = 0.3
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 5.0, "retry_interval_s": 2.0})
    )
    count = 300
    wires = [make_wire(f"pipe-{i}.example.org.", "A", qid=i) for i in range(count)]
    with tcp_connect(server, timeout=15.0) as sock:
        sock.sendall(b"".join(frame(w) for w in wires))
        replies = {}
        for _ in range(count):
            msg = parse(read_frame(sock))
            replies[msg.id] = msg
    assert sorted(replies) == list(range(count))
    for i, msg in replies.items():
        assert msg.question[0].name.to_text() == f"pipe-{i}.example.org."
        assert [rd.to_text() for rd in msg.answer[0]] == [f"198.51.100.{i % 250 + 1}"]


def test_connection_limit_is_enforced_and_released(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, server={"tcp_max_connections": 5}))
    held = [tcp_connect(server) for _ in range(5)]
    try:
        for i, sock in enumerate(held):
            sock.sendall(frame(make_wire("example.org.", "A", qid=i)))
            assert parse(read_frame(sock)).id == i
        extra = tcp_connect(server)
        try:
            extra.sendall(frame(make_wire("example.org.", "A")))
            with pytest.raises((ConnectionError, OSError)):
                read_frame(extra)  # closed at once: over the limit
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    # Closing frees the slots: five new connections are served again.
    fresh = [tcp_connect(server) for _ in range(5)]
    try:
        for i, sock in enumerate(fresh):
            sock.sendall(frame(make_wire("example.org.", "A", qid=100 + i)))
            assert parse(read_frame(sock)).answer
    finally:
        for sock in fresh:
            sock.close()
