"""Wire format (fastdns.wire over the compiled _wire): query parsing and cache keys, error and
cached-reply rendering, and the stored form of upstream replies with its TTL policy.

dnspython is the oracle: queries and upstream replies are built with it, and every reply we
render is parsed back with it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdns.wire import (
    PARSE_BADVERS,
    PARSE_DROP,
    PARSE_FORMERR,
    PARSE_NOTIMP,
    PARSE_OK,
    PARSE_REFUSED,
    RCODE_BADVERS,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_SERVFAIL,
    PreparedReply,
    WireError,
    parse_query,
    prepare_reply,
    render_error,
    render_prepared,
)

# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

FLAG_RD = 0x0100
FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_CD = 0x0010
TYPE_OPT = 41
MAX_TTL_31 = 2**31 - 1  # RFC 2181 §8: the largest TTL a record can carry


def client_query(
    name: str = "example.org",
    rdtype: str | int = "A",
    *,
    qid: int = 0x1234,
    edns: int | None = None,
    payload: int = 1232,
    do: bool = False,
    cd: bool = False,
    rd: bool = True,
    rdclass: str | int = "IN",
) -> dns.message.Message:
    """A client query as dnspython builds it (edns: EDNS version, None for no OPT)."""
    if do and edns is None:
        edns = 0
    q = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.RdataClass.make(rdclass),
        use_edns=edns,
        payload=payload if edns is not None else None,
        want_dnssec=do,
        id=qid,
    )
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    return q


def query_wire(name: str = "example.org", rdtype: str | int = "A", **kwargs: object) -> bytes:
    return client_query(name, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]


def header(
    *, qid: int = 0x1234, flags: int = FLAG_RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def name_wire(name: str) -> bytes:
    wire = dns.name.from_text(name).to_wire()
    assert wire is not None
    return wire


def question(name: str = "example.org", qtype: int = 1, qclass: int = 1) -> bytes:
    return name_wire(name) + struct.pack("!HH", qtype, qclass)


def opt_rr(
    *,
    payload: int = 1232,
    ext_rcode: int = 0,
    version: int = 0,
    do: bool = False,
    rdata: bytes = b"",
    owner: bytes = b"\x00",
) -> bytes:
    """An OPT pseudo-record (RFC 6891 §6.1.2) with raw RDATA (options)."""
    flags = 0x8000 if do else 0
    return (
        owner
        + struct.pack("!HHBBHH", TYPE_OPT, payload, ext_rcode, version, flags, len(rdata))
        + rdata
    )


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def rrset(text: str) -> dns.rrset.RRset:
    """'example.org. 300 IN A 192.0.2.1' -> RRset."""
    name, ttl, rdclass, rdtype, rdata = text.split(maxsplit=4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata)


def upstream_message(
    query: dns.message.Message | None = None,
    *,
    answer: Iterable[str] = (),
    authority: Iterable[str] = (),
    additional: Iterable[str] = (),
    rcode: int = dns.rcode.NOERROR,
    flags: int = 0,
) -> dns.message.Message:
    """The upstream's reply to `query` (default: example.org A, lowercase, no EDNS)."""
    reply = dns.message.make_response(query if query is not None else client_query())
    reply.flags |= dns.flags.RA | flags
    for section, texts in (
        (reply.answer, answer),
        (reply.authority, authority),
        (reply.additional, additional),
    ):
        section.extend(rrset(text) for text in texts)
    reply.set_rcode(dns.rcode.Rcode(rcode))
    return reply


def upstream_wire(query: dns.message.Message | None = None, **kwargs: object) -> bytes:
    return upstream_message(query, **kwargs).to_wire()  # type: ignore[arg-type]


def prepare(
    reply: bytes,
    *,
    min_ttl: int = 0,
    max_ttl: int = 86400,
    negative_ttl: int = 300,
    default_ttl: int = 300,
) -> PreparedReply:
    return prepare_reply(
        reply, min_ttl=min_ttl, max_ttl=max_ttl, negative_ttl=negative_ttl, default_ttl=default_ttl
    )


def render_for(
    prepared: PreparedReply,
    query: bytes | dns.message.Message,
    elapsed_s: int = 0,
    *,
    tcp: bool = False,
) -> dns.message.Message:
    """Render a prepared reply for one client and parse it back with dnspython."""
    wire = query if isinstance(query, bytes) else query.to_wire()
    return dns.message.from_wire(render_prepared(prepared, parse_query(wire), elapsed_s, tcp))


def error_reply(query: bytes, rcode: int) -> dns.message.Message:
    return dns.message.from_wire(render_error(parse_query(query), rcode))


def all_ttls(msg: dns.message.Message) -> list[int]:
    return [rs.ttl for section in (msg.answer, msg.authority, msg.additional) for rs in section]


def question_bytes(wire: bytes) -> bytes:
    """The question section of a message with one uncompressed question."""
    end = 12
    while wire[end] != 0:
        end += 1 + wire[end]
    return wire[12 : end + 1 + 4]


SOA = "example.org. 3600 IN SOA ns.example.org. hostmaster.example.org. 1 7200 900 1209600 60"
A_300 = "example.org. 300 IN A 192.0.2.1"


# ---------------------------------------------------------------------------------------------
# parse_query: statuses (RFC 1035 §4.1, RFC 6891)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 11])
def test_packet_shorter_than_a_header_is_dropped(length: int) -> None:
    assert parse_query(query_wire()[:length]).status == PARSE_DROP


