"""Recursive stage: iterative resolution from the root hints (SPEC §2, RFC 1034 §5.3.3).

Owns one question's walk down the tree: closest known zone cut → ask its servers (RD=0,
hedged across the NS set, TCP on TC) → follow referrals with glue, resolve glueless NS names,
chase CNAMEs across zones → assemble the reply. QNAME minimisation (RFC 9156) is on by
default. Anti-poisoning: every response is scrubbed to the zone its server was asked about
(bailiwick), IDs and ports are random and replies must match (`upstream.py`); with
`use_0x20` the qname's letters are in random case too and a reply must echo them, with a
lowercase retry for zones whose servers do not (as Unbound's use-caps-for-id does). Identical
lookups for the recursor's own use (NS addresses, DS, DNSKEY) in flight at once share one walk.
Must not: validate DNSSEC (the validator stage does, over `lookup`), touch the reply cache or
the client's packet, or wait past the question's budget.

Bounds on every question: `resolver.timeout_s` in total, `max_depth` referrals + CNAMEs +
glueless lookups, `MAX_CNAME_CHAIN` links, `MAX_GLUELESS_NESTING` levels of NS lookups.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import time
from collections.abc import Sequence
from typing import NamedTuple

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from fastdns.errors import QnameCaseMismatch, ResolveError, UpstreamTimeout
from fastdns.resolve.coalesce import Coalescer
from fastdns.resolve.direct import DirectAnswer, scan_direct_answer
from fastdns.resolve.hints import RootServer
from fastdns.resolve.infra import Delegations, MessageCache, ServerInfo
from fastdns.resolve.question import Answer, Question
from fastdns.resolve.upstream import (
    HEADER_SIZE,
    build_query,
    exchange_tcp,
    exchange_udp,
    format_address,
    randomise_case,
    reply_rejects_edns,
    reply_truncated,
)

log = logging.getLogger("fastdns.recurse")

# RFC 9156 §2.3: cap on the labels added one at a time before the full name is sent.
MAX_MINIMISE_COUNT = 10
# CNAME links followed for one question (RFC 1034 §3.6.2 asks resolvers to bound them).
MAX_CNAME_CHAIN = 16
# Nested lookups of NS addresses (a glueless NS whose zone is itself glueless ...).
MAX_GLUELESS_NESTING = 4
# Name-server addresses tried for one step before giving up on the zone.
MAX_SERVERS_PER_STEP = 16
# TTL cap for what the recursor keeps for itself (delegations, NS addresses).
MAX_INFRA_TTL_S = 86_400
# Negative responses fetched for our own use are kept this long at most (RFC 2308 §5 style).
MAX_NEGATIVE_TTL_S = 900

# RFC 8914 INFO-CODEs for failures of the resolution itself.
EDE_NETWORK_ERROR = 23
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_OTHER = 0

_RD = dns.rdatatype
_LAME_RCODES = {
    dns.rcode.SERVFAIL: "SERVFAIL",
    dns.rcode.REFUSED: "REFUSED",
    dns.rcode.NOTIMP: "NOTIMP",
    dns.rcode.FORMERR: "FORMERR",
}


class RecursionFailed(ResolveError):
    """The question could not be resolved; `ede` is the RFC 8914 code to tell the client."""

    def __init__(self, message: str, ede: int = EDE_OTHER) -> None:
        super().__init__(message)
        self.ede = ede


class _Step(NamedTuple):
    """One authoritative response, already scrubbed to its zone and classified."""

    kind: str  # "answer", "nxdomain", "nodata" or "referral"
    message: dns.message.Message | None  # None only for a direct answer, left unparsed
    zone: dns.name.Name  # the zone its server was asked about
    server: str
    child: dns.name.Name | None = None  # for referrals: the delegated zone
    ns_names: tuple[dns.name.Name, ...] = ()  # for referrals: the child's servers
    direct: DirectAnswer | None = None  # the response is the client's reply


class _Outcome(NamedTuple):
    """How a question ended: an assembled reply, or a server's response that is the reply."""

    server: str
    message: dns.message.Message | None = None
    direct: DirectAnswer | None = None


