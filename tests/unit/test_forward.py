"""Forwarder: failover, strict matching, TC -> TCP, budget, health, against loopback fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
import uvloop

from fastdns._testing.fake_upstream import FakeUpstream, free_port
from fastdns._testing.host import ipv6_loopback_available, open_fds
from fastdns.errors import UpstreamFailed, UpstreamTimeout
from fastdns.resolve.forward import (
    BACKOFF_START_S,
    DOWN_AFTER_FAILURES,
    Forwarder,
    ForwardResult,
)
from fastdns.resolve.question import Question

EXAMPLE_ORG = b"\x07example\x03org\x00"
Q_A = Question(EXAMPLE_ORG, dns.rdatatype.A, dns.rdataclass.IN)
RECORD = "example.org. 300 IN A 192.0.2.1"
# Generous outer bound: proves resolve() returns on its own, without asserting any speed.
NEVER = 30.0

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on a fresh loop of each implementation."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


@dataclass(frozen=True)
class Addr:
    host: str
    port: int


class Clock:
    """A clock the test moves by hand (health backoff only; real waits use real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def answering() -> FakeUpstream:
    return FakeUpstream().answer(RECORD)


def forwarder(
    *upstreams: Any, timeout_s: float = 3.0, retry_s: float = 0.2, **kw: Any
) -> Forwarder:
    return Forwarder(
        [Addr(u.host, u.port) for u in upstreams],
        timeout_s=timeout_s,
        retry_interval_s=retry_s,
        **kw,
    )


def resolve(run: Runner, fwd: Forwarder, q: Question = Q_A, times: int = 1) -> ForwardResult:
    async def go() -> ForwardResult:
        result = None
        for _ in range(times):
            result = await asyncio.wait_for(fwd.resolve(q), NEVER)
        assert result is not None
        return result

    result: ForwardResult = run(go())
    return result


def answer_of(result: ForwardResult) -> list[str]:
    return [rrset.to_text() for rrset in dns.message.from_wire(result.reply_wire).answer]


def stats_of(fwd: Forwarder, up: Any) -> dict[str, Any]:
    address = f"[{up.host}]:{up.port}" if ":" in up.host else f"{up.host}:{up.port}"
    (entry,) = [s for s in fwd.stats() if s["address"] == address]
    return entry


# ------------------------------------------------------------------ answers


def test_answers_from_the_upstream_with_its_bytes(run: Runner) -> None:
    with answering() as up:
        fwd = forwarder(up)
        result = resolve(run, fwd)
    assert result.upstream == up.address
    assert answer_of(result) == [RECORD]
    reply = dns.message.from_wire(result.reply_wire)
    assert reply.id == up.queries[0].id  # the upstream's reply as received, not re-rendered
    assert up.calls == 1
    stats = stats_of(fwd, up)
    assert stats["healthy"] is True
    assert stats["queries"] == 1 and stats["failures"] == 0 and stats["timeouts"] == 0
    assert isinstance(stats["srtt_ms"], float)


def test_nxdomain_is_an_answer_not_a_failure(run: Runner) -> None:
    soa = "example.org. 3600 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 120"
    with answering().zone_soa(soa) as first, answering() as second:
        q = Question(b"\x07missing" + EXAMPLE_ORG, dns.rdatatype.A, dns.rdataclass.IN)
        result = resolve(run, forwarder(first, second), q)
    assert dns.message.from_wire(result.reply_wire).rcode() == dns.rcode.NXDOMAIN
    assert result.upstream == first.address
    assert second.calls == 0


def test_do_and_cd_are_forwarded_with_edns(run: Runner) -> None:
    with answering() as up:
        q = Question(EXAMPLE_ORG, dns.rdatatype.A, dns.rdataclass.IN, do=True, cd=True)
        resolve(run, forwarder(up), q)
        plain = resolve(run, forwarder(up))
    first, second = up.queries
    assert first.do_bit and first.cd_bit and first.rd_bit and first.edns_payload == 1232
    assert not second.do_bit and not second.cd_bit and second.has_edns
    assert plain.upstream == up.address


def test_ids_and_source_ports_differ_between_queries(run: Runner) -> None:
    with answering() as up:
        resolve(run, forwarder(up), times=6)
    assert up.calls == 6
    assert len({r.id for r in up.queries}) > 1
    assert len({r.src_port for r in up.queries}) > 1


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_ipv6_upstream(run: Runner) -> None:
    with FakeUpstream(host="::1").answer(RECORD) as up:
        result = resolve(run, forwarder(up))
    assert result.upstream == f"[::1]:{up.port}"
    assert answer_of(result) == [RECORD]


def test_concurrent_questions_each_get_their_answer(run: Runner) -> None:
    names = [f"host{i}.example.org." for i in range(40)]
    up = FakeUpstream().answer(*(f"{name} 60 IN A 192.0.2.{i + 1}" for i, name in enumerate(names)))

    async def go(fwd: Forwarder) -> list[ForwardResult]:
        questions = [
            Question(dns.name.from_text(n).to_digestable(), dns.rdatatype.A, dns.rdataclass.IN)
            for n in names
        ]
        return await asyncio.wait_for(asyncio.gather(*(fwd.resolve(q) for q in questions)), NEVER)

    with up:
        results = run(go(forwarder(up)))
    for i, result in enumerate(results):
        assert answer_of(result) == [f"{names[i]} 60 IN A 192.0.2.{i + 1}"]


# ------------------------------------------------------------------ failover


def test_silent_first_upstream_fails_over_to_the_next(run: Runner) -> None:
    with FakeUpstream(mode="silent") as dead, answering() as good:
        fwd = forwarder(dead, good)
        result = resolve(run, fwd)
    assert result.upstream == good.address
    assert dead.calls == 1 and good.calls == 1
    assert stats_of(fwd, dead)["timeouts"] == 1


def test_dead_first_upstream_stops_costing_every_query(run: Runner) -> None:
    with FakeUpstream(mode="silent") as dead, answering() as good:
        fwd = forwarder(dead, good)
        result = resolve(run, fwd, times=8)
    assert result.upstream == good.address
    # Its smoothed RTT (and, failing that, down-marking) moves it behind the live upstream.
    assert dead.calls <= DOWN_AFTER_FAILURES
    assert good.calls == 8


@pytest.mark.parametrize("mode", ["servfail", "refused", "formerr"])
def test_failure_rcode_moves_to_the_next_at_once(run: Runner, mode: str) -> None:
    # Retry interval == budget: waiting for it would end in UpstreamTimeout.
    with FakeUpstream(mode=mode) as bad, answering() as good:
        fwd = forwarder(bad, good, timeout_s=3.0, retry_s=3.0)
        result = resolve(run, fwd)
    assert result.upstream == good.address
    assert answer_of(result) == [RECORD]
    assert bad.calls == 1
    assert stats_of(fwd, bad)["failures"] == 1


def test_closed_port_moves_to_the_next_at_once(run: Runner) -> None:
    closed = Addr("127.0.0.1", free_port())
    with answering() as good:
        fwd = forwarder(closed, good, timeout_s=3.0, retry_s=3.0)
        result = resolve(run, fwd)
    assert result.upstream == good.address
    assert stats_of(fwd, closed)["failures"] == 1


@pytest.mark.parametrize("mode", ["garbage", "wrong_id", "wrong_question"])
def test_mismatched_replies_are_ignored_and_the_next_is_asked(run: Runner, mode: str) -> None:
    with FakeUpstream(mode=mode).answer(RECORD) as liar, answering() as good:
        fwd = forwarder(liar, good, timeout_s=3.0, retry_s=3.0)
        result = resolve(run, fwd)
    assert result.upstream == good.address
    assert answer_of(result) == [RECORD]
    assert liar.calls == 1


@pytest.mark.parametrize("mode", ["garbage", "wrong_id", "wrong_question"])
def test_mismatched_replies_are_never_accepted(run: Runner, mode: str) -> None:
    with FakeUpstream(mode=mode).answer(RECORD) as liar:
        fwd = forwarder(liar, timeout_s=0.9, retry_s=0.3)
        with pytest.raises(UpstreamTimeout):
            resolve(run, fwd)
    # Re-asked once per retry interval, not once per bad datagram.
    assert 1 <= liar.calls <= 4


def test_every_upstream_failing_raises_upstream_failed(run: Runner) -> None:
    with FakeUpstream(mode="servfail") as a, FakeUpstream(mode="refused") as b:
        fwd = forwarder(a, b, timeout_s=3.0, retry_s=3.0)
        with pytest.raises(UpstreamFailed) as info:
            resolve(run, fwd)
    assert a.calls == 1 and b.calls == 1
    assert "SERVFAIL" in str(info.value) and "REFUSED" in str(info.value)


def test_truncated_reply_is_asked_again_over_tcp(run: Runner) -> None:
    with FakeUpstream(truncate_udp=True).answer(RECORD) as up:
        result = resolve(run, forwarder(up))
    reply = dns.message.from_wire(result.reply_wire)
    assert not reply.flags & dns.flags.TC
    assert answer_of(result) == [RECORD]
    assert up.udp_calls == 1 and up.tcp_calls == 1
    assert up.queries[1].transport == "tcp"


# ------------------------------------------------------------------ budget


def test_budget_ends_in_upstream_timeout_after_asking_everyone(run: Runner) -> None:
    with FakeUpstream(mode="silent") as a, FakeUpstream(mode="silent") as b:
        fwd = forwarder(a, b, timeout_s=0.7, retry_s=0.1)
        with pytest.raises(UpstreamTimeout):
            resolve(run, fwd)
    assert a.calls >= 1 and b.calls >= 1


def test_single_silent_upstream_is_asked_again_while_budget_remains(run: Runner) -> None:
    with FakeUpstream(mode="silent") as up, pytest.raises(UpstreamTimeout):
        resolve(run, forwarder(up, timeout_s=1.0, retry_s=0.2))
    assert up.calls >= 2
    assert len({r.src_port for r in up.queries}) == up.calls  # a fresh socket each time


def test_slow_first_reply_still_wins_while_outstanding(run: Runner) -> None:
    # The first upstream answers after the retry interval; the second never does. The first
    # query stays outstanding after the second is sent, so its late reply is used.
    with FakeUpstream(delay_s=0.4).answer(RECORD) as slow, FakeUpstream(mode="silent") as dead:
        fwd = forwarder(slow, dead, timeout_s=3.0, retry_s=0.1)
        result = resolve(run, fwd)
    assert result.upstream == slow.address
    assert dns.message.from_wire(result.reply_wire).id == slow.queries[0].id
    assert dead.calls >= 1


def test_no_socket_or_task_left_behind(run: Runner) -> None:
    async def go(fwd: Forwarder) -> None:
        with pytest.raises(UpstreamTimeout):
            await fwd.resolve(Q_A)
        task = asyncio.ensure_future(fwd.resolve(Q_A))
        await asyncio.sleep(0.35)  # a few attempts outstanding
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}

    before = open_fds()
    with FakeUpstream(mode="silent") as a, FakeUpstream(mode="silent") as b:
        run(go(forwarder(a, b, timeout_s=0.5, retry_s=0.1)))
    assert open_fds() == before