def test_response_is_dropped_to_avoid_reflection_loops() -> None:
    data = header(flags=FLAG_QR | FLAG_RD) + question()
    assert parse_query(data).status == PARSE_DROP


def test_render_error_refuses_a_dropped_packet() -> None:
    with pytest.raises(WireError):
        render_error(parse_query(b"\x12\x34"), RCODE_FORMERR)


def test_well_formed_query_parses_ok() -> None:
    pq = parse_query(query_wire("example.org", "AAAA", qid=0xBEEF))
    assert pq.status == PARSE_OK
    assert (pq.id, pq.qtype, pq.qclass) == (0xBEEF, 28, 1)
    assert not pq.has_edns and not pq.do and not pq.cd


@pytest.mark.parametrize(
    # UPDATE (5) is left out only because dnspython reads its question as a zone (type SOA).
    "opcode",
    [dns.opcode.IQUERY, dns.opcode.STATUS, 3, dns.opcode.NOTIFY, 15],
)
def test_non_query_opcode_is_notimp_with_question_echoed(opcode: int) -> None:
    # RFC 1035 §4.1.1: only the standard QUERY opcode is served.
    data = header(flags=(opcode << 11) | FLAG_RD) + question("Example.ORG")
    pq = parse_query(data)
    assert pq.status == PARSE_NOTIMP
    reply = render_error(pq, RCODE_NOTIMP)
    msg = dns.message.from_wire(reply)
    assert msg.rcode() == dns.rcode.NOTIMP
    assert msg.opcode() == opcode
    assert question_bytes(reply) == question("Example.ORG")


def test_notimp_reply_to_an_edns_query_carries_opt() -> None:
    # RFC 6891 §6.1.1: if a request has OPT, compliant responders MUST include OPT.
    q = client_query(edns=0)
    q.set_opcode(dns.opcode.NOTIFY)
    pq = parse_query(q.to_wire())
    assert pq.status == PARSE_NOTIMP
    msg = dns.message.from_wire(render_error(pq, RCODE_NOTIMP))
    assert msg.edns == 0


@pytest.mark.parametrize("qdcount", [0, 2])
def test_question_count_other_than_one_is_formerr(qdcount: int) -> None:
    body = question() * qdcount
    assert parse_query(header(qd=qdcount) + body).status == PARSE_FORMERR


def test_formerr_without_a_question_echoes_no_question() -> None:
    data = header(qid=0x4242, qd=0)
    msg = error_reply(data, RCODE_FORMERR)
    assert msg.id == 0x4242
    assert msg.rcode() == dns.rcode.FORMERR
    assert msg.question == []


def test_query_with_tc_set_is_formerr() -> None:
    assert parse_query(header(flags=FLAG_RD | FLAG_TC) + question()).status == PARSE_FORMERR


@pytest.mark.parametrize("counts", [{"an": 1}, {"ns": 1}])
def test_query_with_answer_or_authority_records_is_formerr(counts: dict[str, int]) -> None:
    record = name_wire("example.org") + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
    assert parse_query(header(**counts) + question() + record).status == PARSE_FORMERR


@pytest.mark.parametrize("cut", [1, 3, 8, 13, 14, 15, 16])
def test_truncated_question_is_formerr(cut: int) -> None:
    data = header() + question("www.example.org")
    assert parse_query(data[: len(data) - cut]).status == PARSE_FORMERR


def test_compressed_qname_is_formerr() -> None:
    # The only bytes before a query's qname are the header: a pointer can never be valid.
    data = header() + b"\x03www\xc0\x00" + struct.pack("!HH", 1, 1)
    assert parse_query(data).status == PARSE_FORMERR


def test_label_of_63_octets_is_accepted() -> None:
    data = header() + b"\x3f" + b"a" * 63 + b"\x00" + struct.pack("!HH", 1, 1)
    assert parse_query(data).status == PARSE_OK


@pytest.mark.parametrize("length_octet", [0x40, 0x7F, 0x80])
def test_label_longer_than_63_or_extended_label_type_is_formerr(length_octet: int) -> None:
    # RFC 1035 §3.1: labels are 63 octets or less; 0x40/0x80 prefixes are not plain labels.
    label = bytes([length_octet]) + b"a" * (length_octet & 0x3F)
    data = header() + label + b"\x00" + struct.pack("!HH", 1, 1)
    assert parse_query(data).status == PARSE_FORMERR


def name_of_wire_length(total: int) -> bytes:
    """An uncompressed name whose wire form (root octet included) is `total` octets."""
    labels = []
    remaining = total - 1
    while remaining > 0:
        size = min(63, remaining - 1)
        labels.append(bytes([size]) + b"a" * size)
        remaining -= 1 + size
    return b"".join(labels) + b"\x00"


def test_name_of_255_octets_is_accepted() -> None:
    qname = name_of_wire_length(255)
    assert len(qname) == 255
    assert parse_query(header() + qname + struct.pack("!HH", 1, 1)).status == PARSE_OK


def test_name_longer_than_255_octets_is_formerr() -> None:
    # RFC 1035 §3.1: a name is 255 octets or less.
    qname = name_of_wire_length(256)
    assert len(qname) == 256
    assert parse_query(header() + qname + struct.pack("!HH", 1, 1)).status == PARSE_FORMERR


