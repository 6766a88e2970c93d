"""Fuzzing the compiled wire code (hypothesis), with dnspython as the differential oracle.

- Random and mutated packets into parse_query and HitPath.answer never crash, always give a
  status in the enum, and every reply sent is a well-formed response to that packet.
- Random and mutated upstream replies into prepare_reply raise nothing but WireError, and
  whatever it accepts renders safely.
- Valid random queries built by dnspython always parse OK, with dnspython's key.

These run the `boundscheck(False)` code in _wire (CONVENTIONS "Cython modules").
"""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastdns._fastpath import HitPath, pack_sockaddr
from fastdns._lru import LruCache
from fastdns.wire import (
    PARSE_BADVERS,
    PARSE_DROP,
    PARSE_FORMERR,
    PARSE_NOTIMP,
    PARSE_OK,
    PARSE_REFUSED,
    PreparedReply,
    WireError,
    parse_query,
    prepare_reply,
    render_error,
    render_prepared,
)

# ---------------------------------------------------------------------------------------------
# Builders and strategies
# ---------------------------------------------------------------------------------------------

STATUSES = {PARSE_OK, PARSE_DROP, PARSE_FORMERR, PARSE_NOTIMP, PARSE_REFUSED, PARSE_BADVERS}
META_QTYPES = {41, 249, 250, 251, 252, 253, 254}  # OPT, TKEY, TSIG, IXFR, AXFR, MAILB, MAILA
NOW = 5000.0
PEER = pack_sockaddr(("192.0.2.7", 53000))
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def base_queries() -> list[bytes]:
    """Valid queries to mutate: plain, 0x20, EDNS with DO/CD and an option, other types."""
    out = []
    for name, rdtype, edns, do in [
        ("example.org", "A", None, False),
        ("WwW.ExAmPlE.oRg", "AAAA", 0, False),
        ("mail.example.net", "MX", 0, True),
        ("example.net", "TXT", None, False),
    ]:
        q = dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=do, id=0x1234)
        out.append(q.to_wire())
    q = dns.message.make_query(
        "example.org",
        "A",
        use_edns=0,
        id=0x4321,
        options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)],
    )
    q.flags |= dns.flags.CD
    out.append(q.to_wire())
    return out


BASE_QUERIES = base_queries()


