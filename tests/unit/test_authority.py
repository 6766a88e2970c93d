"""Tests of the fake signed tree's servers: what they answer, asked directly over loopback, is
what RFC 1034 §4.3.2 and RFC 4035 §3.1 say an authoritative server answers."""

from __future__ import annotations

from collections.abc import Iterator

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import Hierarchy, Signing
from fastdns._testing.zonesign import Zone

T = dns.rdatatype
ROOT, ORG, NET, LEAF = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


@pytest.fixture(scope="module")
def tree() -> Iterator[Hierarchy]:
    """. (NSEC) → org. (NSEC) → example.org. (NSEC3), unsigned.org. (no DS);
    . → net. (NSEC3 opt-out) → unsigned.net. (no DS, out of the chain)."""
    h = Hierarchy()
    h.zone(".", ROOT, signing=Signing())
    h.delegate(ROOT, "org.", {"ns1.org.": ORG})
    h.delegate(ROOT, "net.", {"ns1.net.": NET})
    h.zone("org.", ORG, f"ns1 300 IN A {ORG}", signing=Signing())
    h.zone("net.", NET, f"ns1 300 IN A {NET}", signing=Signing(nsec3=True, opt_out=True))
    h.delegate(ORG, "example.org.", {"ns1.example.org.": LEAF})
    h.delegate(ORG, "unsigned.org.", {"ns.elsewhere.net.": None})
    h.delegate(NET, "unsigned.net.", {"ns.unsigned.net.": LEAF})
    h.zone("example.org.", LEAF,
           "www 300 IN A 192.0.2.1",
           "*.wild 300 IN A 192.0.2.2",
           "alias 300 IN CNAME www.example.org.",
           "dn 300 IN DNAME example.net.",
           signing=Signing(nsec3=True))
    h.zone("unsigned.net.", LEAF, "www 300 IN A 192.0.2.3")
    try:
        yield h
    finally:
        h.stop()


def ask(tree: Hierarchy, address: str, name: str, qtype: str = "A", *,
        do: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0, want_dnssec=do)
    query.flags &= ~dns.flags.RD
    return dns.query.udp(query, address, port=tree.port, timeout=5)


def types(section: list[dns.rrset.RRset]) -> list[str]:
    return sorted(f"RRSIG({T.to_text(r.covers)})" if r.rdtype == T.RRSIG else T.to_text(r.rdtype)
                  for r in section)


def owners(section: list[dns.rrset.RRset], rdtype: int) -> set[dns.name.Name | None]:
    return {r.name for r in section if r.rdtype == rdtype}


def verify(section: list[dns.rrset.RRset], zone: Zone) -> None:
    """Every rrset in `section` with an RRSIG verifies with `zone`'s keys."""
    keys = {zone.origin: zone.get(zone.origin, T.DNSKEY)}
    for sig in (r for r in section if r.rdtype == T.RRSIG):
        (rrset,) = [r for r in section if r.name == sig.name and r.rdtype == sig.covers]
        dns.dnssec.validate(rrset, sig, keys)


def test_referral_to_a_signed_child_carries_its_signed_ds(tree: Hierarchy) -> None:
    reply = ask(tree, ORG, "www.example.org")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.AA
    assert not reply.answer and types(reply.authority) == ["DS", "NS", "RRSIG(DS)"]
    verify(reply.authority, tree.served_zone("org."))
    assert [r.to_text() for r in reply.additional if r.rdtype == T.A] == [
        f"ns1.example.org. 3600 IN A {LEAF}"
    ]
    # RFC 4035 §3.1.4: no DS for a client that did not set DO.
    assert types(ask(tree, ORG, "www.example.org", do=False).authority) == ["NS"]


def test_referral_to_an_unsigned_child_proves_there_is_no_ds(tree: Hierarchy) -> None:
    reply = ask(tree, ORG, "www.unsigned.org")
    assert types(reply.authority) == ["NS", "NSEC", "RRSIG(NSEC)"]
    (nsec,) = [r for r in reply.authority if r.rdtype == T.NSEC]
    assert nsec.name == dns.name.from_text("unsigned.org.") and "DS" not in nsec.to_text()
    assert not reply.additional or all(r.rdtype == T.OPT for r in reply.additional)  # glueless
    # RFC 5155 §7.2.7: under opt-out, the closest provable encloser and an opt-out span.
    net = tree.served_zone("net.")
    nsec3 = ask(tree, NET, "www.unsigned.net")
    assert owners(nsec3.authority, T.NSEC3) == {
        net.nsec3_matching(net.origin), net.nsec3_covering(dns.name.from_text("unsigned.net."))
    }
    assert all(r[0].flags & 1 for r in nsec3.authority if r.rdtype == T.NSEC3)  # opt-out
    verify(nsec3.authority, net)


