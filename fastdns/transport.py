"""DNS over TCP (RFC 1035 §4.2.2, RFC 7766), and UDP where recvmmsg/sendmmsg do not exist.

Owns: connections, 2-byte length framing, flow control. Each framed query goes through the
same compiled hit path as UDP (`HitPath.answer`); a miss becomes a Task on the miss path and
its reply may overtake earlier ones (RFC 7766 §7: responses can be out of order).
`UdpProtocol` is the plain UDP edge: one datagram per call into the same compiled routine,
for platforms without the batch loop (or `server.udp_batching: false`).
Must not: parse DNS or decide answers.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import cast

from fastdns._fastpath import HitPath, _UdpProtocolBase, monotonic_now, pack_sockaddr
from fastdns.resolve.pipeline import MissPath

log = logging.getLogger("fastdns.tcp")

MAX_PENDING_PER_CONNECTION = 128  # queries awaiting upstream before we stop reading (RFC 7766 §6.2.1.1)


class UdpProtocol(_UdpProtocolBase, asyncio.DatagramProtocol):
    """One datagram per call: guards, cache and reply in C; misses go to hitpath.on_miss."""


class TcpServerState:
    """What every connection shares: the paths, the limits and the live connections."""

    def __init__(self, hitpath: HitPath, misspath: MissPath, *, idle_timeout_s: float,
                 max_connections: int) -> None:
        self.hitpath = hitpath
        self.misspath = misspath
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.connections: set[TcpConnection] = set()
        self.rejected = 0

    def close_idle(self) -> None:
        for conn in list(self.connections):
            conn.close_when_idle()

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every connection has written its pending answers."""
        pending = [task for conn in self.connections for task in conn.pending]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)


class TcpConnection(asyncio.Protocol):
    """One client connection: any number of pipelined queries, replies as they are ready."""

    def __init__(self, state: TcpServerState) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._peer = b""
        self._pending: set[asyncio.Task[None]] = set()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_active = 0.0  # monotonic seconds of the last query or answer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused_reading = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        stream = cast(asyncio.Transport, transport)
        self._transport = stream
        state = self._state
        if len(state.connections) >= state.max_connections:
            # Over the limit: close at once rather than let connections pile up.
            state.rejected += 1
            stream.abort()
            return
        state.connections.add(self)
        try:
            self._peer = pack_sockaddr(stream.get_extra_info("peername"))
        except (TypeError, ValueError):
            stream.abort()
            return
        stream.set_write_buffer_limits(high=256 * 1024)
        self._loop = asyncio.get_running_loop()
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        self._closing = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        for task in self._pending:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        hitpath = self._state.hitpath
        pos = 0
        while len(buf) - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < size:
                break
            query = bytes(buf[pos + 2 : pos + 2 + size])
            pos += 2 + size
            reply = hitpath.answer(query, self._peer, False)
            if reply is None:
                self._start_miss(query)
            elif reply:
                self._write(reply)
        if pos:
            del buf[:pos]
        self._touch()

    def eof_received(self) -> bool | None:
        # Half-close: finish pending answers, then close (RFC 7766 §6.2.4).
        self._closing = True
        if not self._pending and self._transport is not None:
            self._transport.close()
        return True

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its queries.
        if self._transport is not None and not self._paused_reading:
            self._transport.pause_reading()
            self._paused_reading = True

    def resume_writing(self) -> None:
        self._maybe_resume_reading()

    @property
    def pending(self) -> set[asyncio.Task[None]]:
        return self._pending

    def close_when_idle(self) -> None:
        self._closing = True
        if not self._pending and self._transport is not None:
            self._transport.close()

    # -- internals ------------------------------------------------------------------------

    def _write(self, reply: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(struct.pack("!H", len(reply)) + reply)

    def _start_miss(self, query: bytes) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._answer_miss(query, monotonic_now()))
        self._pending.add(task)
        task.add_done_callback(self._miss_done)
        if len(self._pending) >= MAX_PENDING_PER_CONNECTION and self._transport is not None:
            self._transport.pause_reading()
            self._paused_reading = True

    async def _answer_miss(self, query: bytes, started: float) -> None:
        reply, upstream = await self._state.misspath.answer(query, tcp=True)
        self._write(reply)
        self._state.hitpath.log_miss(query, reply, self._peer, monotonic_now() - started, upstream)

    def _miss_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("TCP miss failed", exc_info=task.exception())
        self._maybe_resume_reading()
        if self._closing and not self._pending and self._transport is not None:
            self._transport.close()
        else:
            self._touch()

    def _maybe_resume_reading(self) -> None:
        if (self._paused_reading and self._transport is not None
                and len(self._pending) < MAX_PENDING_PER_CONNECTION
                and self._transport.get_write_buffer_size() < 64 * 1024):
            self._paused_reading = False
            self._transport.resume_reading()

    def _touch(self) -> None:
        """Note activity. RFC 7766 §6.2.3: connections that stay idle are closed. The timer is
        not moved on every query (a timer per query costs more than the query): it fires at
        the first deadline and, if the connection was active since, waits out the rest."""
        self._last_active = monotonic_now()
        if self._idle_handle is None and not self._closing and self._loop is not None:
            self._idle_handle = self._loop.call_later(self._state.idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self._closing or self._loop is None:
            return
        idle_s = monotonic_now() - self._last_active
        if self._pending or idle_s < self._state.idle_timeout_s:
            # Waiting on an upstream is not idle; otherwise wait out what is left.
            wait_s = self._state.idle_timeout_s - (0.0 if self._pending else idle_s)
            self._idle_handle = self._loop.call_later(wait_s, self._on_idle)
        elif self._transport is not None:
            self._transport.close()