class _Budget:
    """What one question may still spend: the deadline and the depth budget (RFC 1035 §7.1)."""

    __slots__ = ("deadline", "depth_left", "direct_for", "nesting", "ns_pending")

    def __init__(self, deadline: float, depth: int, nesting: int = 0,
                 ns_pending: frozenset[dns.name.Name] = frozenset(),
                 direct_for: tuple[dns.name.Name, int] | None = None) -> None:
        self.deadline = deadline
        self.depth_left = depth
        self.nesting = nesting
        # NS names being resolved above us: delegation loops; part of a shared lookup's key.
        self.ns_pending = ns_pending
        # The client's (qname, qtype): a response to exactly that may be passed on unparsed.
        self.direct_for = direct_for

    def spend(self, what: str) -> None:
        self.depth_left -= 1
        if self.depth_left < 0:
            raise RecursionFailed(f"resolution too deep ({what})", EDE_OTHER)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def for_nameserver(self, ns_name: dns.name.Name, depth: int) -> _Budget:
        """The budget of a glueless NS lookup: the same deadline, a depth budget of its own."""
        return _Budget(self.deadline, depth, self.nesting + 1, self.ns_pending | {ns_name})


@functools.lru_cache(maxsize=65_536)
def _server_address(address: str, port: int, query_loopback: bool) -> str | None:
    """"host:port" to send to, or None for an address no name server may have: unspecified,
    multicast, broadcast, or loopback unless the lab allows it (a referral must not turn the
    resolver against its own host). Cached: the same few servers are asked all the time."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and ip == _BROADCAST):
        return None
    if ip.is_loopback and not query_loopback:
        return None
    return format_address(address, port)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class Recursor:
    """Resolve questions iteratively, starting from the root hints.

    `resolve(q, budget_s)` answers a client's question with the assembled reply wire
    (answer chain, negative proof); `lookup(name, rdtype)` returns the response message for
    the resolver's own use (NS addresses; DS and DNSKEY for the validator), cached by TTL
    and shared by the callers that ask for it while it is in flight.
    """

    name = "recurse"

    def __init__(
        self,
        root_hints: Sequence[RootServer],
        *,
        timeout_s: float,
        retry_interval_s: float,
        max_depth: int = 30,
        query_loopback: bool = False,
        nameserver_port: int = 53,
        qname_minimisation: bool = True,
        dnssec_ok: bool = True,
        use_0x20: bool = False,
    ) -> None:
        if timeout_s <= 0 or retry_interval_s <= 0:
            raise ValueError("timeout_s and retry_interval_s must be positive")
        self._timeout_s = timeout_s
        self._retry_interval_s = retry_interval_s
        self._max_depth = max_depth
        self._query_loopback = query_loopback
        self._port = nameserver_port
        self._qname_minimisation = qname_minimisation
        # DO=1 on every query (RFC 3225): signatures and denial proofs come along for the
        # validator and for clients that ask for them; cached replies keyed without DO drop them.
        self._dnssec_ok = dnssec_ok
        self._use_0x20 = use_0x20
        self._root_ns = tuple(s.name for s in root_hints)
        self._root_addresses = {s.name: s.addresses for s in root_hints}
        self.servers = ServerInfo()
        self.delegations = Delegations()
        self.messages = MessageCache()
        # Lookups in flight, by (name, rdtype, NS names pending above): see `_lookup`.
        self.lookups: Coalescer[bytes] = Coalescer()
        self.queries_sent = 0
        self.case_fallbacks = 0  # steps asked again in lowercase (0x20 not echoed)
        self.edns_fallbacks = 0  # queries asked again without EDNS (RFC 6891 §7)

    # -- entry points ---------------------------------------------------------------------

    async def resolve(self, q: Question, budget_s: float | None = None) -> Answer:
        """The reply to a client's question, as wire bytes ready for `Cache.prepare`."""
        if budget_s is None or budget_s > self._timeout_s:
            budget_s = self._timeout_s
        qname = dns.name.from_wire(q.qname_wire, 0)[0]
        budget = _Budget(time.monotonic() + budget_s, self._max_depth,
                         direct_for=(qname, q.qtype))
        outcome = await self._resolve_chain(qname, q.qtype, budget)
        if outcome.direct is not None:
            return Answer(outcome.direct.reply(keep_dnssec=q.do), outcome.server)
        message = outcome.message
        assert message is not None
        if not q.do:
            without_dnssec_records(message, q.qtype)
        return Answer(message.to_wire(), outcome.server, message=message)

    async def lookup(self, name: dns.name.Name, rdtype: int,
                     budget_s: float | None = None) -> dns.message.Message:
        """The response to (name, rdtype, IN) with signatures, unvalidated, for our own use."""
        budget = _Budget(time.monotonic() + (budget_s or self._timeout_s), self._max_depth)
        return await self._lookup(name, rdtype, budget)

    # -- the walk -------------------------------------------------------------------------

    async def _lookup(self, name: dns.name.Name, rdtype: int,
                      budget: _Budget) -> dns.message.Message:
        cached = self.messages.get(name, rdtype, time.monotonic())
        if cached is not None:
            return cached
        # Identical lookups in flight share one walk: questions that arrive together under a
        # cold glueless delegation resolve its NS names once. The key holds the NS names
        # pending above the lookup, so a walk waits only on lookups with strictly more of them
        # (each glueless level adds its own name) and waits can never form a cycle: two
        # questions whose zones' servers are named in each other's zone each meet the loop in
        # `ns_pending` ("delegation loop") instead of waiting on each other until the deadline.
        # A joiner waits no longer than its own budget; if the caller that runs the walk is
        # cancelled while others wait, the Coalescer runs it again for them, in a Task.
        key = (name, rdtype, budget.ns_pending)
        try:
            wire = await self.lookups.run(
                key, functools.partial(self._fetch, name, rdtype, budget),
                join_timeout_s=budget.left_s(),
            )
        except asyncio.TimeoutError:
            raise RecursionFailed(f"no answer for {name} in time",
                                  EDE_NO_REACHABLE_AUTHORITY) from None
        return dns.message.from_wire(wire)  # each caller parses its own copy

    async def _fetch(self, name: dns.name.Name, rdtype: int, budget: _Budget) -> bytes:
        """Resolve (name, rdtype) for our own use; cache and return the response's wire."""
        message = (await self._resolve_chain(name, rdtype, budget)).message
        assert message is not None  # only a client's question is answered directly
        wire = message.to_wire()
        self.messages.put(name, rdtype, wire, _message_ttl(message), time.monotonic())
        return wire

    async def _resolve_chain(self, qname: dns.name.Name, qtype: int,
                             budget: _Budget) -> _Outcome:
        """Iterate for qname, following CNAMEs across zones; assemble the final message.

        RFC 6604: the rcode is the one for the last name of the chain, so a CNAME to a name
        that does not exist is NXDOMAIN with the CNAME in the answer.
        """
        chain: list[dns.rrset.RRset] = []
        proofs: list[dns.rrset.RRset] = []  # the denial records that came with the links
        seen = {qname}
        name = qname
        while True:
            step = await self._iterate(name, qtype, budget)
            if step.direct is not None:
                return _Outcome(step.server, direct=step.direct)
            assert step.message is not None
            rrsets, end, found = _follow(step.message, name, qtype)
            for target in _cname_targets(rrsets):
                if target in seen:
                    raise RecursionFailed(f"CNAME loop at {target}")
                seen.add(target)
            chain += rrsets
            if found or (end == name and step.kind in ("nxdomain", "nodata")):
                return _Outcome(step.server,
                                _assemble(qname, qtype, chain, step.message, found, proofs))
            if end == name:
                raise RecursionFailed(f"{step.server} answered {name} without its data")
            if step.message.rcode() == dns.rcode.NXDOMAIN and end.is_subdomain(step.zone):
                # The server chased the chain inside its zone: the last target does not exist.
                # About names outside its zone its rcode means nothing (bailiwick).
                return _Outcome(step.server,
                                _assemble(qname, qtype, chain, step.message, found, proofs))
            if len(seen) > MAX_CNAME_CHAIN:
                raise RecursionFailed(f"CNAME chain longer than {MAX_CNAME_CHAIN}")
            # RFC 4035 §3.1.3.3: a link made from a wildcard comes with the proof that its
            # owner does not exist, whichever response ends the chain.
            proofs += _denials(step.message.authority, (_RD.NSEC, _RD.NSEC3))
            budget.spend(f"CNAME to {end}")
            name = end

    async def _iterate(self, name: dns.name.Name, qtype: int, budget: _Budget) -> _Step:
        """Walk from the closest known zone cut to the servers authoritative for `name`."""
        now = time.monotonic()
        # RFC 4035 §3.1.4.1: DS lives on the parent side of the cut.
        start = name.parent() if qtype == _RD.DS and name != dns.name.root else name
        delegation = self.delegations.closest(start, now)
        zone, ns_names = (
            (delegation.zone, delegation.ns_names) if delegation else (dns.name.root, self._root_ns)
        )
        minimise = self._qname_minimisation and qtype != _RD.DS
        extra = 1  # labels below the zone to reveal in the next minimised query
        send_type: int
        minimised_errors_tolerated = True
        while True:
            target = len(zone.labels) + extra
            if minimise and target < len(name.labels) and extra <= MAX_MINIMISE_COUNT:
                # RFC 9156 §2.3: reveal one label more, with QTYPE A, which any server answers.
                send_name = name.split(target)[1]
                send_type = _RD.A
            else:
                send_name, send_type = name, qtype
            minimised = send_name != name
            try:
                step = await self._ask_zone(zone, ns_names, send_name, send_type, budget)
            except RecursionFailed:
                if not minimised or not minimised_errors_tolerated:
                    raise
                # RFC 9156 §2.3: servers that fail minimised queries get the full name once.
                minimise = False
                minimised_errors_tolerated = False
                continue
            if step.kind == "referral":
                assert step.child is not None
                if qtype == _RD.DS and step.child == name:
                    return step._replace(kind="nodata")  # a parent that does not know DS
                budget.spend(f"referral to {step.child}")
                zone, ns_names = step.child, step.ns_names
                extra = 1
                continue
            if not minimised:
                return step
            if step.kind == "nxdomain":
                # RFC 9156 §2.3 (relaxed, as RFC 8020 is not yet universal): send the full name.
                minimise = False
                continue
            extra += 1  # no zone cut at send_name: reveal one label more

    async def _ask_zone(self, zone: dns.name.Name, ns_names: Sequence[dns.name.Name],
                        qname: dns.name.Name, qtype: int, budget: _Budget) -> _Step:
        """Ask the servers of `zone` about qname, in random case if `use_0x20` is on.

        A reply that does not echo that case fails its server (it may be forged). When no
        server gave a usable reply and some failed only on case, servers that do not preserve
        case are not to make names unresolvable: the step is asked again in lowercase, as
        Unbound's use-caps-for-id falls back.
        """
        if not self._use_0x20:
            return await self._ask_each_server(zone, ns_names, qname, qtype, budget, None)
        case_failed: list[str] = []
        try:
            return await self._ask_each_server(zone, ns_names, qname, qtype, budget,
                                               case_failed)
        except RecursionFailed:
            if not case_failed or budget.left_s() <= 0:
                raise
        self.case_fallbacks += 1
        log.debug("0x20 fallback: asking the servers of %s about %s in lowercase; "
                  "%s did not echo the case", zone, qname, ", ".join(case_failed))
        return await self._ask_each_server(zone, ns_names, qname, qtype, budget, None)

    async def _ask_each_server(self, zone: dns.name.Name, ns_names: Sequence[dns.name.Name],
                               qname: dns.name.Name, qtype: int, budget: _Budget,
                               case_failed: list[str] | None) -> _Step:
        """Ask the servers of `zone`, with glue first, then glueless NS names resolved.
        `case_failed`: None to send qname in lowercase; else it is sent in random case, and
        the servers whose replies did not echo it are listed there."""
        tried: set[str] = set()
        reasons: list[str] = []
        order = list(ns_names)
        random.shuffle(order)  # no address yet: spread the first queries over the NS set
        known = [self._known_addresses(n) for n in order]
        unresolved = [n for n, addresses in zip(order, known) if not addresses]
        while True:
            now = time.monotonic()
            candidates = [a for addresses in known for a in addresses if a not in tried]
            if candidates:
                candidates.sort(key=lambda a: (self.servers.is_lame(zone, a, now),
                                               self.servers.sort_key(a, now)))
                candidates = candidates[: MAX_SERVERS_PER_STEP - len(tried)]
                try:
                    return await self._ask_servers(zone, candidates, qname, qtype, budget,
                                                   reasons, case_failed)
                except RecursionFailed:
                    if budget.left_s() <= 0:
                        raise
                tried.update(candidates)
                if len(tried) >= MAX_SERVERS_PER_STEP:
                    unresolved = []
            if not unresolved:
                why = "; ".join(reasons[-4:]) or "no usable name-server address"
                raise RecursionFailed(f"no server for {zone} answered: {why}",
                                      EDE_NO_REACHABLE_AUTHORITY)
            ns_name = unresolved.pop(0)
            await self._resolve_nameserver(ns_name, budget, reasons)
            known = [self._known_addresses(n) for n in order]

    def _known_addresses(self, ns_name: dns.name.Name) -> tuple[str, ...]:
        """The "host:port" of each address of `ns_name` we may ask (see `_server_address`)."""
        found = self._root_addresses.get(ns_name) or self.delegations.addresses(
            ns_name, time.monotonic()
        )
        usable = (_server_address(a, self._port, self._query_loopback) for a in found)
        return tuple(a for a in usable if a is not None)

    async def _resolve_nameserver(self, ns_name: dns.name.Name, budget: _Budget,
                                  reasons: list[str]) -> None:
        """Find addresses of a glueless NS name, with a depth budget of its own."""
        if ns_name in budget.ns_pending:
            reasons.append(f"delegation loop through {ns_name}")
            return
        if budget.nesting >= MAX_GLUELESS_NESTING:
            reasons.append(f"glueless lookups nested too deep at {ns_name}")
            return
        budget.spend(f"glueless NS {ns_name}")
        sub = budget.for_nameserver(ns_name, self._max_depth)
        for rdtype in (_RD.A, _RD.AAAA):
            try:
                message = await self._lookup(ns_name, rdtype, sub)
            except ResolveError as exc:
                reasons.append(f"{ns_name}: {exc}")
                continue
            addresses = tuple(
                rd.address
                for rrset in message.answer
                if rrset.rdtype == rdtype
                for rd in rrset
            )
            if addresses:
                ttl = min(r.ttl for r in message.answer if r.rdtype == rdtype)
                self.delegations.put_addresses(ns_name, addresses, min(ttl, MAX_INFRA_TTL_S),
                                               time.monotonic())
                return

    # -- one step: hedged queries over a zone's servers ------------------------------------

    async def _ask_servers(self, zone: dns.name.Name, addresses: list[str],
                           qname: dns.name.Name, qtype: int, budget: _Budget,
                           reasons: list[str], case_failed: list[str] | None) -> _Step:
        """First acceptable response from `addresses`, asking the next one each
        `retry_interval_s` without a reply, and at once after a lame or broken response."""
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[tuple[bytes, float]], tuple[str, float]] = {}
        queue = list(addresses)
        next_launch = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= budget.deadline:
                    for address, sent_at in pending.values():
                        self.servers.record_timeout(address, now - sent_at, now)
                    raise RecursionFailed(
                        f"no reply for {qname} from the servers of {zone} in time",
                        EDE_NO_REACHABLE_AUTHORITY,
                    )
                if queue and (now >= next_launch or not pending):
                    address = queue.pop(0)
                    task = loop.create_task(
                        self._exchange(address, qname, qtype, budget, case_failed is not None)
                    )
                    pending[task] = (address, now)
                    self.queries_sent += 1
                    next_launch = now + self._retry_interval_s
                if not pending:
                    raise RecursionFailed(
                        f"servers of {zone}: {'; '.join(reasons[-4:])}",
                        EDE_NO_REACHABLE_AUTHORITY,
                    )
                wake = min(budget.deadline, next_launch) if queue else budget.deadline
                done, _ = await asyncio.wait(
                    pending, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    address, sent_at = pending.pop(task)
                    step = self._judge(task, zone, address, sent_at, qname, qtype, budget,
                                       reasons, case_failed)
                    if step is not None:
                        return step
                    next_launch = time.monotonic()  # a broken reply: ask the next one now
        finally:
            now = time.monotonic()
            for task, (address, sent_at) in pending.items():
                if now - sent_at >= self._retry_interval_s:
                    self.servers.record_timeout(address, now - sent_at, now)
                task.cancel()

    def _judge(self, task: asyncio.Task[tuple[bytes, float]], zone: dns.name.Name, address: str,
               sent_at: float, qname: dns.name.Name, qtype: int, budget: _Budget,
               reasons: list[str], case_failed: list[str] | None) -> _Step | None:
        now = time.monotonic()
        try:
            wire, rtt_s = task.result()
        except UpstreamTimeout:
            self.servers.record_timeout(address, now - sent_at, now)
            reasons.append(f"{address}: timeout")
            return None
        except QnameCaseMismatch as exc:
            # Not lame: the server answered, but such a reply could as well be forged.
            if case_failed is not None:
                case_failed.append(address)
            reasons.append(str(exc))
            return None
        except ResolveError as exc:
            self.servers.record_lame(zone, address, now)
            reasons.append(str(exc))
            return None
        self.servers.record_rtt(address, rtt_s, now)
        if budget.direct_for == (qname, qtype):
            found = scan_direct_answer(wire, qtype)
            if found is not None:
                return _Step("answer", None, zone, address, direct=found)
        try:
            message = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError) as exc:
            self.servers.record_lame(zone, address, now)
            reasons.append(f"{address}: unparsable reply ({exc.__class__.__name__})")
            return None
        step = self._classify(message, zone, address, qname, qtype)
        if step is None:
            self.servers.record_lame(zone, address, now)
            reasons.append(f"{address}: lame for {zone}")
        return step

    async def _exchange(self, address: str, qname: dns.name.Name, qtype: int,
                        budget: _Budget, mixed_case: bool) -> tuple[bytes, float]:
        host, port = address.rsplit(":", 1)
        host = host.strip("[]")
        qname_wire = name_wire(qname)
        sent_name = randomise_case(qname_wire) if mixed_case else qname_wire
        q = Question(sent_name, qtype, dns.rdataclass.IN, self._dnssec_ok, True)
        # RD=0: we ask authoritative servers (RFC 1034 §5.3.1). CD=1: we validate ourselves.
        _, query_wire = build_query(q, recursion_desired=False)
        started = time.monotonic()
        wire = await exchange_udp(host, int(port), query_wire, max(0.001, budget.left_s()),
                                  exact_case=mixed_case)
        if reply_rejects_edns(wire):
            # RFC 6891 §7: a server that does not know EDNS is asked again without it, and so
            # without DO (under a signed delegation its unsigned answer then fails validation).
            self.edns_fallbacks += 1
            _, query_wire = build_query(q, recursion_desired=False, edns=False)
            wire = await exchange_udp(host, int(port), query_wire, max(0.001, budget.left_s()),
                                      exact_case=mixed_case)
        if reply_truncated(wire):
            # RFC 7766 §5: a truncated UDP reply is re-asked over TCP, of the same server.
            wire = await exchange_tcp(host, int(port), query_wire, max(0.001, budget.left_s()),
                                      exact_case=mixed_case)
        if mixed_case:
            # The question back in lowercase, as sent without 0x20 (same length: compression
            # pointers stay valid), so that names compressed against it (owners, names in
            # RDATA, the zone of a referral) read as they would without 0x20: the random case
            # stays out of replies, the cache and the infra stores.
            end = HEADER_SIZE + len(qname_wire)
            wire = wire[:HEADER_SIZE] + qname_wire + wire[end:]
        return wire, time.monotonic() - started

    # -- judging a response ---------------------------------------------------------------

    def _classify(self, message: dns.message.Message, zone: dns.name.Name, server: str,
                  qname: dns.name.Name, qtype: int) -> _Step | None:
        """Scrub to the zone's bailiwick, then say what the response is (None: lame)."""
        rcode = message.rcode()
        if rcode in _LAME_RCODES or rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        _scrub(message, zone)
        answer = [r for r in message.answer if r.name == qname or r.rdtype == _RD.DNAME]
        has_data = any(
            r.name == qname and (r.rdtype in (qtype, _RD.CNAME) or qtype == _RD.ANY)
            for r in answer
        ) or any(r.rdtype == _RD.DNAME and qname.is_subdomain(r.name) for r in answer)
        authoritative = bool(message.flags & dns.flags.AA)
        if has_data:
            return _Step("answer", message, zone, server)
        referral = _referral(message, zone, qname)
        if referral is not None and not authoritative:
            ns_names = self._learn_referral(message, referral, time.monotonic())
            return _Step("referral", message, zone, server, referral.name, ns_names)
        if rcode == dns.rcode.NXDOMAIN:
            return _Step("nxdomain", message, zone, server)
        if authoritative or any(r.rdtype == _RD.SOA for r in message.authority):
            return _Step("nodata", message, zone, server)
        return None  # upward referral, empty non-authoritative reply: a lame server

    def _learn_referral(self, message: dns.message.Message, ns_rrset: dns.rrset.RRset,
                        now: float) -> tuple[dns.name.Name, ...]:
        ttl = min(ns_rrset.ttl, MAX_INFRA_TTL_S)
        ns_names = tuple(rd.target for rd in ns_rrset)
        self.delegations.put_zone(ns_rrset.name, ns_names, ttl, now)
        # Glue: addresses of NS names inside the zone the server was asked about, the only
        # ones it may speak for (bailiwick); out-of-zone glue was already scrubbed.
        for rrset in message.additional:
            if rrset.rdtype in (_RD.A, _RD.AAAA) and rrset.name in ns_names:
                self.delegations.put_addresses(
                    rrset.name, tuple(rd.address for rd in rrset), min(rrset.ttl, ttl), now
                )
        return ns_names


