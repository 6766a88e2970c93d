"""A fake DNS tree for recursive-mode tests: authoritative servers on 127.0.0.x, one shared port.

Owns `Hierarchy`: the zones of a test tree, the delegations between them, and the servers that
serve them, each a `FakeUpstream` on its own loopback address (referrals carry addresses only,
so every server listens on the same port, the one the recursor is told to use). A server
answers as an authoritative one does (RFC 1034 §4.3.2): data with AA=1, a referral (AA=0, NS
in authority, glue in additional) for names at or below a delegation, NXDOMAIN/NODATA with the
SOA, CNAMEs chased through the zones it serves, DNAMEs and wildcards expanded (RFC 6672,
RFC 4592), REFUSED for names outside its zones, as NSD does. For signed zones and DO=1
queries it adds what RFC 4035 §3.1 asks: RRSIGs, the NSEC/NSEC3 proofs of NXDOMAIN, NODATA
and wildcard answers, and the DS (or the proof there is none) in referrals. It writes the root-hints file for `resolver.root_hints`
and the trust-anchor file for `dnssec.trust_anchor`.
Must not: bind or send anywhere but loopback (FakeUpstream enforces it), or sign anything
itself (`zonesign.py` does).
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from fastdns._testing.fake_upstream import (
    EDNS_PAYLOAD,
    MAX_CNAME_CHAIN,
    FakeUpstream,
    free_port,
    parse_records,
)
from fastdns._testing.zonesign import Signing, Zone, ZoneKeys

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Hierarchy"]

REFERRAL_TTL_S = 3600

_T = dns.rdatatype.RdataType


@dataclass(slots=True)
class _ZoneSpec:
    """A zone as the test declared it (records and keys); signed when the tree is built."""

    origin: dns.name.Name
    records: list[dns.rrset.RRset]
    keys: ZoneKeys | None


@dataclass(frozen=True, slots=True)
class _Served:
    """A built zone and the glue its referrals carry, by delegation point."""

    zone: Zone
    glue: dict[dns.name.Name, list[dns.rrset.RRset]]


class Hierarchy:
    """Authoritative servers for a tree of zones, built by a test.

    ```
    h = Hierarchy()
    h.zone(".", "127.0.0.2", signing=Signing())
    h.delegate("127.0.0.2", "org.", {"ns1.org.": "127.0.0.3"})
    h.zone("org.", "127.0.0.3", "example 300 IN A 192.0.2.1", signing=Signing(nsec3=True))
    h.root_hints_path(tmp_path)    # resolver: {root_hints: ..., nameserver_port: h.port}
    h.trust_anchor_path(tmp_path)  # dnssec: {enabled: true, trust_anchor: ...}
    ```
    A zone given on several servers is the same zone on each. Signed zones get their DS in the
    parent. The tree is (re)built and signed when a server first answers after a change.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self._fakes: dict[str, FakeUpstream] = {}
        self._zones: dict[dns.name.Name, _ZoneSpec] = {}
        self._served_by: dict[str, list[dns.name.Name]] = {}  # address -> zone origins
        # (parent server address, child zone) -> [(NS name, glue address or None)]
        self._delegations: dict[tuple[str, dns.name.Name],
                                list[tuple[dns.name.Name, str | None]]] = {}
        self._root: list[tuple[str, str]] = []  # (root server name, address)
        self._lock = threading.Lock()  # the fakes' threads build; the test thread declares
        self._built: dict[dns.name.Name, _Served] | None = None

    # -- declaring the tree -----------------------------------------------------------------

    def server(self, address: str) -> FakeUpstream:
        """The fake at `address` (started on first use), e.g. to set `.mode = "silent"`."""
        fake = self._fakes.get(address)
        if fake is None:
            fake = FakeUpstream(host=address, port=self.port)
            fake.answer_fn(functools.partial(self.reply, address))
            self._fakes[address] = fake.start()
            self._served_by.setdefault(address, [])
        return fake

    def zone(self, origin: str, address: str, *records: str,
             signing: Signing | None = None) -> Self:
        """Serve zone `origin` from `address` with `records` (zone-file lines, relative names
        allowed) and a SOA, signed as `signing` says (unsigned if None; keys are made on the
        zone's first declaration). The root zone's servers become the root hints."""
        apex = dns.name.from_text(origin)
        self.server(address)
        rrsets = parse_records(*(_absolute(r, apex) for r in records)) if records else []
        with self._lock:
            spec = self._zones.get(apex)
            if spec is None:
                mname = dns.name.Name((b"ns",) + apex.labels)
                rname = dns.name.Name((b"hostmaster",) + apex.labels)
                soa = f"{apex} 300 IN SOA {mname} {rname} 1 3600 600 86400 60"
                keys = ZoneKeys(apex, signing) if signing is not None else None
                spec = self._zones[apex] = _ZoneSpec(apex, parse_records(soa), keys)
            elif signing is not None and (spec.keys is None or spec.keys.signing != signing):
                raise ValueError(f"zone {apex} was first declared with other signing")
            spec.records += rrsets
            if apex not in self._served_by[address]:
                self._served_by[address].append(apex)
                if apex == dns.name.root:
                    self._root.append((f"ns-{address}.root.", address))
            self._built = None
        return self

    def delegate(self, parent_address: str, child: str,
                 servers: dict[str, str | None]) -> Self:
        """Make the zone the server at `parent_address` holds above `child` refer `child` to
        `servers` (NS name → glue address, or None for no glue: the delegation is then
        glueless there). The DS goes with it when `child` is a signed zone of this tree."""
        self.server(parent_address)
        with self._lock:
            self._delegations[(parent_address, dns.name.from_text(child))] = [
                (dns.name.from_text(n), a) for n, a in servers.items()
            ]
            self._built = None
        return self

    def root_hints_path(self, directory: Path) -> Path:
        path = directory / "root.hints"
        lines = [f".  3600000  NS  {name}" for name, _ in self._root]
        lines += [f"{name}  3600000  A  {address}" for name, address in self._root]
        path.write_text("\n".join(lines) + "\n")
        return path

    def trust_anchor_path(self, directory: Path) -> Path:
        """Write the root zone's DS records as a `dnssec.trust_anchor` file."""
        spec = self._zones.get(dns.name.root)
        if spec is None or spec.keys is None:
            raise ValueError("the root zone of this tree is not signed")
        path = directory / "root.anchor"
        path.write_text(spec.keys.trust_anchor_text())
        return path

    def served_zone(self, origin: str) -> Zone:
        """The zone `origin` as the servers answer from it now (built, and signed if it is)."""
        return self._build()[dns.name.from_text(origin)].zone

    # -- counters and lifecycle -------------------------------------------------------------

    def calls(self) -> int:
        return sum(fake.calls for fake in self._fakes.values())

    def stop(self) -> None:
        for fake in self._fakes.values():
            fake.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- building ---------------------------------------------------------------------------

    def _build(self) -> dict[dns.name.Name, _Served]:
        with self._lock:
            if self._built is None:
                self._built = self._build_locked(time.time())
            return self._built

    def _build_locked(self, now: float) -> dict[dns.name.Name, _Served]:
        extra: dict[dns.name.Name, list[dns.rrset.RRset]] = {o: [] for o in self._zones}
        glue: dict[dns.name.Name, dict[dns.name.Name, list[dns.rrset.RRset]]] = {
            o: {} for o in self._zones
        }
        for (address, child), servers in self._delegations.items():
            above = [o for o in self._served_by[address] if child.is_subdomain(o) and o != child]
            if not above:
                raise ValueError(f"{address} serves no zone above {child}")
            parent = max(above, key=len)
            ns = dns.rrset.from_text_list(child, REFERRAL_TTL_S, "IN", "NS",
                                          [n.to_text() for n, _ in servers])
            extra[parent].append(ns)
            child_spec = self._zones.get(child)
            if child_spec is not None and child_spec.keys is not None:
                # RFC 4035 §2.4: the parent publishes (and signs) the child's DS.
                extra[parent].append(
                    dns.rrset.from_rdata_list(child, REFERRAL_TTL_S, child_spec.keys.ds())
                )
            glue[parent][child] = [_address_rrset(n, a) for n, a in servers if a is not None]
        return {
            origin: _Served(Zone(origin, [*spec.records, *extra[origin]], spec.keys, now=now),
                            glue[origin])
            for origin, spec in self._zones.items()
        }

    # -- answering --------------------------------------------------------------------------

    def reply(self, address: str, query: dns.message.Message) -> dns.message.Message:
        """The reply of the server at `address` to `query`: what its fake sends, and what a
        test's own `answer_fn` for that fake may start from to misbehave."""
        built = self._build()
        with self._lock:
            served = [built[o] for o in self._served_by[address] if o in built]
        return _Answer(query, served).reply


