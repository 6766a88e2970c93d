"""Malformed and unwelcome input (SPEC §1): each gets its documented reply (FORMERR, NOTIMP,
REFUSED) or silence, and afterwards the server is alive and answers everyone else normally."""

from __future__ import annotations

import random
import selectors
import socket
import struct
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from fastdns._testing import FakeUpstream

from . import (
    Started,
    ask,
    checked_servers,
    config,
    frame,
    make_wire,
    parse,
    populate,
    read_frame,
    start_pair,
    tcp_connect,
    tcp_exchange,
    udp_exchange,
)


@pytest.fixture
def server_factory(server_factory, udp_path):
    """conftest's factory, plus: no server may log a traceback; each UDP path in turn."""
    yield from checked_servers(server_factory, udp_path)


NO_REPLY = None
FORMERR = int(dns.rcode.FORMERR)
NOTIMP = int(dns.rcode.NOTIMP)
REFUSED = int(dns.rcode.REFUSED)

QID = 0xBEEF


def header(
    *, qid: int = QID, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QNAME = b"\x07example\x03org\x00"
QUESTION = QNAME + struct.pack("!HH", 1, 1)  # A IN
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)


def opcode_flags(opcode: int) -> int:
    return (opcode << 11) | 0x0100


# name -> (wire, expected rcode or NO_REPLY)
CASES: dict[str, tuple[bytes, int | None]] = {
    "empty": (b"", NO_REPLY),
    "five_bytes": (b"\xbe\xef\x01\x00\x00", NO_REPLY),
    "eleven_bytes": (header()[:11], NO_REPLY),
    "header_only_qdcount_1": (header(), FORMERR),
    "qdcount_0": (header(qd=0), FORMERR),
    "qdcount_0_with_question_bytes": (header(qd=0) + QUESTION, FORMERR),
    "qdcount_2": (header(qd=2) + QUESTION + QUESTION, FORMERR),
    "qr_set_response": (header(flags=0x8180) + QUESTION, NO_REPLY),
    "qr_set_response_no_question": (header(flags=0x8000, qd=0), NO_REPLY),
    "opcode_iquery": (header(flags=opcode_flags(1)) + QUESTION, NOTIMP),
    "opcode_status": (header(flags=opcode_flags(2)) + QUESTION, NOTIMP),
    "opcode_notify": (header(flags=opcode_flags(4)) + QUESTION, NOTIMP),
    "opcode_update": (header(flags=opcode_flags(5)) + QUESTION, NOTIMP),
    "opcode_15": (header(flags=opcode_flags(15)) + QUESTION, NOTIMP),
    "label_64": (header() + b"\x40" + b"a" * 64 + b"\x00" + QUESTION[-4:], FORMERR),
    "label_type_01": (header() + b"\x41" + b"a" * 1 + b"\x00" + QUESTION[-4:], FORMERR),
    "name_over_255": (
        header()
        + b"\x3f"
        + b"a" * 63
        + (b"\x3f" + b"b" * 63) * 3
        + b"\x05ccccc\x00"
        + QUESTION[-4:],
        FORMERR,
    ),
    "pointer_to_itself": (header() + b"\xc0\x0c" + QUESTION[-4:], FORMERR),
    "pointer_forward": (header() + b"\x03www\xc0\x13" + QUESTION[-4:] + QNAME, FORMERR),
    "pointer_into_header": (header() + b"\x03www\xc0\x02" + QUESTION[-4:], FORMERR),
    "truncated_name": (header() + b"\x07exam", FORMERR),
    "name_without_type_class": (header() + QNAME, FORMERR),
    "type_without_class": (header() + QNAME + b"\x00\x01", FORMERR),
    "trailing_garbage": (header() + QUESTION + b"\xde\xad\xbe\xef", FORMERR),
    "arcount_1_but_nothing": (header(ar=1) + QUESTION, FORMERR),
    "ancount_1_in_query": (
        header(an=1)
        + QUESTION
        + b"\xc0\x0c"
        + struct.pack("!HHIH", 1, 1, 60, 4)
        + b"\xc0\x00\x02\x01",
        FORMERR,
    ),
    "two_opt_records": (header(ar=2) + QUESTION + OPT + OPT, FORMERR),
    "opt_not_at_root": (header(ar=1) + QUESTION + b"\x01x\x00" + OPT[1:], FORMERR),
    "opt_rdlength_past_end": (
        header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 8) + b"\x00\x0a",
        FORMERR,
    ),
    "opt_option_overruns_rdata": (
        header(ar=1)
        + QUESTION
        + b"\x00"
        + struct.pack("!HHIH", 41, 1232, 0, 6)
        + b"\x00\x0a\x00\x08ab",
        FORMERR,
    ),
    "tc_bit_in_query": (header(flags=0x0300) + QUESTION, FORMERR),
}

