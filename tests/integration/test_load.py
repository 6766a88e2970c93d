"""Light load, for correctness only (speed is measured in benchmarks/): a UDP burst where every
query must be answered, hits and misses mixed, each reply to its own query."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from . import (
    big_rcvbuf,
    checked_servers,
    collect_udp,
    config,
    endpoint,
    make_wire,
    parse,
    populate,
    question_bytes,
)


@pytest.fixture
def server_factory(server_factory):
    """conftest's factory, plus: no server may log a traceback."""
    yield from checked_servers(server_factory)


SOCKETS = 4
PER_SOCKET = 500
HOT_NAMES = 10  # cached before the burst
COLD_NAMES = 400  # each a miss during the burst (some asked more than once: coalesced)


def address_for(label: str) -> str:
    n = int(label.split("-")[1])
    return f"198.51.100.{n % 250 + 1}" if label.startswith("cold") else f"203.0.113.{n + 1}"


def test_udp_burst_every_query_is_answered(fake_upstream, server_factory):
    populate(fake_upstream)

    def synth(q: dns.message.Message) -> dns.message.Message:
        reply = fake_upstream.build_answer(q)
        label = q.question[0].name.labels[0].decode().lower()
        if label.startswith(("hot-", "cold-")) and q.question[0].rdtype == dns.rdatatype.A:
            reply.set_rcode(dns.rcode.NOERROR)
            reply.authority = []
            reply.answer = [
                dns.rrset.from_text(q.question[0].name, 300, "IN", "A", address_for(label))
            ]
        return reply

    fake_upstream.answer_fn(synth)
    server = server_factory(
        config(
            fake_upstream,
            security={"rate_limit_per_ip": 0},
            resolver={"timeout_s": 5.0, "retry_interval_s": 2.0},
        )
    )
    host_port = endpoint(server)
    for i in range(HOT_NAMES):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as warm:
            warm.settimeout(5.0)
            warm.sendto(make_wire(f"hot-{i}.example.org.", "A"), host_port)
            assert parse(warm.recv(65535)).answer
    fake_upstream.reset_counts()

    socks = []
    wires: dict[tuple[int, int], bytes] = {}
    expected: dict[int, set[int]] = {}
    try:
        for s in range(SOCKETS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            big_rcvbuf(sock)
            sock.connect(host_port)
            sock.setblocking(False)
            expected[s] = set()
            for qid in range(PER_SOCKET):
                n = s * PER_SOCKET + qid
                name = (
                    f"hot-{n % HOT_NAMES}.example.org."
                    if n % 2
                    else f"cold-{(n // 2) % COLD_NAMES}.example.org."
                )
                wires[(s, qid)] = make_wire(name, "A", qid=qid)
                expected[s].add(qid)
        # As fast as the sockets take them, interleaved across sockets.
        for qid in range(PER_SOCKET):
            for s, sock in enumerate(socks):
                while True:
                    try:
                        sock.send(wires[(s, qid)])
                        break
                    except BlockingIOError:
                        time.sleep(0.001)
        got = collect_udp(socks, expected, time.monotonic() + 10.0)
    finally:
        for sock in socks:
            sock.close()
    missing = len(wires) - len(got)
    assert missing == 0, f"{missing} of {len(wires)} queries got no reply"
    for key, reply_wire in got.items():
        query_wire = wires[key]
        assert question_bytes(reply_wire) == question_bytes(query_wire)
        reply = parse(reply_wire)
        assert reply.rcode() == dns.rcode.NOERROR, reply
        label = reply.question[0].name.labels[0].decode()
        assert [rd.to_text() for rd in reply.answer[0]] == [address_for(label)]
    # Hot names never reached upstream; cold ones at most once each (coalesced or cached).
    asked = [q.qname.lower() for q in fake_upstream.queries]
    assert not [name for name in asked if name.startswith("hot-")]
    assert len(asked) == len(set(asked)) == COLD_NAMES