def _address_rrset(name: dns.name.Name, address: str) -> dns.rrset.RRset:
    rdtype = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
    return dns.rrset.from_text(name, REFERRAL_TTL_S, "IN", rdtype, address)


def _absolute(record: str, origin: dns.name.Name) -> str:
    owner, _, rest = record.strip().partition(" ")
    if owner == "@":
        return f"{origin} {rest}"
    if owner.endswith("."):
        return record
    return f"{owner}.{origin} {rest}"


def _wildcard(name: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((b"*",) + name.labels)


class _Answer:
    """One authoritative reply, built section by section from the zones of one server."""

    def __init__(self, query: dns.message.Message, served: list[_Served]) -> None:
        question = query.question[0]
        self.dnssec = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        reply = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        # dnspython would refuse to render more than the query's payload size even for TCP;
        # FakeUpstream truncates UDP replies to it itself (RFC 6891 §7).
        reply.request_payload = 65535
        # RFC 4035 §3.1.6: CD is copied; an authoritative server sets no AD.
        reply.flags |= query.flags & dns.flags.CD
        if self.dnssec:
            reply.want_dnssec(True)  # RFC 3225 §3: DO is copied into the reply
        self.reply = reply
        self._served = served
        where = self._zone_for(question.name, question.rdtype)
        if question.rdclass != dns.rdataclass.IN or where is None:
            reply.set_rcode(dns.rcode.REFUSED)
            return
        reply.flags |= dns.flags.AA
        name, seen = question.name, {question.name}
        for link in range(MAX_CNAME_CHAIN + 1):
            target = self._name(where, name, question.rdtype, first=link == 0)
            if target is None or target in seen:
                break
            # RFC 1034 §4.3.2 step 3a: go on with the CNAME target, in any zone served here.
            seen.add(target)
            where = self._zone_for(target, question.rdtype)
            if where is None:
                break
            name = target

    def _zone_for(self, name: dns.name.Name, qtype: int) -> _Served | None:
        """The deepest zone served here that holds `name`; for DS at a zone apex, the parent
        zone when this server has it too (RFC 4035 §3.1.4.1: DS lives on the parent side)."""
        holding = sorted((s for s in self._served if name.is_subdomain(s.zone.origin)),
                         key=lambda s: len(s.zone.origin))
        if qtype == _T.DS and len(holding) > 1 and holding[-1].zone.origin == name:
            return holding[-2]
        return holding[-1] if holding else None

    # -- sections ---------------------------------------------------------------------------

    def _add(self, section: list[dns.rrset.RRset], zone: Zone, name: dns.name.Name,
             rdtype: int, owner: dns.name.Name | None = None) -> None:
        """Add (name, rdtype) from `zone`, and its RRSIG for DO queries; under `owner` for a
        wildcard expansion (RFC 4035 §3.1.3.3: the RRSIG's labels field tells)."""
        rrset = zone.get(name, rdtype)
        assert rrset is not None
        sig = zone.signature(name, rdtype) if self.dnssec else None
        for each in (rrset, sig):
            if each is None:
                continue
            if owner is not None:
                each = dns.rrset.from_rdata_list(owner, each.ttl, list(each))
            if each not in section:
                section.append(each)

    def _proof(self, zone: Zone, owners: Iterable[dns.name.Name]) -> None:
        """Add the NSEC or NSEC3 records at `owners` to the authority section (DO only)."""
        if not (self.dnssec and zone.signing is not None):
            return
        rdtype = _T.NSEC3 if zone.signing.nsec3 else _T.NSEC
        for owner in dict.fromkeys(owners):
            self._add(self.reply.authority, zone, owner, rdtype)

    def _negative(self, zone: Zone, rcode: dns.rcode.Rcode) -> None:
        # RFC 2308 §3: the SOA goes with NXDOMAIN and NODATA, so they can be cached.
        self.reply.set_rcode(rcode)
        self._add(self.reply.authority, zone, zone.origin, _T.SOA)

    # -- the algorithm ----------------------------------------------------------------------

    def _name(self, where: _Served, name: dns.name.Name, qtype: int, *,
              first: bool) -> dns.name.Name | None:
        """Answer for `name` from one zone; return a CNAME target to go on with, if any."""
        zone = where.zone
        cut = zone.cut_above(name)
        if cut is not None and not (cut == name and qtype == _T.DS):
            if first:
                self._referral(where, cut)
            return None
        answer = self.reply.answer
        dname = zone.dname_above(name)
        if dname is not None:
            return self._dname(zone, dname, name)
        node = zone.node(name)
        if node:
            if qtype == _T.ANY:
                for rdtype in node:
                    self._add(answer, zone, name, rdtype)
                return None
            sigs = [zone.signature(name, rdtype) for rdtype in node]
            if qtype == _T.RRSIG and any(sigs):
                answer.extend(sig for sig in sigs if sig is not None)
                return None
            if qtype in node:
                self._add(answer, zone, name, qtype)
                return None
            if _T.CNAME in node and qtype != _T.CNAME:
                self._add(answer, zone, name, _T.CNAME)
                return node[_T.CNAME][0].target
        if zone.exists(name):
            self._negative(zone, dns.rcode.NOERROR)
            self._proof(zone, _Proofs(zone, name).nodata())
            return None
        return self._nonexistent(zone, name, qtype)

    def _dname(self, zone: Zone, owner: dns.name.Name,
               name: dns.name.Name) -> dns.name.Name:
        """RFC 6672 §3.2: the DNAME, and the CNAME it makes for `name` (synthesised, so
        unsigned); the CNAME's target is looked up next."""
        self._add(self.reply.answer, zone, owner, _T.DNAME)
        dname = zone.get(owner, _T.DNAME)
        assert dname is not None
        target = name.relativize(owner).concatenate(dname[0].target)
        cname = dns.rrset.from_text(name, dname.ttl, "IN", "CNAME", target.to_text())
        self.reply.answer.append(cname)
        return target

    def _nonexistent(self, zone: Zone, name: dns.name.Name,
                     qtype: int) -> dns.name.Name | None:
        """RFC 4592 §3.3.1: a wildcard at the closest encloser answers, else NXDOMAIN."""
        wildcard = _wildcard(zone.closest_encloser(name))
        node = zone.node(wildcard)
        if not node:
            self._negative(zone, dns.rcode.NXDOMAIN)
            self._proof(zone, _Proofs(zone, name).nxdomain())
            return None
        rdtype = qtype if qtype in node else _T.CNAME if _T.CNAME in node else None
        if rdtype is None:
            self._negative(zone, dns.rcode.NOERROR)
            self._proof(zone, _Proofs(zone, name).wildcard_nodata())
            return None
        self._add(self.reply.answer, zone, wildcard, rdtype, owner=name)
        self._proof(zone, _Proofs(zone, name).wildcard_answer())
        return node[_T.CNAME][0].target if rdtype == _T.CNAME else None

    def _referral(self, where: _Served, cut: dns.name.Name) -> None:
        # RFC 1034 §4.3.2 step 3b: NS of the child in authority, glue in additional, AA=0.
        zone = where.zone
        self.reply.flags &= ~dns.flags.AA
        ns = zone.get(cut, _T.NS)
        assert ns is not None
        self.reply.authority.append(ns)
        if self.dnssec and zone.signed:
            # RFC 4035 §3.1.4: the signed DS, or the proof that there is none (RFC 5155 §7.2.7).
            if zone.get(cut, _T.DS) is not None:
                self._add(self.reply.authority, zone, cut, _T.DS)
            else:
                self._proof(zone, _Proofs(zone, cut).nodata())
        self.reply.additional.extend(where.glue.get(cut, []))


class _Proofs:
    """The owners of the NSEC or NSEC3 records that deny something about `name` in `zone`
    (none for an unsigned zone)."""

    def __init__(self, zone: Zone, name: dns.name.Name) -> None:
        self.zone = zone
        self.name = name
        self.nsec3 = zone.signing is not None and zone.signing.nsec3
        self.signed = zone.signing is not None

    def _closest_encloser_proof(self) -> list[dns.name.Name]:
        # RFC 5155 §7.2.1: the closest provable encloser matched, the next closer name covered.
        cpe, next_closer = self.zone.closest_provable_encloser(self.name)
        match = self.zone.nsec3_matching(cpe)
        assert match is not None
        return [match, self.zone.nsec3_covering(next_closer)]

    def _wildcard(self) -> dns.name.Name:
        return _wildcard(self.zone.closest_encloser(self.name))

    def nodata(self) -> list[dns.name.Name]:
        """`name` exists without the asked type (or is a delegation without DS)."""
        if not self.signed:
            return []
        if not self.nsec3:
            # RFC 4035 §3.1.3.1: the NSEC at the name; for an empty non-terminal the one whose
            # span it falls in (its next name is below it, RFC 4035 §3.1.3.2).
            return [self.zone.nsec_covering(self.name)]
        match = self.zone.nsec3_matching(self.name)
        if match is not None:
            return [match]  # RFC 5155 §7.2.3
        # RFC 5155 §7.2.4, §7.2.7: a delegation left out by opt-out is covered by an opt-out span.
        return self._closest_encloser_proof()

    def nxdomain(self) -> list[dns.name.Name]:
        """`name` does not exist, and no wildcard could have made it."""
        if not self.signed:
            return []
        if not self.nsec3:
            # RFC 4035 §3.1.3.2: the name and the wildcard at its closest encloser are covered.
            return [self.zone.nsec_covering(self.name), self.zone.nsec_covering(self._wildcard())]
        # RFC 5155 §7.2.2: closest encloser proof, and the wildcard at it covered.
        cpe, _ = self.zone.closest_provable_encloser(self.name)
        return [*self._closest_encloser_proof(), self.zone.nsec3_covering(_wildcard(cpe))]

    def wildcard_nodata(self) -> list[dns.name.Name]:
        """The wildcard that matches `name` has no data of the asked type."""
        if not self.signed:
            return []
        if not self.nsec3:
            # RFC 4035 §3.1.3.4: the name covered, the wildcard's NSEC shows its types.
            return [self.zone.nsec_covering(self.name), self.zone.nsec_covering(self._wildcard())]
        # RFC 5155 §7.2.5: closest encloser proof and the NSEC3 matching the wildcard.
        match = self.zone.nsec3_matching(self._wildcard())
        assert match is not None
        return [*self._closest_encloser_proof(), match]

    def wildcard_answer(self) -> list[dns.name.Name]:
        """`name` was answered from a wildcard, so `name` itself must be shown not to exist."""
        if not self.signed:
            return []
        if not self.nsec3:
            return [self.zone.nsec_covering(self.name)]  # RFC 4035 §3.1.3.3
        # RFC 5155 §7.2.6: the next closer name (below the wildcard's parent) is covered.
        ce = self.zone.closest_encloser(self.name)
        return [self.zone.nsec3_covering(self.name.split(len(ce) + 1)[1])]
