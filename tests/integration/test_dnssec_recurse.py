"""DNSSEC end to end: `fastdns serve` in recursive mode validating a signed fake tree.

One server for the module, started as a user starts it, with the tree's root DS as its trust
anchor. The tree, each server on its own 127.0.0.x:

    .                 NSEC, KSK + ZSK                                               ROOT
    ├── org.          NSEC3, salted, 1 extra iteration                              ORG
    │   ├── example.org.     NSEC, KSK + ZSK: wildcards, CNAMEs, DNAME          EXAMPLE_ORG
    │   │   ├── child.example.org.     NSEC3, on its parent's server            EXAMPLE_ORG
    │   │   └── unsigned.example.org.  unsigned, no DS (NSEC proves it)         UNSIGNED
    │   ├── unsigned.org.    unsigned, no DS (NSEC3 proves it)                  UNSIGNED
    │   ├── many.org.        NSEC, asked about concurrently                     SLOW
    │   ├── slow.org.        NSEC3 with 151 iterations (RFC 9276 §3.2)          SLOW
    │   └── badsig. expired. notyet. norrsig. dsmismatch. alg253.org.           BROKEN
    └── net.          NSEC3 with opt-out, one CSK                                   NET
        ├── example.net.     NSEC3, Ed25519 CSK                                 EXAMPLE_NET
        └── unsigned.net.    unsigned, left out of net.'s chain by opt-out      UNSIGNED

Tests that count queries or depend on what is cached use names no other test asks for.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import Breakage, Hierarchy, ServerProcess, Signing
from fastdns._testing.zonesign import ZoneKeys

from . import recursive_config

ROOT, ORG, NET = "127.0.0.2", "127.0.0.3", "127.0.0.4"
EXAMPLE_ORG, EXAMPLE_NET, UNSIGNED, BROKEN = "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"
SLOW = "127.0.0.9"

# RFC 8914 §4: the INFO-CODE each broken zone must be reported with.
EDE = dns.edns.EDECode
BROKEN_ZONES = {
    "badsig.org.": (Signing(broken=Breakage.BAD_SIGNATURE), EDE.DNSSEC_BOGUS),
    "expired.org.": (Signing(broken=Breakage.EXPIRED), EDE.SIGNATURE_EXPIRED),
    "notyet.org.": (Signing(broken=Breakage.NOT_YET_VALID), EDE.SIGNATURE_NOT_YET_VALID),
    "norrsig.org.": (Signing(broken=Breakage.MISSING_RRSIG), EDE.RRSIGS_MISSING),
    # RFC 8914 §4.10: a DS exists, but no DNSKEY of the child matches it.
    "dsmismatch.org.": (Signing(broken=Breakage.DS_MISMATCH), EDE.DNSKEY_MISSING),
}
T = dns.rdatatype
MANY = 8  # names asked for at once in many.org


def build_tree() -> Hierarchy:
    h = Hierarchy()
    h.zone(".", ROOT, signing=Signing())
    h.delegate(ROOT, "org.", {"ns1.org.": ORG})
    h.delegate(ROOT, "net.", {"ns1.net.": NET})
    h.zone("org.", ORG, f"ns1 300 IN A {ORG}",
           signing=Signing(nsec3=True, salt=b"\xab\xcd", iterations=1))
    h.zone("net.", NET, f"ns1 300 IN A {NET}",
           signing=Signing(nsec3=True, opt_out=True, csk=True))
    h.delegate(ORG, "example.org.", {"ns1.example.org.": EXAMPLE_ORG})
    h.zone(
        "example.org.", EXAMPLE_ORG,
        f"ns1 300 IN A {EXAMPLE_ORG}",
        "www 300 IN A 192.0.2.1",
        "cached 300 IN A 192.0.2.3",
        "big 300 IN TXT " + " ".join(f'"{c * 250}"' for c in "abcdef"),
        "host.ent 300 IN A 192.0.2.4",
        "*.wild 300 IN A 192.0.2.2",
        "*.wildalias 300 IN CNAME www.example.net.",
        "alias 300 IN CNAME www.example.net.",
        "toinsecure 300 IN CNAME www.unsigned.org.",
        "dn 300 IN DNAME example.net.",
        signing=Signing(),
    )
    # Parent and child on one server, as hosters do: DS must come from the parent side.
    h.delegate(EXAMPLE_ORG, "child.example.org.", {"ns1.example.org.": EXAMPLE_ORG})
    h.zone("child.example.org.", EXAMPLE_ORG, "www 300 IN A 192.0.2.5",
           signing=Signing(nsec3=True))
    h.delegate(NET, "example.net.", {"ns1.example.net.": EXAMPLE_NET})
    h.zone(
        "example.net.", EXAMPLE_NET,
        f"ns1 300 IN A {EXAMPLE_NET}",
        "www 300 IN A 192.0.2.10",
        "*.wild 300 IN A 192.0.2.11",
        "host.ent 300 IN A 192.0.2.12",
        signing=Signing(algorithm=dns.dnssec.Algorithm.ED25519, csk=True, nsec3=True),
    )
    for parent, child in ((ORG, "unsigned.org."), (NET, "unsigned.net."),
                          (EXAMPLE_ORG, "unsigned.example.org.")):
        h.delegate(parent, child, {f"ns.{child}": UNSIGNED})
        h.zone(child, UNSIGNED, f"ns 300 IN A {UNSIGNED}", "www 300 IN A 192.0.2.20")
    h.delegate(ORG, "many.org.", {"ns.many.org.": SLOW})
    h.zone("many.org.", SLOW, f"ns 300 IN A {SLOW}",
           *(f"n{i} 300 IN A 192.0.2.{50 + i}" for i in range(MANY)), signing=Signing())
    h.delegate(ORG, "slow.org.", {"ns.slow.org.": SLOW})
    h.zone("slow.org.", SLOW, f"ns 300 IN A {SLOW}", "www 300 IN A 192.0.2.40",
           signing=Signing(nsec3=True, iterations=151))
    zones: dict[str, Signing] = {z: s for z, (s, _) in BROKEN_ZONES.items()}
    zones["alg253.org."] = Signing(algorithm=253)
    for child, signing in zones.items():
        h.delegate(ORG, child, {f"ns.{child}": BROKEN})
        h.zone(child, BROKEN, f"ns 300 IN A {BROKEN}", "www 300 IN A 192.0.2.30",
               signing=signing)
    return h


@pytest.fixture(scope="module")
def tree() -> Iterator[Hierarchy]:
    h = build_tree()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def server(tree: Hierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("dnssec-recurse")
    config = recursive_config(tree, directory) | {
        "dnssec": {"enabled": True, "trust_anchor": str(tree.trust_anchor_path(directory))}
    }
    with ServerProcess(config, directory) as started:
        yield started


def ask(server: ServerProcess, name: str, qtype: str = "A", *, do: bool = True,
        ad: bool = False, cd: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0, want_dnssec=do)
    query.flags |= (dns.flags.AD if ad else 0) | (dns.flags.CD if cd else 0)
    return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=6)


def authentic(reply: dns.message.Message) -> bool:
    return bool(reply.flags & dns.flags.AD)


def types(section: list[dns.rrset.RRset]) -> set[str]:
    """The types in a section; an RRSIG shows as RRSIG(covered type)."""
    return {f"RRSIG({T.to_text(r.covers)})" if r.rdtype == T.RRSIG else T.to_text(r.rdtype)
            for r in section}


def ede_codes(reply: dns.message.Message) -> list[dns.edns.EDECode]:
    return [o.code for o in reply.options if o.otype == dns.edns.EDE]


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(rd.address for r in reply.answer if r.rdtype in (T.A, T.AAAA) for rd in r)


def assert_signed_by(section: list[dns.rrset.RRset], tree: Hierarchy, zone: str) -> None:
    """Every rrset in `section` but the RRSIGs verifies with `zone`'s keys (dnspython)."""
    origin = dns.name.from_text(zone)
    keys = {origin: tree.served_zone(zone).get(origin, T.DNSKEY)}
    checked = 0
    for rrset in section:
        if rrset.rdtype == T.RRSIG:
            continue
        (sig,) = [s for s in section if s.rdtype == T.RRSIG and s.name == rrset.name
                  and s.covers == rrset.rdtype]
        dns.dnssec.validate(rrset, sig, keys)
        checked += 1
    assert checked


