"""DNSSEC validator: chain of trust, answers, wildcards, denial (NSEC, NSEC3), insecure, bogus.

The zones are built and signed here at test time (root -> org/net -> leaves, DS in parents);
`fetch` answers DS and DNSKEY questions from them, and counts what it was asked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Coroutine, Sequence
from typing import Any

import dns.dnssec
import dns.dnssecalgs
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

from fastdns.errors import UpstreamTimeout
from fastdns.resolve.anchors import load_trust_anchors
from fastdns.resolve.dnssec import (
    BOGUS_TTL_S,
    Security,
    Validator,
    Verdict,
)

NOW = 1_800_000_000  # fixed wall clock for every validation
INCEPTION = NOW - 3600
EXPIRATION = NOW + 30 * 86400
ALG = dns.dnssec.Algorithm.ECDSAP256SHA256
IN = dns.rdataclass.IN
T = dns.rdatatype

# A name far below example.org, every label in between an empty non-terminal.
DEEP = ".".join(f"l{i}" for i in range(40))

Key = tuple[Any, Any]  # (private key, DNSKEY rdata)
RRKey = tuple[dns.name.Name, int]


def N(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def make_key(flags: int, algorithm: int = ALG) -> Key:
    private = dns.dnssecalgs.get_algorithm_cls(algorithm).generate()
    return private, dns.dnssec.make_dnskey(private.public_key(), algorithm, flags=flags)


def nsec3_digest(name: dns.name.Name, salt: bytes, iterations: int) -> bytes:
    digest = hashlib.sha1(name.canonicalize().to_wire() + salt).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt).digest()
    return digest


class Zone:
    """A signed zone: its rrsets and RRSIGs by (owner, type), and the proofs it would send.

    NSEC zones are signed with dns.dnssec.sign_zone; NSEC3 zones get their NSEC3 chain built
    here (SHA-1, `iterations`, empty salt, optionally opt-out) and signed rrset by rrset.
    """

    def __init__(
        self,
        origin: str,
        body: str,
        *,
        nsec3: bool = False,
        opt_out: bool = False,
        iterations: int = 0,
    ) -> None:
        self.origin = N(origin)
        self.ksk, self.zsk = make_key(257), make_key(256)
        self.nsec3, self.opt_out, self.iterations = nsec3, opt_out, iterations
        text = f"@ 3600 IN SOA ns hostmaster 1 7200 3600 1209600 300\n@ 3600 IN NS ns\n{body}"
        zone = dns.zone.from_text(text, self.origin, relativize=False)
        if not nsec3:
            dns.dnssec.sign_zone(
                zone,
                keys=[self.ksk, self.zsk],
                inception=INCEPTION,
                expiration=EXPIRATION,
                dnskey_ttl=3600,
            )
        self.data: dict[RRKey, dns.rrset.RRset] = {}
        self.sigs: dict[RRKey, dns.rrset.RRset] = {}
        for name, node in zone.nodes.items():
            for rds in node.rdatasets:
                key = (name, rds.covers if rds.rdtype == T.RRSIG else rds.rdtype)
                rrset = dns.rrset.from_rdata_list(name, rds.ttl, list(rds))
                (self.sigs if rds.rdtype == T.RRSIG else self.data)[key] = rrset
        if nsec3:
            self._sign_nsec3()

    # -- building ---------------------------------------------------------------------------

    def _delegations(self) -> set[dns.name.Name]:
        return {n for (n, t) in self.data if t == T.NS and n != self.origin}

    def _authoritative(self, name: dns.name.Name) -> bool:
        return not any(name != d and name.is_subdomain(d) for d in self._delegations())

    def sign(self, rrset: dns.rrset.RRset, **kw: Any) -> dns.rrset.RRset:
        private, dnskey = self.ksk if rrset.rdtype == T.DNSKEY else self.zsk
        times = {"inception": INCEPTION, "expiration": EXPIRATION} | kw
        sig = dns.dnssec.sign(rrset, private, self.origin, dnskey, origin=self.origin, **times)
        return dns.rrset.from_rdata(rrset.name, rrset.ttl, sig)

    def _sign_nsec3(self) -> None:
        self.data[(self.origin, T.DNSKEY)] = dns.rrset.from_rdata(
            self.origin, 3600, self.ksk[1], self.zsk[1]
        )
        delegations = self._delegations()
        names: set[dns.name.Name] = set()
        for name, _ in self.data:
            if not self._authoritative(name):
                continue
            if self.opt_out and name in delegations and (name, T.DS) not in self.data:
                continue  # RFC 5155 §6: opt-out leaves unsigned delegations out of the chain
            while name != self.origin:
                names.add(name)
                name = name.parent()
        names.add(self.origin)
        ring = sorted((nsec3_digest(n, b"", self.iterations), n) for n in names)
        flags = 1 if self.opt_out else 0
        for i, (digest, name) in enumerate(ring):
            nxt = base64.b32hexencode(ring[(i + 1) % len(ring)][0]).decode()
            types = sorted({t for (n, t) in self.data if n == name})
            if types and not (name in delegations and (name, T.DS) not in self.data):
                types.append(T.RRSIG)
            rdata = dns.rdata.from_text(
                IN,
                T.NSEC3,
                f"1 {flags} {self.iterations} - {nxt} "
                + " ".join(T.to_text(t) for t in sorted(set(types))),
            )
            owner = dns.name.Name((base64.b32hexencode(digest).lower(),) + self.origin.labels)
            self.data[(owner, T.NSEC3)] = dns.rrset.from_rdata(owner, 300, rdata)
        for (name, rdtype), rrset in list(self.data.items()):
            if not self._authoritative(name):
                continue
            if name in delegations and rdtype not in (T.DS, T.NSEC3):
                continue  # the parent signs only DS (and its denial) at a cut
            self.sigs[(name, rdtype)] = self.sign(rrset)

    def ds(self, digest_type: str = "SHA256") -> str:
        """This zone's DS record as parent-zone text."""
        ds = dns.dnssec.make_ds(self.origin, self.ksk[1], digest_type)
        return f"{self.origin} 86400 IN DS {ds}"

    # -- answering --------------------------------------------------------------------------

    def rr(self, name: dns.name.Name | str, rdtype: int) -> list[dns.rrset.RRset]:
        """The rrset and its RRSIG rrset (when signed)."""
        name = N(name) if isinstance(name, str) else name
        out = [self.data[(name, rdtype)]]
        if (name, rdtype) in self.sigs:
            out.append(self.sigs[(name, rdtype)])
        return out

    def _nsec_covering(self, name: dns.name.Name) -> dns.name.Name:
        for (owner, t), rrset in self.data.items():
            if t == T.NSEC:
                nxt = rrset[0].next
                if (owner < name < nxt) or (nxt <= owner < name):
                    return owner
        raise AssertionError(f"no NSEC covers {name}")

    def _nsec3_owner(self, digest: bytes) -> dns.name.Name:
        return dns.name.Name((base64.b32hexencode(digest).lower(),) + self.origin.labels)

    def _nsec3_match(self, name: dns.name.Name) -> dns.name.Name | None:
        owner = self._nsec3_owner(nsec3_digest(name, b"", self.iterations))
        return owner if (owner, T.NSEC3) in self.data else None

    def _nsec3_covering(self, name: dns.name.Name) -> dns.name.Name:
        digest = nsec3_digest(name, b"", self.iterations)
        for (owner, t), rrset in self.data.items():
            if t == T.NSEC3:
                lo = base64.b32hexdecode(owner.labels[0].upper())
                hi = rrset[0].next
                if (lo < digest < hi) or (hi <= lo and (digest > lo or digest < hi)):
                    return owner
        raise AssertionError(f"no NSEC3 covers {name}")

    def _exists(self, name: dns.name.Name) -> bool:
        return any(n == name for (n, t) in self.data if t not in (T.NSEC, T.NSEC3))

    def _ce(self, name: dns.name.Name) -> dns.name.Name:
        while not (self._exists(name) or any(n.is_subdomain(name) for (n, _) in self.data)):
            name = name.parent()
        return name

    def deny(self, name: dns.name.Name, rdtype: int) -> tuple[int, list[dns.rrset.RRset]]:
        """(rcode, authority rrsets) this zone sends when it has no `rdtype` at `name`."""
        proof: list[dns.name.Name] = []
        rcode = dns.rcode.NOERROR
        kind = T.NSEC3 if self.nsec3 else T.NSEC
        ce = self._ce(name)
        wildcard = dns.name.Name((b"*",) + ce.labels)
        if not self.nsec3:
            if (name, T.NSEC) in self.data:
                proof = [name]
            else:
                proof = [self._nsec_covering(name)]
                if ce != name and not self.data[(proof[0], T.NSEC)][0].next.is_subdomain(name):
                    if (wildcard, T.NSEC) in self.data:
                        proof.append(wildcard)  # wildcard NODATA
                    else:
                        proof.append(self._nsec_covering(wildcard))
                        rcode = dns.rcode.NXDOMAIN
        else:
            match = self._nsec3_match(name)
            if match is not None:
                proof = [match]
            else:
                ce = name.parent()
                while self._nsec3_match(ce) is None:  # the closest *provable* encloser
                    ce = ce.parent()
                wildcard = dns.name.Name((b"*",) + ce.labels)
                ce_match = self._nsec3_match(ce)
                assert ce_match is not None
                next_closer = name.split(len(ce) + 1)[1]
                cover = self._nsec3_covering(next_closer)
                proof = [ce_match, cover]
                wild = self._nsec3_match(wildcard)
                if wild is not None:
                    proof.append(wild)
                elif not (rdtype == T.DS and self.data[(cover, T.NSEC3)][0].flags & 1):
                    proof.append(self._nsec3_covering(wildcard))
                    rcode = dns.rcode.NXDOMAIN
        authority = self.rr(self.origin, T.SOA)
        for owner in dict.fromkeys(proof):
            authority += self.rr(owner, kind)
        return rcode, authority

    def wildcard_proof(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        """The denial records that go with a wildcard expansion at `name`."""
        if not self.nsec3:
            return self.rr(self._nsec_covering(name), T.NSEC)
        ce = self._ce(name)
        return self.rr(self._nsec3_covering(name.split(len(ce) + 1)[1]), T.NSEC3)

    def expand(self, name: dns.name.Name, rdtype: int) -> list[dns.rrset.RRset]:
        """A wildcard answer for `name` synthesised from `*.<closest encloser>`."""
        wildcard = dns.name.Name((b"*",) + self._ce(name).labels)
        rrset = self.data[(wildcard, rdtype)]
        sig = self.sigs[(wildcard, rdtype)]
        return [
            dns.rrset.from_rdata_list(name, rrset.ttl, list(rrset)),
            dns.rrset.from_rdata_list(name, sig.ttl, list(sig)),
        ]


def message(
    qname: str | dns.name.Name,
    qtype: int,
    answer: Sequence[dns.rrset.RRset] = (),
    authority: Sequence[dns.rrset.RRset] = (),
    rcode: int = dns.rcode.NOERROR,
) -> dns.message.Message:
    name = N(qname) if isinstance(qname, str) else qname
    response = dns.message.make_response(dns.message.make_query(name, qtype, want_dnssec=True))
    response.set_rcode(rcode)
    response.answer.extend(answer)
    response.authority.extend(authority)
    # Through the wire, as the caller would hand it over.
    return dns.message.from_wire(response.to_wire(max_size=65535))


class Hierarchy:
    """The signed zones and a `fetch` that answers DS (parent side) and DNSKEY from them."""

    def __init__(self, zones: list[Zone]) -> None:
        self.zones = {z.origin: z for z in zones}
        self.calls: list[RRKey] = []
        self.failing: set[RRKey] = set()
        self.delay = False

    def zone_for(self, name: dns.name.Name, parent_side: bool) -> Zone:
        for depth in range(len(name), 0, -1):
            ancestor = name.split(depth)[1]
            if parent_side and ancestor == name:
                continue
            if ancestor in self.zones:
                return self.zones[ancestor]
        raise AssertionError(name)

    async def fetch(self, name: dns.name.Name, rdtype: int) -> dns.message.Message:
        self.calls.append((name, rdtype))
        if self.delay:
            await asyncio.sleep(0)
        if (name, rdtype) in self.failing:
            raise UpstreamTimeout(f"{name} timed out")
        zone = self.zone_for(name, parent_side=rdtype == T.DS)
        if (name, rdtype) in zone.data:
            return message(name, rdtype, answer=zone.rr(name, rdtype))
        rcode, authority = zone.deny(name, rdtype)
        return message(name, rdtype, authority=authority, rcode=rcode)


def build() -> tuple[Hierarchy, dict[str, Zone]]:
    example_org = Zone(
        "example.org.",
        "www 300 IN A 192.0.2.1\n"
        "*.wild 300 IN A 192.0.2.2\n"
        "alias 300 IN CNAME www.example.net.\n"
        "toinsecure 300 IN CNAME www.unsigned.org.\n"
        "dn 300 IN DNAME example.net.\n"
        "a.b 300 IN A 192.0.2.3\n"
        "sub 300 IN NS ns.sub.example.org.\n"
        "c.d 300 IN NS ns.c.d.example.org.\n"
        "dangling 300 IN CNAME nope.example.net.\n"
        f"w.{DEEP} 300 IN A 192.0.2.4\n",
    )
    example_net = Zone(
        "example.net.",
        "www 300 IN A 192.0.2.10\n*.wild 300 IN A 192.0.2.11\na.b 300 IN A 192.0.2.12\n",
        nsec3=True,
    )
    nokey = Zone("nokey.org.", "www 300 IN A 192.0.2.20\n")
    slow = Zone("slow.org.", "www 300 IN A 192.0.2.21\n", nsec3=True, iterations=151)
    wrong_ds = dns.dnssec.make_ds(nokey.origin, nokey.zsk[1], "SHA256")  # digest of the ZSK
    tag = dns.dnssec.key_id(nokey.ksk[1])
    org = Zone(
        "org.",
        f"{example_org.ds()}\nexample.org. 86400 IN NS ns.example.org.\n"
        f"nokey.org. 86400 IN NS ns.nokey.org.\n"
        f"nokey.org. 86400 IN DS {tag} {int(ALG)} 2 {wrong_ds.digest.hex()}\n"
        f"{slow.ds()}\nslow.org. 86400 IN NS ns.slow.org.\n"
        "unsigned.org. 86400 IN NS ns.unsigned.org.\n"
        "badalg.org. 86400 IN NS ns.badalg.org.\n"
        f"badalg.org. 86400 IN DS 12345 12 2 {'ab' * 32}\n"
        "baddigest.org. 86400 IN NS ns.baddigest.org.\n"
        f"baddigest.org. 86400 IN DS 12345 {int(ALG)} 3 {'ab' * 32}\n",
    )
    net = Zone(
        "net.",
        f"{example_net.ds()}\nexample.net. 86400 IN NS ns.example.net.\n"
        "unsigned.net. 86400 IN NS ns.unsigned.net.\n",
        nsec3=True,
        opt_out=True,
    )
    root = Zone(
        ".",
        f"{org.ds()}\norg. 86400 IN NS ns.org.\n{net.ds()}\nnet. 86400 IN NS ns.net.\n",
    )
    zones = {
        ".": root,
        "org": org,
        "net": net,
        "example.org": example_org,
        "example.net": example_net,
        "nokey.org": nokey,
        "slow.org": slow,
    }
    return Hierarchy(list(zones.values())), zones


@pytest.fixture(scope="module")
def built() -> tuple[Hierarchy, dict[str, Zone]]:
    return build()


@pytest.fixture
def hierarchy(built: tuple[Hierarchy, dict[str, Zone]]) -> Hierarchy:
    fresh = Hierarchy(list(built[1].values()))
    return fresh


@pytest.fixture
def zones(built: tuple[Hierarchy, dict[str, Zone]]) -> dict[str, Zone]:
    return built[1]


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def root_anchor(zones: dict[str, Zone]) -> list[dns.rrset.RRset]:
    return [dns.rrset.from_text_list(".", 86400, IN, T.DS, [zones["."].ds().split(" DS ")[1]])]


def make_validator(
    hierarchy: Hierarchy, zones: dict[str, Zone], clock: Clock | None = None, **kw: Any
) -> Validator:
    return Validator(root_anchor(zones), hierarchy.fetch, clock=clock or Clock(), **kw)


def run(coro: Coroutine[Any, Any, Verdict]) -> Verdict:
    return asyncio.run(coro)


def check(v: Validator, response: dns.message.Message) -> Verdict:
    return run(v.validate(response))


# ---------------------------------------------------------------------------------------------
# Positive answers


def test_secure_answer(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones)
    verdict = check(
        v, message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A))
    )
    assert verdict.security is Security.SECURE, verdict
    assert verdict.ede is None and verdict.servable
    assert verdict.ttl_s == 300  # the A rrset's TTL, well inside the signature's lifetime
    assert hierarchy.calls == [
        (N("."), T.DNSKEY),
        (N("org."), T.DS),
        (N("org."), T.DNSKEY),
        (N("example.org."), T.DS),
        (N("example.org."), T.DNSKEY),
    ]


