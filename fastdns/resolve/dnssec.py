"""DNSSEC validation stage: turns a response received with DO=1 into a `Verdict` (RFC 4035 §4.3).

Owns the chain of trust from the configured trust anchors down to the zones that signed the
data (DS and DNSKEY fetched through the caller's `fetch`, checked with dnspython), the key
cache (validated key sets, proven-insecure zone cuts and, briefly, bogus zones, by zone name,
LRU-bounded), and the proofs of denial: NSEC (RFC 4035 §5.4) and NSEC3 (RFC 5155 §8), including
wildcard answers (RFC 4592, RFC 4035 §5.3.4) and opt-out.

Must not: send anything itself (every question goes through `fetch`, which does the asking and
its own caching), change the response, decide the reply (the caller maps a Verdict to AD,
SERVFAIL and EDE; see `Verdict.servable`), or raise out of `Validator.validate`.

Time: signature validity and key-cache expiry use the injected wall `clock`, because RRSIG
inception and expiration are absolute UNIX seconds (RFC 4034 §3.1.5).

Work is bounded per validation (fetches, signature checks, keys per signature, NSEC3 hashes,
CNAME links), so a hostile zone cannot make one question spin (cf. CVE-2023-50387 KeyTrap).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import functools
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import dns._features
import dns.dnssec
import dns.dnssecalgs
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3
from dns.rdtypes.ANY.RRSIG import RRSIG

from fastdns.errors import ResolveError

Fetch = Callable[[dns.name.Name, int], Awaitable[dns.message.Message]]

# RFC 8914 §4 INFO-CODEs this stage reports.
EDE_OTHER = 0
EDE_UNSUPPORTED_DNSKEY_ALGORITHM = 1
EDE_DNSSEC_BOGUS = 6
EDE_SIGNATURE_EXPIRED = 7
EDE_SIGNATURE_NOT_YET_VALID = 8
EDE_DNSKEY_MISSING = 9
EDE_RRSIGS_MISSING = 10
EDE_NSEC_MISSING = 12
EDE_NO_REACHABLE_AUTHORITY = 22

# Bogus zones are remembered this long (Unbound's key cache does the same, 60 s), so a broken
# zone costs one chain walk a minute, not one per question.
BOGUS_TTL_S = 60
# A fetch failure is transient: the verdict may be reused only very briefly.
FETCH_FAILED_TTL_S = 5
# Upper bound on how long any validated key set or insecure proof is kept.
MAX_KEY_TTL_S = 86_400
# RFC 9276 §3.2: NSEC3 with more iterations than this is treated as insecure.
MAX_NSEC3_ITERATIONS = 150

# Work bounds for one validation.
MAX_FETCHES = 32
MAX_SIGNATURE_CHECKS = 64
MAX_KEYS_PER_SIGNATURE = 4  # key-tag collisions beyond this are a hostile zone
MAX_SIGNATURES_PER_RRSET = 8
MAX_NSEC3_HASHES = 64
MAX_CHAIN_LINKS = 12  # CNAME/DNAME links followed in one answer
MAX_NSEC_RRSETS = 32  # proof records considered from one authority section

# RFC 8624 §3.1: algorithms a validator MUST NOT validate with.
_DENIED_ALGORITHMS = frozenset(
    {
        dns.dnssec.Algorithm.RSAMD5,
        dns.dnssec.Algorithm.DSA,
        dns.dnssec.Algorithm.DSANSEC3SHA1,
    }
)
# RFC 8624 §3.3: SHA-1, SHA-256 and SHA-384 DS digests are validated; GOST and NULL are not.
_SUPPORTED_DIGESTS = frozenset({1, 2, 4})

_NSEC3_OPT_OUT = 0x01
_NSEC3_HASH_SHA1 = 1

class Security(enum.Enum):
    """RFC 4035 §4.3 security status of a response."""

    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What validation concluded about one response, and for how long that holds."""

    security: Security
    ede: int | None  # RFC 8914 INFO-CODE when BOGUS/INDETERMINATE, else None
    reason: str  # short human text, sent as EDE EXTRA-TEXT and logged
    ttl_s: int  # how long this verdict may be cached with the data

    @property
    def servable(self) -> bool:
        """True if the data may be served (AD only when SECURE); False means SERVFAIL + EDE.

        INDETERMINATE without an EDE means no trust anchor covers the name (RFC 4035 §4.3,
        served unauthenticated); with an EDE it means validation could not finish (a fetch
        failed), which must not become a way around validation.
        """
        if self.security is Security.BOGUS:
            return False
        return self.security is not Security.INDETERMINATE or self.ede is None


def _bogus(ede: int, reason: str) -> Verdict:
    return Verdict(Security.BOGUS, ede, reason, BOGUS_TTL_S)