def test_trailing_bytes_after_the_question_are_formerr() -> None:
    assert parse_query(query_wire() + b"\x00").status == PARSE_FORMERR


def test_trailing_bytes_after_the_opt_record_are_formerr() -> None:
    data = header(ar=1) + question() + opt_rr() + b"\x00\x00"
    assert parse_query(data).status == PARSE_FORMERR


def test_two_opt_records_are_formerr() -> None:
    # RFC 6891 §6.1.1: a second OPT makes the request FORMERR.
    data = header(ar=2) + question() + opt_rr() + opt_rr()
    assert parse_query(data).status == PARSE_FORMERR


def test_opt_not_owned_by_the_root_is_formerr() -> None:
    # RFC 6891 §6.1.2: the OPT owner name is the root.
    data = header(ar=1) + question() + opt_rr(owner=name_wire("example.org"))
    assert parse_query(data).status == PARSE_FORMERR


@pytest.mark.parametrize(
    "rdata",
    [
        b"\x00",  # option header cut short
        b"\x00\x0a\x00",  # option header cut short
        b"\x00\x0a\x00\x08" + b"\x01" * 4,  # option length runs past RDATA
        option(10, b"\x01" * 8) + b"\x00\x0a",  # second option cut short
    ],
)
def test_malformed_opt_options_are_formerr(rdata: bytes) -> None:
    data = header(ar=1) + question() + opt_rr(rdata=rdata)
    assert parse_query(data).status == PARSE_FORMERR


def test_well_formed_opt_options_are_accepted() -> None:
    rdata = option(10, b"\x01" * 8) + option(12, b"")  # COOKIE (RFC 7873), empty PADDING
    pq = parse_query(header(ar=1) + question() + opt_rr(rdata=rdata))
    assert pq.status == PARSE_OK
    assert pq.has_edns


def test_opt_rdlength_past_the_end_is_formerr() -> None:
    data = header(ar=1) + question() + opt_rr(rdata=option(10, b"\x01" * 8))
    assert parse_query(data[:-2]).status == PARSE_FORMERR


def test_edns_version_1_is_badvers() -> None:
    # RFC 6891 §6.1.3: a version we do not implement gets BADVERS.
    assert parse_query(query_wire(edns=1)).status == PARSE_BADVERS


def test_badvers_reply_carries_opt_with_the_extended_rcode() -> None:
    # BADVERS is 16: the low 4 bits go in the header, the upper 8 in OPT's TTL (RFC 6891 §6.1.3).
    data = query_wire("Example.org", edns=1, qid=0x0101)
    reply = render_error(parse_query(data), RCODE_BADVERS)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x0101
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0  # the version we speak
    assert question_bytes(reply) == question_bytes(data)


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfer_is_refused(qtype: str) -> None:
    # We are not authoritative for anything: zone transfers are refused.
    assert parse_query(query_wire("example.org", qtype)).status == PARSE_REFUSED


def test_qtype_opt_is_formerr() -> None:
    # RFC 6891 §6.1.1: OPT is a pseudo-RR; it is never a question.
    data = header() + question(qtype=TYPE_OPT)
    assert parse_query(data).status == PARSE_FORMERR


@pytest.mark.parametrize("qtype", ["MAILA", "MAILB"])
def test_obsolete_mail_qtypes_are_notimp(qtype: str) -> None:
    assert parse_query(query_wire("example.org", qtype)).status == PARSE_NOTIMP


# ---------------------------------------------------------------------------------------------
# parse_query: cache key and EDNS view
# ---------------------------------------------------------------------------------------------


def expected_key(name: str, qtype: int, qclass: int = 1, flag: int = 0) -> bytes:
    return name_wire(name.lower()) + struct.pack("!HHB", qtype, qclass, flag)


def test_key_is_lowercased_name_qtype_qclass_and_flag_byte() -> None:
    pq = parse_query(query_wire("WwW.Example.ORG", "MX"))
    assert pq.key == expected_key("www.example.org", 15)


def test_mixed_case_queries_share_one_key() -> None:
    assert parse_query(query_wire("EXAMPLE.org")).key == parse_query(query_wire("example.org")).key


def test_key_differs_by_qtype_and_qclass() -> None:
    keys = {
        parse_query(query_wire("example.org", "A")).key,
        parse_query(query_wire("example.org", "AAAA")).key,
        parse_query(query_wire("example.org", "A", rdclass="CH")).key,
    }
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("do", "cd", "flag"), [(False, False, 0), (False, True, 1), (True, False, 2), (True, True, 3)]
)
def test_key_flag_byte_is_do_2_plus_cd_1(do: bool, cd: bool, flag: int) -> None:
    pq = parse_query(query_wire("example.org", do=do, cd=cd))
    assert pq.status == PARSE_OK
    assert (pq.do, pq.cd) == (do, cd)
    assert pq.key == expected_key("example.org", 1, 1, flag)


def test_qname_wire_keeps_case_and_qname_wire_lower_folds_it() -> None:
    pq = parse_query(query_wire("Mail.Example.NET"))
    assert pq.qname_wire == b"\x04Mail\x07Example\x03NET\x00"
    assert pq.qname_wire_lower == b"\x04mail\x07example\x03net\x00"


def test_qname_wire_lower_is_empty_when_there_is_no_question() -> None:
    pq = parse_query(header(qd=0))
    assert pq.qname_wire == b""
    assert pq.qname_wire_lower == b""


