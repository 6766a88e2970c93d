"""Coalescing of identical work in flight: one upstream resolution serves every waiter.

Owns: the map from key (a question's cache key; the recursor's own lookups) to the resolution
in flight and the waiters joined to it. Must not: talk to upstreams or render replies; it only
shares the outcome of whatever coroutine the caller starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """`await run(key, start)`: the first caller for key awaits `start()` itself (no Task);
    later callers for the same key wait for its outcome.

    A waiter that is cancelled does not disturb the others: a cancelled joiner just stops
    waiting; if the leader is cancelled while others wait, the work starts again in a Task
    that answers them (`start()` is called a second time, so it must be safe to repeat).
    Keys are any hashable value (the miss path uses the cache key bytes).
    """

    name = "coalesce"

    def __init__(self) -> None:
        # One entry per resolution in flight: the Futures of the callers that joined it, in
        # join order. The first caller (the leader) is not in the list: it runs the work in
        # its own coroutine and settles every Future in it when done. A joiner that stops
        # waiting cancels its own Future, which is then skipped.
        #
        #   _inflight[key] -> [Future(joiner 1), Future(joiner 2), ...]  ([] if none joined)
        self._inflight: dict[Hashable, list[asyncio.Future[T]]] = {}
        self._takeovers: set[asyncio.Task[None]] = set()
        self.started = 0
        self.joined = 0
        self.taken_over = 0

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: Hashable, start: Callable[[], Awaitable[T]], *,
                  join_timeout_s: float | None = None) -> T:
        """The outcome of `start()` for `key`, run by the first caller, shared with the rest.
        A caller that joins waits at most `join_timeout_s`, if given, then raises
        `asyncio.TimeoutError` (the first caller's `start()` bounds its own time)."""
        flight = self._inflight.get(key)
        if flight is not None:
            self.joined += 1
            waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            flight.append(waiter)
            # Cancelling this caller, or its timeout, cancels only its own Future.
            if join_timeout_s is None:
                return await waiter
            return await asyncio.wait_for(waiter, join_timeout_s)
        flight = self._inflight[key] = []
        self.started += 1
        try:
            result = await start()
        except asyncio.CancelledError:
            if any(not w.done() for w in flight):
                self._take_over(key, flight, start)
            else:
                self._forget(key, flight)
            raise
        except BaseException as exc:
            self._forget(key, flight)
            _fail(flight, exc)
            raise
        self._forget(key, flight)
        for w in flight:
            if not w.done():
                w.set_result(result)
        return result

    def _forget(self, key: Hashable, flight: list[asyncio.Future[T]]) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    def _take_over(
        self, key: Hashable, flight: list[asyncio.Future[T]], start: Callable[[], Awaitable[T]]
    ) -> None:
        """The leader went away while others wait: run the work again for them, in a Task."""
        self.taken_over += 1
        task = asyncio.get_running_loop().create_task(self._finish_for(key, flight, start))
        self._takeovers.add(task)
        task.add_done_callback(self._takeovers.discard)

    async def _finish_for(
        self, key: Hashable, flight: list[asyncio.Future[T]], start: Callable[[], Awaitable[T]]
    ) -> None:
        try:
            result = await start()
        except asyncio.CancelledError:
            self._forget(key, flight)
            for w in flight:
                w.cancel()
            raise
        except BaseException as exc:
            self._forget(key, flight)
            _fail(flight, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._forget(key, flight)
        for w in flight:
            if not w.done():
                w.set_result(result)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for every in-flight resolution, for graceful shutdown."""
        if not self._inflight:
            return
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[T]] = []
        for flight in self._inflight.values():
            waiter: asyncio.Future[T] = loop.create_future()
            flight.append(waiter)
            waiters.append(waiter)
        await asyncio.wait(waiters, timeout=timeout_s)
        for waiter in waiters:
            if waiter.done():
                if not waiter.cancelled():
                    waiter.exception()  # mark retrieved: drain wants the timing, not the outcome
            else:
                waiter.cancel()


def _fail(flight: list[asyncio.Future[T]], exc: BaseException) -> None:
    for w in flight:
        if not w.done():
            if isinstance(exc, Exception):
                w.set_exception(exc)
            else:
                w.cancel()  # KeyboardInterrupt, SystemExit: the loop is going away