# ---------------------------------------------------------------------------------------------
# Secure answers


def test_secure_answer_is_authentic_with_signatures_only_for_do_clients(server, tree):
    with_do = ask(server, "www.example.org")
    assert with_do.rcode() == dns.rcode.NOERROR and addresses(with_do) == ["192.0.2.1"]
    assert authentic(with_do)
    assert types(with_do.answer) == {"A", "RRSIG(A)"}
    assert_signed_by(with_do.answer, tree, "example.org.")
    # RFC 6840 §5.7: AD for a client that set AD without DO, but no RRSIG (RFC 4035 §3.2.1).
    ad_only = ask(server, "www.example.org", do=False, ad=True)
    assert authentic(ad_only) and types(ad_only.answer) == {"A"}
    plain = ask(server, "www.example.org", do=False)
    assert not authentic(plain) and types(plain.answer) == {"A"}


def test_keys_and_delegation_signer_are_secure(server, tree):
    dnskey = ask(server, "example.net", "DNSKEY")
    assert authentic(dnskey) and types(dnskey.answer) == {"DNSKEY", "RRSIG(DNSKEY)"}
    assert_signed_by(dnskey.answer, tree, "example.net.")
    ds = ask(server, "example.net", "DS")
    assert authentic(ds) and types(ds.answer) == {"DS", "RRSIG(DS)"}
    assert_signed_by(ds.answer, tree, "net.")


