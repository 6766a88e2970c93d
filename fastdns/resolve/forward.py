"""Forwarding stage: ask a list of upstream resolvers, fastest healthy one first, with failover.

Owns the upstream pool (smoothed RTT, consecutive failures, down/backoff state, counters) and
the schedule of one resolution: whom to ask, when to also ask the next one, when to give up.
It reaches upstreams only through `fastdns.resolve.upstream`.

Must not: parse DNS beyond the RCODE and TC bits of a matched reply, cache anything, change the
reply bytes, or leave a task or socket behind when `resolve` returns or raises.

Time: RTTs and the resolution budget use `time.monotonic` (they are real waits, and some loops'
own clocks tick in whole milliseconds); health bookkeeping (down-until, backoff) uses the
injected `clock`, so tests can move it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastdns.errors import (
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastdns.resolve.question import Question
from fastdns.resolve.upstream import (
    build_query,
    exchange_tcp,
    exchange_udp,
    format_address,
    reply_rcode,
    reply_truncated,
)

# An upstream that timed out or failed on this many questions in a row is marked down (like
# Unbound's infra cache): later questions ask it only after every healthy upstream, so a dead
# first upstream stops costing each question a retry interval.
DOWN_AFTER_FAILURES = 3
BACKOFF_START_S = 5.0
BACKOFF_MAX_S = 60.0
# Weight of a new RTT sample in the smoothed RTT (EWMA, as BIND and Unbound keep per server).
SRTT_SAMPLE_WEIGHT = 0.3

_monotonic = time.monotonic

# Replies that say "this upstream cannot answer this", not "the answer is no": try the next
# upstream at once. NXDOMAIN and NOERROR/NODATA are answers (RFC 2308) and end the search.
_FAILURE_RCODES = {
    RCODE_FORMERR: "FORMERR",
    RCODE_SERVFAIL: "SERVFAIL",
    RCODE_NOTIMP: "NOTIMP",
    RCODE_REFUSED: "REFUSED",
}


class UpstreamAddress(Protocol):
    """Anything with an IP literal `host` and a `port`, e.g. `fastdns.config.Upstream`."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The reply that ended a resolution and who sent it."""

    reply_wire: bytes  # exactly as received from the upstream (its ID, its case, its OPT)
    upstream: str  # "host:port", "[v6]:port" for IPv6


class _UpstreamState:
    """Health and counters of one upstream, shared by every resolution of a Forwarder.

    Healthy -> (DOWN_AFTER_FAILURES in a row) -> down until `down_until` -> probe-eligible:
    one resolution at a time asks it first (`probing`). A reply makes it healthy; a failed
    probe marks it down again with the backoff doubled (BACKOFF_START_S .. BACKOFF_MAX_S).
    """

    __slots__ = (
        "address",
        "backoff_s",
        "consecutive_failures",
        "down",
        "down_until",
        "failures",
        "host",
        "port",
        "probing",
        "queries",
        "srtt_s",
        "timeouts",
    )

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.address = format_address(host, port)
        self.srtt_s: float | None = None  # None until the first reply or timeout
        self.consecutive_failures = 0
        self.down = False
        self.down_until = 0.0  # meaningful only while `down`
        self.backoff_s = BACKOFF_START_S
        self.probing = False
        self.queries = 0
        self.failures = 0
        self.timeouts = 0

    def record_reply(self, rtt_s: float) -> None:
        """It answered (any usable reply, TC included): fold in the RTT and mark it healthy."""
        if self.srtt_s is None or self.down:
            self.srtt_s = rtt_s
        else:
            self.srtt_s += SRTT_SAMPLE_WEIGHT * (rtt_s - self.srtt_s)
        self.consecutive_failures = 0
        self.down = False
        self.backoff_s = BACKOFF_START_S

    def record_timeout(self, waited_s: float, now: float) -> None:
        """No reply after `waited_s`: it is at least that slow, and one failure more."""
        self.timeouts += 1
        if self.srtt_s is None:
            self.srtt_s = waited_s
        elif waited_s > self.srtt_s:
            self.srtt_s += SRTT_SAMPLE_WEIGHT * (waited_s - self.srtt_s)
        self._count_failure(now)

    def record_failure(self, now: float) -> None:
        """It answered with a failure RCODE, garbage only, or a socket error."""
        self.failures += 1
        self._count_failure(now)

    def _count_failure(self, now: float) -> None:
        if self.down and now < self.down_until:
            return  # asked as a last resort while down: its backoff stands as it is
        self.consecutive_failures += 1
        if self.down or self.consecutive_failures >= DOWN_AFTER_FAILURES:
            self.down = True
            self.down_until = now + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)