def _scrub(message: dns.message.Message, zone: dns.name.Name) -> None:
    """Drop every record the server may not speak for: owners outside the zone it was asked
    about (RFC 5452 §6, Unbound's scrubber). Glue for out-of-zone NS names goes with them."""
    message.answer = [r for r in message.answer if r.name.is_subdomain(zone)]
    message.authority = [r for r in message.authority if r.name.is_subdomain(zone)]
    message.additional = [r for r in message.additional if r.name.is_subdomain(zone)]


def _referral(message: dns.message.Message, zone: dns.name.Name,
              qname: dns.name.Name) -> dns.rrset.RRset | None:
    """The NS set of a downward referral: strictly below the zone asked, at or above qname."""
    for rrset in message.authority:
        if (
            rrset.rdtype == _RD.NS
            and rrset.name != zone
            and rrset.name.is_subdomain(zone)
            and qname.is_subdomain(rrset.name)
        ):
            return rrset
    return None


def _follow(message: dns.message.Message, qname: dns.name.Name,
            qtype: int) -> tuple[list[dns.rrset.RRset], dns.name.Name, bool]:
    """The answer records that lead from qname to its data, in order, with their RRSIGs.

    Returns (rrsets, the last name reached, whether its data was found)."""
    answer = message.answer
    out: list[dns.rrset.RRset] = []
    name = qname
    for _ in range(MAX_CNAME_CHAIN + 1):
        # RRSIGs go with the data they cover, unless they are what was asked for.
        data = [r for r in answer if r.name == name and (r.rdtype == qtype or qtype == _RD.ANY)
                and (r.rdtype != _RD.RRSIG or qtype == _RD.RRSIG)]
        if data:
            out += data + _signatures(answer, name, {r.rdtype for r in data})
            return out, name, True
        dname = next((r for r in answer if r.rdtype == _RD.DNAME and name.is_subdomain(r.name)
                      and name != r.name), None)
        if dname is not None and dname not in out:
            out += [dname] + _signatures(answer, dname.name, {_RD.DNAME})
        cname = next((r for r in answer if r.name == name and r.rdtype == _RD.CNAME), None)
        if cname is None or qtype == _RD.CNAME:
            return out, name, False
        out += [cname] + _signatures(answer, name, {_RD.CNAME})
        name = cname[0].target
    return out, name, False


