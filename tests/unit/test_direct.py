"""Direct answers: which authoritative responses pass on unparsed, and what the client gets.

dnspython builds the responses and parses the replies, as the oracle for what the general path
would have served.
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdns.resolve.direct import scan_direct_answer

T = dns.rdatatype
QNAME = "www.example.org."
# An RRSIG's fields up to the signature; LABELS (the fourth field) is what marks a wildcard.
SIG = "{covered} 13 {labels} 300 20300101000000 20200101000000 1234 example.org. AAAA"


def response(qname: str = QNAME, qtype: str = "A", *, answer: tuple[str, ...] | list[str] = (),
             authority: tuple[str, ...] | list[str] = (),
             additional: tuple[str, ...] | list[str] = (), aa: bool = True,
             rcode: int = dns.rcode.NOERROR) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, want_dnssec=True)
    reply = dns.message.make_response(query)
    if aa:
        reply.flags |= dns.flags.AA
    reply.set_rcode(rcode)
    for section, lines in ((reply.answer, answer), (reply.authority, authority),
                           (reply.additional, additional)):
        for line in lines:
            section.append(dns.rrset.from_text(*line.split(None, 4)))
    return reply


def rrsig(owner: str, covered: str, labels: int) -> str:
    return f"{owner} 300 IN RRSIG " + SIG.format(covered=covered, labels=labels)


SIGNED_A = response(
    answer=[f"{QNAME} 300 IN A 192.0.2.1", rrsig(QNAME, "A", 3)],
    authority=["example.org. 300 IN NS ns1.example.org."],
    additional=["ns1.example.org. 300 IN A 192.0.2.53"],
)


def test_a_signed_answer_passes_on_with_or_without_its_signatures() -> None:
    wire = SIGNED_A.to_wire()
    found = scan_direct_answer(wire, T.A)
    assert found is not None and (found.data_count, found.rrsig_count) == (1, 1)

    with_sigs = dns.message.from_wire(found.reply(keep_dnssec=True))
    assert with_sigs.id == SIGNED_A.id
    assert with_sigs.question == SIGNED_A.question
    assert with_sigs.answer == SIGNED_A.answer
    # Like the general path's assembled reply: QR and RA, no AA, nothing but the answer.
    assert with_sigs.flags == dns.flags.QR | dns.flags.RA
    assert with_sigs.authority == [] and with_sigs.additional == []

    without = dns.message.from_wire(found.reply(keep_dnssec=False))
    assert [r.rdtype for r in without.answer] == [T.A]
    assert without.answer[0] == SIGNED_A.answer[0]


def _two_aaaa_with_the_first_owner_spelt(spelling: bytes) -> bytes:
    # dnspython compresses every owner to a pointer; spell the first one out.
    owner = dns.name.from_text(QNAME).to_wire()
    header_and_question = response(qtype="AAAA").to_wire()[: 12 + len(owner) + 4]
    wire = bytearray(header_and_question)
    wire[6:8] = (2).to_bytes(2, "big")  # ANCOUNT
    wire[10:12] = b"\0\0"  # no OPT: ARCOUNT 0
    rdata = struct.Struct("!HHIH")
    wire += spelling + rdata.pack(T.AAAA, 1, 300, 16) + bytes(15) + b"\x01"
    wire += b"\xc0\x0c" + rdata.pack(T.AAAA, 1, 300, 16) + bytes(15) + b"\x02"
    return bytes(wire)


def test_several_records_and_an_uncompressed_owner() -> None:
    wire = _two_aaaa_with_the_first_owner_spelt(dns.name.from_text(QNAME).to_wire())
    found = scan_direct_answer(wire, T.AAAA)
    assert found is not None and found.data_count == 2
    parsed = dns.message.from_wire(found.reply(keep_dnssec=False))
    assert sorted(rd.address for rd in parsed.answer[0]) == ["::1", "::2"]


def test_an_uncompressed_owner_in_another_case_takes_the_general_path() -> None:
    # It could be the random case of a DNS 0x20 query echoed back: passed on, it would reach
    # clients and the cache; the general path writes it as a pointer to the client's question.
    wire = _two_aaaa_with_the_first_owner_spelt(b"\x03wWw\x07ExAMplE\x03oRG\x00")
    assert scan_direct_answer(wire, T.AAAA) is None


@pytest.mark.parametrize(
    ("reply", "qtype"),
    [
        pytest.param(response(answer=[f"{QNAME} 300 IN A 192.0.2.1"], aa=False), T.A,
                     id="not authoritative"),
        pytest.param(response(authority=["example.org. 300 IN SOA ns.example.org. hm.example.org. 1 2 3 4 5"],
                              rcode=dns.rcode.NXDOMAIN), T.A, id="nxdomain"),
        pytest.param(response(authority=["example.org. 300 IN SOA ns.example.org. hm.example.org. 1 2 3 4 5"]), T.A,
                     id="nodata"),
        pytest.param(response(answer=[f"{QNAME} 300 IN CNAME web.example.org.",
                                      "web.example.org. 300 IN A 192.0.2.1"]), T.A,
                     id="cname chain"),
        pytest.param(response(answer=["other.example.org. 300 IN A 192.0.2.1"]), T.A,
                     id="another owner"),
        pytest.param(response(answer=[f"{QNAME} 300 IN A 192.0.2.1", rrsig(QNAME, "A", 2)],
                              authority=["a.example.org. 300 IN NSEC z.example.org. A"]), T.A,
                     id="wildcard expansion"),
        pytest.param(response(answer=[f"{QNAME} 300 IN A 192.0.2.1", rrsig(QNAME, "A", 3)],
                              authority=["a.example.org. 300 IN NSEC z.example.org. A"]), T.A,
                     id="denial records beside the answer"),
        pytest.param(response(answer=[f"{QNAME} 300 IN A 192.0.2.1",
                                      rrsig(QNAME, "AAAA", 3)]), T.A,
                     id="signature over another type"),
        pytest.param(response(answer=[f"{QNAME} 300 IN A 192.0.2.1",
                                      f"{QNAME} 300 IN TXT hello"]), T.A,
                     id="a record of another type"),
        pytest.param(response(qtype="CNAME", answer=[f"{QNAME} 300 IN CNAME w.example.org."]),
                     T.CNAME, id="cname question"),
        pytest.param(response(qtype="ANY", answer=[f"{QNAME} 300 IN A 192.0.2.1"]), T.ANY,
                     id="any question"),
    ],
)
def test_what_is_left_to_the_general_path(reply: dns.message.Message, qtype: int) -> None:
    assert scan_direct_answer(reply.to_wire(), qtype) is None


def test_truncated_and_signature_first_answers_are_not_direct() -> None:
    plain = response(answer=[f"{QNAME} 300 IN A 192.0.2.1"])
    plain.flags |= dns.flags.TC
    assert scan_direct_answer(plain.to_wire(), T.A) is None
    sig_first = response(answer=[rrsig(QNAME, "A", 3), f"{QNAME} 300 IN A 192.0.2.1"])
    assert scan_direct_answer(sig_first.to_wire(), T.A) is None


def test_every_cut_of_a_good_answer_is_refused_without_raising() -> None:
    wire = SIGNED_A.to_wire()
    for end in range(len(wire)):
        cut = wire[:end]
        found = scan_direct_answer(cut, T.A)
        # Only the additional or authority section may be missing: the answer is whole.
        if found is not None:
            assert found.answer_end <= end


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([T.A, T.AAAA, T.MX, T.TXT, T.NS]))
def test_random_bytes_never_raise(wire: bytes, qtype: int) -> None:
    found = scan_direct_answer(wire, qtype)
    if found is not None:
        assert found.data_end <= found.answer_end <= len(wire)
        found.reply(keep_dnssec=False)