# ------------------------------------------------------------------ health


def test_failing_upstream_is_marked_down_then_probed_after_backoff(run: Runner) -> None:
    clock = Clock()
    with FakeUpstream(mode="servfail") as bad, answering() as good:
        fwd = forwarder(bad, good, clock=clock)
        resolve(run, fwd, times=DOWN_AFTER_FAILURES)
        assert bad.calls == DOWN_AFTER_FAILURES
        assert stats_of(fwd, bad)["healthy"] is False

        resolve(run, fwd, times=5)
        assert bad.calls == DOWN_AFTER_FAILURES  # down: not asked while the healthy one answers
        assert good.calls == DOWN_AFTER_FAILURES + 5

        clock.advance(BACKOFF_START_S)
        resolve(run, fwd, times=3)
        assert bad.calls == DOWN_AFTER_FAILURES + 1  # one probe, which fails again

        clock.advance(BACKOFF_START_S)
        resolve(run, fwd)
        assert bad.calls == DOWN_AFTER_FAILURES + 1  # backoff doubled

        bad.mode = "answer"
        bad.answer(RECORD)
        clock.advance(BACKOFF_START_S)
        result = resolve(run, fwd)
        assert result.upstream == bad.address  # the probe is asked first and now answers
        assert stats_of(fwd, bad)["healthy"] is True