def test_udp_limit_is_512_without_edns() -> None:
    # RFC 1035 §4.2.1: UDP messages are 512 octets at most unless EDNS says otherwise.
    pq = parse_query(query_wire())
    assert not pq.has_edns
    assert pq.udp_limit == 512


@pytest.mark.parametrize(
    ("payload", "limit"),
    [(0, 512), (100, 512), (512, 512), (1232, 1232), (4096, 4096), (4097, 4096), (65535, 4096)],
)
def test_udp_limit_follows_edns_payload_floored_at_512_capped_at_4096(
    payload: int, limit: int
) -> None:
    # RFC 6891 §6.2.5: values below 512 are treated as 512.
    pq = parse_query(query_wire(edns=0, payload=payload))
    assert pq.has_edns
    assert pq.udp_limit == limit


def test_edns_version_and_do_bit_are_read_from_opt() -> None:
    pq = parse_query(header(ar=1) + question() + opt_rr(version=0, do=True))
    assert (pq.status, pq.edns_version, pq.do) == (PARSE_OK, 0, True)


# ---------------------------------------------------------------------------------------------
# render_error: header bits, question echo, OPT
# ---------------------------------------------------------------------------------------------


def test_error_reply_echoes_id_and_question_byte_for_byte() -> None:
    data = query_wire("wWw.ExAmPlE.oRg", "AAAA", qid=0xCAFE)
    reply = render_error(parse_query(data), RCODE_SERVFAIL)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0xCAFE
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert question_bytes(reply) == question_bytes(data)


@pytest.mark.parametrize("rd", [True, False])
def test_error_reply_echoes_rd_and_sets_ra_not_aa(rd: bool) -> None:
    msg = error_reply(query_wire(rd=rd), RCODE_SERVFAIL)
    assert msg.flags & dns.flags.QR
    assert bool(msg.flags & dns.flags.RD) == rd
    assert msg.flags & dns.flags.RA
    assert not msg.flags & dns.flags.AA


@pytest.mark.parametrize("cd", [True, False])
def test_error_reply_echoes_cd(cd: bool) -> None:
    # RFC 4035 §3.2.2: CD is copied from the query.
    msg = error_reply(query_wire(cd=cd), RCODE_SERVFAIL)
    assert bool(msg.flags & dns.flags.CD) == cd


def test_error_reply_has_no_opt_when_client_sent_none() -> None:
    # SPEC §1: echo no OPT to a client that sent none.
    msg = error_reply(query_wire(), RCODE_SERVFAIL)
    assert msg.edns == -1
    assert msg.additional == []


@pytest.mark.parametrize("do", [True, False])
def test_error_reply_has_opt_advertising_1232_and_echoing_do(do: bool) -> None:
    # RFC 6891 §6.1.1 (OPT in reply), RFC 3225 §3 (DO copied), DNS flag day 2020 (1232).
    msg = error_reply(query_wire(edns=0, payload=4096, do=do), RCODE_SERVFAIL)
    assert msg.edns == 0
    assert msg.payload == 1232
    assert bool(msg.ednsflags & dns.flags.DO) == do


def test_error_reply_with_tc_sets_tc() -> None:
    msg = dns.message.from_wire(render_error(parse_query(query_wire()), 0, True))
    assert msg.flags & dns.flags.TC
    assert msg.rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------------------------------------
# render_prepared: a stored reply served to one client
# ---------------------------------------------------------------------------------------------


def test_cached_reply_carries_client_id_and_its_0x20_question() -> None:
    # SPEC §1: the question is echoed exactly as the client sent it (DNS 0x20).
    prepared = prepare(upstream_wire(answer=[A_300]))
    data = query_wire("eXaMpLe.OrG", qid=0x7777)
    reply = render_prepared(prepared, parse_query(data))
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x7777
    assert question_bytes(reply) == question_bytes(data)
    assert msg.answer == [rrset(A_300)]


@pytest.mark.parametrize("rd", [True, False])
def test_cached_reply_echoes_client_rd_sets_ra_and_clears_aa(rd: bool) -> None:
    prepared = prepare(upstream_wire(answer=[A_300], flags=dns.flags.AA))
    msg = render_for(prepared, client_query(rd=rd))
    assert bool(msg.flags & dns.flags.RD) == rd
    assert msg.flags & dns.flags.RA
    assert not msg.flags & dns.flags.AA


@pytest.mark.parametrize("cd", [True, False])
def test_cached_reply_echoes_client_cd(cd: bool) -> None:
    prepared = prepare(upstream_wire(answer=[A_300]))
    msg = render_for(prepared, client_query(cd=cd))
    assert bool(msg.flags & dns.flags.CD) == cd


def test_cached_reply_has_no_opt_for_a_client_without_edns() -> None:
    prepared = prepare(upstream_wire(client_query(edns=0), answer=[A_300]))
    msg = render_for(prepared, client_query())
    assert msg.edns == -1


@pytest.mark.parametrize("do", [True, False])
def test_cached_reply_has_opt_for_an_edns_client(do: bool) -> None:
    prepared = prepare(upstream_wire(answer=[A_300]))
    msg = render_for(prepared, client_query(edns=0, payload=4096, do=do))
    assert msg.edns == 0
    assert msg.payload == 1232
    assert bool(msg.ednsflags & dns.flags.DO) == do
    assert msg.answer == [rrset(A_300)]


