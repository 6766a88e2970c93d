"""Coalescer: one resolution per key in flight, shared outcome, per-waiter cancellation safety."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from fastdns.errors import UpstreamFailed
from fastdns.resolve.coalesce import Coalescer

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
NEVER = 30.0  # outer bound: proves things return on their own, asserts no speed


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on a fresh loop of each implementation."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


class Work:
    """A resolution the test finishes by hand: `release(value)` or `fail(exc)`."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.tasks_seen: list[int] = []
        self._gate: asyncio.Future[str] | None = None

    async def __call__(self) -> str:
        self.calls += 1
        self.tasks_seen.append(len(asyncio.all_tasks()))
        self._gate = asyncio.get_running_loop().create_future()
        try:
            return await self._gate
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def started(self, calls: int = 1) -> None:
        while self.calls < calls or self._gate is None or self._gate.done():
            await asyncio.sleep(0)

    def release(self, value: str) -> None:
        assert self._gate is not None
        self._gate.set_result(value)

    def fail(self, exc: BaseException) -> None:
        assert self._gate is not None
        self._gate.set_exception(exc)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_identical_keys_share_one_resolution(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        waiters = [asyncio.ensure_future(co.run(b"k", work)) for _ in range(5)]
        await work.started()
        await settle()
        assert len(co) == 1
        work.release("answer")
        assert await asyncio.wait_for(asyncio.gather(*waiters), NEVER) == ["answer"] * 5
        assert work.calls == 1
        assert co.started == 1 and co.joined == 4
        assert len(co) == 0

    run(go())


def test_the_first_waiter_runs_the_work_without_a_task_of_its_own(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        waiter = asyncio.ensure_future(co.run(b"k", work))
        await work.started()
        # Only the test's Task and the waiter's: the Coalescer started none.
        assert work.tasks_seen == [2]
        work.release("answer")
        assert await waiter == "answer"

    run(go())


def test_different_keys_resolve_separately(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        a, b = Work(), Work()
        ta = asyncio.ensure_future(co.run(b"a", a))
        tb = asyncio.ensure_future(co.run(b"b", b))
        await a.started()
        await b.started()
        assert len(co) == 2
        b.release("B")
        a.release("A")
        assert await ta == "A" and await tb == "B"
        assert co.started == 2 and co.joined == 0

    run(go())


def test_failure_reaches_every_waiter(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        waiters = [asyncio.ensure_future(co.run(b"k", work)) for _ in range(3)]
        await work.started()
        await settle()
        work.fail(UpstreamFailed("every upstream said SERVFAIL"))
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, UpstreamFailed) for r in results)
        assert len(co) == 0

    run(go())


def test_a_cancelled_joiner_does_not_disturb_the_others(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        first = asyncio.ensure_future(co.run(b"k", work))
        await work.started()
        quitter = asyncio.ensure_future(co.run(b"k", work))
        stayer = asyncio.ensure_future(co.run(b"k", work))
        await settle()
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        work.release("answer")
        assert await first == "answer" and await stayer == "answer"
        assert work.calls == 1 and work.cancelled == 0

    run(go())


def test_a_joiner_stops_waiting_at_its_own_timeout(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        key = ("example.org.", 1)  # any hashable key
        first = asyncio.ensure_future(co.run(key, work, join_timeout_s=0.01))
        await work.started()
        hurried = asyncio.ensure_future(co.run(key, work, join_timeout_s=0.01))
        patient = asyncio.ensure_future(co.run(key, work))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(hurried, NEVER)
        # The first caller runs the work itself: the joiners' timeout is not its own.
        assert not first.done()
        work.release("answer")
        assert await first == "answer" and await patient == "answer"
        assert work.calls == 1 and work.cancelled == 0 and len(co) == 0

    run(go())


def test_a_cancelled_first_waiter_still_answers_the_others(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        first = asyncio.ensure_future(co.run(b"k", work))
        await work.started()
        others = [asyncio.ensure_future(co.run(b"k", work)) for _ in range(2)]
        await settle()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert work.cancelled == 1
        # The work starts again (in a Task) for the waiters still there.
        await work.started(calls=2)
        assert len(co) == 1 and co.taken_over == 1
        late = asyncio.ensure_future(co.run(b"k", work))  # joins the restarted resolution
        await settle()
        work.release("answer")
        results = await asyncio.wait_for(asyncio.gather(*others, late), NEVER)
        assert results == ["answer"] * 3
        assert work.calls == 2
        assert len(co) == 0
        await settle()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(go())


def test_a_cancelled_first_waiter_with_no_company_leaves_nothing_behind(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        first = asyncio.ensure_future(co.run(b"k", work))
        await work.started()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert work.cancelled == 1 and co.taken_over == 0
        assert len(co) == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}
        # The key is free again: the next question starts a new resolution.
        again = asyncio.ensure_future(co.run(b"k", work))
        await work.started(calls=2)
        work.release("answer")
        assert await again == "answer"

    run(go())


def test_failure_after_a_takeover_reaches_the_waiters(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        first = asyncio.ensure_future(co.run(b"k", work))
        await work.started()
        other = asyncio.ensure_future(co.run(b"k", work))
        await settle()
        first.cancel()
        await work.started(calls=2)
        work.fail(UpstreamFailed("no"))
        with pytest.raises(UpstreamFailed):
            await asyncio.wait_for(other, NEVER)
        assert len(co) == 0
        await settle()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(go())


def test_drain_waits_for_resolutions_in_flight(run: Runner) -> None:
    async def go() -> None:
        co: Coalescer[str] = Coalescer()
        work = Work()
        waiter = asyncio.ensure_future(co.run(b"k", work))
        await work.started()
        drain = asyncio.ensure_future(co.drain(NEVER))
        await settle()
        assert not drain.done()
        work.release("answer")
        await asyncio.wait_for(drain, NEVER)
        assert await waiter == "answer"

        # Bounded: a resolution that never ends does not hold drain up past its timeout.
        stuck = asyncio.ensure_future(co.run(b"other", Work()))
        await settle()
        await asyncio.wait_for(co.drain(0.01), NEVER)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck

    run(go())