def test_ds_at_a_cut_is_answered_by_the_parent(tree: Hierarchy) -> None:
    reply = ask(tree, ORG, "example.org", "DS")
    assert reply.flags & dns.flags.AA and types(reply.answer) == ["DS", "RRSIG(DS)"]
    none = ask(tree, ORG, "unsigned.org", "DS")
    assert none.flags & dns.flags.AA and not none.answer
    assert types(none.authority) == ["NSEC", "RRSIG(NSEC)", "RRSIG(SOA)", "SOA"]


def test_keys_at_the_apex(tree: Hierarchy) -> None:
    reply = ask(tree, LEAF, "example.org", "DNSKEY")
    assert types(reply.answer) == ["DNSKEY", "RRSIG(DNSKEY)"]
    verify(reply.answer, tree.served_zone("example.org."))
    assert types(ask(tree, LEAF, "example.org", "DNSKEY", do=False).answer) == ["DNSKEY"]


def test_answers_nxdomain_and_nodata_with_proofs_only_for_do(tree: Hierarchy) -> None:
    zone = tree.served_zone("example.org.")
    answer = ask(tree, LEAF, "www.example.org")
    assert answer.flags & dns.flags.AA and types(answer.answer) == ["A", "RRSIG(A)"]
    nxdomain = ask(tree, LEAF, "nothing.example.org")
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    # RFC 5155 §7.2.2: closest encloser match, next closer covered, wildcard covered.
    assert owners(nxdomain.authority, T.NSEC3) == {
        zone.nsec3_matching(zone.origin),
        zone.nsec3_covering(dns.name.from_text("nothing.example.org.")),
        zone.nsec3_covering(dns.name.from_text("*.example.org.")),
    }
    assert {"SOA", "RRSIG(SOA)", "RRSIG(NSEC3)"} < set(types(nxdomain.authority))
    verify(nxdomain.authority, zone)
    nodata = ask(tree, LEAF, "www.example.org", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert types(nodata.authority) == ["NSEC3", "RRSIG(NSEC3)", "RRSIG(SOA)", "SOA"]
    plain = ask(tree, LEAF, "nothing.example.org", do=False)
    assert plain.rcode() == dns.rcode.NXDOMAIN and types(plain.authority) == ["SOA"]


def test_wildcard_expansion_with_the_proof_the_name_does_not_exist(tree: Hierarchy) -> None:
    reply = ask(tree, LEAF, "a.b.wild.example.org")
    (a,) = [r for r in reply.answer if r.rdtype == T.A]
    assert a.name == dns.name.from_text("a.b.wild.example.org.") and a[0].address == "192.0.2.2"
    (sig,) = [r for r in reply.answer if r.rdtype == T.RRSIG]
    assert sig[0].labels == 3  # RFC 4034 §3.1.3: the labels of *.wild.example.org
    assert types(reply.authority) == ["NSEC3", "RRSIG(NSEC3)"]
    verify(reply.answer + reply.authority, tree.served_zone("example.org."))


def test_cname_and_dname_are_followed_inside_the_server(tree: Hierarchy) -> None:
    alias = ask(tree, LEAF, "alias.example.org")
    assert types(alias.answer) == ["A", "CNAME", "RRSIG(A)", "RRSIG(CNAME)"]
    # RFC 6672 §3.2: the signed DNAME and an unsigned synthesised CNAME; example.net is not here.
    dname = ask(tree, LEAF, "www.dn.example.org")
    assert dname.rcode() == dns.rcode.NOERROR
    assert types(dname.answer) == ["CNAME", "DNAME", "RRSIG(DNAME)"]
    (cname,) = [r for r in dname.answer if r.rdtype == T.CNAME]
    assert cname[0].target == dns.name.from_text("www.example.net.")


def test_names_outside_the_servers_zones_are_refused(tree: Hierarchy) -> None:
    assert ask(tree, LEAF, "www.example.com").rcode() == dns.rcode.REFUSED


def test_a_signed_root_gives_a_trust_anchor(tree: Hierarchy, tmp_path) -> None:
    text = tree.trust_anchor_path(tmp_path).read_text()
    keys = tree.served_zone(".").get(dns.name.root, T.DNSKEY)
    assert keys is not None
    ksk = next(k for k in keys if k.flags == 257)
    assert text == f". 300 IN DS {dns.dnssec.make_ds(dns.name.root, ksk, 'SHA256')}\n"


def test_declaring_a_zone_again_with_other_signing_is_an_error(tree: Hierarchy) -> None:
    with pytest.raises(ValueError, match="other signing"):
        tree.zone("org.", ORG, signing=Signing(nsec3=True))