def big_upstream_reply(count: int) -> bytes:
    """An example.org A reply with `count` addresses (16 octets per compressed record)."""
    reply = dns.message.make_response(client_query())
    addresses = [f"192.0.2.{i % 256}" if i < 256 else f"198.51.100.{i % 256}" for i in range(count)]
    reply.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "A", *addresses))
    return reply.to_wire()


def test_reply_larger_than_512_is_truncated_for_a_client_without_edns() -> None:
    # RFC 1035 §4.1.1 / §4.2.1: TC=1, and the client retries over TCP.
    wire = big_upstream_reply(40)
    assert len(wire) > 512
    data = query_wire("Example.org", qid=0x0202)
    reply = render_prepared(prepare(wire), parse_query(data))
    msg = dns.message.from_wire(reply)
    assert len(reply) <= 512
    assert msg.flags & dns.flags.TC
    assert msg.id == 0x0202
    assert question_bytes(reply) == question_bytes(data)
    assert (msg.answer, msg.authority, msg.additional) == ([], [], [])


def test_truncated_reply_for_an_edns_client_keeps_opt() -> None:
    # RFC 6891 §7: the truncated reply still carries OPT.
    wire = big_upstream_reply(100)
    assert len(wire) > 1232
    msg = render_for(prepare(wire), client_query(edns=0, payload=1232))
    assert msg.flags & dns.flags.TC
    assert msg.answer == []
    assert msg.edns == 0


def test_reply_within_the_clients_edns_size_is_not_truncated() -> None:
    wire = big_upstream_reply(100)
    msg = render_for(prepare(wire), client_query(edns=0, payload=4096))
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer[0]) == 100


def test_tcp_reply_is_not_truncated_beyond_the_udp_cap() -> None:
    # Over TCP the limit is the 65535-octet message size (RFC 1035 §4.2.2).
    wire = big_upstream_reply(300)
    assert len(wire) > 4096
    msg = render_for(prepare(wire), client_query(edns=0, payload=4096), tcp=True)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer[0]) == 300


def test_same_reply_over_udp_at_4096_is_truncated() -> None:
    wire = big_upstream_reply(300)
    msg = render_for(prepare(wire), client_query(edns=0, payload=65000))
    assert msg.flags & dns.flags.TC


def test_render_prepared_refuses_a_query_that_did_not_parse() -> None:
    prepared = prepare(upstream_wire(answer=[A_300]))
    with pytest.raises(WireError):
        render_prepared(prepared, parse_query(query_wire("example.org", "AXFR")))


def test_rendering_does_not_modify_the_stored_bytes() -> None:
    # DESIGN.md: stored bytes are immutable; every render works on a copy.
    prepared = prepare(upstream_wire(answer=[A_300]))
    before = bytes(prepared.wire)
    render_prepared(prepared, parse_query(query_wire("EXAMPLE.ORG", qid=9, edns=0)), 200)
    assert prepared.wire == before


# ---------------------------------------------------------------------------------------------
# prepare_reply: stored form and TTL policy (SPEC §3, RFC 2308)
# ---------------------------------------------------------------------------------------------


def test_opt_is_stripped_and_arcount_adjusted() -> None:
    wire = upstream_wire(
        client_query(edns=0),
        answer=["example.org. 300 IN MX 10 mail.example.org."],
        additional=["mail.example.org. 300 IN A 192.0.2.25"],
    )
    prepared = prepare(wire)
    assert struct.unpack("!H", wire[10:12])[0] == 2
    assert struct.unpack("!H", prepared.wire[10:12])[0] == 1
    stored = dns.message.from_wire(prepared.wire)
    assert stored.edns == -1
    assert stored.additional == [rrset("mail.example.org. 300 IN A 192.0.2.25")]
    assert len(prepared.wire) == len(wire) - 11


def test_positive_reply_metadata() -> None:
    prepared = prepare(upstream_wire(answer=[A_300, "example.org. 300 IN A 192.0.2.2"]))
    assert prepared.rcode == dns.rcode.NOERROR
    assert prepared.answer_count == 2
    assert not prepared.negative
    assert prepared.cacheable
    assert prepared.lifetime_s == 300


@pytest.mark.parametrize("elapsed", [0, 1, 299, 300, 301, 10_000])
def test_served_ttl_counts_down_by_elapsed_seconds(elapsed: int) -> None:
    prepared = prepare(upstream_wire(answer=[A_300]))
    msg = render_for(prepared, client_query(), elapsed)
    assert all_ttls(msg) == [max(0, 300 - elapsed)]


def test_every_record_in_every_section_counts_down() -> None:
    wire = upstream_wire(
        answer=[
            "example.org. 300 IN CNAME www.example.org.",
            "www.example.org. 120 IN A 192.0.2.1",
        ],
        authority=["example.org. 3600 IN NS ns.example.org."],
        additional=["ns.example.org. 7200 IN A 192.0.2.53"],
    )
    msg = render_for(prepare(wire), client_query(), 100)
    assert all_ttls(msg) == [200, 20, 3500, 7100]


def test_lifetime_is_the_smallest_ttl_in_the_reply() -> None:
    wire = upstream_wire(
        answer=[
            "example.org. 300 IN CNAME www.example.org.",
            "www.example.org. 120 IN A 192.0.2.1",
        ],
    )
    assert prepare(wire).lifetime_s == 120


