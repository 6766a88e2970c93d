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
from typing import Any, Protocol

from fastdns.errors import (
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastdns.resolve.question import Answer, Question
from fastdns.resolve.upstream import (
    HEADER_SIZE,
    ReplyMatcher,
    UdpExchange,
    build_query,
    exchange_tcp,
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


# The reply that ended a resolution, exactly as received from the upstream (its ID, its case,
# its OPT), and who sent it.
ForwardResult = Answer


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


def _srtt_key(u: _UpstreamState) -> float:
    return 0.0 if u.srtt_s is None else u.srtt_s


def _down_until_key(u: _UpstreamState) -> float:
    return u.down_until


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

    async def resolve(self, q: Question, budget_s: float | None = None) -> ForwardResult:
        """Return the first valid upstream reply to `q`.

        Raises `UpstreamTimeout` when `timeout_s` (or the smaller `budget_s`, what is left of
        a caller's own budget) passes without one, `UpstreamFailed` when every upstream
        answered with a failure (or a socket error) and none is outstanding. Runs in the
        caller's Task: the common case (the first upstream answers) creates no Task at all.
        """
        if budget_s is None or budget_s > self._timeout_s:
            budget_s = self._timeout_s
        if budget_s <= 0:
            raise UpstreamTimeout(f"no time left to ask an upstream ({self._timeout_s:g}s)")
        resolution = _Resolution(self, q, asyncio.get_running_loop(), budget_s)
        try:
            resolution.start()
            return await resolution.result
        finally:
            resolution.close()
            if resolution._to_reap:
                await resolution.reap()

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
        if len(self._upstreams) == 1:  # the common configuration: nothing to sort
            only = self._upstreams[0]
            if only.down and not only.probing and now >= only.down_until:
                only.probing = True
                return self._upstreams, only
            return self._upstreams, None
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
        healthy.sort(key=_srtt_key)
        down.sort(key=_down_until_key)
        if probe is None:
            return healthy + down, None
        probe.probing = True
        return [probe, *healthy, *down], probe


class _UdpAttempt(UdpExchange):
    """One query sent over UDP to one upstream within a resolution; reports to it."""

    __slots__ = ("mismatched", "resolution", "sent_at", "upstream")

    transport = "udp"

    def __init__(
        self,
        resolution: _Resolution,
        upstream: _UpstreamState,
        sent_at: float,
        query_wire: bytes,
        matcher: ReplyMatcher,
    ) -> None:
        self.resolution = resolution
        self.upstream = upstream
        self.sent_at = sent_at  # time.monotonic()
        self.mismatched = False  # something arrived that did not match (garbage, wrong ID, ...)
        super().__init__(resolution.loop, upstream.host, upstream.port, query_wire, matcher)

    # These run as loop callbacks: an unexpected error ends the resolution (with that error)
    # rather than leaving it without a timer or a reader, waiting for nothing.

    def reply_received(self, reply: bytes) -> None:
        try:
            self.resolution._on_reply(self, reply)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            self.resolution._finish(exc)

    def error_received(self, exc: OSError) -> None:
        try:
            self.resolution._on_failure(self, f"{self.upstream.address}: {exc}")
        except Exception as error:  # noqa: BLE001 - handed to the waiting caller
            self.resolution._finish(error)

    def mismatch_received(self, data: bytes) -> None:
        # The datagram was dropped (RFC 5452 §9.1) and the attempt keeps waiting for a real
        # reply; meanwhile the next upstream is asked without waiting the retry interval.
        if not self.mismatched:
            self.mismatched = True
            try:
                self.resolution._hurry()
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                self.resolution._finish(exc)


class _TcpAttempt:
    """One query sent over TCP (after TC=1) within a resolution: a Task, as TCP is rare."""

    __slots__ = ("mismatched", "resolution", "sent_at", "task", "upstream")

    transport = "tcp"

    def __init__(
        self, resolution: _Resolution, upstream: _UpstreamState, sent_at: float, query_wire: bytes
    ) -> None:
        self.resolution = resolution
        self.upstream = upstream
        self.sent_at = sent_at
        self.mismatched = False  # exchange_tcp skips mismatches itself
        budget_s = resolution.deadline - sent_at
        self.task = resolution.loop.create_task(
            exchange_tcp(upstream.host, upstream.port, query_wire, budget_s)
        )
        self.task.add_done_callback(self._done)

    def close(self) -> None:
        self.task.cancel()

    def _done(self, task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            return
        exc = task.exception()  # also marks it retrieved when the resolution is over
        resolution = self.resolution
        if resolution.finished:
            return
        try:
            if exc is None:
                resolution._on_reply(self, task.result())
            elif isinstance(exc, UpstreamTimeout):
                resolution._on_timeout(self)
            elif isinstance(exc, UpstreamFailed):
                resolution._on_failure(self, str(exc))
            else:
                resolution._finish(exc)
        except Exception as error:  # noqa: BLE001 - handed to the waiting caller
            resolution._finish(error)


_Attempt = _UdpAttempt | _TcpAttempt


class _Resolution:
    """One `Forwarder.resolve` call, as a state machine driven by loop callbacks.

    Nothing here runs in a Task of its own: the caller's coroutine awaits `result`, socket
    callbacks (`UdpExchange`) report replies, and one timer (`loop.call_later`) fires at the next
    scheduled event, whichever comes first of "ask the next upstream" (`next_launch_at`, the
    hedge after `retry_interval_s`) and the end of the budget (`deadline`). `_finish` settles
    `result` once, closing every socket and timer and judging unfinished attempts first.

    Times are `time.monotonic()` seconds; the loop's own clock is used only to place the
    timer, and a timer that fires counts as having reached its target even if the loop's
    millisecond clock fired it a little early.
    """

    __slots__ = (
        "_cursor",
        "_given_up",
        "_judged",
        "_next_launch_at",
        "_order",
        "_probe",
        "_q",
        "_qname_end",
        "_reasons",
        "_timer",
        "_timer_at",
        "_to_reap",
        "attempts",
        "deadline",
        "finished",
        "fwd",
        "loop",
        "result",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        q: Question,
        loop: asyncio.AbstractEventLoop,
        budget_s: float,
    ) -> None:
        self.fwd = forwarder
        self.loop = loop
        self._q = q
        self._qname_end = HEADER_SIZE + len(q.qname_wire)  # where build_query's qname ends
        self._order, self._probe = forwarder._plan()
        self._cursor = 0  # launches from the order so far; cycles, so a value >= len = rounds
        self._given_up: list[_UpstreamState] = []  # answered with a failure: not asked again
        # Upstreams whose health this resolution has already reported: one verdict per
        # upstream per question, however many attempts it took.
        self._judged: list[_UpstreamState] = []
        self._reasons: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._to_reap: list[asyncio.Task[bytes]] = []  # cancelled TCP attempts to wait for
        self.attempts: list[_Attempt] = []  # outstanding, in launch order
        self.finished = False
        self.result: asyncio.Future[ForwardResult] = loop.create_future()
        now = _monotonic()
        self.deadline = now + budget_s
        self._next_launch_at = now

    # -- schedule -------------------------------------------------------------------------

    def start(self) -> None:
        self._advance(_monotonic())

    def _advance(self, now: float) -> None:
        """Do whatever is due at `now` (give up, ask the next upstream), then re-arm the timer."""
        if now >= self.deadline:
            self._finish(UpstreamTimeout(self._describe_timeout()))
            return
        if now >= self._next_launch_at and not self._launch_next(now) and not self.attempts:
            self._finish(UpstreamFailed("; ".join(self._reasons) or "no upstream answered"))
            return
        self._arm(min(self._next_launch_at, self.deadline), now)

    def _arm(self, at: float, now: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at == at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_later(at - now, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            # The loop's clock may tick in whole milliseconds: the target counts as reached.
            self._advance(max(_monotonic(), self._timer_at))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            self._finish(exc)

    def _hurry(self) -> None:
        """Launch the next attempt now rather than after the retry interval.

        Only while some upstream has not been asked yet (or nothing is outstanding): a single
        upstream sending garbage must not turn into a query per round trip.
        """
        if not self.finished and (self._cursor < len(self._order) or not self.attempts):
            now = _monotonic()
            self._next_launch_at = min(self._next_launch_at, now)
            self._advance(now)

    def _launch_next(self, now: float) -> bool:
        """Ask the next upstream in the order (cycling); False if every one has been given up."""
        order = self._order
        for _ in range(len(order)):
            upstream = order[self._cursor % len(order)]
            self._cursor += 1
            if upstream not in self._given_up and self._launch(upstream, "udp", now):
                self._next_launch_at = now + self.fwd._retry_interval_s
                return True
        self._next_launch_at = math.inf
        return False

    def _launch(self, upstream: _UpstreamState, transport: str, now: float) -> bool:
        """Send one query; False if it failed at once (the upstream is then given up)."""
        _, query_wire = build_query(self._q)  # a fresh random ID per query (RFC 5452 §9.2)
        upstream.queries += 1
        attempt: _Attempt
        try:
            if transport == "udp":
                matcher = ReplyMatcher(query_wire, qname_end=self._qname_end)
                attempt = _UdpAttempt(self, upstream, now, query_wire, matcher)
            else:
                attempt = _TcpAttempt(self, upstream, now, query_wire)
        except UpstreamFailed as exc:
            # The socket could not even be opened or sent on: a failure of this upstream.
            self._judge_failure(upstream, str(exc))
            return False
        self.attempts.append(attempt)
        return True

    # -- outcomes of attempts -------------------------------------------------------------

    def _on_reply(self, attempt: _Attempt, reply: bytes) -> None:
        """A matched reply: the answer, a failure RCODE, or TC=1 (ask again over TCP)."""
        if self.finished:
            return
        self.attempts.remove(attempt)
        upstream = attempt.upstream
        now = _monotonic()
        waited_s = now - attempt.sent_at
        if attempt.transport == "udp" and reply_truncated(reply):
            # RFC 1035 §4.2.2 / RFC 7766 §5: a truncated UDP answer is re-asked over TCP, of
            # the same upstream; it answered, so it counts as alive.
            upstream.record_reply(waited_s)
            self._launch(upstream, "tcp", now)
            self._next_launch_at = max(self._next_launch_at, now + self.fwd._retry_interval_s)
            self._advance(now)
            return
        rcode = reply_rcode(reply)
        if rcode in _FAILURE_RCODES:
            self._on_failure(attempt, f"{upstream.address}: {_FAILURE_RCODES[rcode]}", listed=False)
            return
        upstream.record_reply(waited_s)
        self._judged.append(upstream)
        self._finish(ForwardResult(reply, upstream.address))

    def _on_failure(self, attempt: _Attempt, reason: str, *, listed: bool = True) -> None:
        """The attempt ended without a usable reply (failure RCODE, socket error): move on."""
        if self.finished:
            return
        if listed:
            self.attempts.remove(attempt)
        self._judge_failure(attempt.upstream, reason)
        self._hurry()

    def _on_timeout(self, attempt: _Attempt) -> None:
        if self.finished:
            return
        self.attempts.remove(attempt)
        self._judge_timeout(attempt.upstream, _monotonic() - attempt.sent_at)
        self._advance(_monotonic())

    def _judge_failure(self, upstream: _UpstreamState, reason: str) -> None:
        if upstream not in self._judged:
            self._judged.append(upstream)
            upstream.record_failure(self.fwd._clock())
        if upstream not in self._given_up:
            self._given_up.append(upstream)
        self._reasons.append(reason)

    def _judge_timeout(self, upstream: _UpstreamState, waited_s: float) -> None:
        if upstream not in self._judged:
            self._judged.append(upstream)
            upstream.record_timeout(waited_s, self.fwd._clock())

    def _describe_timeout(self) -> str:
        asked = dict.fromkeys(a.upstream.address for a in self.attempts)
        who = ", ".join(asked) if asked else "any upstream"
        return f"no valid reply from {who} within {self.fwd._timeout_s:g}s"

    # -- the end --------------------------------------------------------------------------

    def _finish(self, outcome: ForwardResult | BaseException) -> None:
        """Settle `result` once: close everything first, so nothing outlives the answer."""
        if self.finished:
            return
        self.close()
        if self.result.done():
            return  # the caller was cancelled in this same loop turn; its cleanup is pending
        if isinstance(outcome, Answer):
            self.result.set_result(outcome)
        else:
            self.result.set_exception(outcome)

    def close(self) -> None:
        """Judge how unfinished attempts went, close their sockets, cancel the timer
        (idempotent; also the cleanup when the caller is cancelled)."""
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.attempts:
            now_real = _monotonic()
            now = self.fwd._clock()
            retry_s = self.fwd._retry_interval_s
            for attempt in self.attempts:
                upstream = attempt.upstream
                waited_s = now_real - attempt.sent_at
                if attempt.mismatched and upstream not in self._judged:
                    self._judged.append(upstream)
                    upstream.record_failure(now)
                elif waited_s >= retry_s:
                    # Outstanding for a whole retry interval: a timeout for its health, even
                    # if another upstream's reply ended the resolution.
                    self._judge_timeout(upstream, waited_s)
                attempt.close()
                if isinstance(attempt, _TcpAttempt):
                    self._to_reap.append(attempt.task)
            self.attempts.clear()
        if self._probe is not None:
            self._probe.probing = False

    async def reap(self) -> None:
        """Wait until cancelled TCP attempts are gone (UDP attempts close synchronously)."""
        tasks, self._to_reap = self._to_reap, []
        await asyncio.wait(tasks)