def base_replies() -> list[tuple[bytes, bytes]]:
    """(query, upstream reply) pairs to mutate: positive with compression, negative, EDNS."""
    pairs = []
    q = dns.message.make_query("www.example.org", "A", id=7)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.org.", 300, "IN", "CNAME", "example.org."))
    r.answer.append(dns.rrset.from_text("example.org.", 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
    r.authority.append(dns.rrset.from_text("example.org.", 3600, "IN", "NS", "ns.example.org."))
    r.additional.append(dns.rrset.from_text("ns.example.org.", 3600, "IN", "AAAA", "2001:db8::53"))
    pairs.append((q.to_wire(), r.to_wire()))
    q = dns.message.make_query("nope.example.org", "MX", use_edns=0, want_dnssec=True, id=8)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.authority.append(
        dns.rrset.from_text(
            "example.org.", 3600, "IN", "SOA", "ns.example.org. host.example.org. 1 2 3 4 60"
        )
    )
    pairs.append((q.to_wire(), r.to_wire()))
    return pairs


BASE_REPLIES = base_replies()


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """base with a few byte edits, cuts, insertions or appended bytes."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "flip", "cut", "insert", "append"]))
        if op in ("set", "flip") and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = (
                draw(st.integers(0, 255))
                if op == "set"
                else data[i] ^ (1 << draw(st.integers(0, 7)))
            )
        elif op == "cut" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def plausible_packet(draw: st.DrawFn, *, response: bool) -> bytes:
    """A header that passes the first checks (QR, small counts) followed by random bytes."""
    flags = draw(st.integers(0, 0xFFFF)) & ~0x8000 | (0x8000 if response else 0)
    counts = [draw(st.integers(0, 3)) for _ in range(4)]
    if draw(st.booleans()):
        counts[0] = 1
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        body = (
            b"\x07example\x03org\x00" + struct.pack("!HH", draw(st.integers(0, 0xFFFF)), 1) + body
        )
    return struct.pack("!6H", draw(st.integers(0, 0xFFFF)), flags, *counts) + body


query_packets = st.one_of(
    st.binary(max_size=600),
    plausible_packet(response=False),
    st.sampled_from(BASE_QUERIES).flatmap(mutated),
)


def opcode_of(data: bytes) -> int:
    return (data[2] >> 3) & 0x0F


def check_reply_to(data: bytes, reply: bytes) -> None:
    """A reply we send: a response carrying the query's ID and opcode, parsable by dnspython,
    whose question (if any) is the client's bytes exactly."""
    assert len(reply) >= 12
    assert reply[:2] == data[:2]
    assert reply[2] & 0x80  # QR
    assert opcode_of(reply) == opcode_of(data)
    qdcount = struct.unpack("!H", reply[4:6])[0]
    assert qdcount in (0, 1)
    if qdcount:
        end = 12
        while reply[end]:
            end += 1 + reply[end]
        qlen = end + 5 - 12
        assert reply[12 : 12 + qlen] == data[12 : 12 + qlen]
    if opcode_of(data) != 5:  # dnspython reads an UPDATE's question as a zone (type SOA)
        dns.message.from_wire(reply)


def check_parsed(data: bytes) -> int:
    pq = parse_query(data)
    assert pq.status in STATUSES
    if pq.status == PARSE_DROP:
        return pq.status
    check_reply_to(data, render_error(pq, 2))
    if pq.status == PARSE_OK:
        qname = pq.qname_wire
        assert pq.key == qname.lower() + struct.pack(
            "!HHB", pq.qtype, pq.qclass, (1 if pq.cd else 0) | (2 if pq.do else 0)
        )
        assert dns.name.from_wire(data, 12)[1] == len(qname)
        assert 512 <= pq.udp_limit <= 4096
    return pq.status


# ---------------------------------------------------------------------------------------------
# parse_query and HitPath.answer on hostile input
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(data=query_packets)
def test_parse_query_never_crashes_and_every_reply_is_well_formed(data: bytes) -> None:
    check_parsed(data)


def fuzz_hitpath() -> HitPath:
    lru = LruCache(1 << 20)
    for q_wire, r_wire in BASE_REPLIES:
        prepared = prepare_reply(
            r_wire, min_ttl=0, max_ttl=86400, negative_ttl=300, default_ttl=300
        )
        lru.put(
            parse_query(q_wire).key, prepared.wire, prepared.ttl_offsets, NOW, prepared.lifetime_s
        )
    for q_wire in BASE_QUERIES:
        pq = parse_query(q_wire)
        r = dns.message.make_response(dns.message.from_wire(q_wire))
        r.answer.append(
            dns.rrset.from_text(dns.name.from_wire(q_wire, 12)[0], 300, "IN", "TXT", '"fuzz"')
        )
        prepared = prepare_reply(
            r.to_wire(), min_ttl=0, max_ttl=86400, negative_ttl=300, default_ttl=300
        )
        lru.put(pq.key, prepared.wire, prepared.ttl_offsets, NOW, prepared.lifetime_s)
    return HitPath(
        lru,
        allowed_networks=[(bytes(4), 0), (bytes(16), 0)],
        rate_per_s=0.0,
        log_enabled=True,
        log_buffer_bytes=1 << 16,
    )


HITPATH = fuzz_hitpath()


@FUZZ
@given(
    data=st.one_of(query_packets, st.sampled_from(BASE_QUERIES)),
    udp=st.booleans(),
    age=st.floats(0, 400),
)
def test_hitpath_answer_never_crashes_and_replies_are_well_formed(
    data: bytes, udp: bool, age: float
) -> None:
    reply = HITPATH.answer(data, PEER, udp, NOW + age)
    status = parse_query(data).status
    if status == PARSE_DROP:
        assert reply == b""
    elif reply is None:
        assert status == PARSE_OK  # only a parsed query can be a miss
    else:
        check_reply_to(data, reply)
        if udp:
            assert len(reply) <= parse_query(data).udp_limit
    HITPATH.drain_log()


# ---------------------------------------------------------------------------------------------
# prepare_reply on hostile upstream replies
# ---------------------------------------------------------------------------------------------

reply_packets = st.one_of(
    st.binary(max_size=600),
    plausible_packet(response=True),
    st.sampled_from([r for _, r in BASE_REPLIES]).flatmap(mutated),
)


def check_prepared(prepared: PreparedReply) -> None:
    wire = prepared.wire
    assert len(prepared.ttl_offsets) % 2 == 0
    for (off,) in struct.iter_unpack("=H", prepared.ttl_offsets):
        assert 12 <= off and off + 4 <= len(wire)
    assert prepared.lifetime_s <= 86400
    # Render it for a client whose question has the same length (any name would do in C).
    qlen = 12
    while wire[qlen]:
        qlen += 1 + wire[qlen]
    query = struct.pack("!6H", 0xABCD, 0x0100, 1, 0, 0, 0) + wire[12 : qlen + 5]
    pq = parse_query(query)
    if pq.status == PARSE_OK:
        for tcp in (False, True):
            reply = render_prepared(prepared, pq, 17, tcp)
            assert reply[:2] == b"\xab\xcd"
            assert len(reply) <= (65535 if tcp else 512)


@FUZZ
@given(data=reply_packets)
def test_prepare_reply_raises_only_wire_error_and_accepted_replies_render(data: bytes) -> None:
    try:
        prepared = prepare_reply(data, min_ttl=1, max_ttl=86400, negative_ttl=300, default_ttl=300)
    except WireError:
        return
    check_prepared(prepared)


# RFC 1035 types whose RDATA names may be compressed (RFC 3597 §4), plus A/AAAA/TXT/OPT: the
# types SPEC §1 calls first-class. Any other type is opaque to us by design.
FIRST_CLASS_TYPES = {1, 2, 5, 6, 12, 15, 16, 28, 41}


def record_types(data: bytes) -> list[int] | None:
    """The TYPE of every record, walking names leniently (pointers just end a name); None if
    the layout does not walk."""

    def name_end(pos: int) -> int:
        while pos < len(data):
            if data[pos] >= 0xC0:
                return pos + 2
            if data[pos] == 0:
                return pos + 1
            pos += 1 + data[pos]
        raise IndexError

    try:
        qd, an, ns, ar = struct.unpack("!4H", data[4:12])
        pos = 12
        for _ in range(qd):
            pos = name_end(pos) + 4
        types = []
        for _ in range(an + ns + ar):
            pos = name_end(pos)
            rrtype, _, _, rdlen = struct.unpack("!HHIH", data[pos : pos + 10])
            types.append(rrtype)
            pos += 10 + rdlen
    except (IndexError, struct.error):
        return None
    return types


# Found by this test: an NXDOMAIN whose SOA RNAME ("host" + pointer) points forward, to 0x33.
SOA_RNAME_FORWARD = (
    b"\x00\x08\x81\x03\x00\x01\x00\x00\x00\x01\x00\x00\x04nope\x07example\x03org\x00\x00\x0f"
    b"\x00\x01\xc0\x11\x00\x06\x00\x01\x00\x00\x0e\x10\x00\x20\x02ns\xc0\x11\x04host\xc0\x33"
    + struct.pack("!5I", 1, 2, 3, 4, 60)
)


@settings(max_examples=300, deadline=None)
@given(data=reply_packets)
@example(data=SOA_RNAME_FORWARD)
def test_what_dnspython_rejects_as_a_bad_name_prepare_reply_rejects_too(data: bytes) -> None:
    # Differential on names: dnspython's verdict on compression pointers and label types is
    # the oracle (CONVENTIONS: pointers point strictly backwards, as dnspython does), for
    # owner names and for names inside first-class RDATA.
    types = record_types(data)
    if types is None or not set(types) <= FIRST_CLASS_TYPES:
        return
    try:
        dns.message.from_wire(data)
    except (dns.name.BadPointer, dns.name.BadLabelType):
        try:
            prepare_reply(data, min_ttl=0, max_ttl=86400, negative_ttl=300, default_ttl=300)
        except WireError:
            return
        raise AssertionError("prepare_reply accepted a name dnspython rejects") from None
    except Exception:  # noqa: BLE001 - any other dnspython complaint is out of scope here
        return


# ---------------------------------------------------------------------------------------------
# Differential: valid queries built by dnspython
# ---------------------------------------------------------------------------------------------

labels = st.one_of(
    st.from_regex(r"[A-Za-z0-9-]{1,63}", fullmatch=True).map(str.encode),
    st.binary(min_size=1, max_size=63),
)
names = (
    st.lists(labels, max_size=8)
    .filter(lambda ls: sum(len(label) + 1 for label in ls) + 1 <= 255)
    .map(lambda ls: dns.name.Name([*ls, b""]))
)
qtypes = st.integers(0, 0xFFFF).filter(lambda t: t not in META_QTYPES)


@FUZZ
@given(
    name=names,
    qtype=qtypes,
    qclass=st.integers(0, 0xFFFF),
    qid=st.integers(0, 0xFFFF),
    edns=st.booleans(),
    payload=st.integers(0, 0xFFFF),
    do=st.booleans(),
    cd=st.booleans(),
    rd=st.booleans(),
)
def test_dnspython_queries_parse_ok_with_dnspythons_key(
    name: dns.name.Name,
    qtype: int,
    qclass: int,
    qid: int,
    edns: bool,
    payload: int,
    do: bool,
    cd: bool,
    rd: bool,
) -> None:
    use_edns = 0 if (edns or do) else None
    q = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(qtype),
        dns.rdataclass.RdataClass.make(qclass),
        use_edns=use_edns,
        want_dnssec=do,
        payload=payload if use_edns is not None else None,
        id=qid,
    )
    if cd:
        q.flags |= dns.flags.CD
    if not rd:
        q.flags &= ~dns.flags.RD
    data = q.to_wire()

    pq = parse_query(data)
    assert pq.status == PARSE_OK
    name_wire, lower_wire = name.to_wire(), name.canonicalize().to_wire()
    assert name_wire is not None and lower_wire is not None
    assert pq.key == lower_wire + struct.pack(
        "!HHB", qtype, qclass, (1 if cd else 0) | (2 if do else 0)
    )
    assert pq.qname_wire == name_wire
    assert (pq.id, pq.qtype, pq.qclass, pq.do, pq.cd) == (qid, qtype, qclass, do, cd)
    assert pq.has_edns == (use_edns is not None)
    assert pq.udp_limit == (min(max(payload, 512), 4096) if use_edns is not None else 512)

    reply = dns.message.from_wire(render_error(pq, 2))
    assert reply.id == qid
    assert reply.question[0].name == name
    assert reply.edns == (0 if use_edns is not None else -1)
    assert bool(reply.flags & dns.flags.RD) == rd
    assert bool(reply.flags & dns.flags.CD) == cd
    if use_edns is not None:
        assert bool(reply.ednsflags & dns.flags.DO) == do


def test_dnspython_rejects_what_name_exception_types_name() -> None:
    # Guards the differential above against dnspython renaming its exceptions.
    assert issubclass(dns.name.BadPointer, dns.exception.FormError)
    assert issubclass(dns.name.BadLabelType, dns.exception.FormError)
    assert dns.rdatatype.OPT == 41 and dns.rdataclass.IN == 1