# Questions that parse but must not be forwarded: (qtype, acceptable rcodes).
META_QTYPES = {
    "AXFR": (252, {REFUSED, NOTIMP}),
    "IXFR": (251, {REFUSED, NOTIMP}),
    "OPT": (41, {FORMERR, NOTIMP, REFUSED}),
    "TSIG": (250, {FORMERR, NOTIMP, REFUSED}),
    "TKEY": (249, {FORMERR, NOTIMP, REFUSED}),
    "MAILA": (254, {NOTIMP, REFUSED}),
    "MAILB": (253, {NOTIMP, REFUSED}),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, udp_path: str) -> Iterator[Started]:
    started = start_pair(
        tmp_path_factory.mktemp("malformed"), populate(FakeUpstream().start()), udp_path=udp_path
    )
    yield started
    started.stop()


def check_reply(wire: bytes, raw: bytes | None, expected: int | None, what: str) -> None:
    if expected is NO_REPLY:
        assert raw is None, f"{what}: expected silence, got {raw!r}"
        return
    assert raw is not None, f"{what}: no reply"
    assert len(raw) >= 12
    assert raw[:2] == wire[:2], f"{what}: ID not echoed"
    flags = int.from_bytes(raw[2:4], "big")
    assert flags & 0x8000, f"{what}: QR not set"
    assert not flags & 0x0400, f"{what}: AA set"
    assert (flags >> 11) & 0xF == (int.from_bytes(wire[2:4], "big") >> 11) & 0xF, "opcode echoed"
    assert flags & 0xF == expected, f"{what}: rcode {flags & 0xF}, expected {expected}"
    counts = struct.unpack("!HHH", raw[6:12])
    assert counts[:2] == (0, 0), f"{what}: an error reply carries no records"


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_udp_gets_its_documented_reply(pair: Started, case: str) -> None:
    wire, expected = CASES[case]
    timeout = 0.7 if expected is NO_REPLY else 3.0
    raw = udp_exchange(pair.server, wire, timeout=timeout)
    check_reply(wire, raw, expected, case)
    if case == "opcode_notify":
        # The question is echoed in a NOTIMP reply to a well-formed message.
        assert parse(raw).question[0].name.to_text() == "example.org."


@pytest.mark.parametrize("qtype", list(META_QTYPES))
def test_meta_qtypes_are_not_forwarded(pair: Started, qtype: str) -> None:
    code, acceptable = META_QTYPES[qtype]
    calls = pair.up.calls
    wire = header() + QNAME + struct.pack("!HH", code, 1)
    raw = udp_exchange(pair.server, wire, timeout=3.0)
    assert raw is not None and raw[:2] == wire[:2]
    assert raw[3] & 0xF in acceptable, f"{qtype}: rcode {raw[3] & 0xF}"
    assert pair.up.calls == calls


def test_axfr_over_tcp_is_refused(pair: Started) -> None:
    msg = dns.message.make_query("example.org.", "AXFR")
    reply = parse(tcp_exchange(pair.server, msg.to_wire()))
    assert reply.id == msg.id
    assert reply.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTIMP)
    assert not reply.answer


def test_server_survives_the_whole_battery_and_random_bytes(pair: Started) -> None:
    rng = random.Random(20240101)
    valid = make_wire("example.org.", "A", qid=0x1111, use_edns=0)
    packets = [wire for wire, _ in CASES.values()]
    packets += [rng.randbytes(rng.randrange(0, 600)) for _ in range(200)]
    for _ in range(200):  # bit flips of a valid query: close to valid, so deeper in the parser
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        packets.append(bytes(mutated))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((pair.server.host, pair.server.port))
        for wire in packets:
            sock.send(wire)
            time.sleep(0.0005)
    # Replies, if any, are well-formed enough to carry the sender's ID.
    assert pair.server.running
    reply = ask(pair.server, "example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]
    assert ask(pair.server, "example.org", "MX", tcp=True).answer
    assert pair.server.running, "the process is still alive"


def test_replies_to_random_bytes_echo_the_id(pair: Started) -> None:
    rng = random.Random(7)
    packets = [rng.randbytes(rng.randrange(12, 80)) for _ in range(100)]
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in packets]
    try:
        with selectors.DefaultSelector() as sel:
            for i, (sock, wire) in enumerate(zip(socks, packets, strict=True)):
                sock.connect((pair.server.host, pair.server.port))
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, i)
                sock.send(wire)
            deadline = time.monotonic() + 1.5
            replies = 0
            while time.monotonic() < deadline:
                for key, _ in sel.select(0.1):
                    try:
                        raw = socks[key.data].recv(65535)
                    except OSError:
                        continue
                    wire = packets[key.data]
                    assert raw[:2] == wire[:2], "a reply carries the ID of the packet it answers"
                    assert raw[2] & 0x80, "QR set"
                    assert not wire[2] & 0x80, "a packet with QR=1 is never answered"
                    replies += 1
    finally:
        for sock in socks:
            sock.close()
    assert replies > 0
    assert ask(pair.server, "example.org", "AAAA").answer