class Forwarder:
    """Resolve questions by forwarding them to upstream resolvers (SPEC §2).

    Upstreams are asked healthy ones first, fastest (smoothed RTT) first. If the best one has
    not answered within `retry_interval_s`, the next one is asked too, the first still
    outstanding; the first valid reply wins. A failure RCODE, or a reply that does not match,
    moves on to the next upstream at once; TC=1 re-asks the same upstream over TCP. After the
    last upstream the list starts over, while the budget lasts. Everything is bounded by
    `timeout_s`.
    """

    name = "forward"

    def __init__(
        self,
        upstreams: Sequence[UpstreamAddress],
        *,
        timeout_s: float,
        retry_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is required")
        if timeout_s <= 0 or retry_interval_s <= 0:
            raise ValueError("timeout_s and retry_interval_s must be positive")
        self._upstreams = [_UpstreamState(u.host, u.port) for u in upstreams]
        self._timeout_s = timeout_s
        self._retry_interval_s = retry_interval_s
        self._clock = clock

    async def resolve(self, q: Question) -> ForwardResult:
        """Return the first valid upstream reply to `q`.

        Raises `UpstreamTimeout` when `timeout_s` passes without one, `UpstreamFailed` when
        every upstream answered with a failure (or a socket error) and none is outstanding.
        """
        return await _Resolution(self, q).run()

    def stats(self) -> list[dict[str, Any]]:
        """Per upstream, in configured order: address, healthy, srtt_ms, queries, failures,
        timeouts. `srtt_ms` is None until the upstream has answered or timed out once."""
        return [
            {
                "address": u.address,
                "healthy": not u.down,
                "srtt_ms": None if u.srtt_s is None else round(u.srtt_s * 1000.0, 3),
                "queries": u.queries,
                "failures": u.failures,
                "timeouts": u.timeouts,
            }
            for u in self._upstreams
        ]

    def _plan(self) -> tuple[list[_UpstreamState], _UpstreamState | None]:
        """The order to ask upstreams in for one resolution, and the probe it claimed, if any.

        One down upstream whose backoff has passed goes first, as a probe (at most one
        resolution probes it at a time); then healthy ones by smoothed RTT (untried ones
        first, in configured order); then the other down ones, soonest back first.
        """
        now = self._clock()
        healthy: list[_UpstreamState] = []
        down: list[_UpstreamState] = []
        probe: _UpstreamState | None = None
        for u in self._upstreams:
            if not u.down:
                healthy.append(u)
            elif probe is None and not u.probing and now >= u.down_until:
                probe = u
            else:
                down.append(u)
        healthy.sort(key=lambda u: 0.0 if u.srtt_s is None else u.srtt_s)
        down.sort(key=lambda u: u.down_until)
        if probe is None:
            return healthy + down, None
        probe.probing = True
        return [probe, *healthy, *down], probe


@dataclass(slots=True)
class _Attempt:
    """One query sent to one upstream within a resolution."""

    upstream: _UpstreamState
    transport: str  # "udp" or "tcp"
    sent_at: float  # time.monotonic()
    mismatched: bool = False  # something arrived that did not match (garbage, wrong ID, ...)


class _Resolution:
    """One `Forwarder.resolve` call: the outstanding attempts and when to launch the next."""

    def __init__(self, forwarder: Forwarder, q: Question) -> None:
        self._fwd = forwarder
        self._q = q
        self._loop = asyncio.get_running_loop()
        self._order, self._probe = forwarder._plan()
        self._cursor = 0  # launches from the order so far; cycles, so a value >= len = rounds
        self._given_up: set[_UpstreamState] = set()  # answered with a failure: not asked again
        # Upstreams whose health this resolution has already reported: one verdict per
        # upstream per question, however many attempts it took.
        self._judged: set[_UpstreamState] = set()
        self._reasons: list[str] = []
        self._attempts: dict[asyncio.Task[bytes], _Attempt] = {}
        self._wake: asyncio.Future[None] = self._loop.create_future()
        now = _monotonic()
        self._deadline = now + forwarder._timeout_s
        self._next_launch_at = now

    async def run(self) -> ForwardResult:
        loop = self._loop
        try:
            while True:
                now = _monotonic()
                if now >= self._deadline:
                    raise UpstreamTimeout(self._describe_timeout())
                if (
                    now >= self._next_launch_at
                    and not self._launch_next(now)
                    and not self._attempts
                ):
                    raise UpstreamFailed("; ".join(self._reasons) or "no upstream answered")
                if self._wake.done():
                    self._wake = loop.create_future()
                waitables: set[asyncio.Future[Any]] = {*self._attempts, self._wake}
                done, _ = await asyncio.wait(
                    waitables,
                    timeout=min(self._next_launch_at, self._deadline) - now,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                result: ForwardResult | None = None
                for task in done:
                    if isinstance(task, asyncio.Task):  # not the wake-up future
                        settled = self._settle(task)
                        if result is None:
                            result = settled
                if result is not None:
                    return result
        finally:
            await self._close()

    def _launch_next(self, now: float) -> bool:
        """Ask the next upstream in the order (cycling); False if every one has been given up."""
        order = self._order
        for _ in range(len(order)):
            upstream = order[self._cursor % len(order)]
            self._cursor += 1
            if upstream not in self._given_up:
                self._launch(upstream, "udp", now)
                self._next_launch_at = now + self._fwd._retry_interval_s
                return True
        self._next_launch_at = math.inf
        return False

    def _launch(self, upstream: _UpstreamState, transport: str, now: float) -> None:
        _, query_wire = build_query(self._q)  # a fresh random ID per query sent (RFC 5452 §9.2)
        attempt = _Attempt(upstream, transport, now)
        budget_s = self._deadline - now
        if transport == "udp":
            coro = exchange_udp(
                upstream.host,
                upstream.port,
                query_wire,
                budget_s,
                on_mismatch=lambda _data: self._on_mismatch(attempt),
            )
        else:
            coro = exchange_tcp(upstream.host, upstream.port, query_wire, budget_s)
        self._attempts[self._loop.create_task(coro)] = attempt
        upstream.queries += 1

    def _on_mismatch(self, attempt: _Attempt) -> None:
        # The datagram was dropped (RFC 5452 §9.1) and the attempt keeps waiting for a real
        # reply; meanwhile the next upstream is asked without waiting the retry interval.
        if not attempt.mismatched:
            attempt.mismatched = True
            self._hurry()

    def _hurry(self) -> None:
        """Launch the next attempt now rather than after the retry interval.

        Only while some upstream has not been asked yet (or nothing is outstanding): a single
        upstream sending garbage must not turn into a query per round trip.
        """
        if self._cursor < len(self._order) or not self._attempts:
            self._next_launch_at = min(self._next_launch_at, _monotonic())
            if not self._wake.done():
                self._wake.set_result(None)

    def _settle(self, task: asyncio.Task[bytes]) -> ForwardResult | None:
        """Account for a finished attempt; return the result if its reply ends the resolution."""
        attempt = self._attempts.pop(task)
        upstream = attempt.upstream
        waited_s = _monotonic() - attempt.sent_at
        try:
            reply = task.result()
        except UpstreamTimeout:
            self._judge_timeout(upstream, waited_s)
            return None
        except UpstreamFailed as exc:
            self._fail(upstream, str(exc))
            return None
        if attempt.transport == "udp" and reply_truncated(reply):
            # RFC 1035 §4.2.2 / RFC 7766 §5: a truncated UDP answer is re-asked over TCP, of
            # the same upstream; it answered, so it counts as alive.
            upstream.record_reply(waited_s)
            now = _monotonic()
            self._launch(upstream, "tcp", now)
            self._next_launch_at = max(self._next_launch_at, now + self._fwd._retry_interval_s)
            return None
        rcode = reply_rcode(reply)
        if rcode in _FAILURE_RCODES:
            self._fail(upstream, f"{upstream.address}: {_FAILURE_RCODES[rcode]}")
            return None
        upstream.record_reply(waited_s)
        self._judged.add(upstream)
        return ForwardResult(reply, upstream.address)

    def _fail(self, upstream: _UpstreamState, reason: str) -> None:
        if upstream not in self._judged:
            self._judged.add(upstream)
            upstream.record_failure(self._fwd._clock())
        self._given_up.add(upstream)
        self._reasons.append(reason)
        self._hurry()

    def _judge_timeout(self, upstream: _UpstreamState, waited_s: float) -> None:
        if upstream not in self._judged:
            self._judged.add(upstream)
            upstream.record_timeout(waited_s, self._fwd._clock())

    def _describe_timeout(self) -> str:
        asked = dict.fromkeys(a.upstream.address for a in self._attempts.values())
        who = ", ".join(asked) if asked else "any upstream"
        return f"no valid reply from {who} within {self._fwd._timeout_s:g}s"

    async def _close(self) -> None:
        """Record how unfinished attempts went, then cancel them and wait until they are gone."""
        now_real = _monotonic()
        now = self._fwd._clock()
        pending = []
        for task, attempt in self._attempts.items():
            if task.done():
                if not task.cancelled():
                    task.exception()  # finished alongside the winner: mark it retrieved
                continue
            pending.append(task)
            upstream = attempt.upstream
            waited_s = now_real - attempt.sent_at
            if attempt.mismatched and upstream not in self._judged:
                self._judged.add(upstream)
                upstream.record_failure(now)
            elif waited_s >= self._fwd._retry_interval_s:
                # Outstanding for a whole retry interval: a timeout for its health, even if
                # another upstream's reply ended the resolution.
                self._judge_timeout(upstream, waited_s)
            task.cancel()
        self._attempts.clear()
        if self._probe is not None:
            self._probe.probing = False
        if not self._wake.done():
            self._wake.cancel()
        if pending:
            await asyncio.wait(pending)