def test_dead_upstream_marked_down_by_timeouts(run: Runner) -> None:
    clock = Clock()
    with FakeUpstream(mode="silent") as dead:
        fwd = forwarder(dead, timeout_s=0.3, retry_s=0.1, clock=clock)
        for _ in range(DOWN_AFTER_FAILURES):
            with pytest.raises(UpstreamTimeout):
                resolve(run, fwd)
    stats = stats_of(fwd, dead)
    assert stats["healthy"] is False
    assert stats["timeouts"] == DOWN_AFTER_FAILURES  # one verdict per question
    assert stats["queries"] >= DOWN_AFTER_FAILURES


def test_down_upstreams_are_still_asked_when_nothing_healthy_is_left(run: Runner) -> None:
    clock = Clock()
    with FakeUpstream(mode="servfail") as flaky:
        fwd = forwarder(flaky, clock=clock)
        for _ in range(DOWN_AFTER_FAILURES):
            with pytest.raises(UpstreamFailed):
                resolve(run, fwd)
        assert stats_of(fwd, flaky)["healthy"] is False
        flaky.mode = "answer"
        flaky.answer(RECORD)
        result = resolve(run, fwd)
    assert result.upstream == flaky.address
    assert stats_of(fwd, flaky)["healthy"] is True


def test_stats_shape() -> None:
    fwd = Forwarder([Addr("127.0.0.1", 53), Addr("::1", 5353)], timeout_s=1.0, retry_interval_s=0.5)
    assert fwd.name == "forward"
    assert fwd.stats() == [
        {
            "address": "127.0.0.1:53",
            "healthy": True,
            "srtt_ms": None,
            "queries": 0,
            "failures": 0,
            "timeouts": 0,
        },
        {
            "address": "[::1]:5353",
            "healthy": True,
            "srtt_ms": None,
            "queries": 0,
            "failures": 0,
            "timeouts": 0,
        },
    ]