def _cname_targets(rrsets: list[dns.rrset.RRset]) -> list[dns.name.Name]:
    return [r[0].target for r in rrsets if r.rdtype == _RD.CNAME]


def _signatures(section: list[dns.rrset.RRset], name: dns.name.Name,
                covered: set[int]) -> list[dns.rrset.RRset]:
    return [r for r in section if r.name == name and r.rdtype == _RD.RRSIG
            and r.covers in covered]


def _assemble(qname: dns.name.Name, qtype: int, chain: list[dns.rrset.RRset],
              last: dns.message.Message, final: bool,
              proofs: list[dns.rrset.RRset]) -> dns.message.Message:
    """The reply a client gets: the chain of answers; for a negative end, the SOA and the
    denial proofs of the last response (RFC 2308 §3, RFC 4035 §3.1.3); and the `proofs`
    that came with earlier links of the chain."""
    reply = dns.message.Message()
    reply.flags = dns.flags.QR | dns.flags.RA
    reply.question = [dns.rrset.RRset(qname, dns.rdataclass.IN, _RD.RdataType.make(qtype))]
    reply.answer = list(chain)
    if final:
        # Wildcard answers carry the proof that the exact name does not exist (RFC 4035 §3.1.3.3).
        reply.authority = _denials(last.authority, (_RD.NSEC, _RD.NSEC3))
        reply.set_rcode(dns.rcode.NOERROR)
    else:
        reply.authority = _denials(last.authority, (_RD.SOA, _RD.NSEC, _RD.NSEC3))
        reply.set_rcode(last.rcode())
    for rrset in proofs:
        if rrset not in reply.authority:
            reply.authority.append(rrset)
    return reply


