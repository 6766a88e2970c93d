"""Tests of the zone signer the fake tree uses: dnspython's validator is the oracle for the
signatures, RFC 4034/5155 for the shape of the NSEC and NSEC3 chains."""

from __future__ import annotations

import time
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.name
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import Breakage, Signing
from fastdns._testing.fake_upstream import parse_records
from fastdns._testing.zonesign import ALGORITHM_PRIVATEDNS, Zone, ZoneKeys, nsec3_owner
from fastdns.resolve.anchors import load_trust_anchors

T = dns.rdatatype
ORIGIN = dns.name.from_text("example.org.")
RECORDS = """
example.org. 300 IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 60
www.example.org. 300 IN A 192.0.2.1
www.example.org. 300 IN AAAA 2001:db8::1
host.ent.example.org. 300 IN A 192.0.2.4
*.wild.example.org. 300 IN A 192.0.2.2
secure.example.org. 3600 IN NS ns.secure.example.org.
secure.example.org. 3600 IN DS 12345 13 2 {digest}
insecure.example.org. 3600 IN NS ns.insecure.example.org.
ns.insecure.example.org. 3600 IN A 192.0.2.53
""".format(digest="ab" * 32)
NOW = time.time()

DEFAULT = Signing()
VARIANTS = {
    "nsec-ksk-zsk": Signing(),
    "nsec3-ed25519-csk": Signing(algorithm=dns.dnssec.Algorithm.ED25519, csk=True, nsec3=True),
    "nsec3-opt-out-salted": Signing(nsec3=True, opt_out=True, salt=b"\xab\xcd", iterations=5),
}


def N(text: str) -> dns.name.Name:
    return dns.name.from_text(text, ORIGIN)


def signed(signing: Signing | None = DEFAULT, keys: ZoneKeys | None = None) -> Zone:
    if signing is not None and keys is None:
        keys = ZoneKeys(ORIGIN, signing)
    return Zone(ORIGIN, parse_records(RECORDS), keys, now=NOW)


def keyset(zone: Zone) -> dict[dns.name.Name, dns.rrset.RRset]:
    dnskey = zone.get(ORIGIN, T.DNSKEY)
    assert dnskey is not None
    return {ORIGIN: dnskey}


def check(zone: Zone, name: dns.name.Name, rdtype: int) -> None:
    """Raise dnspython's ValidationFailure unless (name, rdtype) verifies with the zone keys."""
    rrset, sig = zone.get(name, rdtype), zone.signature(name, rdtype)
    assert rrset is not None
    if sig is None:
        raise dns.dnssec.ValidationFailure(f"no RRSIG for {name}/{T.to_text(rdtype)}")
    (rrsig,) = sig  # one signature, so that dnspython says what is wrong with it
    dns.dnssec.validate_rrsig(rrset, rrsig, keyset(zone))


def signed_pairs(zone: Zone) -> set[tuple[dns.name.Name, int]]:
    return {(r.name, r.rdtype) for r in zone.rrsets() if zone.signature(r.name, r.rdtype)}


def owners(zone: Zone, rdtype: int) -> list[dns.name.Name]:
    return [r.name for r in zone.rrsets() if r.rdtype == rdtype]


@pytest.mark.parametrize("signing", VARIANTS.values(), ids=list(VARIANTS))
def test_every_signature_verifies_and_keys_split_as_asked(signing: Signing) -> None:
    zone = signed(signing)
    assert zone.keys is not None
    ksk_tag, zsk_tag = (dns.dnssec.key_id(k.dnskey) for k in (zone.keys.ksk, zone.keys.zsk))
    assert (ksk_tag == zsk_tag) == signing.csk
    pairs = signed_pairs(zone)
    assert len(pairs) == len(zone.rrsets()) - 2  # all but the two delegations' NS
    for name, rdtype in pairs:
        check(zone, name, rdtype)
        sig = zone.signature(name, rdtype)
        assert sig is not None
        # RFC 6781 §3.1: the KSK signs the key set, the ZSK the rest.
        assert sig[0].key_tag == (ksk_tag if rdtype == T.DNSKEY else zsk_tag)
    assert {(ORIGIN, T.SOA), (ORIGIN, T.DNSKEY), (N("www"), T.A), (N("*.wild"), T.A),
            (N("secure"), T.DS)} <= pairs
    # RFC 4035 §2.2: delegation NS and glue are not signed.
    assert not {(N("secure"), T.NS), (N("insecure"), T.NS)} & pairs
    assert zone.get(N("ns.insecure"), T.A) is None  # glue is not authoritative data


def test_ds_and_trust_anchor_match_the_ksk(tmp_path: Path) -> None:
    zone = signed()
    assert zone.keys is not None
    (ds,) = zone.keys.ds()
    assert ds == dns.dnssec.make_ds(ORIGIN, zone.keys.ksk.dnskey, "SHA256")
    anchor = tmp_path / "anchor"
    anchor.write_text(zone.keys.trust_anchor_text())
    (rrset,) = load_trust_anchors(str(anchor))
    assert rrset.name == ORIGIN and list(rrset) == [ds]


def test_signing_again_keeps_the_keys() -> None:
    keys = ZoneKeys(ORIGIN, Signing())
    first, second = signed(keys=keys), signed(keys=keys)
    assert first.get(ORIGIN, T.DNSKEY) == second.get(ORIGIN, T.DNSKEY)


