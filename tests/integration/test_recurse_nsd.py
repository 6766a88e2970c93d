"""`resolver.mode: recursive` with DNSSEC against real NSD servers, with Unbound as the oracle.

The lab (fastdns/_testing/nsd_lab.py) is a signed root, three TLDs and leaf zones on
127.53.N.x port 53, some of them broken on purpose. Every name in CASES is asked of fastdns
(and of Unbound, where it can run: it only asks port 53) over real sockets; the expectations
come from RFC 4035 and RFC 5155, and Unbound must agree with fastdns on each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns._testing import ServerProcess
from fastdns._testing.nsd_lab import LabUnavailable, LabZone, NsdHierarchy
from fastdns._testing.unbound import UnboundProcess, UnboundUnavailable

pytestmark = pytest.mark.slow

# 16 TXT records of 200 octets: ~3.4 KB, more than any EDNS buffer the resolvers offer.
BIG_TXT = [f'big TXT "{chr(ord("a") + i) * 200}"' for i in range(16)]
PAST = ("20200101000000", "20200201000000")
FUTURE = ("20990101000000", "20991231000000")

ZONES = [
    LabZone(".", {"a.root-servers.": "root"}, signing="nsec", algorithm="RSASHA256"),
    LabZone("org.", {"ns1.org.": "org"}, signing="nsec3"),
    LabZone("net.", {"ns1.net.": "net"}, signing="nsec3-optout", nsec3_salt="ab12",
            nsec3_iterations=5),
    LabZone("test.", {"ns1.test.": "test"}, signing="nsec"),
    LabZone("example.org.", {"ns1.example.org.": "leaf"}, signing="nsec", records=[
        "www A 192.0.2.1",
        "www AAAA 2001:db8::1",
        "*.wild A 192.0.2.2",
        "a.b A 192.0.2.3",  # b.example.org is an empty non-terminal
        "cname CNAME www.example.net.",
        "tounsigned CNAME www.unsigned.test.",
        "dname DNAME example.net.",
        *BIG_TXT,
    ]),
    LabZone("example.net.", {"ns1.example.net.": "leaf2"}, signing="nsec3", records=[
        "www A 192.0.2.11",
        "*.wild A 192.0.2.12",
        "back CNAME www.example.org.",
    ]),
    # Insecure delegations: under NSEC, under NSEC3, under an NSEC3 opt-out span.
    LabZone("unsigned.test.", {"ns1.unsigned.test.": "leaf2"}, records=["www A 192.0.2.21"]),
    LabZone("unsigned.org.", {"ns1.unsigned.org.": "leaf2"}, records=["www A 192.0.2.22"]),
    LabZone("unsigned.net.", {"ns1.unsigned.net.": "leaf2"}, records=["www A 192.0.2.23"]),
    LabZone("island.test.", {"ns1.island.test.": "leaf"}, signing="nsec", ds="none",
            records=["www A 192.0.2.24"]),
    # RFC 4035 §5.2: a DS set with no supported algorithm or digest makes the zone insecure.
    LabZone("unsupalg.test.", {"ns1.unsupalg.test.": "leaf"}, signing="nsec",
            ds="unsupported-algorithm", records=["www A 192.0.2.25"]),
    LabZone("unsupdig.test.", {"ns1.unsupdig.test.": "leaf"}, signing="nsec3",
            ds="unsupported-digest", records=["www A 192.0.2.26"]),
    # Broken on purpose.
    LabZone("bogus.test.", {"ns1.bogus.test.": "leaf"}, signing="nsec",
            tamper=["www.bogus.test."], records=["www A 192.0.2.31", "ok A 192.0.2.32"]),
    LabZone("expired.test.", {"ns1.expired.test.": "leaf"}, signing="nsec",
            signature_window=PAST, records=["www A 192.0.2.33"]),
    LabZone("future.test.", {"ns1.future.test.": "leaf"}, signing="nsec",
            signature_window=FUTURE, records=["www A 192.0.2.34"]),
    LabZone("dsmismatch.test.", {"ns1.dsmismatch.test.": "leaf"}, signing="nsec",
            ds="mismatch", records=["www A 192.0.2.35"]),
    LabZone("unknownkey.test.", {"ns1.unknownkey.test.": "leaf"}, signing="nsec3",
            ds="unknown-key", records=["www A 192.0.2.36"]),
    LabZone("stripped.test.", {"ns1.stripped.test.": "leaf"}, signing="nsec",
            serve_unsigned=True, records=["www A 192.0.2.37"]),
    # Delegation shapes: one lame server of two, no server at all, no glue.
    LabZone("lame.org.", {"ns1.lame.org.": "lame", "ns2.lame.org.": "leaf"},
            served_by=["leaf"], signing="nsec3", records=["www A 192.0.2.41"]),
    LabZone("alllame.org.", {"ns1.alllame.org.": "lame"}, served_by=[],
            records=["www A 192.0.2.42"]),
    LabZone("glueless.org.", {"ns.example.net.": "leaf2"}, signing="nsec",
            records=["www A 192.0.2.43"]),
    # Wildcard CNAMEs: to another zone, and to the same one.
    LabZone("wc.test.", {"ns1.wc.test.": "leaf"}, signing="nsec", records=[
        "*.x CNAME www.example.net.",
        "*.y CNAME www",
        "www A 192.0.2.51",
    ]),
]

NOERROR, NXDOMAIN, SERVFAIL = dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL
# RFC 8914 INFO-CODEs acceptable for each kind of failure.
EDE_BOGUS = {6}  # DNSSEC Bogus
EDE_EXPIRED = {7, 6}  # Signature Expired
EDE_NOT_YET_VALID = {8, 6}  # Signature Not Yet Valid
EDE_NO_KEY = {9, 6}  # DNSKEY Missing
EDE_UNSIGNED = {9, 10, 6}  # DNSKEY Missing, RRSIGs Missing
EDE_UNREACHABLE = {22, 23}  # No Reachable Authority, Network Error


@dataclass(frozen=True)
class Case:
    name: str
    qtype: str = "A"
    rcode: int = NOERROR
    ad: bool = True
    data: tuple[str, ...] | None = None  # sorted answer rdata of qtype, if checked
    ede: frozenset[int] = frozenset()

    def __str__(self) -> str:
        return f"{self.name}/{self.qtype}"


def _case(name: str, qtype: str = "A", rcode: int = NOERROR, ad: bool = True,
          data: tuple[str, ...] | None = None, ede: set[int] | None = None) -> Case:
    return Case(name, qtype, rcode, ad, data, frozenset(ede or ()))


CASES = [
    # Secure, NSEC (example.org) and NSEC3 (example.net, org.)
    _case("www.example.org.", data=("192.0.2.1",)),
    _case("www.example.org.", "AAAA", data=("2001:db8::1",)),
    _case("www.example.org.", "TXT", data=()),  # NODATA
    _case("missing.example.org.", rcode=NXDOMAIN),
    _case("b.example.org.", data=()),  # empty non-terminal
    _case("a.b.example.org.", data=("192.0.2.3",)),
    _case("x.wild.example.org.", data=("192.0.2.2",)),  # wildcard, NSEC proof of x
    _case("x.wild.example.org.", "AAAA", data=()),  # wildcard NODATA
    _case("www.example.net.", data=("192.0.2.11",)),
    _case("missing.example.net.", rcode=NXDOMAIN),
    _case("www.example.net.", "MX", data=()),
    _case("x.wild.example.net.", data=("192.0.2.12",)),  # wildcard, NSEC3 proof
    _case("x.wild.example.net.", "TXT", data=()),
    _case("cname.example.org.", data=("192.0.2.11",)),  # NSEC zone -> NSEC3 zone
    _case("back.example.net.", data=("192.0.2.1",)),
    _case("www.dname.example.org.", data=("192.0.2.11",)),
    _case("big.example.org.", "TXT"),  # ~3.4 KB: truncated over UDP, fetched over TCP
    _case("missing.", rcode=NXDOMAIN),
    _case("missing.org.", rcode=NXDOMAIN),
    _case("org.", "SOA"),
    _case("example.org.", "DNSKEY"),
    _case("example.org.", "DS"),
    _case("unsigned.test.", "DS", data=()),  # secure proof that there is no DS (NSEC)
    _case("unsigned.org.", "DS", data=()),  # the same from NSEC3
    # Insecure: unsigned delegations, a signed island without DS, DS nobody can use
    _case("www.unsigned.test.", ad=False, data=("192.0.2.21",)),
    _case("missing.unsigned.test.", rcode=NXDOMAIN, ad=False),
    _case("www.unsigned.org.", ad=False, data=("192.0.2.22",)),
    _case("www.unsigned.net.", ad=False, data=("192.0.2.23",)),  # NSEC3 opt-out span
    _case("missing.net.", rcode=NXDOMAIN, ad=False),  # RFC 5155 §9.2: opt-out, not proven
    _case("www.island.test.", ad=False, data=("192.0.2.24",)),
    _case("www.unsupalg.test.", ad=False, data=("192.0.2.25",)),
    _case("www.unsupdig.test.", ad=False, data=("192.0.2.26",)),
    _case("tounsigned.example.org.", ad=False, data=("192.0.2.21",)),
    # Bogus: SERVFAIL with a reason
    _case("www.bogus.test.", rcode=SERVFAIL, ad=False, ede=EDE_BOGUS),
    _case("ok.bogus.test.", data=("192.0.2.32",)),  # the zone's other data is fine
    _case("www.expired.test.", rcode=SERVFAIL, ad=False, ede=EDE_EXPIRED),
    _case("www.future.test.", rcode=SERVFAIL, ad=False, ede=EDE_NOT_YET_VALID),
    _case("www.dsmismatch.test.", rcode=SERVFAIL, ad=False, ede=EDE_NO_KEY),
    _case("www.unknownkey.test.", rcode=SERVFAIL, ad=False, ede=EDE_NO_KEY),
    _case("www.stripped.test.", rcode=SERVFAIL, ad=False, ede=EDE_UNSIGNED),
    # Delegation shapes
    _case("www.lame.org.", data=("192.0.2.41",)),
    _case("www.alllame.org.", rcode=SERVFAIL, ad=False, ede=EDE_UNREACHABLE),
    _case("www.glueless.org.", data=("192.0.2.43",)),
    # Wildcards that expand to a CNAME (RFC 4592 §4.4): the proof that the name itself does
    # not exist comes with the first response of the chain.
    _case("a.y.wc.test.", data=("192.0.2.51",)),
    _case("a.x.wc.test.", data=("192.0.2.11",)),
    # A client may ask for the signatures themselves; they cannot be validated, so no AD.
    _case("www.example.org.", "RRSIG", ad=False),
]
CASE_PARAMS = [pytest.param(c, id=str(c)) for c in CASES]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdHierarchy]:
    hierarchy = NsdHierarchy(ZONES, tmp_path_factory.mktemp("nsd-lab"))
    try:
        hierarchy.start()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield hierarchy
    finally:
        hierarchy.stop()


@pytest.fixture(scope="module", params=[False, True], ids=["lowercase", "0x20"])
def fastdns(request: pytest.FixtureRequest, lab: NsdHierarchy,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """fastdns asking NSD in lowercase, and with DNS 0x20 (NSD echoes the case it is asked
    in): every test that takes it runs against both."""
    config = {
        "resolver": {
            "mode": "recursive",
            "root_hints": lab.root_hints_path,
            "query_loopback": True,
            "nameserver_port": lab.port,
            "timeout_s": 5.0,
            "retry_interval_s": 0.3,
            "use_0x20": request.param,
        },
        "dnssec": {"enabled": True, "trust_anchor": lab.trust_anchor_path},
    }
    with ServerProcess(config, tmp_path_factory.mktemp("fastdns")) as server:
        yield server


@pytest.fixture(scope="module")
def unbound(lab: NsdHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundProcess]:
    if lab.port != 53:
        pytest.skip("Unbound asks name servers on port 53 only, and binding it needs root")
    try:
        oracle = UnboundProcess(tmp_path_factory.mktemp("unbound"), lab.root_hints_path,
                                lab.trust_anchor_path)
    except UnboundUnavailable as exc:
        pytest.skip(str(exc))
    with oracle:
        yield oracle


def ask(server: ServerProcess | UnboundProcess, name: str, qtype: str = "A", *,
        want_dnssec: bool = True, cd: bool = False, ad: bool = False, tcp: bool = False,
        payload: int = 1232) -> dns.message.Message:
    """One question, as a stub would ask it: EDNS, and over TCP again if truncated."""
    query = dns.message.make_query(name, qtype, use_edns=0, payload=payload,
                                   want_dnssec=want_dnssec)
    query.flags |= (dns.flags.CD if cd else 0) | (dns.flags.AD if ad else 0)
    if not tcp:
        reply = dns.query.udp(query, server.host, port=server.port, timeout=10)
        if not reply.flags & dns.flags.TC:
            return reply
    return dns.query.tcp(query, server.host, port=server.port, timeout=10)


def _data(reply: dns.message.Message, qtype: str) -> tuple[str, ...]:
    rdtype = dns.rdatatype.from_text(qtype)
    return tuple(sorted(rd.to_text() for rrset in reply.answer if rrset.rdtype == rdtype
                        for rd in rrset))


def _records(reply: dns.message.Message) -> set[tuple[str, int, str]]:
    """The answer section without signatures or TTLs, comparable between resolvers."""
    return {(rrset.name.to_text().lower(), rrset.rdtype, rd.to_text())
            for rrset in reply.answer if rrset.rdtype != dns.rdatatype.RRSIG for rd in rrset}


def _ede(reply: dns.message.Message) -> list[int]:
    return [o.code for o in reply.options if o.otype == dns.edns.EDE]


def _summary(reply: dns.message.Message) -> str:
    return (f"{dns.rcode.to_text(reply.rcode())} AD={int(bool(reply.flags & dns.flags.AD))} "
            f"EDE={_ede(reply)} answer={sorted(_records(reply))}")


def _assert_same(ours: dns.message.Message, theirs: dns.message.Message) -> None:
    """Same rcode, AD and answer records (the EDE codes are only shown: they may differ)."""
    def outcome(reply: dns.message.Message) -> tuple[int, bool, set[tuple[str, int, str]]]:
        return reply.rcode(), bool(reply.flags & dns.flags.AD), _records(reply)

    assert outcome(ours) == outcome(theirs), (
        f"fastdns: {_summary(ours)}\nunbound: {_summary(theirs)}")


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_each_name_gets_the_rcode_and_security_rfc4035_gives_it(fastdns, case):
    reply = ask(fastdns, case.name, case.qtype)
    assert (reply.rcode(), bool(reply.flags & dns.flags.AD)) == (case.rcode, case.ad), \
        _summary(reply)
    if case.data is not None:
        assert _data(reply, case.qtype) == case.data, _summary(reply)
    if case.rcode == SERVFAIL:
        # RFC 8914: the client learns why.
        assert set(_ede(reply)) & case.ede, _summary(reply)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_fastdns_agrees_with_unbound(fastdns, unbound, case):
    _assert_same(ask(fastdns, case.name, case.qtype), ask(unbound, case.name, case.qtype))


def test_checking_disabled_gets_the_bogus_data_without_ad(fastdns):
    reply = ask(fastdns, "www.bogus.test.", cd=True)
    assert reply.rcode() == NOERROR, _summary(reply)
    # The tampered address, unvalidated (RFC 4035 §3.2.2), and not called authentic.
    assert _data(reply, "A") == ("192.0.2.254",)
    assert not reply.flags & dns.flags.AD


@pytest.mark.parametrize("case", [c for c in CASES if c.rcode == SERVFAIL], ids=str)
def test_checking_disabled_gets_what_unbound_gets(fastdns, unbound, case):
    _assert_same(ask(fastdns, case.name, case.qtype, cd=True),
                 ask(unbound, case.name, case.qtype, cd=True))


def test_secure_data_carries_signatures_for_do_clients_only(fastdns):
    with_do = ask(fastdns, "www.example.org.")
    assert any(r.rdtype == dns.rdatatype.RRSIG for r in with_do.answer)
    plain = ask(fastdns, "www.example.org.", want_dnssec=False)
    assert _data(plain, "A") == ("192.0.2.1",)
    assert not any(r.rdtype == dns.rdatatype.RRSIG for r in plain.answer)
    assert not plain.flags & dns.flags.AD  # neither DO nor AD asked for it
    # RFC 6840 §5.7: AD=1 in the query asks for AD without the signatures.
    ad_only = ask(fastdns, "www.example.org.", want_dnssec=False, ad=True)
    assert ad_only.flags & dns.flags.AD and not any(
        r.rdtype == dns.rdatatype.RRSIG for r in ad_only.answer)


@pytest.mark.parametrize(("name", "qtype", "rcode", "proof"), [
    ("missing.example.org.", "A", NXDOMAIN, dns.rdatatype.NSEC),
    ("missing.example.net.", "A", NXDOMAIN, dns.rdatatype.NSEC3),
    ("www.example.org.", "TXT", NOERROR, dns.rdatatype.NSEC),
    ("www.example.net.", "MX", NOERROR, dns.rdatatype.NSEC3),
])
def test_negative_answers_carry_their_denial_proof(fastdns, name, qtype, rcode, proof):
    reply = ask(fastdns, name, qtype)
    assert reply.rcode() == rcode and reply.flags & dns.flags.AD and not reply.answer
    types = {r.rdtype for r in reply.authority}
    assert {dns.rdatatype.SOA, proof} <= types
    assert any(r.rdtype == dns.rdatatype.RRSIG and r.covers == proof for r in reply.authority)


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(fastdns):
    over_udp = dns.query.udp(
        dns.message.make_query("big.example.org.", "TXT", use_edns=0, payload=1232,
                               want_dnssec=True),
        fastdns.host, port=fastdns.port, timeout=10)
    assert over_udp.flags & dns.flags.TC
    reply = ask(fastdns, "big.example.org.", "TXT", tcp=True)
    # All 16 records: fastdns itself fell back to TCP towards NSD (RFC 7766 §5).
    assert len(_data(reply, "TXT")) == 16
    assert reply.flags & dns.flags.AD


def test_the_lab_serves_what_it_was_told_to(lab):
    # The lame host refuses the zone it is named for; the leaf has a tampered address.
    query = dns.message.make_query("www.lame.org.", "A")
    refused = dns.query.udp(query, lab.address("lame"), port=lab.port, timeout=5)
    assert refused.rcode() == dns.rcode.REFUSED
    tampered = dns.query.udp(dns.message.make_query("www.bogus.test.", "A", want_dnssec=True),
                             lab.address("leaf"), port=lab.port, timeout=5)
    assert _data(tampered, "A") == ("192.0.2.254",)
    assert lab.trust_anchor_path is not None
    assert lab.trust_anchor_path.read_text().startswith(". 3600 IN DS ")
    assert lab.address("root") in lab.root_hints_path.read_text()