def _denials(section: list[dns.rrset.RRset], rdtypes: tuple[int, ...]) -> list[dns.rrset.RRset]:
    """The records of `rdtypes` in `section`, with the RRSIGs over them."""
    return [r for r in section
            if r.rdtype in rdtypes or (r.rdtype == _RD.RRSIG and r.covers in rdtypes)]


def name_wire(name: dns.name.Name) -> bytes:
    """Lowercased uncompressed wire form of a name, as `Question` holds it."""
    wire = name.to_wire()
    assert wire is not None  # to_wire without a file returns the bytes
    return wire.lower()


def without_dnssec_records(message: dns.message.Message, qtype: int) -> None:
    """Remove RRSIG, NSEC and NSEC3 records a client without DO did not ask for
    (RFC 4035 §3.2.1); a question for one of those types still gets its answer."""
    for section in (message.answer, message.authority, message.additional):
        section[:] = [r for r in section
                      if r.rdtype not in _UNASKED_DNSSEC_TYPES or r.rdtype == qtype]


_UNASKED_DNSSEC_TYPES = frozenset({_RD.RRSIG, _RD.NSEC, _RD.NSEC3})


def _message_ttl(message: dns.message.Message) -> float:
    """How long a response fetched for our own use stays usable."""
    ttls = [r.ttl for r in message.answer]
    if not ttls:
        ttls = [min(r.ttl, r[0].minimum) for r in message.authority if r.rdtype == _RD.SOA]
        ttls = [min(t, MAX_NEGATIVE_TTL_S) for t in ttls]
    return float(min(ttls)) if ttls else 0.0