def test_ttl_is_capped_by_signature_expiry(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    clock = Clock()
    clock.now = EXPIRATION - 100
    v = make_validator(hierarchy, zones, clock)
    verdict = check(
        v, message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A))
    )
    assert verdict.security is Security.SECURE
    assert verdict.ttl_s == 100


def test_secure_cname_chain_across_two_zones(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones)
    answer = zones["example.org"].rr("alias.example.org.", T.CNAME) + zones["example.net"].rr(
        "www.example.net.", T.A
    )
    verdict = check(v, message("alias.example.org.", T.A, answer))
    assert verdict.security is Security.SECURE, verdict
    assert (N("example.net."), T.DNSKEY) in hierarchy.calls


def test_cname_into_an_insecure_zone_is_insecure(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    v = make_validator(hierarchy, zones)
    answer = zones["example.org"].rr("toinsecure.example.org.", T.CNAME) + [
        dns.rrset.from_text("www.unsigned.org.", 300, IN, T.A, "192.0.2.50")
    ]
    verdict = check(v, message("toinsecure.example.org.", T.A, answer))
    assert verdict.security is Security.INSECURE, verdict


def test_dname_is_validated_and_synthesised_cname_may_be_unsigned(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    v = make_validator(hierarchy, zones)
    cname = dns.rrset.from_text("www.dn.example.org.", 300, IN, T.CNAME, "www.example.net.")
    answer = (
        zones["example.org"].rr("dn.example.org.", T.DNAME)
        + [cname]
        + zones["example.net"].rr("www.example.net.", T.A)
    )
    assert check(v, message("www.dn.example.org.", T.A, answer)).security is Security.SECURE
    wrong = dns.rrset.from_text("www.dn.example.org.", 300, IN, T.CNAME, "evil.example.net.")
    answer[2] = wrong
    verdict = check(v, message("www.dn.example.org.", T.A, answer))
    assert verdict.security is Security.BOGUS


@pytest.mark.parametrize("zone_name", ["example.org", "example.net"])
def test_wildcard_answer_needs_and_accepts_the_denial_proof(
    hierarchy: Hierarchy, zones: dict[str, Zone], zone_name: str
) -> None:
    zone = zones[zone_name]
    qname = N(f"x.wild.{zone_name}.")
    v = make_validator(hierarchy, zones)
    expanded = zone.expand(qname, T.A)
    good = message(qname, T.A, expanded, authority=zone.wildcard_proof(qname))
    assert check(v, good).security is Security.SECURE
    bare = check(v, message(qname, T.A, expanded))
    assert bare.security is Security.BOGUS and bare.ede == 12, bare


def test_wildcard_proof_must_cover_the_right_name(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    zone = zones["example.org"]
    qname = N("x.wild.example.org.")
    v = make_validator(hierarchy, zones)
    # An NSEC that proves some other name absent is no proof for this one.
    other = zone.rr(zone._nsec_covering(N("nope.example.org.")), T.NSEC)
    verdict = check(v, message(qname, T.A, zone.expand(qname, T.A), authority=other))
    assert verdict.security is Security.BOGUS


# ---------------------------------------------------------------------------------------------
# Negative answers


@pytest.mark.parametrize("zone_name", ["example.org", "example.net"])
def test_nxdomain_with_proof_is_secure(
    hierarchy: Hierarchy, zones: dict[str, Zone], zone_name: str
) -> None:
    zone = zones[zone_name]
    qname = N(f"nope.{zone_name}.")
    rcode, authority = zone.deny(qname, T.A)
    assert rcode == dns.rcode.NXDOMAIN
    v = make_validator(hierarchy, zones)
    verdict = check(v, message(qname, T.A, authority=authority, rcode=rcode))
    assert verdict.security is Security.SECURE, verdict
    assert verdict.ttl_s == 300


@pytest.mark.parametrize("zone_name", ["example.org", "example.net"])
def test_nxdomain_without_the_wildcard_proof_is_bogus(
    hierarchy: Hierarchy, zones: dict[str, Zone], zone_name: str
) -> None:
    zone = zones[zone_name]
    qname = N(f"nope.{zone_name}.")
    _, authority = zone.deny(qname, T.A)
    v = make_validator(hierarchy, zones)
    verdict = check(v, message(qname, T.A, authority=authority[:-2], rcode=dns.rcode.NXDOMAIN))
    assert verdict.security is Security.BOGUS and verdict.ede == 12, verdict


@pytest.mark.parametrize(
    ("zone_name", "qname", "qtype"),
    [
        ("example.org", "www.example.org.", T.AAAA),  # NSEC at the name, no AAAA
        ("example.org", "b.example.org.", T.A),  # empty non-terminal
        ("example.org", "x.wild.example.org.", T.AAAA),  # wildcard NODATA
        ("example.net", "www.example.net.", T.AAAA),  # NSEC3 matching the name
        ("example.net", "b.example.net.", T.A),  # NSEC3 of an empty non-terminal
        ("example.net", "x.wild.example.net.", T.TXT),  # NSEC3 wildcard NODATA, §8.7
        ("org", "example.org.", T.MX),  # wrong side of a cut: parent can't deny MX ...
    ],
)
def test_nodata_with_proof(
    hierarchy: Hierarchy, zones: dict[str, Zone], zone_name: str, qname: str, qtype: int
) -> None:
    rcode, authority = zones[zone_name].deny(N(qname), qtype)
    assert rcode == dns.rcode.NOERROR
    v = make_validator(hierarchy, zones)
    verdict = check(v, message(qname, qtype, authority=authority))
    if zone_name == "org":  # ... RFC 4035 §5.4: only the DS type
        assert verdict.security is Security.BOGUS, verdict
    else:
        assert verdict.security is Security.SECURE, verdict


@pytest.mark.parametrize("zone_name", ["example.org", "example.net"])
def test_nxdomain_for_a_name_the_proof_shows_exists_is_bogus(
    hierarchy: Hierarchy, zones: dict[str, Zone], zone_name: str
) -> None:
    qname = N(f"www.{zone_name}.")
    _, authority = zones[zone_name].deny(qname, T.AAAA)  # NSEC/NSEC3 matching www
    v = make_validator(hierarchy, zones)
    verdict = check(v, message(qname, T.A, authority=authority, rcode=dns.rcode.NXDOMAIN))
    assert verdict.security is Security.BOGUS, verdict


def test_nodata_when_the_bitmap_has_the_type_is_bogus(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    _, authority = zones["example.org"].deny(N("www.example.org."), T.AAAA)
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("www.example.org.", T.A, authority=authority))
    assert verdict.security is Security.BOGUS and verdict.ede == 6, verdict


@pytest.mark.parametrize(
    ("zone_name", "child", "expected"),
    [
        ("org", "unsigned.org.", Security.SECURE),  # NSEC at the cut: NS, no DS
        ("net", "unsigned.net.", Security.INSECURE),  # opt-out NSEC3 covers it (RFC 5155 §8.6)
    ],
)
def test_ds_nodata(
    hierarchy: Hierarchy, zones: dict[str, Zone], zone_name: str, child: str, expected: Security
) -> None:
    rcode, authority = zones[zone_name].deny(N(child), T.DS)
    assert rcode == dns.rcode.NOERROR
    v = make_validator(hierarchy, zones)
    verdict = check(v, message(child, T.DS, authority=authority))
    assert verdict.security is expected, verdict


def test_nsec3_iterations_above_150_are_insecure(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    rcode, authority = zones["slow.org"].deny(N("nope.slow.org."), T.A)
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("nope.slow.org.", T.A, authority=authority, rcode=rcode))
    assert verdict.security is Security.INSECURE and "iterations" in verdict.reason


def test_nxdomain_at_the_end_of_a_cname_chain(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    cname = zones["example.org"].rr("dangling.example.org.", T.CNAME)
    rcode, authority = zones["example.net"].deny(N("nope.example.net."), T.A)
    v = make_validator(hierarchy, zones)
    proven = message("dangling.example.org.", T.A, cname, authority, rcode=rcode)
    assert check(v, proven).security is Security.SECURE
    bare = check(v, message("dangling.example.org.", T.A, cname, rcode=rcode))
    assert bare.security is Security.BOGUS and bare.ede == 12, bare


def test_opt_out_nxdomain_is_insecure(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    rcode, authority = zones["net"].deny(N("nope.net."), T.A)
    assert rcode == dns.rcode.NXDOMAIN
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("nope.net.", T.A, authority=authority, rcode=rcode))
    assert verdict.security is Security.INSECURE and "opt-out" in verdict.reason, verdict


# ---------------------------------------------------------------------------------------------
# Insecure delegations


@pytest.mark.parametrize(
    ("qname", "ds_asked"),
    [
        ("www.unsigned.org.", "unsigned.org."),  # NSEC: NS bit, no DS
        ("www.unsigned.net.", "unsigned.net."),  # NSEC3 opt-out span
        ("www.sub.example.org.", "sub.example.org."),  # a cut inside a leaf zone
        ("www.c.d.example.org.", "c.d.example.org."),  # below an empty non-terminal
        ("www.badalg.org.", "badalg.org."),  # DS with an algorithm we do not support
        ("www.baddigest.org.", "baddigest.org."),  # DS with a digest we do not support
    ],
)
def test_unsigned_answer_below_insecure_delegation(
    hierarchy: Hierarchy, zones: dict[str, Zone], qname: str, ds_asked: str
) -> None:
    v = make_validator(hierarchy, zones)
    answer = [dns.rrset.from_text(qname, 300, IN, T.A, "192.0.2.99")]
    verdict = check(v, message(qname, T.A, answer))
    assert verdict.security is Security.INSECURE, verdict
    assert verdict.servable and verdict.ede is None
    assert (N(ds_asked), T.DS) in hierarchy.calls
    # The insecure cut is cached: the next name below it costs no fetch.
    before = len(hierarchy.calls)
    other = dns.name.Name((b"other",) + N(ds_asked).labels)
    answer = [dns.rrset.from_text(other, 300, IN, T.A, "192.0.2.98")]
    assert check(v, message(other, T.A, answer)).security is Security.INSECURE
    assert len(hierarchy.calls) == before


def test_unsigned_negative_answer_below_insecure_delegation(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    v = make_validator(hierarchy, zones)
    soa = dns.rrset.from_text(
        "unsigned.org.", 300, IN, T.SOA, "ns.unsigned.org. hm.unsigned.org. 1 2 3 4 5"
    )
    verdict = check(v, message("nope.unsigned.org.", T.A, authority=[soa], rcode=3))
    assert verdict.security is Security.INSECURE, verdict


# ---------------------------------------------------------------------------------------------
# Bogus


def test_unsigned_data_in_a_signed_zone_is_bogus(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    v = make_validator(hierarchy, zones)
    for qname in ("www.example.org.", "a.b.example.org."):  # the second walks an ENT
        answer = [dns.rrset.from_text(qname, 300, IN, T.A, "192.0.2.99")]
        verdict = check(v, message(qname, T.A, answer))
        assert verdict.security is Security.BOGUS and verdict.ede == 10, verdict
        assert not verdict.servable and verdict.ttl_s == BOGUS_TTL_S


def test_unsigned_nxdomain_in_a_signed_zone_is_bogus(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    v = make_validator(hierarchy, zones)
    soa = zones["example.org"].data[(N("example.org."), T.SOA)]
    verdict = check(v, message("nope.example.org.", T.A, authority=[soa], rcode=3))
    assert verdict.security is Security.BOGUS and verdict.ede == 12, verdict


def test_tampered_data_is_bogus(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones)
    _, sig = zones["example.org"].rr("www.example.org.", T.A)
    forged = dns.rrset.from_text("www.example.org.", 300, IN, T.A, "192.0.2.66")
    verdict = check(v, message("www.example.org.", T.A, [forged, sig]))
    assert verdict.security is Security.BOGUS and verdict.ede == 6, verdict


@pytest.mark.parametrize(
    ("times", "ede"),
    [
        ({"inception": NOW - 7200, "expiration": NOW - 60}, 7),
        ({"inception": NOW + 3600, "expiration": NOW + 7200}, 8),
    ],
)
def test_signature_outside_its_validity_window(
    hierarchy: Hierarchy, zones: dict[str, Zone], times: dict[str, int], ede: int
) -> None:
    zone = zones["example.org"]
    a = zone.data[(N("www.example.org."), T.A)]
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("www.example.org.", T.A, [a, zone.sign(a, **times)]))
    assert verdict.security is Security.BOGUS and verdict.ede == ede, verdict


def test_any_valid_signature_suffices(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    zone = zones["example.org"]
    a, good = zone.rr("www.example.org.", T.A)
    expired = zone.sign(a, inception=NOW - 7200, expiration=NOW - 60)
    sigs = dns.rrset.from_rdata_list(a.name, 300, list(expired) + list(good))
    v = make_validator(hierarchy, zones)
    assert check(v, message("www.example.org.", T.A, [a, sigs])).security is Security.SECURE


def test_ds_matching_no_key_is_bogus(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("www.nokey.org.", T.A, zones["nokey.org"].rr("www.nokey.org.", T.A)))
    assert verdict.security is Security.BOGUS and verdict.ede == 9, verdict
    # The bogus zone is remembered briefly: asking again fetches nothing.
    before = len(hierarchy.calls)
    again = check(v, message("www.nokey.org.", T.A, zones["nokey.org"].rr("www.nokey.org.", T.A)))
    assert again.security is Security.BOGUS and len(hierarchy.calls) == before


def test_signer_must_be_above_the_owner(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    a, sig = zones["example.org"].rr("www.example.org.", T.A)
    moved = dns.rrset.from_rdata_list(N("www.example.com."), 300, list(a))
    moved_sig = dns.rrset.from_rdata_list(N("www.example.com."), 300, list(sig))
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("www.example.com.", T.A, [moved, moved_sig]))
    assert verdict.security is Security.BOGUS


def test_parent_signed_data_below_a_cut_is_bogus(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    # org signs a record that lives inside example.org (known as a zone once validated).
    org = zones["org"]
    forged = dns.rrset.from_text("www.example.org.", 300, IN, T.A, "192.0.2.66")
    v = make_validator(hierarchy, zones)
    check(v, message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A)))
    verdict = check(v, message("www.example.org.", T.A, [forged, org.sign(forged)]))
    assert verdict.security is Security.BOGUS, verdict


def test_cname_chain_length_is_bounded(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    zone = zones["example.org"]
    answer: list[dns.rrset.RRset] = []
    for i in range(20):
        link = dns.rrset.from_text(f"c{i}.example.org.", 300, IN, T.CNAME, f"c{i + 1}.example.org.")
        answer += [link, zone.sign(link)]
    v = make_validator(hierarchy, zones)
    verdict = check(v, message("c0.example.org.", T.A, answer))
    assert verdict.security is Security.BOGUS and "links" in verdict.reason, verdict


def test_fetches_per_validation_are_bounded(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    # Unsigned data 41 labels below a signed zone: the insecurity walk would ask DS for each.
    qname = f"w.{DEEP}.example.org."
    v = make_validator(hierarchy, zones)
    verdict = check(v, message(qname, T.A, [dns.rrset.from_text(qname, 300, IN, T.A, "192.0.2.4")]))
    assert verdict.security is Security.BOGUS and "work limit" in verdict.reason, verdict
    assert len(hierarchy.calls) == 32


# ---------------------------------------------------------------------------------------------
# Fetch failures, anchors, key cache


def test_fetch_failure_is_not_secure(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    hierarchy.failing.add((N("org."), T.DS))
    v = make_validator(hierarchy, zones)
    verdict = check(
        v, message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A))
    )
    assert verdict.security is Security.INDETERMINATE and verdict.ede == 22, verdict
    assert not verdict.servable
    # Not cached as bogus: once the authority answers again, it validates.
    hierarchy.failing.clear()
    verdict = check(
        v, message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A))
    )
    assert verdict.security is Security.SECURE


def test_name_outside_every_anchor_is_indeterminate(
    hierarchy: Hierarchy, zones: dict[str, Zone]
) -> None:
    anchor = [
        dns.rrset.from_text_list(
            "example.net.", 3600, IN, T.DS, [zones["example.net"].ds().split(" DS ")[1]]
        )
    ]
    v = Validator(anchor, hierarchy.fetch, clock=Clock())
    answer = zones["example.org"].rr("www.example.org.", T.A)
    verdict = check(v, message("www.example.org.", T.A, answer))
    assert verdict.security is Security.INDETERMINATE and verdict.ede is None and verdict.servable
    # ... while below the anchor, the chain starts there.
    ok = check(
        v, message("www.example.net.", T.A, zones["example.net"].rr("www.example.net.", T.A))
    )
    assert ok.security is Security.SECURE
    assert hierarchy.calls == [(N("example.net."), T.DNSKEY)]


def test_dnskey_trust_anchor(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    ksk = zones["."].ksk[1]
    v = Validator([dns.rrset.from_rdata(".", 86400, ksk)], hierarchy.fetch, clock=Clock())
    answer = zones["example.org"].rr("www.example.org.", T.A)
    assert check(v, message("www.example.org.", T.A, answer)).security is Security.SECURE


def test_wrong_trust_anchor_is_bogus(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = Validator(load_trust_anchors(None), hierarchy.fetch, clock=Clock())  # the real root
    answer = zones["example.org"].rr("www.example.org.", T.A)
    verdict = check(v, message("www.example.org.", T.A, answer))
    assert verdict.security is Security.BOGUS and verdict.ede == 9, verdict


def test_key_cache_is_reused_and_expires(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    clock = Clock()
    v = make_validator(hierarchy, zones, clock)
    org_answer = zones["example.org"].rr("www.example.org.", T.A)
    check(v, message("www.example.org.", T.A, org_answer))
    assert len(hierarchy.calls) == 5
    check(v, message("www.example.org.", T.A, org_answer))
    assert len(hierarchy.calls) == 5
    # A sibling tree shares the root's keys.
    check(v, message("www.example.net.", T.A, zones["example.net"].rr("www.example.net.", T.A)))
    assert len(hierarchy.calls) == 9
    # Past the DNSKEY TTL (3600 s) the keys are fetched again.
    clock.now += 3601
    assert check(v, message("www.example.org.", T.A, org_answer)).security is Security.SECURE
    assert len(hierarchy.calls) == 14


def test_concurrent_validations_share_fetches(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    hierarchy.delay = True
    v = make_validator(hierarchy, zones)
    response = message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A))

    async def both() -> list[Verdict]:
        return list(await asyncio.gather(*(v.validate(response) for _ in range(3))))

    verdicts = asyncio.run(both())
    assert all(x.security is Security.SECURE for x in verdicts)
    assert len(hierarchy.calls) == 5


def test_key_cache_is_bounded(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones, max_zones=2)
    response = message("www.example.org.", T.A, zones["example.org"].rr("www.example.org.", T.A))
    assert check(v, response).security is Security.SECURE
    assert v.cached_zones == 2
    assert check(v, response).security is Security.SECURE  # example.org is still there


def test_rrsig_queries_are_not_validated(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones)
    _, sig = zones["example.org"].rr("www.example.org.", T.A)
    verdict = check(v, message("www.example.org.", T.RRSIG, [sig]))
    assert verdict.security is Security.INDETERMINATE and verdict.servable


def test_garbage_never_raises(hierarchy: Hierarchy, zones: dict[str, Zone]) -> None:
    v = make_validator(hierarchy, zones)
    response = dns.message.make_response(dns.message.make_query("www.example.org.", T.A))
    response.question = []
    assert check(v, response).security is Security.BOGUS

    async def broken(name: dns.name.Name, rdtype: int) -> dns.message.Message:
        raise RuntimeError("boom")

    v = Validator(root_anchor(zones), broken, clock=Clock())
    answer = zones["example.org"].rr("www.example.org.", T.A)
    assert check(v, message("www.example.org.", T.A, answer)).security is Security.BOGUS