def test_min_ttl_raises_lifetime_but_not_the_served_ttl() -> None:
    # SPEC §3: served TTLs never exceed what the upstream gave.
    prepared = prepare(upstream_wire(answer=["example.org. 10 IN A 192.0.2.1"]), min_ttl=60)
    assert prepared.lifetime_s == 60
    assert all_ttls(render_for(prepared, client_query(), 0)) == [10]
    assert all_ttls(render_for(prepared, client_query(), 30)) == [0]


def test_max_ttl_caps_served_ttl_and_lifetime() -> None:
    prepared = prepare(upstream_wire(answer=["example.org. 604800 IN A 192.0.2.1"]), max_ttl=3600)
    assert prepared.lifetime_s == 3600
    assert all_ttls(render_for(prepared, client_query(), 0)) == [3600]


NXDOMAIN_QUERY = client_query("nope.example.org")
NXDOMAIN_SOA = (
    "example.org. {ttl} IN SOA ns.example.org. hostmaster.example.org. 1 7200 900 1209600 {minimum}"
)


@pytest.mark.parametrize(
    ("soa_ttl", "soa_minimum", "negative_ttl", "expected"),
    [(3600, 60, 300, 60), (30, 600, 300, 30), (3600, 3600, 300, 300)],
)
@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_reply_lifetime_is_min_of_soa_ttl_minimum_and_negative_ttl(
    rcode: int, soa_ttl: int, soa_minimum: int, negative_ttl: int, expected: int
) -> None:
    # RFC 2308 §5: NXDOMAIN and NODATA are cached for min(SOA TTL, SOA MINIMUM);
    # negative_ttl is our ceiling. The SOA is served with that TTL (RFC 2308 §3).
    soa = NXDOMAIN_SOA.format(ttl=soa_ttl, minimum=soa_minimum)
    wire = upstream_wire(NXDOMAIN_QUERY, authority=[soa], rcode=rcode)
    prepared = prepare(wire, negative_ttl=negative_ttl)
    assert prepared.negative
    assert prepared.rcode == rcode
    assert prepared.lifetime_s == expected
    msg = render_for(prepared, NXDOMAIN_QUERY)
    assert msg.rcode() == rcode
    assert all_ttls(msg) == [expected]
    assert msg.authority[0].ttl == expected


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_reply_without_soa_is_not_cached(rcode: int) -> None:
    # RFC 2308 §5: without a SOA, a negative answer must not be cached.
    wire = upstream_wire(NXDOMAIN_QUERY, rcode=rcode)
    prepared = prepare(wire)
    assert prepared.negative
    assert prepared.lifetime_s == 0
    assert not prepared.cacheable


def test_referral_style_nodata_with_ns_but_no_soa_is_not_cached() -> None:
    wire = upstream_wire(NXDOMAIN_QUERY, authority=["example.org. 3600 IN NS ns.example.org."])
    assert prepare(wire).lifetime_s == 0


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR])
def test_error_rcodes_are_not_cached(rcode: int) -> None:
    prepared = prepare(upstream_wire(authority=[SOA], rcode=rcode))
    assert prepared.rcode == rcode
    assert prepared.lifetime_s == 0


def test_truncated_reply_is_not_cached() -> None:
    prepared = prepare(upstream_wire(answer=[A_300], flags=dns.flags.TC))
    assert prepared.lifetime_s == 0


def test_extended_rcode_from_opt_is_reported_and_not_cached() -> None:
    q = client_query(edns=0)
    reply = upstream_message(q)
    reply.set_rcode(dns.rcode.BADCOOKIE)
    prepared = prepare(reply.to_wire())
    assert prepared.rcode == dns.rcode.BADCOOKIE
    assert prepared.lifetime_s == 0


@pytest.mark.parametrize(
    ("rdtype", "rdata"),
    [
        ("TYPE65534", r"\# 5 0102030405"),
        ("CAA", '0 issue "ca.example.net"'),
        ("SRV", "10 20 5060 sip.example.org."),
    ],
)
def test_other_types_are_cached_as_opaque_rdata_and_rendered_unchanged(
    rdtype: str, rdata: str
) -> None:
    # SPEC §1: every type beyond the first-class ones passes through as wire data.
    query = client_query("example.org", rdtype)
    wire = upstream_wire(query, answer=[f"example.org. 300 IN {rdtype} {rdata}"])
    prepared = prepare(wire)
    assert prepared.cacheable
    reply = render_prepared(prepared, parse_query(query.to_wire()))
    start = 12 + len(question_bytes(wire))
    assert reply[start:] == wire[start:]
    assert dns.message.from_wire(reply).answer == dns.message.from_wire(wire).answer


# ---------------------------------------------------------------------------------------------
# prepare_reply: malformed upstream replies raise WireError
# ---------------------------------------------------------------------------------------------

Q_ORG = question("example.org")
A_RDATA = struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
RESPONSE = FLAG_QR | FLAG_RD | 0x0080


def test_reply_with_a_backward_pointer_is_accepted() -> None:
    # The usual compression: the answer owner points at the qname (offset 12).
    prepared = prepare(header(flags=RESPONSE, an=1) + Q_ORG + b"\xc0\x0c" + A_RDATA)
    assert prepared.answer_count == 1


