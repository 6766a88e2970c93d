"""Zone signing for test hierarchies: keys, RRSIGs, the NSEC or NSEC3 chain, the parent's DS.

Owns `Signing` (how a zone is signed, or broken on purpose), `ZoneKeys` (a zone's keys, made
once, so that the parent's DS and the trust anchor stay right when the zone is signed again)
and `Zone`: the records of one zone, with their RRSIGs and denial chain when it is signed,
indexed so that a server can find an rrset, its RRSIG, the zone cut above a name, the closest
encloser, and the NSEC/NSEC3 records that match or cover a name.

Must not: decide what goes into a response (`authority.py` does), touch the network, or make
keys anywhere but in `ZoneKeys` (a zone re-signed with new keys would no longer match its DS).

Time: RRSIG inception and expiration are absolute UNIX seconds (RFC 4034 §3.1.5), so signing
reads the wall clock it is given.
"""

from __future__ import annotations

import base64
import bisect
import enum
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dns.dnssec
import dns.dnssecalgs
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.dnssecalgs.base import GenericPrivateKey
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3
from dns.rdtypes.ANY.NSEC3PARAM import NSEC3PARAM
from dns.rdtypes.ANY.RRSIG import RRSIG
from dns.rdtypes.util import Bitmap

__all__ = [
    "ALGORITHM_PRIVATEDNS",
    "Breakage",
    "Signing",
    "Zone",
    "ZoneKeys",
    "nsec3_owner",
]

_T = dns.rdatatype.RdataType
_IN = dns.rdataclass.IN

# RFC 4034 §A.1.1: private algorithm whose key and signature start with a domain name naming
# it. No validator knows ours, so it must treat the zone as unsigned (RFC 4035 §5.2).
ALGORITHM_PRIVATEDNS = 253
_PRIVATE_ALGORITHM_NAME = dns.name.from_text("fake-algorithm.example.")
_FAKE_KEY_BYTES = 64

# RFC 4034 §2.1.1: bit 7 (256) marks a zone key, bit 15 (1) the secure entry point.
_ZONE_KEY = 256
_KSK = 257
# The TTL of the DNSKEY and NSEC3PARAM rrsets this module adds.
KEY_TTL_S = 300
# Signatures are valid from an hour ago to a month ahead, like a live zone's.
_VALID_FROM_S = 3600
_VALID_FOR_S = 30 * 86_400
# Signatures broken on time miss their window by a day.
_MISSED_BY_S = 86_400
_NSEC3_SHA1 = 1
_NSEC3_FLAG_OPT_OUT = 0x01


class Breakage(enum.Enum):
    """What is wrong with a zone on purpose. The apex DNSKEY set stays validly signed, so the
    chain of trust reaches the zone and the fault is found where a validator meets the data."""

    # Address records (A, AAAA) changed after signing, as a spoofed answer would be.
    BAD_SIGNATURE = "bad-signature"
    # Every RRSIG expired a day ago (RFC 4035 §5.3.1).
    EXPIRED = "expired"
    # Every RRSIG's inception is a day ahead (RFC 4035 §5.3.1).
    NOT_YET_VALID = "not-yet-valid"
    # The zone is signed, but its data is served without RRSIGs.
    MISSING_RRSIG = "missing-rrsig"
    # The DS published in the parent has a digest that matches none of the zone's DNSKEYs.
    DS_MISMATCH = "ds-mismatch"


@dataclass(frozen=True, slots=True)
class Signing:
    """How a zone is signed: algorithm, key split, denial of existence, and what is broken."""

    algorithm: int = dns.dnssec.Algorithm.ECDSAP256SHA256
    csk: bool = False  # one combined signing key (flags 257) instead of a KSK and a ZSK
    nsec3: bool = False  # NSEC3 (RFC 5155, SHA-1) instead of NSEC (RFC 4034 §4)
    opt_out: bool = False  # NSEC3 only: unsigned delegations stay out of the chain (§6)
    iterations: int = 0  # NSEC3 extra iterations; RFC 9276 §3.1 says 0
    salt: bytes = b""  # NSEC3 salt; RFC 9276 §3.1 says none
    broken: Breakage | None = None

    def __post_init__(self) -> None:
        if self.opt_out and not self.nsec3:
            raise ValueError("opt_out needs nsec3=True")


