"""Coalescing of identical in-flight questions: one upstream resolution serves every waiter.

Owns: the map from cache key to the running resolution. Must not: talk to upstreams or
render replies; it only shares the outcome of whatever coroutine the caller starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """`await run(key, start)`: the first caller for key starts `start()` as a Task, later
    callers wait on the same Task. A waiter that is cancelled does not cancel the others."""

    name = "coalesce"

    def __init__(self) -> None:
        self._inflight: dict[bytes, asyncio.Task[T]] = {}
        self.started = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: bytes, start: Callable[[], Awaitable[T]]) -> T:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._forget(k, t))
            self.started += 1
        else:
            self.joined += 1
        return await asyncio.shield(task)

    def _forget(self, key: bytes, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for every in-flight resolution, for graceful shutdown."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=timeout_s)