MALFORMED_REPLIES = [
    ("forward pointer", header(flags=RESPONSE, an=1) + Q_ORG + b"\xc0\x40" + A_RDATA),
    ("pointer to itself", header(flags=RESPONSE, an=1) + Q_ORG + b"\xc0\x1d" + A_RDATA),
    (
        "two-pointer loop",
        header(flags=RESPONSE, an=1) + Q_ORG + b"\x01a\xc0\x1d" + A_RDATA,
    ),
    ("rdlength past end", header(flags=RESPONSE, an=1) + Q_ORG + b"\xc0\x0c" + A_RDATA[:-1]),
    ("trailing bytes", header(flags=RESPONSE, an=1) + Q_ORG + b"\xc0\x0c" + A_RDATA + b"\0"),
    ("record count past end", header(flags=RESPONSE, an=2) + Q_ORG + b"\xc0\x0c" + A_RDATA),
    ("shorter than a header", header(flags=RESPONSE)[:11]),
    ("not a response", header(flags=FLAG_RD, an=1) + Q_ORG + b"\xc0\x0c" + A_RDATA),
    ("no question", header(flags=RESPONSE, qd=0)),
    ("two questions", header(flags=RESPONSE, qd=2) + Q_ORG + Q_ORG),
    ("question cut short", header(flags=RESPONSE) + Q_ORG[:-1]),
    (
        "label longer than 63",
        header(flags=RESPONSE, an=1) + Q_ORG + b"\x40" + b"a" * 64 + b"\x00" + A_RDATA,
    ),
    (
        "two OPT records",
        header(flags=RESPONSE, ar=2) + Q_ORG + opt_rr() + opt_rr(),
    ),
]


@pytest.mark.parametrize(
    "reply",
    [reply for _, reply in MALFORMED_REPLIES],
    ids=[label for label, _ in MALFORMED_REPLIES],
)
def test_malformed_reply_raises_wire_error(reply: bytes) -> None:
    assert Q_ORG == b"\x07example\x03org\x00\x00\x01\x00\x01"  # offsets above assume this
    with pytest.raises(WireError):
        prepare(reply)


def test_pointer_chain_must_move_strictly_backwards_as_dnspython_requires() -> None:
    # CONVENTIONS "Cython modules": pointers point strictly backwards, as dnspython does, i.e.
    # each hop lands before the previous hop's target. The first answer carries opaque RDATA
    # at 0x29: 03 01 61 00 c0 2a. The second answer's owner points at 0x29, reads the label
    # "\x01a\x00", then hops to 0x2a: after the first target, inside the label just read.
    # dnspython rejects this name with BadPointer; we must not cache and re-serve it.
    opaque = b"\x03\x01a\x00\xc0\x2a"
    first = b"\xc0\x0c" + struct.pack("!HHIH", 65534, 1, 300, len(opaque))
    prefix = header(flags=RESPONSE, an=2) + Q_ORG + first
    assert len(prefix) == 0x29
    reply = prefix + opaque + b"\xc0\x29" + A_RDATA
    with pytest.raises(dns.name.BadPointer):
        dns.message.from_wire(reply)
    with pytest.raises(WireError):
        prepare(reply)


CNAME_HEAD = b"\xc0\x0c" + struct.pack("!HHI", 5, 1, 300)


MALFORMED_RDATA = [
    ("CNAME target pointing forward", CNAME_HEAD + b"\x00\x02" + b"\xc0\x40"),
    ("CNAME RDATA longer than its name", CNAME_HEAD + b"\x00\x04" + b"\xc0\x0c\x00\x00"),
    ("CNAME name running past RDLENGTH", CNAME_HEAD + b"\x00\x02" + b"\x01a"),
    (
        "A with RDLENGTH 5",
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 5) + b"\xc0\x00\x02\x01\x00",
    ),
    (
        "SOA RNAME pointing forward",
        b"\xc0\x0c"
        + struct.pack("!HHIH", 6, 1, 3600, 32)
        + b"\x02ns\xc0\x0c\x04host\xc0\x60"
        + struct.pack("!5I", 1, 7200, 900, 1209600, 60),
    ),
]


@pytest.mark.parametrize(
    "record", [record for _, record in MALFORMED_RDATA], ids=[label for label, _ in MALFORMED_RDATA]
)
def test_malformed_rdata_of_a_first_class_type_raises_wire_error(record: bytes) -> None:
    # CONVENTIONS "Cython modules": RDATA is parsed inside its RDLENGTH and must use it exactly,
    # and pointers point strictly backwards. SPEC §1: A/CNAME/... are parsed, not opaque. A
    # reply dnspython cannot read must not be cached and re-served to every client.
    reply = header(flags=RESPONSE, an=1) + Q_ORG + record
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(reply)
    with pytest.raises(WireError):
        prepare(reply)


# ---------------------------------------------------------------------------------------------
# Property: prepare + render is transparent (dnspython as oracle)
# ---------------------------------------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True)
owner_names = st.builds(
    lambda prefix, zone: dns.name.from_text(".".join([*prefix, zone])),
    st.lists(labels, max_size=3),
    st.sampled_from(["example.org.", "example.net."]),
)
ttls = st.integers(min_value=0, max_value=MAX_TTL_31)
IN = dns.rdataclass.IN