@dataclass(frozen=True, slots=True)
class _Key:
    private: GenericPrivateKey | None  # None: an algorithm dnspython cannot sign with
    dnskey: DNSKEY


def _make_key(flags: int, algorithm: int) -> _Key:
    if algorithm == ALGORITHM_PRIVATEDNS:
        prefix = _PRIVATE_ALGORITHM_NAME.to_wire()
        assert prefix is not None
        dnskey = DNSKEY(_IN, _T.DNSKEY, flags, 3, algorithm, prefix + os.urandom(_FAKE_KEY_BYTES))
        return _Key(None, dnskey)
    # Every class dnspython can sign with has generate(); the base class does not declare it.
    key_cls: Any = dns.dnssecalgs.get_algorithm_cls(algorithm)
    private = key_cls.generate()
    return _Key(private, dns.dnssec.make_dnskey(private.public_key(), algorithm, flags=flags))


class ZoneKeys:
    """A zone's signing keys: a KSK and a ZSK, or one CSK."""

    def __init__(self, origin: dns.name.Name, signing: Signing) -> None:
        self.origin = origin
        self.signing = signing
        self.ksk = _make_key(_KSK, signing.algorithm)
        self.zsk = self.ksk if signing.csk else _make_key(_ZONE_KEY, signing.algorithm)

    def dnskey_rrset(self) -> dns.rrset.RRset:
        keys = [self.ksk.dnskey] if self.ksk is self.zsk else [self.ksk.dnskey, self.zsk.dnskey]
        return dns.rrset.from_rdata_list(self.origin, KEY_TTL_S, keys)

    def ds(self) -> list[DS]:
        """The DS records the parent publishes (SHA-256 of the KSK, RFC 4509)."""
        ds = dns.dnssec.make_ds(self.origin, self.ksk.dnskey, "SHA256")
        if self.signing.broken is Breakage.DS_MISMATCH:
            digest = bytes([ds.digest[0] ^ 0xFF]) + ds.digest[1:]
            ds = DS(_IN, _T.DS, ds.key_tag, ds.algorithm, ds.digest_type, digest)
        return [ds]

    def trust_anchor_text(self) -> str:
        """The zone's DS records as trust-anchor file lines (`dnssec.trust_anchor`)."""
        return "".join(f"{self.origin} {KEY_TTL_S} IN DS {ds}\n" for ds in self.ds())

    def sign(self, rrset: dns.rrset.RRset, inception: int, expiration: int) -> RRSIG:
        """An RRSIG over `rrset`: by the KSK for the apex DNSKEY set, else by the ZSK."""
        key = self.ksk if rrset.rdtype == _T.DNSKEY else self.zsk
        if key.private is not None:
            return dns.dnssec.sign(
                rrset, key.private, self.origin, key.dnskey,
                inception=inception, expiration=expiration, origin=self.origin,
            )
        # An algorithm nobody implements: a signature of the right shape (RFC 4034 §A.1.1).
        prefix = _PRIVATE_ALGORITHM_NAME.to_wire()
        assert prefix is not None
        labels = len(rrset.name) - 1 - (1 if rrset.name.is_wild() else 0)
        return RRSIG(
            _IN, _T.RRSIG, rrset.rdtype, key.dnskey.algorithm, labels, rrset.ttl, expiration,
            inception, dns.dnssec.key_id(key.dnskey), self.origin,
            prefix + os.urandom(_FAKE_KEY_BYTES),
        )