@pytest.mark.parametrize(("name", "zone", "proof"), [
    ("nothing.example.org.", "example.org.", "NSEC"),
    ("nothing.example.net.", "example.net.", "NSEC3"),
    ("a.b.ent.example.net.", "example.net.", "NSEC3"),  # closest encloser: an empty non-terminal
])
def test_secure_nxdomain_carries_its_proof(server, tree, name, zone, proof):
    reply = ask(server, name)
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
    assert authentic(reply)
    assert types(reply.authority) == {"SOA", "RRSIG(SOA)", proof, f"RRSIG({proof})"}
    assert_signed_by(reply.authority, tree, zone)
    # RFC 4035 §3.2.1: no proofs for a client that did not ask for DNSSEC records.
    plain = ask(server, name, do=False, ad=True)
    assert plain.rcode() == dns.rcode.NXDOMAIN and authentic(plain)
    assert types(plain.authority) == {"SOA"}


@pytest.mark.parametrize(("name", "zone", "proof"), [
    ("www.example.org", "example.org.", "NSEC"),
    ("ent.example.org", "example.org.", "NSEC"),  # an empty non-terminal (RFC 4035 §3.1.3.2)
    ("www.example.net", "example.net.", "NSEC3"),
    ("ent.example.net", "example.net.", "NSEC3"),
])
def test_secure_nodata_carries_its_proof(server, tree, name, zone, proof):
    reply = ask(server, name, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert authentic(reply)
    assert types(reply.authority) == {"SOA", "RRSIG(SOA)", proof, f"RRSIG({proof})"}
    assert_signed_by(reply.authority, tree, zone)


@pytest.mark.parametrize(("zone", "proof", "address"), [
    ("example.org.", "NSEC", "192.0.2.2"),
    ("example.net.", "NSEC3", "192.0.2.11"),
])
def test_wildcard_answer_is_secure_with_the_proof_the_name_does_not_exist(
    server, tree, zone, proof, address
):
    name = f"anything.wild.{zone}"
    reply = ask(server, name)
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == [address]
    assert authentic(reply)
    (rrsig,) = [r for r in reply.answer if r.rdtype == T.RRSIG]
    # RFC 4035 §5.3.4: the RRSIG's labels say the owner was made from a wildcard.
    assert rrsig.name == dns.name.from_text(name) and rrsig[0].labels == 3
    assert types(reply.authority) == {proof, f"RRSIG({proof})"}


def test_a_question_for_rrsig_gets_the_signatures(server):
    reply = ask(server, "www.example.org", "RRSIG", do=False)
    assert reply.rcode() == dns.rcode.NOERROR
    assert types(reply.answer) == {"RRSIG(A)", "RRSIG(NSEC)"}
    # RFC 4035 §2.2: RRSIGs are not signed themselves; there is nothing to make them AD.
    assert not authentic(reply)


def test_cname_between_secure_zones_is_authentic(server):
    reply = ask(server, "alias.example.org")
    assert addresses(reply) == ["192.0.2.10"]
    assert types(reply.answer) == {"CNAME", "RRSIG(CNAME)", "A", "RRSIG(A)"}
    assert authentic(reply)


@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_cname_made_from_a_wildcard_keeps_its_proof_into_the_next_zone(server, qtype):
    # The CNAME comes from example.org's wildcard, its target's answer (or NODATA) from
    # example.net: the NSEC showing the CNAME's owner does not exist must stay in the reply.
    reply = ask(server, "x.wildalias.example.org", qtype)
    assert reply.rcode() == dns.rcode.NOERROR and "CNAME" in types(reply.answer)
    assert authentic(reply)
    nsecs = [r for r in reply.authority if r.rdtype == T.NSEC]
    assert [r.name.to_text() for r in nsecs] == ["*.wildalias.example.org."]


def test_dname_is_validated_and_its_cname_followed(server):
    reply = ask(server, "www.dn.example.org")
    assert addresses(reply) == ["192.0.2.10"]
    assert types(reply.answer) == {"DNAME", "RRSIG(DNAME)", "CNAME", "A", "RRSIG(A)"}
    assert authentic(reply)


def test_a_child_zone_on_its_parents_server_is_secure(server, tree):
    assert authentic(ask(server, "www.child.example.org"))
    ds = ask(server, "child.example.org", "DS")
    assert authentic(ds) and types(ds.answer) == {"DS", "RRSIG(DS)"}
    assert_signed_by(ds.answer, tree, "example.org.")


def test_a_signed_answer_too_big_for_udp_is_fetched_over_tcp_and_validated(server, tree):
    query = dns.message.make_query("big.example.org", "TXT", use_edns=0, want_dnssec=True)
    reply, _ = dns.query.udp_with_fallback(query, "127.0.0.1", port=server.port, timeout=6)
    assert reply.rcode() == dns.rcode.NOERROR and authentic(reply)
    assert types(reply.answer) == {"TXT", "RRSIG(TXT)"}
    # RFC 7766 §5: the example.org server truncated its UDP answer; the TCP one was used.
    asked = [q for q in tree.server(EXAMPLE_ORG).queries if q.qname.lower() == "big.example.org."]
    assert {q.transport for q in asked} == {"udp", "tcp"}


def test_questions_at_once_into_a_new_zone_share_its_key_fetches(server, tree):
    names = [f"n{i}.many.org" for i in range(MANY)]
    with concurrent.futures.ThreadPoolExecutor(MANY) as pool:
        replies = list(pool.map(lambda name: ask(server, name), names))
    assert [addresses(r) for r in replies] == [[f"192.0.2.{50 + i}"] for i in range(MANY)]
    assert all(authentic(r) for r in replies)
    # The validator asks for a zone's keys once, however many questions wait for them.
    asked = [q for q in tree.server(SLOW).queries if q.qtype == "DNSKEY"]
    assert [q.qname.lower() for q in asked] == ["many.org."]


def test_a_cached_secure_answer_stays_authentic(server, tree):
    first = ask(server, "cached.example.org")
    second = ask(server, "cached.example.org")
    assert authentic(first) and authentic(second)
    assert addresses(second) == ["192.0.2.3"] and types(second.answer) == {"A", "RRSIG(A)"}
    asked = [q for q in tree.server(EXAMPLE_ORG).queries if q.qname.lower() == "cached.example.org."]
    assert len(asked) == 1  # the second answer came from the cache


# ---------------------------------------------------------------------------------------------
# Insecure answers: served, never AD


@pytest.mark.parametrize("zone", ["unsigned.org.", "unsigned.net.", "unsigned.example.org."])
def test_insecure_delegation_is_answered_without_ad(server, zone):
    # No DS, shown by org.'s NSEC3, by net.'s opt-out NSEC3 span, by example.org's NSEC.
    reply = ask(server, f"www.{zone}")
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.20"]
    assert not authentic(reply)
    negative = ask(server, f"nothing.{zone}")
    assert negative.rcode() == dns.rcode.NXDOMAIN and not authentic(negative)


def test_unsupported_algorithm_is_insecure_not_bogus(server):
    # RFC 4035 §5.2: a DS with only algorithms the validator lacks makes the zone insecure.
    reply = ask(server, "www.alg253.org")
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.30"]
    assert not authentic(reply)


def test_denials_with_too_many_nsec3_iterations_are_insecure(server):
    # RFC 9276 §3.2: above 150 iterations the proof is not checked; the answer is not secure.
    assert authentic(ask(server, "www.slow.org"))  # signatures still make data secure
    reply = ask(server, "nothing.slow.org")
    assert reply.rcode() == dns.rcode.NXDOMAIN and not authentic(reply)
    assert "NSEC3" in types(reply.authority)


def test_cname_from_a_secure_into_an_insecure_zone_is_not_authentic(server):
    reply = ask(server, "toinsecure.example.org")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["192.0.2.20"] and "CNAME" in types(reply.answer)
    assert not authentic(reply)


# ---------------------------------------------------------------------------------------------
# Bogus answers: SERVFAIL with the reason, unless checking is disabled


@pytest.mark.parametrize(("zone", "ede"), [(z, e) for z, (_, e) in BROKEN_ZONES.items()],
                         ids=list(BROKEN_ZONES))
def test_broken_zone_is_servfail_with_the_reason(server, zone, ede):
    reply = ask(server, f"www.{zone}")
    assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer
    assert ede_codes(reply) == [ede]


def test_checking_disabled_returns_bogus_data_without_ad(server):
    # RFC 4035 §3.2.2: CD=1 gets the data unvalidated; the changed address, never AD.
    reply = ask(server, "www.badsig.org", cd=True)
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.31"]
    assert not authentic(reply) and reply.flags & dns.flags.CD
    # ... and what CD=1 fetched is not what a validating client is served.
    again = ask(server, "www.badsig.org")
    assert again.rcode() == dns.rcode.SERVFAIL and ede_codes(again) == [EDE.DNSSEC_BOGUS]


# ---------------------------------------------------------------------------------------------
# Trust anchors


def test_answers_stay_secure_with_0x20(server_factory, tree, tmp_path):
    config = recursive_config(tree, tmp_path, use_0x20=True) | {
        "dnssec": {"enabled": True, "trust_anchor": str(tree.trust_anchor_path(tmp_path))}
    }
    servers = [tree.server(a) for a in (ROOT, ORG, NET, EXAMPLE_ORG, EXAMPLE_NET)]
    before = [len(s.queries) for s in servers]
    server = server_factory(config)
    # Answers, a wildcard, a CNAME across zones, NSEC3 denial, and a retry over TCP: the keys
    # and proofs fetched in random case validate, and the records keep the client's spelling.
    for name, qtype in [("WWW.example.ORG", "A"), ("AnyThing.Wild.Example.Org", "A"),
                        ("alias.example.org", "A"), ("nothing.EXAMPLE.net", "A"),
                        ("www.example.net", "AAAA")]:
        reply = ask(server, name, qtype)
        assert authentic(reply), name
        assert reply.question[0].name.to_text() == name + "."
        if reply.answer:
            assert reply.answer[0].name.to_text() == name + "."
    query = dns.message.make_query("BIG.example.org", "TXT", use_edns=0, want_dnssec=True)
    reply, _ = dns.query.udp_with_fallback(query, "127.0.0.1", port=server.port, timeout=6)
    assert authentic(reply) and types(reply.answer) == {"TXT", "RRSIG(TXT)"}
    asked = [q for s, n in zip(servers, before) for q in s.queries[n:]]
    assert any(q.qname != q.qname.lower() for q in asked)
    big = [q for q in asked if q.qname.lower() == "big.example.org."]
    # Over TCP after TC=1, the same query: the same spelling, which the reply had to echo.
    assert [q.transport for q in big] == ["udp", "tcp"] and len({q.qname for q in big}) == 1


def test_a_dnskey_trust_anchor_works_like_a_ds(server_factory, tree, tmp_path):
    root = tree.served_zone(".")
    keys = root.get(dns.name.root, T.DNSKEY)
    assert keys is not None
    anchor = tmp_path / "root.key"
    anchor.write_text("".join(f". 300 IN DNSKEY {k}\n" for k in keys if k.flags == 257))
    config = recursive_config(tree, tmp_path) | {
        "dnssec": {"enabled": True, "trust_anchor": str(anchor)}
    }
    assert authentic(ask(server_factory(config), "www.example.net"))


def test_a_trust_anchor_that_matches_no_root_key_makes_everything_bogus(
    server_factory, tree, tmp_path
):
    anchor = tmp_path / "wrong.anchor"
    anchor.write_text(ZoneKeys(dns.name.root, Signing()).trust_anchor_text())
    config = recursive_config(tree, tmp_path) | {
        "dnssec": {"enabled": True, "trust_anchor": str(anchor)}
    }
    server = server_factory(config)
    for name in ("www.example.org", "www.unsigned.org"):
        reply = ask(server, name)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert ede_codes(reply) == [EDE.DNSKEY_MISSING]