class _Fail(Exception):
    """Ends a validation with `verdict` (internal; `validate` turns it into its result)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class _OverBudget(_Fail):
    """A work bound was reached: a verdict for this question only, never cached by zone."""


# ---------------------------------------------------------------------------------------------
# Small DNSSEC helpers


def _alg_supported(algorithm: int) -> bool:
    if algorithm in _DENIED_ALGORITHMS:
        return False
    try:
        dns.dnssecalgs.get_algorithm_cls(algorithm)
    except dns.exception.DNSException:
        return False
    return True


def _ds_supported(ds: DS) -> bool:
    return ds.digest_type in _SUPPORTED_DIGESTS and _alg_supported(ds.algorithm)


def _label_count(name: dns.name.Name) -> int:
    # RFC 4034 §3.1.3: the root label and a leading wildcard label are not counted.
    n = len(name) - 1
    if n > 0 and name.labels[0] == b"*":
        n -= 1
    return n


def _types(rdata: NSEC | NSEC3) -> frozenset[int]:
    # RFC 4034 §4.1.2 type bitmap: window, then bits from the most significant one.
    found = set()
    for window, bitmap in rdata.windows:
        for i, octet in enumerate(bitmap):
            for bit in range(8):
                if octet & (0x80 >> bit):
                    found.add(window * 256 + i * 8 + bit)
    return frozenset(found)


def _common_ancestor(a: dns.name.Name, b: dns.name.Name) -> dns.name.Name:
    _, _, common = a.fullcompare(b)
    return a.split(common)[1] if common else dns.name.root


def _child_towards(ancestor: dns.name.Name, name: dns.name.Name) -> dns.name.Name:
    """The name one label below `ancestor` on the way to `name` (RFC 5155's next closer)."""
    return name.split(len(ancestor) + 1)[1]


def _names_below(top: dns.name.Name, name: dns.name.Name) -> list[dns.name.Name]:
    """Names from one label below `top` down to `name`, inclusive."""
    return [name.split(depth)[1] for depth in range(len(top) + 1, len(name) + 1)]


def _wildcard(ce: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((b"*",) + ce.labels)


def _nsec3_digest(name: dns.name.Name, salt: bytes, iterations: int) -> bytes:
    # RFC 5155 §5: IH(salt, x, 0) = H(x || salt); IH(salt, x, k) = H(IH(salt, x, k-1) || salt).
    wire = name.canonicalize().to_wire()
    assert wire is not None  # an absolute name always has wire form
    digest = hashlib.sha1(wire + salt).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt).digest()
    return digest


# ---------------------------------------------------------------------------------------------
# Key cache entries and per-validation state


# One entry per zone name in `Validator._keys` (an OrderedDict used as an LRU):
#
#   zone ──> _ZoneKeys(security, dnskeys, expires_at, verdict)
#            SECURE    dnskeys = the DNSKEY set validated down the chain from an anchor
#            INSECURE  a proven unsigned (or unsupported-algorithm) delegation at `zone`:
#                      everything at and below it is insecure until expires_at
#            BOGUS     the chain to `zone` failed; `verdict` says why (kept BOGUS_TTL_S)
@dataclass(slots=True)
class _ZoneKeys:
    zone: dns.name.Name
    security: Security
    dnskeys: dns.rdataset.Rdataset | None
    expires_at: float  # wall seconds
    verdict: Verdict | None = None
    reason: str = ""


class _Marker(enum.Enum):
    NOT_A_CUT = "not a cut"  # the name exists inside the parent zone
    NO_NAME = "no name"  # the parent proves the name does not exist


_Step = _ZoneKeys | _Marker


class _Run:
    """State of one validation: its clock reading, work counters, TTL and insecurity."""

    __slots__ = ("fetches", "hashes", "insecure", "now", "signature_checks", "ttl_s", "verified")

    def __init__(self, now: float, ttl_s: float) -> None:
        self.now = now
        self.ttl_s = ttl_s
        self.fetches = 0
        self.signature_checks = 0
        self.hashes = 0
        self.insecure: str | None = None
        self.verified: dict[int, RRSIG] = {}  # id(rrset) -> the RRSIG that verified it

    def cap(self, ttl_s: float) -> None:
        self.ttl_s = min(self.ttl_s, ttl_s)

    def mark_insecure(self, reason: str) -> None:
        if self.insecure is None:
            self.insecure = reason

    def spend(self, counter: str, limit: int) -> None:
        value = getattr(self, counter) + 1
        if value > limit:
            raise _OverBudget(_bogus(EDE_OTHER, f"validation work limit reached ({counter})"))
        setattr(self, counter, value)


class _Section:
    """One message section indexed for validation: rrsets by (owner, type), RRSIGs by covered."""

    def __init__(self, rrsets: Sequence[dns.rrset.RRset]) -> None:
        self.rrsets: list[dns.rrset.RRset] = []
        self._sigs: dict[tuple[dns.name.Name, int], list[RRSIG]] = {}
        for rrset in rrsets:
            if rrset.rdclass != dns.rdataclass.IN:
                continue
            if rrset.rdtype == dns.rdatatype.RRSIG:
                for sig in rrset:
                    self._sigs.setdefault((rrset.name, sig.type_covered), []).append(sig)
            else:
                self.rrsets.append(rrset)

    def get(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        for rrset in self.rrsets:
            if rrset.rdtype == rdtype and rrset.name == name:
                return rrset
        return None

    def sigs(self, rrset: dns.rrset.RRset) -> list[RRSIG]:
        return self._sigs.get((rrset.name, rrset.rdtype), [])

    def dname_above(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        best = None
        for rrset in self.rrsets:
            if (
                rrset.rdtype == dns.rdatatype.DNAME
                and name != rrset.name
                and name.is_subdomain(rrset.name)
                and (best is None or len(rrset.name) > len(best.name))
            ):
                best = rrset
        return best


class _Denial:
    """The validated NSEC or NSEC3 records of one zone from one response, and proofs over them."""

    def __init__(
        self,
        zone: dns.name.Name,
        nsecs: list[tuple[dns.name.Name, NSEC]],
        nsec3s: list[tuple[bytes, NSEC3]],
        run: _Run,
    ) -> None:
        self.zone = zone
        self.nsecs = nsecs
        self.nsec3s = nsec3s
        self._run = run
        self._hashes: dict[tuple[dns.name.Name, bytes, int], bytes] = {}

    # NSEC (RFC 4034 §4, RFC 4035 §5.4)

    def nsec_at(self, name: dns.name.Name) -> NSEC | None:
        for owner, rdata in self.nsecs:
            if owner == name:
                return rdata
        return None

    def nsec_covering(self, name: dns.name.Name) -> tuple[dns.name.Name, NSEC] | None:
        for owner, rdata in self.nsecs:
            nxt = rdata.next
            if owner < nxt:
                covers = owner < name < nxt
            else:  # the last NSEC of the zone: its next name is the apex
                covers = owner < name
            if not covers:
                continue
            # An NSEC at a delegation point or DNAME above `name` is not authoritative for it
            # (RFC 4035 §5.4 / RFC 6672 §5.3.2).
            types = _types(rdata)
            if name.is_subdomain(owner) and (
                dns.rdatatype.DNAME in types
                or (dns.rdatatype.NS in types and dns.rdatatype.SOA not in types)
            ):
                continue
            return owner, rdata
        return None

    def nsec_closest_encloser(
        self, name: dns.name.Name, owner: dns.name.Name, rdata: NSEC
    ) -> dns.name.Name:
        ce = max(_common_ancestor(name, owner), _common_ancestor(name, rdata.next), key=len)
        return ce if ce.is_subdomain(self.zone) else self.zone

    # NSEC3 (RFC 5155 §8)

    def nsec3_insecure_reason(self) -> str | None:
        if not self.nsec3s:
            return None
        if all(rd.iterations > MAX_NSEC3_ITERATIONS for _, rd in self.nsec3s):
            return f"NSEC3 iterations above {MAX_NSEC3_ITERATIONS} in {self.zone} (RFC 9276)"
        return None

    def _hash(self, name: dns.name.Name, rdata: NSEC3) -> bytes:
        key = (name, rdata.salt, rdata.iterations)
        digest = self._hashes.get(key)
        if digest is None:
            self._run.spend("hashes", MAX_NSEC3_HASHES)
            digest = _nsec3_digest(name, rdata.salt, rdata.iterations)
            self._hashes[key] = digest
        return digest

    def nsec3_match(self, name: dns.name.Name) -> NSEC3 | None:
        for owner_hash, rdata in self.nsec3s:
            if self._hash(name, rdata) == owner_hash:
                return rdata
        return None

    def nsec3_cover(self, name: dns.name.Name) -> NSEC3 | None:
        for owner_hash, rdata in self.nsec3s:
            digest = self._hash(name, rdata)
            if owner_hash < rdata.next:
                covers = owner_hash < digest < rdata.next
            else:  # the last NSEC3 of the hash ring wraps around
                covers = digest > owner_hash or digest < rdata.next
            if covers:
                return rdata
        return None

    def nsec3_closest_encloser(
        self, name: dns.name.Name
    ) -> tuple[dns.name.Name, dns.name.Name, NSEC3]:
        """RFC 5155 §8.3: (closest encloser, next closer name, NSEC3 covering the next closer).

        The encloser is the deepest proper ancestor of `name` (down to the apex) with a
        matching NSEC3.
        """
        for ancestor in [name.split(d)[1] for d in range(len(name) - 1, len(self.zone) - 1, -1)]:
            match = self.nsec3_match(ancestor)
            if match is None:
                continue
            types = _types(match)
            if dns.rdatatype.DNAME in types or (
                dns.rdatatype.NS in types and dns.rdatatype.SOA not in types
            ):
                raise _Fail(
                    _bogus(
                        EDE_DNSSEC_BOGUS,
                        f"NSEC3 closest encloser {ancestor} is a "
                        "delegation or DNAME (RFC 5155 §8.3)",
                    )
                )
            next_closer = _child_towards(ancestor, name)
            cover = self.nsec3_cover(next_closer)
            if cover is None:
                raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC3 covers {next_closer}"))
            return ancestor, next_closer, cover
        raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC3 closest encloser for {name}"))


# ---------------------------------------------------------------------------------------------
# The validator


class Validator:
    """DNSSEC validator stage: `await validate(response)` -> Verdict; never raises."""

    name = "dnssec"

    def __init__(
        self,
        anchors: list[dns.rrset.RRset],
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        max_zones: int = 10_000,
    ) -> None:
        if not dns._features.have("dnssec"):
            # Fail at start-up, not with every answer BOGUS.
            raise RuntimeError("DNSSEC validation needs the 'cryptography' package")
        self._fetch_fn = fetch
        self._clock = clock
        self._max_zones = max(1, max_zones)
        self._anchors: dict[dns.name.Name, tuple[list[DS], list[DNSKEY]]] = {}
        for rrset in anchors:
            ds_list, keys = self._anchors.setdefault(rrset.name, ([], []))
            if rrset.rdtype == dns.rdatatype.DS:
                ds_list.extend(rrset)
            elif rrset.rdtype == dns.rdatatype.DNSKEY:
                keys.extend(rrset)
        self._keys: OrderedDict[dns.name.Name, _ZoneKeys] = OrderedDict()
        self._inflight: dict[dns.name.Name, asyncio.Future[_Step]] = {}
        self.fetches = 0  # total fetches made, for metrics

    @property
    def cached_zones(self) -> int:
        """How many zones the key cache holds (secure, insecure or bogus), for metrics."""
        return len(self._keys)

    # -- entry point ------------------------------------------------------------------------

    async def validate(self, response: dns.message.Message) -> Verdict:
        """Validate `response` (the final answer to its question, received with DO=1)."""
        try:
            return await self._validate(response)
        except _Fail as fail:
            return fail.verdict
        except ResolveError as exc:
            return Verdict(
                Security.INDETERMINATE,
                EDE_NO_REACHABLE_AUTHORITY,
                f"fetching DNSSEC records failed: {exc}",
                FETCH_FAILED_TTL_S,
            )
        except Exception as exc:  # noqa: BLE001 - a verdict, never an exception (interface)
            return _bogus(EDE_DNSSEC_BOGUS, f"validation error: {type(exc).__name__}: {exc}")

    async def _validate(self, response: dns.message.Message) -> Verdict:
        if not response.question:
            return _bogus(EDE_DNSSEC_BOGUS, "response has no question")
        question = response.question[0]
        qname, qtype = question.name, question.rdtype
        rcode = response.rcode()
        if question.rdclass != dns.rdataclass.IN:
            return Verdict(Security.INDETERMINATE, None, "only class IN is validated", 0)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return Verdict(Security.INDETERMINATE, None, "rcode carries no DNSSEC data", 0)
        answer = _Section(response.answer)
        authority = _Section(response.authority)
        ttls = [r.ttl for r in answer.rrsets] + [
            r.ttl
            for r in authority.rrsets
            if r.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.NSEC3)
        ]
        run = _Run(self._clock(), min(ttls, default=MAX_KEY_TTL_S))

        if qtype == dns.rdatatype.RRSIG:
            # RRSIGs are not signed themselves (RFC 4035 §2.2); there is nothing to validate.
            return Verdict(Security.INDETERMINATE, None, "RRSIG queries are not validated", 0)
        if qtype == dns.rdatatype.ANY and answer.rrsets:
            for each in answer.rrsets:
                await self._positive(each, answer, authority, run)
            return self._verdict(run)

        used: list[dns.rrset.RRset] = []
        sname = qname
        for _ in range(MAX_CHAIN_LINKS + 1):
            rrset = answer.get(sname, qtype)
            if rrset is not None:
                used.append(rrset)
                await self._positive(rrset, answer, authority, run)
                break
            dname = answer.dname_above(sname) if qtype != dns.rdatatype.DNAME else None
            if dname is not None:
                # RFC 6672 §5.3: the DNAME is validated; the CNAME synthesised from it is
                # unsigned by design and only has to agree with it.
                used.append(dname)
                await self._positive(dname, answer, authority, run)
                try:
                    target = sname.relativize(dname.name).concatenate(dname[0].target)
                except dns.name.NameTooLong:
                    raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"DNAME {dname.name} overflows")) from None
                cname = answer.get(sname, dns.rdatatype.CNAME)
                if cname is not None:
                    if cname[0].target != target:
                        raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"CNAME {sname} disagrees with DNAME"))
                    used.append(cname)
                sname = target
                continue
            cname = answer.get(sname, dns.rdatatype.CNAME)
            if cname is not None:
                used.append(cname)
                await self._positive(cname, answer, authority, run)
                sname = cname[0].target
                continue
            await self._negative(sname, qtype, rcode, authority, run)
            break
        else:
            raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"more than {MAX_CHAIN_LINKS} CNAME/DNAME links"))
        # Every other rrset in the answer section must validate too.
        for other in answer.rrsets:
            if not any(other is u for u in used):
                await self._positive(other, answer, authority, run)
        return self._verdict(run)

    def _verdict(self, run: _Run) -> Verdict:
        ttl_s = max(0, int(run.ttl_s))
        if run.insecure is not None:
            return Verdict(Security.INSECURE, None, run.insecure, ttl_s)
        return Verdict(Security.SECURE, None, "validated", ttl_s)

    # -- answers ----------------------------------------------------------------------------

    async def _positive(
        self, rrset: dns.rrset.RRset, answer: _Section, authority: _Section, run: _Run
    ) -> None:
        sigs = answer.sigs(rrset)
        what = f"{rrset.name}/{dns.rdatatype.to_text(rrset.rdtype)}"
        if not sigs:
            await self._require_insecure(
                rrset.name, run, EDE_RRSIGS_MISSING, f"no RRSIG for {what}"
            )
            return
        keys = await self._signer_keys(sigs, rrset.name, rrset.rdtype, run)
        if keys is None:
            return
        rrsig = self._verify(rrset, sigs, keys, run)
        if rrsig.labels < _label_count(rrset.name):
            # RFC 4035 §5.3.4: a wildcard expansion needs proof that the name itself does not
            # exist; the closest encloser is the RRSIG labels' suffix of the owner.
            await self._wildcard_proof(
                rrset.name, rrset.name.split(rrsig.labels + 1)[1], keys, authority, run
            )

    async def _signer_keys(
        self, sigs: Sequence[RRSIG], owner: dns.name.Name, rdtype: int, run: _Run
    ) -> _ZoneKeys | None:
        """The secure key set of the zone that signed `owner`'s data; None if it is insecure."""
        signers = [s.signer for s in sigs if owner.is_subdomain(s.signer)]
        if not signers:
            raise _Fail(
                _bogus(EDE_DNSSEC_BOGUS, f"RRSIG signer {sigs[0].signer} is not above {owner}")
            )
        signer = max(signers, key=len)
        keys = await self._keys_for(signer, run)
        if keys.security is Security.INSECURE:
            run.mark_insecure(keys.reason or f"{keys.zone} is an insecure delegation")
            run.cap(keys.expires_at - run.now)
            return None
        if keys.security is Security.BOGUS:
            assert keys.verdict is not None
            raise _Fail(keys.verdict)
        run.cap(keys.expires_at - run.now)
        # The signer must be the zone the owner is in: a known cut between them means the data
        # is signed by the wrong side (DS and NSEC at a cut belong to the parent, RFC 4035 §2.4).
        at_owner = rdtype not in (dns.rdatatype.DS, dns.rdatatype.NSEC)
        for name in _names_below(signer, owner):
            if name == owner and not at_owner:
                break
            if self._peek(name, run) is not None:
                raise _Fail(
                    _bogus(
                        EDE_DNSSEC_BOGUS, f"{owner} is signed by {signer}, but {name} is a zone cut"
                    )
                )
        return keys

    def _verify(
        self, rrset: dns.rrset.RRset, sigs: Sequence[RRSIG], keys: _ZoneKeys, run: _Run
    ) -> RRSIG:
        assert keys.dnskeys is not None
        rrsig = self._verify_with(rrset, sigs, keys.zone, list(keys.dnskeys), run)
        return rrsig

    def _verify_with(
        self,
        rrset: dns.rrset.RRset,
        sigs: Sequence[RRSIG],
        zone: dns.name.Name,
        keys: list[DNSKEY],
        run: _Run,
    ) -> RRSIG:
        """The first RRSIG that verifies `rrset` with one of `keys`; caps run's TTL by it.

        Raises _Fail with the most telling EDE among the signatures' failures.
        """
        # Keyed by identity: the same owner and type may appear twice in a response with
        # different contents, and each copy must verify on its own.
        cache_key = id(rrset)
        done = run.verified.get(cache_key)
        if done is not None:
            return done
        what = f"{rrset.name}/{dns.rdatatype.to_text(rrset.rdtype)}"
        # Lower rank wins: a time problem says more than a bad signature, which says more than
        # a signature made with a key we do not hold.
        rank = {
            EDE_SIGNATURE_EXPIRED: 0,
            EDE_SIGNATURE_NOT_YET_VALID: 1,
            EDE_DNSSEC_BOGUS: 2,
            EDE_UNSUPPORTED_DNSKEY_ALGORITHM: 3,
            EDE_DNSKEY_MISSING: 4,
            EDE_RRSIGS_MISSING: 5,
        }
        failure = (EDE_RRSIGS_MISSING, f"no RRSIG by {zone} for {what}")

        def note(ede: int, reason: str) -> None:
            nonlocal failure
            if rank[ede] < rank[failure[0]]:
                failure = (ede, reason)

        now = run.now
        for rrsig in list(sigs)[:MAX_SIGNATURES_PER_RRSET]:
            if rrsig.signer != zone or rrsig.type_covered != rrset.rdtype:
                continue
            if rrsig.labels > _label_count(rrset.name):
                note(EDE_DNSSEC_BOGUS, f"RRSIG labels too large for {what}")
                continue
            if rrsig.expiration < now:
                note(EDE_SIGNATURE_EXPIRED, f"RRSIG for {what} expired")
                continue
            if rrsig.inception > now:
                note(EDE_SIGNATURE_NOT_YET_VALID, f"RRSIG for {what} not yet valid")
                continue
            if not _alg_supported(rrsig.algorithm):
                note(EDE_UNSUPPORTED_DNSKEY_ALGORITHM, f"RRSIG algorithm {rrsig.algorithm}")
                continue
            candidates = [
                k
                for k in keys
                if k.algorithm == rrsig.algorithm
                and dns.dnssec.key_id(k) == rrsig.key_tag
                and k.flags & dns.dnssec.Flag.ZONE  # RFC 4034 §2.1.1
                and k.protocol == 3
            ][:MAX_KEYS_PER_SIGNATURE]
            if not candidates:
                note(EDE_DNSKEY_MISSING, f"no DNSKEY {rrsig.key_tag} in {zone} for {what}")
                continue
            for key in candidates:
                run.spend("signature_checks", MAX_SIGNATURE_CHECKS)
                keyset = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.DNSKEY)
                keyset.add(key)
                try:
                    dns.dnssec.validate_rrsig(rrset, rrsig, {zone: keyset}, now=now)
                except dns.exception.UnsupportedAlgorithm:
                    note(EDE_UNSUPPORTED_DNSKEY_ALGORITHM, f"algorithm {rrsig.algorithm}")
                    continue
                except dns.exception.DNSException:
                    note(EDE_DNSSEC_BOGUS, f"RRSIG for {what} does not verify")
                    continue
                # RFC 4035 §5.3.3: the data lives no longer than the original TTL and the
                # signature.
                run.cap(min(rrset.ttl, rrsig.original_ttl, rrsig.expiration - now))
                run.verified[cache_key] = rrsig
                return rrsig
        raise _Fail(_bogus(*failure))

    async def _wildcard_proof(
        self,
        owner: dns.name.Name,
        ce: dns.name.Name,
        keys: _ZoneKeys,
        authority: _Section,
        run: _Run,
    ) -> None:
        denial = self._denial(authority, keys, run)
        if denial.nsecs:
            found = denial.nsec_covering(owner)
            if found is not None and denial.nsec_closest_encloser(owner, *found) == ce:
                return
            raise _Fail(
                _bogus(EDE_NSEC_MISSING, f"no NSEC proves {owner} does not exist (wildcard answer)")
            )
        if denial.nsec3s:
            reason = denial.nsec3_insecure_reason()
            if reason is not None:
                run.mark_insecure(reason)
                return
            # RFC 5155 §8.8: an NSEC3 must cover the next closer name.
            if denial.nsec3_cover(_child_towards(ce, owner)) is not None:
                return
        raise _Fail(
            _bogus(EDE_NSEC_MISSING, f"no proof that {owner} does not exist (wildcard answer)")
        )

    # -- negative answers -------------------------------------------------------------------

    async def _negative(
        self, sname: dns.name.Name, qtype: int, rcode: int, authority: _Section, run: _Run
    ) -> None:
        proof_types = (dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.NSEC3)
        records = [r for r in authority.rrsets if r.rdtype in proof_types]
        signed = [r for r in records if authority.sigs(r)]
        what = "NXDOMAIN" if rcode == dns.rcode.NXDOMAIN else "NODATA"
        if not signed:
            has_nsec = any(r.rdtype != dns.rdatatype.SOA for r in records)
            ede = EDE_RRSIGS_MISSING if has_nsec else EDE_NSEC_MISSING
            await self._require_insecure(sname, run, ede, f"unsigned {what} for {sname}")
            return
        sigs = [s for r in signed for s in authority.sigs(r)]
        keys = await self._signer_keys(sigs, sname, qtype, run)
        if keys is None:
            return
        soa = authority.get(keys.zone, dns.rdatatype.SOA)
        if soa is not None:
            self._verify(soa, authority.sigs(soa), keys, run)
        denial = self._denial(authority, keys, run)
        if not denial.nsecs and not denial.nsec3s:
            raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC/NSEC3 for {what} {sname}"))
        if rcode == dns.rcode.NXDOMAIN:
            self._prove_nxdomain(sname, denial, run)
        else:
            self._prove_nodata(sname, qtype, denial, run)

    def _denial(self, authority: _Section, keys: _ZoneKeys, run: _Run) -> _Denial:
        """The NSEC/NSEC3 records in `authority` that validate with the keys of `keys.zone`."""
        nsecs: list[tuple[dns.name.Name, NSEC]] = []
        nsec3s: list[tuple[bytes, NSEC3]] = []
        considered = 0
        for rrset in authority.rrsets:
            if rrset.rdtype not in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3):
                continue
            if not rrset.name.is_subdomain(keys.zone):
                continue
            sigs = [s for s in authority.sigs(rrset) if s.signer == keys.zone]
            if not sigs:
                continue  # unsigned or another zone's: not evidence for this zone
            considered += 1
            if considered > MAX_NSEC_RRSETS:
                break
            self._verify(rrset, sigs, keys, run)
            if rrset.rdtype == dns.rdatatype.NSEC:
                nsecs.extend((rrset.name, rd) for rd in rrset)
                continue
            # RFC 5155: NSEC3 owners are exactly one hash label above the zone apex; unknown
            # hash algorithms and flags are ignored (§8.1, §8.2).
            if rrset.name.parent() != keys.zone:
                continue
            try:
                owner_hash = base64.b32hexdecode(rrset.name.labels[0].upper())
            except ValueError:
                continue
            for rd in rrset:
                if rd.algorithm == _NSEC3_HASH_SHA1 and rd.flags & ~_NSEC3_OPT_OUT == 0:
                    nsec3s.append((owner_hash, rd))
                else:
                    run.mark_insecure(f"NSEC3 hash algorithm {rd.algorithm} is not supported")
        return _Denial(keys.zone, nsecs, nsec3s, run)

    def _prove_nxdomain(self, sname: dns.name.Name, denial: _Denial, run: _Run) -> None:
        if denial.nsecs:
            # RFC 4035 §5.4: an NSEC covers the name, and one proves no wildcard could match.
            if denial.nsec_at(sname) is not None:
                raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"NXDOMAIN but an NSEC exists at {sname}"))
            found = denial.nsec_covering(sname)
            if found is None:
                raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC covers {sname}"))
            wildcard = _wildcard(denial.nsec_closest_encloser(sname, *found))
            if denial.nsec_at(wildcard) is not None or denial.nsec_covering(wildcard) is None:
                raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC proves {wildcard} is absent"))
            return
        reason = denial.nsec3_insecure_reason()
        if reason is not None:
            run.mark_insecure(reason)
            return
        if denial.nsec3_match(sname) is not None:
            raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"NXDOMAIN but an NSEC3 matches {sname}"))
        # RFC 5155 §8.4: closest encloser, next closer covered, wildcard at the encloser covered.
        ce, next_closer, cover = denial.nsec3_closest_encloser(sname)
        if cover.flags & _NSEC3_OPT_OUT:
            # RFC 5155 §9.2: an opt-out span may hide an unsigned delegation.
            run.mark_insecure(f"opt-out NSEC3 covers {next_closer}")
            return
        if denial.nsec3_cover(_wildcard(ce)) is None:
            raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC3 covers {_wildcard(ce)}"))

    def _prove_nodata(self, sname: dns.name.Name, qtype: int, denial: _Denial, run: _Run) -> None:
        what = f"{sname}/{dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))}"

        def lacks(types: frozenset[int]) -> bool:
            if qtype in types or dns.rdatatype.CNAME in types:
                return False
            if qtype == dns.rdatatype.DS:
                # RFC 4035 §5.4 / RFC 6840 §4.4: the DS proof comes from the parent side.
                return dns.rdatatype.SOA not in types or sname == dns.name.root
            # The parent's NSEC at a delegation says nothing about the child's data.
            return dns.rdatatype.NS not in types or dns.rdatatype.SOA in types

        if denial.nsecs:
            match = denial.nsec_at(sname)
            if match is not None:
                if lacks(_types(match)):
                    return
                raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"NSEC at {sname} does not deny {what}"))
            found = denial.nsec_covering(sname)
            if found is not None:
                owner, rdata = found
                if rdata.next != sname and rdata.next.is_subdomain(sname):
                    return  # RFC 4035 §3.1.3.2: an empty non-terminal
                # RFC 4035 §3.1.3.4: wildcard NODATA.
                wildcard = _wildcard(denial.nsec_closest_encloser(sname, owner, rdata))
                wild = denial.nsec_at(wildcard)
                if wild is not None and lacks(_types(wild)):
                    return
            raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC proves NODATA for {what}"))
        reason = denial.nsec3_insecure_reason()
        if reason is not None:
            run.mark_insecure(reason)
            return
        match3 = denial.nsec3_match(sname)
        if match3 is not None:  # RFC 5155 §8.5, and §8.6 when the qtype is DS
            if lacks(_types(match3)):
                return
            raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"NSEC3 for {sname} does not deny {what}"))
        ce, next_closer, cover = denial.nsec3_closest_encloser(sname)
        if qtype == dns.rdatatype.DS and cover.flags & _NSEC3_OPT_OUT:
            run.mark_insecure(f"opt-out NSEC3 covers {next_closer}")  # RFC 5155 §8.6
            return
        wild3 = denial.nsec3_match(_wildcard(ce))  # RFC 5155 §8.7
        if wild3 is not None and lacks(_types(wild3)):
            return
        raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC3 proves NODATA for {what}"))

    # -- chain of trust ---------------------------------------------------------------------

    async def _require_insecure(
        self, name: dns.name.Name, run: _Run, ede: int, reason: str
    ) -> None:
        """Unsigned data is acceptable only below a proven insecure delegation (RFC 4035 §5.2)."""
        zone = await self._walk(name, run, signer=False)
        if zone.security is Security.INSECURE:
            run.mark_insecure(zone.reason or f"{zone.zone} is an insecure delegation")
            run.cap(zone.expires_at - run.now)
            return
        if zone.security is Security.BOGUS:
            assert zone.verdict is not None
            raise _Fail(zone.verdict)
        raise _Fail(_bogus(ede, f"{reason}; {zone.zone} is signed"))

    async def _keys_for(self, zone: dns.name.Name, run: _Run) -> _ZoneKeys:
        hit = self._peek(zone, run)
        if hit is not None:
            self._keys.move_to_end(zone)
            return hit
        return await self._walk(zone, run, signer=True)

    async def _walk(self, name: dns.name.Name, run: _Run, *, signer: bool) -> _ZoneKeys:
        """The deepest zone entry on the way down to `name`, fetching DS/DNSKEY as needed.

        With `signer`, `name` claims to be a zone (it signed data) and the walk must end at it.
        Without, the walk stops at the first insecure or bogus cut, or where the name ends.
        """
        start = await self._nearest(name, run)
        if start.security is not Security.SECURE:
            return start
        parent = start
        for child in _names_below(start.zone, name):
            step = await self._step(parent, child, run)
            if isinstance(step, _ZoneKeys):
                if step.security is not Security.SECURE:
                    return step
                parent = step
            elif step is _Marker.NO_NAME:
                if signer:
                    raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"signer {name} does not exist"))
                return parent
        if signer and parent.zone != name:
            raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"signer {name} is not a zone cut"))
        return parent

    def _peek(self, zone: dns.name.Name, run: _Run) -> _ZoneKeys | None:
        entry = self._keys.get(zone)
        if entry is None:
            return None
        if entry.expires_at <= run.now:
            del self._keys[zone]
            return None
        return entry

    def _store(self, entry: _ZoneKeys) -> None:
        self._keys[entry.zone] = entry
        self._keys.move_to_end(entry.zone)
        while len(self._keys) > self._max_zones:
            self._keys.popitem(last=False)

    async def _nearest(self, name: dns.name.Name, run: _Run) -> _ZoneKeys:
        """The deepest cached zone or trust anchor at or above `name`."""
        for depth in range(len(name), 0, -1):
            ancestor = name.split(depth)[1]
            entry = self._peek(ancestor, run)
            if entry is not None:
                self._keys.move_to_end(ancestor)
                return entry
            if ancestor in self._anchors:
                step = await self._shared(ancestor, self._anchored(ancestor, run))
                assert isinstance(step, _ZoneKeys)
                return step
        raise _Fail(
            Verdict(Security.INDETERMINATE, None, f"no trust anchor covers {name}", MAX_KEY_TTL_S)
        )

    async def _step(self, parent: _ZoneKeys, child: dns.name.Name, run: _Run) -> _Step:
        hit = self._peek(child, run)
        if hit is not None:
            return hit
        return await self._shared(child, self._descend(parent, child, run))

    async def _shared(self, zone: dns.name.Name, work: Coroutine[Any, Any, _Step]) -> _Step:
        """Runs `work` once per zone at a time; concurrent validations await the same Task.

        A Task (not the caller's coroutine), so one caller's cancellation does not cancel the
        others' fetch. Bogus outcomes are stored as zone entries (briefly).
        """
        task = self._inflight.get(zone)
        if task is None:
            task = asyncio.ensure_future(self._cache_bogus(zone, work))
            self._inflight[zone] = task
            task.add_done_callback(functools.partial(self._landed, zone))
        else:
            work.close()
        return await asyncio.shield(task)

    def _landed(self, zone: dns.name.Name, task: asyncio.Future[_Step]) -> None:
        if self._inflight.get(zone) is task:
            del self._inflight[zone]
        if not task.cancelled():
            task.exception()  # each waiter re-raises it; this only marks it retrieved

    async def _cache_bogus(self, zone: dns.name.Name, work: Coroutine[Any, Any, _Step]) -> _Step:
        try:
            return await work
        except _OverBudget:
            raise
        except _Fail as fail:
            if fail.verdict.security is not Security.BOGUS:
                raise
            entry = _ZoneKeys(zone, Security.BOGUS, None, self._clock() + BOGUS_TTL_S, fail.verdict)
            self._store(entry)
            return entry

    async def _fetch(self, name: dns.name.Name, rdtype: int, run: _Run) -> dns.message.Message:
        run.spend("fetches", MAX_FETCHES)
        self.fetches += 1
        return await self._fetch_fn(name, rdtype)

    async def _anchored(self, zone: dns.name.Name, run: _Run) -> _Step:
        ds_list, anchor_keys = self._anchors[zone]
        usable_ds = [ds for ds in ds_list if _ds_supported(ds)]
        usable_keys = [k for k in anchor_keys if _alg_supported(k.algorithm)]
        if not usable_ds and not usable_keys:
            entry = _ZoneKeys(
                zone,
                Security.INSECURE,
                None,
                run.now + MAX_KEY_TTL_S,
                reason=f"trust anchor for {zone} uses only unsupported algorithms",
            )
            self._store(entry)
            return entry
        return await self._dnskeys(zone, usable_ds, usable_keys, MAX_KEY_TTL_S, run)

    async def _descend(self, parent: _ZoneKeys, child: dns.name.Name, run: _Run) -> _Step:
        """Is there a zone cut at `child` below the secure `parent`, and is it secure?"""
        response = await self._fetch(child, dns.rdatatype.DS, run)
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise ResolveError(f"DS {child}: {dns.rcode.to_text(rcode)}")
        answer = _Section(response.answer)
        ds_rrset = answer.get(child, dns.rdatatype.DS)
        if ds_rrset is not None:
            sigs = answer.sigs(ds_rrset)
            if not sigs:
                raise _Fail(_bogus(EDE_RRSIGS_MISSING, f"DS for {child} is unsigned"))
            ds_run = _Run(run.now, MAX_KEY_TTL_S)
            ds_run.signature_checks = run.signature_checks
            self._verify(ds_rrset, sigs, parent, ds_run)
            run.signature_checks = ds_run.signature_checks
            ttl_s = min(ds_run.ttl_s, parent.expires_at - run.now)
            usable = [ds for ds in ds_rrset if _ds_supported(ds)]
            if not usable:
                # RFC 4035 §5.2, RFC 6840 §5.2: only unsupported algorithms/digests -> insecure.
                entry = _ZoneKeys(
                    child,
                    Security.INSECURE,
                    None,
                    run.now + ttl_s,
                    reason=f"DS for {child} uses only unsupported algorithms or digests",
                )
                self._store(entry)
                return entry
            return await self._dnskeys(child, usable, [], ttl_s, run)
        return self._ds_absent(parent, child, response, run)

    def _ds_absent(
        self, parent: _ZoneKeys, child: dns.name.Name, response: dns.message.Message, run: _Run
    ) -> _Step:
        """Reads a DS denial from the parent: an insecure cut, no cut, or no such name."""
        authority = _Section(response.authority)
        proof_run = _Run(run.now, MAX_KEY_TTL_S)
        proof_run.signature_checks = run.signature_checks
        proof_run.hashes = run.hashes
        denial = self._denial(authority, parent, proof_run)
        run.signature_checks, run.hashes = proof_run.signature_checks, proof_run.hashes
        ttl_s = min(proof_run.ttl_s, parent.expires_at - run.now)

        def insecure(reason: str) -> _ZoneKeys:
            entry = _ZoneKeys(child, Security.INSECURE, None, run.now + ttl_s, reason=reason)
            self._store(entry)
            return entry

        def classify(types: frozenset[int]) -> _Step:
            if dns.rdatatype.DS in types or (dns.rdatatype.SOA in types):
                raise _Fail(_bogus(EDE_DNSSEC_BOGUS, f"DS denial for {child} is inconsistent"))
            if dns.rdatatype.NS in types:
                return insecure(f"{child} is an unsigned delegation")
            return _Marker.NOT_A_CUT

        if proof_run.insecure is not None:
            return insecure(proof_run.insecure)
        if denial.nsecs:
            match = denial.nsec_at(child)
            if match is not None:
                return classify(_types(match))
            found = denial.nsec_covering(child)
            if found is not None:
                nxt = found[1].next
                if nxt != child and nxt.is_subdomain(child):
                    return _Marker.NOT_A_CUT  # an empty non-terminal
                return _Marker.NO_NAME
            raise _Fail(_bogus(EDE_NSEC_MISSING, f"no NSEC proves DS absence for {child}"))
        if denial.nsec3s:
            reason = denial.nsec3_insecure_reason()
            if reason is not None:
                return insecure(reason)
            match3 = denial.nsec3_match(child)
            if match3 is not None:
                return classify(_types(match3))
            _, next_closer, cover = denial.nsec3_closest_encloser(child)
            if cover.flags & _NSEC3_OPT_OUT:
                return insecure(f"opt-out NSEC3 covers {next_closer}")  # RFC 5155 §8.6
            return _Marker.NO_NAME
        if any(r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3) for r in authority.rrsets):
            raise _Fail(_bogus(EDE_RRSIGS_MISSING, f"DS denial for {child} is unsigned"))
        raise _Fail(_bogus(EDE_NSEC_MISSING, f"no DS and no denial for {child}"))

    async def _dnskeys(
        self,
        zone: dns.name.Name,
        ds_list: list[DS],
        anchor_keys: list[DNSKEY],
        ttl_s: float,
        run: _Run,
    ) -> _ZoneKeys:
        """Fetch `zone`'s DNSKEY set; keep it if a key matching a DS (or anchor) signed it."""
        response = await self._fetch(zone, dns.rdatatype.DNSKEY, run)
        answer = _Section(response.answer)
        rrset = answer.get(zone, dns.rdatatype.DNSKEY)
        if rrset is None:
            raise _Fail(_bogus(EDE_DNSKEY_MISSING, f"no DNSKEY for {zone}"))
        trusted = [key for key in rrset if key in anchor_keys]
        for ds in ds_list:
            for key in rrset:
                if (
                    key.algorithm == ds.algorithm
                    and dns.dnssec.key_id(key) == ds.key_tag
                    and key not in trusted
                    and dns.dnssec.make_ds(zone, key, ds.digest_type, validating=True).digest
                    == ds.digest
                ):
                    trusted.append(key)
        if not trusted:
            raise _Fail(_bogus(EDE_DNSKEY_MISSING, f"no DNSKEY of {zone} matches its DS"))
        key_run = _Run(run.now, ttl_s)
        key_run.signature_checks = run.signature_checks
        self._verify_with(rrset, answer.sigs(rrset), zone, trusted, key_run)
        run.signature_checks = key_run.signature_checks
        dnskeys = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        dnskeys.update(rrset)
        entry = _ZoneKeys(
            zone, Security.SECURE, dnskeys, run.now + min(key_run.ttl_s, MAX_KEY_TTL_S)
        )
        self._store(entry)
        return entry


__all__ = [
    "Fetch",
    "Security",
    "Validator",
    "Verdict",
]