@pytest.mark.parametrize(
    ("breakage", "failure"),
    [
        (Breakage.BAD_SIGNATURE, "verify"),
        (Breakage.EXPIRED, "expired"),
        (Breakage.NOT_YET_VALID, "not yet valid"),
        (Breakage.MISSING_RRSIG, "no RRSIG"),
    ],
)
def test_broken_data_is_rejected_by_dnspython_but_the_keys_still_verify(
    breakage: Breakage, failure: str
) -> None:
    zone = signed(Signing(broken=breakage))
    check(zone, ORIGIN, T.DNSKEY)  # the chain of trust still reaches the zone
    for name, rdtype in [(N("www"), T.A), (N("www"), T.AAAA)]:
        with pytest.raises(dns.dnssec.ValidationFailure, match=failure):
            check(zone, name, rdtype)


def test_bad_signature_is_a_changed_address() -> None:
    zone = signed(Signing(broken=Breakage.BAD_SIGNATURE))
    assert [rd.address for rd in zone.get(N("www"), T.A) or []] == ["192.0.2.0"]
    assert [rd.address for rd in zone.get(N("www"), T.AAAA) or []] == ["2001:db8::"]
    check(zone, ORIGIN, T.SOA)  # only addresses are changed


def test_ds_mismatch_matches_no_key() -> None:
    zone = signed(Signing(broken=Breakage.DS_MISMATCH))
    assert zone.keys is not None
    (ds,) = zone.keys.ds()
    for key in zone.keys.dnskey_rrset():
        assert dns.dnssec.make_ds(ORIGIN, key, "SHA256").digest != ds.digest
    check(zone, ORIGIN, T.DNSKEY)


def test_private_algorithm_cannot_be_validated() -> None:
    zone = signed(Signing(algorithm=ALGORITHM_PRIVATEDNS))
    assert zone.keys is not None
    assert {key.algorithm for key in zone.keys.dnskey_rrset()} == {ALGORITHM_PRIVATEDNS}
    sig = zone.signature(N("www"), T.A)
    assert sig is not None and sig[0].algorithm == ALGORITHM_PRIVATEDNS
    with pytest.raises(dns.exception.UnsupportedAlgorithm):
        check(zone, N("www"), T.A)


def test_nsec_chain_is_closed_in_canonical_order_with_the_types_present() -> None:
    zone = signed()
    chain = sorted(owners(zone, T.NSEC))
    assert chain[0] == ORIGIN
    # RFC 4035 §2.3: authoritative names and delegation points, no ENT, no glue.
    assert N("ent") not in chain and N("ns.insecure") not in chain
    assert {N("secure"), N("insecure"), N("*.wild")} <= set(chain)
    for owner, nxt in zip(chain, chain[1:] + chain[:1]):
        nsec = zone.get(owner, T.NSEC)
        assert nsec is not None and nsec[0].next == nxt
    nsec = zone.get(N("insecure"), T.NSEC)
    assert nsec is not None and nsec.to_text().endswith("NS RRSIG NSEC")  # no DS
    assert zone.nsec_covering(N("nothing")) == N("insecure")
    assert zone.nsec_covering(N("www")) == N("www")  # the name's own NSEC


@pytest.mark.parametrize("opt_out", [False, True])
def test_nsec3_chain_holds_ents_and_leaves_out_opted_out_delegations(opt_out: bool) -> None:
    signing = Signing(nsec3=True, opt_out=opt_out, salt=b"\x01", iterations=2)
    zone = signed(signing)
    assert zone.get(ORIGIN, T.NSEC3PARAM) is not None
    for name in [ORIGIN, N("www"), N("ent"), N("host.ent"), N("wild"), N("secure")]:
        owner = zone.nsec3_matching(name)
        assert owner == nsec3_owner(name, ORIGIN, signing)
        nsec3 = zone.get(owner, T.NSEC3)
        assert nsec3 is not None and nsec3[0].flags == int(opt_out)
        assert (nsec3[0].salt, nsec3[0].iterations) == (b"\x01", 2)
    # RFC 5155 §6: an opt-out chain skips the unsigned delegation; §7.2.1 proves it instead.
    assert (zone.nsec3_matching(N("insecure")) is None) == opt_out
    if opt_out:
        assert zone.closest_provable_encloser(N("www.insecure")) == (ORIGIN, N("insecure"))
    ent = zone.get(zone.nsec3_matching(N("ent")) or ORIGIN, T.NSEC3)
    assert ent is not None and ent[0].windows == ()  # an empty non-terminal has no types
    assert zone.nsec3_matching(N("nothing")) is None
    assert zone.nsec3_covering(N("nothing")) in owners(zone, T.NSEC3)
    assert len(owners(zone, T.NSEC3)) == (7 if opt_out else 8)


def test_unsigned_zone_has_no_dnssec_records() -> None:
    zone = signed(None)
    assert zone.get(ORIGIN, T.DNSKEY) is None and zone.get(ORIGIN, T.NSEC) is None
    assert not signed_pairs(zone) and not zone.signed


def test_opt_out_needs_nsec3() -> None:
    with pytest.raises(ValueError, match="nsec3"):
        Signing(opt_out=True)