# ----------------------------------------------------------------------------------- TCP


def test_tcp_formerr_and_notimp_are_framed_replies(pair: Started) -> None:
    with tcp_connect(pair.server) as sock:
        for case in ("qdcount_0", "header_only_qdcount_1", "opcode_update", "trailing_garbage"):
            wire, expected = CASES[case]
            sock.sendall(frame(wire))
            raw = read_frame(sock)
            check_reply(wire, raw, expected, f"tcp {case}")
        # The same connection still serves a normal query afterwards.
        good = make_wire("example.org.", "A", qid=0x2222)
        sock.sendall(frame(good))
        reply = parse(read_frame(sock))
        assert reply.id == 0x2222 and reply.answer


def test_tcp_garbage_frames_then_a_new_connection_works(pair: Started) -> None:
    rng = random.Random(99)
    with tcp_connect(pair.server) as sock:
        sock.sendall(frame(b""))  # zero-length frame
        for _ in range(50):
            sock.sendall(frame(rng.randbytes(rng.randrange(0, 300))))
        sock.sendall(frame(CASES["qr_set_response"][0]))
        sock.sendall(b"\xff\xff" + b"x" * 100)  # a frame that never completes
    assert pair.server.running
    reply = ask(pair.server, "example.org", "A", tcp=True)
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]


def test_zero_length_frame_gets_no_reply_and_the_connection_goes_on(pair: Started) -> None:
    with tcp_connect(pair.server, timeout=3.0) as sock:
        good = make_wire("example.org.", "AAAA", qid=0x3333)
        sock.sendall(frame(b"") + frame(CASES["five_bytes"][0]) + frame(good))
        reply = parse(read_frame(sock))  # the first reply is the good one: nothing for the junk
        assert reply.id == 0x3333
        assert [rd.to_text() for rd in reply.answer[0]] == ["2001:db8::1"]


def test_stalled_tcp_client_does_not_stop_others(pair: Started) -> None:
    with tcp_connect(pair.server) as stalled:
        stalled.sendall(b"\x00\x40" + b"\x12\x34")  # promises 64 bytes, sends 2, then waits
        for tcp in (False, True):
            reply = ask(pair.server, "example.org", "A", tcp=tcp)
            assert reply.answer


def test_oversized_udp_datagram_is_ignored_and_server_goes_on(pair: Started) -> None:
    wire = make_wire("example.org.", "A") + b"\x00" * 5000
    raw = udp_exchange(pair.server, wire, timeout=0.7)
    # Dropped unread, or read whole and refused as trailing garbage: never an answer.
    assert raw is None or (raw[:2] == wire[:2] and raw[3] & 0xF == FORMERR)
    assert ask(pair.server, "example.org", "A").answer
    assert pair.server.running


def test_flags_are_not_mirrored_blindly(pair: Started) -> None:
    # AA and AD set in a query must not come back set; Z is cleared.
    msg = dns.message.make_query("example.org.", "A")
    msg.flags |= dns.flags.AA | dns.flags.AD | 0x0040
    reply = parse(udp_exchange(pair.server, msg.to_wire()))
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AA
    assert not reply.flags & 0x0040
    assert reply.answer
    assert reply.opcode() == dns.opcode.QUERY


def test_name_of_256_octets_is_formerr(pair: Started) -> None:
    qname = (
        b"".join(
            bytes([len(label)]) + label for label in (b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62)
        )
        + b"\x00"
    )
    assert len(qname) == 256
    wire = header() + qname + QUESTION[-4:]
    check_reply(wire, udp_exchange(pair.server, wire), FORMERR, "256-octet name")


def test_clients_that_leave_before_their_answer(fake_upstream, server_factory) -> None:
    fake_upstream.answer("slow.example.org. 300 IN A 192.0.2.30").delay_s = 0.3
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 3.0, "retry_interval_s": 2.0})
    )
    for i in range(5):
        # UDP: the reply goes to a closed port (ICMP unreachable back to the server).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(make_wire(f"slow{i}.example.org.", "A"), (server.host, server.port))
        # TCP: the connection is reset before the answer is ready.
        sock = tcp_connect(server)
        sock.sendall(frame(make_wire(f"slow-tcp{i}.example.org.", "A")))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.6)
    assert server.running
    for tcp in (False, True):
        assert ask(server, "slow.example.org", "A", tcp=tcp).answer