def test_rejects_empty_upstream_list() -> None:
    with pytest.raises(ValueError):
        Forwarder([], timeout_s=1.0, retry_interval_s=0.5)


# ------------------------------------------------------------------ cost and budget override


def test_the_common_path_runs_in_the_callers_task(run: Runner) -> None:
    # The first upstream answers (after a delay, so the resolution is seen in flight): no
    # Task is created for attempts, timers or the budget, only the caller's own.
    async def go(fwd: Forwarder) -> ForwardResult:
        caller = asyncio.ensure_future(fwd.resolve(Q_A))
        await asyncio.sleep(0.05)
        assert not caller.done()
        assert asyncio.all_tasks() == {asyncio.current_task(), caller}
        return await asyncio.wait_for(caller, NEVER)

    with FakeUpstream(delay_s=0.15).answer(RECORD) as up:
        result = run(go(forwarder(up, retry_s=2.0)))
    assert result.upstream == up.address
    assert up.calls == 1


def test_a_smaller_budget_from_the_caller_bounds_the_resolution(run: Runner) -> None:
    # timeout_s far beyond NEVER: only the caller's budget can end this in time.
    with FakeUpstream(mode="silent") as up:
        fwd = forwarder(up, timeout_s=600.0, retry_s=0.1)

        async def go() -> None:
            with pytest.raises(UpstreamTimeout):
                await asyncio.wait_for(fwd.resolve(Q_A, budget_s=0.3), NEVER)

        run(go())
    assert up.calls >= 1


def test_no_budget_left_asks_nobody(run: Runner) -> None:
    with answering() as up:
        fwd = forwarder(up)

        async def go() -> None:
            with pytest.raises(UpstreamTimeout):
                await fwd.resolve(Q_A, budget_s=0.0)

        run(go())
    assert up.calls == 0
    assert stats_of(fwd, up)["queries"] == 0


def test_cancelled_during_a_tcp_retry_leaves_nothing_behind(run: Runner) -> None:
    async def go(fwd: Forwarder, up: FakeUpstream) -> None:
        task = asyncio.ensure_future(fwd.resolve(Q_A))
        while up.tcp_calls == 0:  # the UDP reply was truncated; the TCP query is out
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(asyncio.sleep(0))  # uvloop opens a pipe once per process: not ours to count
    before = open_fds()
    with FakeUpstream(truncate_udp=True, delay_s=0.3).answer(RECORD) as up:
        run(go(forwarder(up, timeout_s=5.0, retry_s=2.0), up))
    assert open_fds() == before


def test_hedged_attempts_are_closed_when_one_answers(run: Runner) -> None:
    # The silent first upstream's attempt is still open when the second answers: the
    # resolution closes it (no socket left), and counts it a timeout for that upstream.
    async def go(fwd: Forwarder) -> ForwardResult:
        before = open_fds()  # counted inside the loop: uvloop opens a pipe once per process
        result = await asyncio.wait_for(fwd.resolve(Q_A), NEVER)
        assert open_fds() == before
        return result

    with FakeUpstream(mode="silent") as dead, answering() as good:
        fwd = forwarder(dead, good, timeout_s=3.0, retry_s=0.1)
        result = run(go(fwd))
    assert result.upstream == good.address
    assert stats_of(fwd, dead)["timeouts"] == 1


def test_a_reply_in_the_same_turn_as_the_cancellation_is_dropped_quietly(run: Runner) -> None:
    # The caller's Task was cancelled (its Future with it) and, before its cleanup ran, a
    # callback of the same loop turn settles the resolution: nothing may raise.
    from fastdns.resolve.forward import _Resolution

    async def go() -> None:
        fwd = forwarder(Addr("127.0.0.1", free_port()))
        resolution = _Resolution(fwd, Q_A, asyncio.get_running_loop(), 1.0)
        resolution.result.cancel()
        resolution._finish(ForwardResult(b"reply", "127.0.0.1:53"))
        assert resolution.finished and resolution.result.cancelled()
        resolution.close()  # the caller's own cleanup, later: idempotent

    run(go())
