"""Miss path: what happens to a question the hit path could not answer from cache.

Order (one line each, with its reason):
  1. Coalescer  # identical questions in flight share one upstream resolution (SPEC §2)
  2. Validator  # only with dnssec.enabled: wraps the next stage (resolve/secure.py)
  3. Forwarder  # upstream with failover; bounded by resolver.timeout_s → SERVFAIL, never silence
     or Recursor  # resolver.mode: recursive; iterative from the root hints, same bound
  4. Cache      # store per RFC 2308 / TTL policy, then render for every waiter
Guards (ACL, rate limit) and protocol errors were already handled on the hit path, in C.

Cost: one Task per UDP miss (created in `on_udp_miss`), and nothing else per miss. The first
waiter of a question runs the coalesced resolution in its own Task; the forwarder is driven
by socket callbacks and one timer, and bounds the whole resolution by `timeout_s` itself.

Must not: parse packets itself (fastdns.wire does), or block: everything here is async.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import NamedTuple, Protocol

from fastdns._fastpath import HitPath, monotonic_now, pack_sockaddr
from fastdns.cache import Cache
from fastdns.errors import RCODE_SERVFAIL, ResolveError
from fastdns.resolve.coalesce import Coalescer
from fastdns.resolve.question import Answer, Question
from fastdns.wire import (
    ParsedQuery,
    PreparedReply,
    WireError,
    parse_query,
    render_error,
    render_prepared,
    with_extended_error,
)

log = logging.getLogger("fastdns.resolve")

# Upstream names the query log can tell apart; a recursor meets new servers all the time, and
# past this many the rest are logged without a name rather than growing the table forever.
MAX_UPSTREAM_NAMES = 65_000


class Stage(Protocol):
    """What the miss path resolves through: a Forwarder, a Recursor, or a Validator over one."""

    name: str

    async def resolve(self, q: Question, budget_s: float | None = None) -> Answer: ...


class Resolved(NamedTuple):
    """The outcome shared by every waiter of one question (a NamedTuple: one per miss)."""

    prepared: PreparedReply
    upstream_index: int  # index into MissPath.upstream_names
    stored_at: float  # monotonic seconds, to count TTLs down for late waiters


class MissPath:
    """Resolves misses and sends their replies (UDP) or returns them (TCP)."""

    def __init__(
        self,
        *,
        cache: Cache,
        hitpath: HitPath,
        resolver: Stage,
        timeout_s: float,
        upstream_names: list[str],
        log_misses: bool,
        max_inflight: int = 10_000,
    ) -> None:
        self._cache = cache
        # Composed once: with the query log off, a miss does not even pack its address.
        self._log_miss = hitpath.log_miss if log_misses else None
        self._resolver = resolver
        self._timeout_s = timeout_s
        self._upstream_index = {name: i for i, name in enumerate(upstream_names)}
        # Grows as new upstreams answer (recursion); the log pump reads this same list.
        self.upstream_names = list(upstream_names)
        self._max_inflight = max_inflight
        self._coalescer: Coalescer[Resolved] = Coalescer()
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp_sock: socket.socket | None = None
        self.servfail = 0
        self.overload = 0
        self.send_errors = 0

    def attach_udp(self, sock: socket.socket) -> None:
        self._udp_sock = sock

    # -- entry points ---------------------------------------------------------------------

    def on_udp_miss(self, data: bytes, addr: tuple) -> None:
        """Called from the C batch loop for each UDP miss: schedule it, return at once."""
        if len(self._tasks) >= self._max_inflight:
            # Bounded work: past the limit a question gets SERVFAIL now instead of a Task.
            self.overload += 1
            self._send_udp(render_error(parse_query(data), RCODE_SERVFAIL), addr)
            return
        task = asyncio.get_running_loop().create_task(
            self._answer_udp(data, addr, monotonic_now())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, data: bytes, *, tcp: bool) -> tuple[bytes, int]:
        """The reply to a query the hit path missed, and the upstream index (-1 if none)."""
        pq = parse_query(data)
        started = monotonic_now()
        try:
            resolved = await self._coalescer.run(pq.key, lambda: self._resolve(pq, started))
        except (ResolveError, WireError, asyncio.TimeoutError) as exc:
            self.servfail += 1
            log.debug("SERVFAIL for %r: %s", pq.qname_wire, exc)
            reply = render_error(pq, RCODE_SERVFAIL)
            ede = getattr(exc, "ede", None)
            if ede is not None and pq.has_edns:
                # RFC 8914: say why, to clients that speak EDNS.
                reply = with_extended_error(reply, ede, str(exc)[:200])
            return reply, -1
        age = max(0, int(monotonic_now() - resolved.stored_at))
        return render_prepared(resolved.prepared, pq, age, tcp), resolved.upstream_index

    async def drain(self) -> None:
        """Let in-flight questions finish (bounded by the resolution budget)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._timeout_s + 1.0)

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    # -- internals ------------------------------------------------------------------------

    async def _resolve(self, pq: ParsedQuery, started: float) -> Resolved:
        q = Question(pq.qname_wire_lower, pq.qtype, pq.qclass, pq.do, pq.cd)
        # The forwarder enforces the budget itself (no wait_for Task). What is left of it is
        # less than timeout_s only when a coalesced resolution is started again for waiters
        # whose first waiter was cancelled: they still get an answer within timeout_s.
        budget_s = self._timeout_s - (monotonic_now() - started)
        result = await self._resolver.resolve(q, budget_s)
        prepared = self._cache.prepare(result.reply_wire, q.qname_wire,
                                       authentic=result.authentic)
        now = monotonic_now()
        self._cache.store(pq.key, prepared, now, result.max_ttl_s)
        return Resolved(prepared, self._upstream_number(result.upstream), now)

    def _upstream_number(self, name: str) -> int:
        index = self._upstream_index.get(name)
        if index is None:
            if len(self.upstream_names) >= MAX_UPSTREAM_NAMES:
                return -1
            index = self._upstream_index[name] = len(self.upstream_names)
            self.upstream_names.append(name)
        return index

    async def _answer_udp(self, data: bytes, addr: tuple, started: float) -> None:
        reply, upstream = await self.answer(data, tcp=False)
        self._send_udp(reply, addr)
        if self._log_miss is not None:
            self._log_miss(data, reply, pack_sockaddr(addr), monotonic_now() - started, upstream)

    def _send_udp(self, reply: bytes, addr: tuple) -> None:
        assert self._udp_sock is not None
        try:
            self._udp_sock.sendto(reply, addr)
        except OSError:
            self.send_errors += 1  # full send buffer or unreachable client: never stall