def nsec3_owner(name: dns.name.Name, origin: dns.name.Name, signing: Signing) -> dns.name.Name:
    """The owner of the NSEC3 record for `name` (RFC 5155 §5: base32hex of the hash)."""
    digest = dns.dnssec.nsec3_hash(name, signing.salt, signing.iterations, _NSEC3_SHA1)
    return dns.name.Name((digest.lower().encode(),) + origin.labels)


def _owner_hash(owner: dns.name.Name) -> bytes:
    return base64.b32hexdecode(owner.labels[0].upper())


def _changed(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
    """`rrset` with its addresses changed (done after signing: the RRSIG no longer matches)."""
    if rrset.rdtype not in (_T.A, _T.AAAA):
        return rrset
    changed = []
    for rd in rrset:
        address = ipaddress.ip_address(rd.address)
        flipped = type(address)(int(address) ^ 1)
        changed.append(dns.rdata.from_text(_IN, rrset.rdtype, str(flipped)))
    return dns.rrset.from_rdata_list(rrset.name, rrset.ttl, changed)


class Zone:
    """One zone's records as a server answers from them; signed when `keys` is given.

    `rrsets` are the zone's data including the apex SOA, the NS at each delegation point and
    the DS the parent holds for signed children. Records below a delegation point (glue) are
    not the zone's authoritative data: they are neither kept, signed nor in the denial chain.

    Layout (all keyed by owner name):
      _nodes         owner -> {rdtype -> RRset}  authoritative data, NSEC, delegation NS/DS
      _nsec3         hashed owner -> NSEC3 RRset  apart: ordinary lookups never match them
                     (RFC 5155 §7.2.8)
      _sigs          (owner, covered type) -> RRSIG RRset
      _nsec_owners   NSEC owners in canonical order (RFC 4034 §6.1), for bisect
      _nsec3_ring    (hash, owner) in hash order, for bisect over the ring
    """

    def __init__(self, origin: dns.name.Name, rrsets: Iterable[dns.rrset.RRset],
                 keys: ZoneKeys | None = None, *, now: float) -> None:
        self.origin = origin
        self.keys = keys
        self.signing = keys.signing if keys is not None else None
        self._nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._nsec3: dict[dns.name.Name, dns.rrset.RRset] = {}
        self._sigs: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self._nsec_owners: list[dns.name.Name] = []
        self._nsec3_ring: list[tuple[bytes, dns.name.Name]] = []
        given = list(rrsets)
        for rrset in given:
            if not rrset.name.is_subdomain(origin):
                raise ValueError(f"{rrset.name} is not in zone {origin}")
        self.cuts = {r.name for r in given if r.rdtype == _T.NS and r.name != origin}
        for rrset in given:
            if self.cut_above(rrset.name) in (None, rrset.name):
                self._put(rrset)
        if _T.SOA not in self._nodes.get(origin, {}):
            raise ValueError(f"zone {origin} has no SOA at its apex")
        # Every name that exists: owners and, between them and the apex, empty non-terminals.
        self._existing = {a for name in self._nodes for a in self._ancestors(name)}
        if keys is not None:
            self._sign(keys, int(now))

    # -- building ---------------------------------------------------------------------------

    def _put(self, rrset: dns.rrset.RRset) -> None:
        node = self._nodes.setdefault(rrset.name, {})
        old = node.get(rrset.rdtype)
        if old is not None:
            rrset = dns.rrset.from_rdata_list(rrset.name, min(old.ttl, rrset.ttl), [*old, *rrset])
        node[rrset.rdtype] = rrset

    def _ancestors(self, name: dns.name.Name) -> list[dns.name.Name]:
        """The apex and every name below it down to `name`, apex first."""
        return [name.split(depth)[1] for depth in range(len(self.origin), len(name) + 1)]

    def _negative_ttl(self) -> int:
        # RFC 9077 §3: NSEC/NSEC3 TTL is min(SOA TTL, SOA MINIMUM), like a negative answer's.
        soa = self._nodes[self.origin][_T.SOA]
        return min(soa.ttl, soa[0].minimum)

    def _signed_delegation(self, name: dns.name.Name) -> bool:
        return _T.DS in self._nodes.get(name, {})

    def _sign(self, keys: ZoneKeys, now: int) -> None:
        signing = keys.signing
        self._put(keys.dnskey_rrset())
        if signing.nsec3:
            param = NSEC3PARAM(_IN, _T.NSEC3PARAM, _NSEC3_SHA1, 0, signing.iterations,
                               signing.salt)
            self._put(dns.rrset.from_rdata(self.origin, KEY_TTL_S, param))
            self._build_nsec3(signing)
        else:
            self._build_nsec()
        inception, expiration = now - _VALID_FROM_S, now + _VALID_FOR_S
        if signing.broken is Breakage.EXPIRED:
            inception, expiration = now - _VALID_FOR_S, now - _MISSED_BY_S
        elif signing.broken is Breakage.NOT_YET_VALID:
            inception, expiration = now + _MISSED_BY_S, now + _VALID_FOR_S
        for rrset in self.rrsets():
            name, rdtype = rrset.name, rrset.rdtype
            if name in self.cuts and rdtype not in (_T.DS, _T.NSEC):
                continue  # RFC 4035 §2.2: at a cut the parent signs only its DS and NSEC
            keyset = name == self.origin and rdtype == _T.DNSKEY
            if keyset:
                sig = keys.sign(rrset, now - _VALID_FROM_S, now + _VALID_FOR_S)
            elif signing.broken is Breakage.MISSING_RRSIG:
                continue
            else:
                sig = keys.sign(rrset, inception, expiration)
            self._sigs[(name, rdtype)] = dns.rrset.from_rdata(name, rrset.ttl, sig)
            if signing.broken is Breakage.BAD_SIGNATURE and not keyset:
                self._nodes[name][rdtype] = _changed(rrset)

    def _build_nsec(self) -> None:
        # RFC 4035 §2.3: one NSEC per owner name with authoritative data or a delegation,
        # in canonical order, the last pointing back to the apex.
        owners = sorted(self._nodes)
        for i, owner in enumerate(owners):
            types = [*self._nodes[owner], _T.RRSIG, _T.NSEC]
            nxt = owners[(i + 1) % len(owners)]
            nsec = NSEC(_IN, _T.NSEC, nxt, _bitmap(types))
            self._put(dns.rrset.from_rdata(owner, self._negative_ttl(), nsec))
        self._nsec_owners = owners

    def _build_nsec3(self, signing: Signing) -> None:
        # RFC 5155 §7.1: one NSEC3 per authoritative name, delegation and empty non-terminal;
        # with opt-out, unsigned delegations (and the ENTs only they make) are left out.
        included = [
            name for name in self._nodes
            if not (signing.opt_out and name in self.cuts and not self._signed_delegation(name))
        ]
        names = {a for name in included for a in self._ancestors(name)}
        ring = sorted(
            (_owner_hash(owner), owner, name)
            for name in names
            for owner in [nsec3_owner(name, self.origin, signing)]
        )
        flags = _NSEC3_FLAG_OPT_OUT if signing.opt_out else 0
        for i, (_, owner, name) in enumerate(ring):
            types = list(self._nodes.get(name, {}))
            if types and (name not in self.cuts or self._signed_delegation(name)):
                types.append(_T.RRSIG)  # §7.1: RRSIG only where signed data is
            nsec3 = NSEC3(_IN, _T.NSEC3, _NSEC3_SHA1, flags, signing.iterations, signing.salt,
                          ring[(i + 1) % len(ring)][0], _bitmap(types))
            self._nsec3[owner] = dns.rrset.from_rdata(owner, self._negative_ttl(), nsec3)
        self._nsec3_ring = [(digest, owner) for digest, owner, _ in ring]

    # -- looking up -------------------------------------------------------------------------

    @property
    def signed(self) -> bool:
        return self.keys is not None

    def rrsets(self) -> list[dns.rrset.RRset]:
        """Every rrset the zone holds (data, delegations, DNSKEY, NSEC, NSEC3), no RRSIGs."""
        return [r for node in self._nodes.values() for r in node.values()] + list(
            self._nsec3.values()
        )

    def node(self, name: dns.name.Name) -> dict[int, dns.rrset.RRset]:
        """The rrsets at `name`, by type (empty for a name without data)."""
        return dict(self._nodes.get(name, {}))

    def get(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        """The rrset (name, rdtype); NSEC3 records by their hashed owner."""
        if rdtype == _T.NSEC3:
            return self._nsec3.get(name)
        return self._nodes.get(name, {}).get(rdtype)

    def signature(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        """The RRSIG rrset over (name, rdtype), if the zone signed it (and did not lose it)."""
        return self._sigs.get((name, rdtype))

    def cut_above(self, name: dns.name.Name) -> dns.name.Name | None:
        """The delegation point at or above `name` nearest the apex, if any."""
        return next((a for a in self._ancestors(name)[1:] if a in self.cuts), None)

    def dname_above(self, name: dns.name.Name) -> dns.name.Name | None:
        """The owner of a DNAME strictly above `name`, if any (RFC 6672 §2.3)."""
        return next(
            (a for a in self._ancestors(name)[:-1] if _T.DNAME in self._nodes.get(a, {})), None
        )

    def exists(self, name: dns.name.Name) -> bool:
        """True for owner names and empty non-terminals (RFC 8020: those are not NXDOMAIN)."""
        return name in self._existing

    def closest_encloser(self, name: dns.name.Name) -> dns.name.Name:
        """The deepest existing name at or above `name` (RFC 4592 §3.3.1)."""
        return next(a for a in reversed(self._ancestors(name)) if a in self._existing)

    def nsec_covering(self, name: dns.name.Name) -> dns.name.Name:
        """The owner of the NSEC whose span holds `name` (the one at `name` if it has one)."""
        i = bisect.bisect_right(self._nsec_owners, name)
        return self._nsec_owners[i - 1]  # i == 0 wraps to the last NSEC, which ends at the apex

    def nsec3_matching(self, name: dns.name.Name) -> dns.name.Name | None:
        """The owner of the NSEC3 for `name`, if `name` is in the chain."""
        assert self.signing is not None
        owner = nsec3_owner(name, self.origin, self.signing)
        return owner if owner in self._nsec3 else None

    def nsec3_covering(self, name: dns.name.Name) -> dns.name.Name:
        """The owner of the NSEC3 whose hash span holds the hash of `name`."""
        assert self.signing is not None
        digest = _owner_hash(nsec3_owner(name, self.origin, self.signing))
        i = bisect.bisect_right([h for h, _ in self._nsec3_ring], digest)
        return self._nsec3_ring[i - 1][1]  # i == 0 wraps to the last one of the ring

    def closest_provable_encloser(
        self, name: dns.name.Name
    ) -> tuple[dns.name.Name, dns.name.Name]:
        """RFC 5155 §7.2.1: the deepest proper ancestor of `name` in the NSEC3 chain, and the
        next closer name (one label below it, towards `name`)."""
        for ancestor in reversed(self._ancestors(name)[:-1]):
            if self.nsec3_matching(ancestor) is not None:
                return ancestor, name.split(len(ancestor) + 1)[1]
        raise AssertionError(f"the apex of {self.origin} is not in its NSEC3 chain")


def _bitmap(types: Iterable[int]) -> list[tuple[int, bytes]]:
    # RFC 4034 §4.1.2: the types present at the owner, as window blocks.
    return list(Bitmap.from_rdtypes([_T.make(t) for t in sorted(set(types))]).windows)