def _rdata(rdtype: str, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(IN, rdtype, text)


rdatas = st.one_of(
    st.ip_addresses(v=4, network="192.0.2.0/24").map(lambda ip: _rdata("A", str(ip))),
    st.ip_addresses(v=6, network="2001:db8::/32").map(lambda ip: _rdata("AAAA", str(ip))),
    st.builds(
        lambda pref, target: _rdata("MX", f"{pref} {target}"),
        st.integers(0, 65535),
        owner_names,
    ),
    st.lists(st.binary(max_size=40), min_size=1, max_size=3).map(
        lambda strings: dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, strings)
    ),
    owner_names.map(lambda target: _rdata("CNAME", target.to_text())),
)
records = st.tuples(
    st.sampled_from(["answer", "authority", "additional"]), owner_names, ttls, rdatas
)


def mixed_case(name: str, flips: Sequence[bool]) -> str:
    return "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=False))


def build_upstream(
    recs: list[tuple[str, dns.name.Name, int, dns.rdata.Rdata]], qid: int
) -> tuple[dns.message.Message, bytes]:
    query = client_query("www.example.org", "A", qid=qid)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    for section_name, name, ttl, rd in recs:
        section = getattr(reply, section_name)
        section.append(dns.rrset.from_rdata(name, ttl, rd))
    return query, reply.to_wire()


@settings(max_examples=300, deadline=None)
@given(
    recs=st.lists(records, min_size=1, max_size=12),
    flips=st.lists(st.booleans(), min_size=16, max_size=16),
    edns=st.booleans(),
    elapsed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_prepare_then_render_is_transparent_with_ttls_counted_down(
    recs: list[tuple[str, dns.name.Name, int, dns.rdata.Rdata]],
    flips: list[bool],
    edns: bool,
    elapsed: int,
) -> None:
    _, wire = build_upstream(recs, qid=1)
    upstream = dns.message.from_wire(wire)
    prepared = prepare(wire, min_ttl=0, max_ttl=MAX_TTL_31)
    client_wire = query_wire(
        mixed_case("www.example.org", flips), qid=0x5A5A, edns=0 if edns else None
    )

    reply = render_prepared(prepared, parse_query(client_wire), 0, True)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x5A5A
    assert question_bytes(reply) == question_bytes(client_wire)
    assert msg.answer == upstream.answer
    assert msg.authority == upstream.authority
    assert msg.additional == upstream.additional
    assert all_ttls(msg) == all_ttls(upstream)
    assert msg.edns == (0 if edns else -1)

    later = dns.message.from_wire(
        render_prepared(prepared, parse_query(client_wire), elapsed, True)
    )
    assert later.answer == upstream.answer
    assert all_ttls(later) == [max(0, ttl - elapsed) for ttl in all_ttls(upstream)]


@settings(max_examples=100, deadline=None)
@given(recs=st.lists(records, min_size=1, max_size=8), max_ttl=st.integers(0, 100_000))
def test_stored_ttls_never_exceed_upstream_nor_max_ttl(
    recs: list[tuple[str, dns.name.Name, int, dns.rdata.Rdata]], max_ttl: int
) -> None:
    _, wire = build_upstream(recs, qid=1)
    upstream = dns.message.from_wire(wire)
    prepared = prepare(wire, min_ttl=0, max_ttl=max_ttl)
    served = all_ttls(dns.message.from_wire(prepared.wire))
    assert served == [min(ttl, max_ttl) for ttl in all_ttls(upstream)]
    if upstream.answer:
        assert prepared.lifetime_s == min(served)
    else:
        # NODATA without SOA (none is generated here): RFC 2308 §5, not cached.
        assert prepared.lifetime_s == 0


def test_opt_before_other_additional_records_is_stripped_with_them() -> None:
    """RFC 6891 §6.1.1 lets OPT stand anywhere in the additional section. The stored form
    ends where it began: later additional records go too, since cutting bytes out of the
    middle would move every compression target after them. The answer is kept whole."""
    reply = (
        header(flags=RESPONSE, an=1, ar=2) + Q_ORG
        + b"\xc0\x0c" + A_RDATA + opt_rr() + b"\xc0\x0c" + A_RDATA
    )
    prepared = prepare_reply(reply, min_ttl=1, max_ttl=86400, negative_ttl=300, default_ttl=300)
    parsed = dns.message.from_wire(prepared.wire)
    assert len(parsed.answer) == 1 and parsed.additional == [] and parsed.opt is None
    assert struct.unpack("!H", prepared.wire[10:12])[0] == 0
    assert prepared.cacheable


def test_ad_is_served_only_for_validated_entries_and_only_to_clients_that_ask() -> None:
    """RFC 4035 §4.9.3: an upstream's AD is not trusted; RFC 6840 §5.7: AD goes to clients
    that set DO or AD, and only for data we validated."""
    reply = upstream_wire(answer=["example.org. 300 IN A 192.0.2.1"], flags=dns.flags.AD)
    unvalidated = prepare(reply)
    validated = prepare_reply(reply, min_ttl=0, max_ttl=86400, negative_ttl=300,
                              default_ttl=300, authentic=True)
    do_client = client_query(do=True)
    ad_client = client_query()
    ad_client.flags |= dns.flags.AD
    assert not render_for(unvalidated, do_client).flags & dns.flags.AD
    assert render_for(validated, do_client).flags & dns.flags.AD
    assert render_for(validated, ad_client).flags & dns.flags.AD
    assert not render_for(validated, client_query()).flags & dns.flags.AD
