"""One query to one upstream: build it, send it over UDP or TCP, accept only the matching reply.

Owns the wire side of talking to an upstream resolver: `build_query` (random ID, RD, CD, EDNS0
OPT with DO), `UdpExchange` (fresh connected socket per exchange, driven by loop callbacks;
what the forwarder uses), `exchange_udp` (the same as one awaitable call) and `exchange_tcp`
(RFC 1035 §4.2.2 framing). Replies are parsed only as far as needed to match them to the query
(ID, QR bit, question); the bytes returned are exactly the bytes received. `randomise_case`
spells a qname in random letter case (DNS 0x20); an exchange told to, accepts only a reply
whose question keeps that exact case.

Must not: choose upstreams, keep health or RTT state (that is `forward.py`), interpret the
reply beyond matching it, or leave a socket open after an exchange returns or raises.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator

from fastdns.errors import (
    RCODE_FORMERR,
    RCODE_NOTIMP,
    QnameCaseMismatch,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastdns.resolve.question import Question

HEADER_SIZE = 12
FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010
QTYPE_OPT = 41
# RFC 6891 §6.2.5 and the DNS Flag Day 2020 value: large enough for most answers, small
# enough to avoid IP fragmentation (fragments are a cache-poisoning vector).
EDNS_UDP_PAYLOAD = 1232
EDNS_FLAG_DO = 0x8000  # RFC 3225 §3: top bit of the OPT TTL's flags half

_HEADER = struct.Struct("!HHHHHH")
_QTYPE_QCLASS = struct.Struct("!HH")
# OPT pseudo-RR after its root owner name: TYPE, CLASS = UDP payload, TTL = ext-rcode/version/
# flags, RDLENGTH = 0 (RFC 6891 §6.1.2).
_OPT = struct.Struct("!HHIH")
_TCP_LENGTH = struct.Struct("!H")
# Largest UDP payload: read whole datagrams whatever the upstream sends; a short buffer would
# silently cut a reply and make it look valid-but-short.
_MAX_DATAGRAM = 65535
# Open exchange sockets non-blocking in the socket() call itself (Linux): one syscall fewer.
_SOCK_DGRAM_NONBLOCK = socket.SOCK_DGRAM | getattr(socket, "SOCK_NONBLOCK", 0)
# The C socket type itself: `socket.socket` adds a Python __init__ and close() per exchange.
_Socket = socket.SocketType
# Query IDs are read from the OS CSPRNG in blocks of this many bytes (2 per ID).
_ID_BLOCK_BYTES = 4096

MismatchCallback = Callable[[bytes], None]

# bytes.translate table: 0x20 for each ASCII letter, 0 for every other byte value.
_LETTER_CASE_BIT = bytes(0x20 if chr(b).isascii() and chr(b).isalpha() else 0 for b in range(256))


class _RandomIds:
    """16-bit query IDs from the OS CSPRNG (`os.urandom`), fetched a block at a time.

    Same source as `secrets`, one getrandom() call per 2048 IDs instead of one per ID. Each ID
    is used once. A forked child starts a block of its own, so workers never share IDs.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: Iterator[int] = iter(())

    def reset(self) -> None:
        self._ids = iter(())

    def next(self) -> int:
        qid = next(self._ids, None)
        if qid is None:
            self._ids = iter(memoryview(os.urandom(_ID_BLOCK_BYTES)).cast("H"))
            qid = next(self._ids)
        return qid


_random_ids = _RandomIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_ids.reset)
_next_id = _random_ids.next


def build_query(q: Question, *, recursion_desired: bool = True,
                edns: bool = True) -> tuple[int, bytes]:
    """Build the upstream query for `q`; return (message ID, wire bytes).

    The ID comes from the OS CSPRNG: with the random source port of each exchange it is what
    an off-path spoofer has to guess (RFC 5452 §9.2). RD=1 when a forwarder asks a recursive
    resolver, RD=0 when the recursor asks an authoritative server (RFC 1034 §5.3.1); CD is
    passed on as the client set it (RFC 4035 §3.2.2). An EDNS0 OPT
    record advertises `EDNS_UDP_PAYLOAD` and carries DO when the client asked for DNSSEC
    records (RFC 6891, RFC 3225); `edns=False` leaves it out, for a server that cannot
    parse it (RFC 6891 §7).
    """
    qid = _next_id()
    flags = (FLAG_RD if recursion_desired else 0) | (FLAG_CD if q.cd else 0)
    header = _HEADER.pack(qid, flags, 1, 0, 0, 1 if edns else 0)
    question = q.qname_wire + _QTYPE_QCLASS.pack(q.qtype, q.qclass)
    if not edns:
        return qid, header + question
    opt = b"\x00" + _OPT.pack(QTYPE_OPT, EDNS_UDP_PAYLOAD, EDNS_FLAG_DO if q.do else 0, 0)
    return qid, header + question + opt


def randomise_case(qname_wire: bytes) -> bytes:
    """`qname_wire` with each ASCII letter in upper or lower case at random (DNS 0x20,
    draft-vixie-dnsext-dns0x20): one more bit per letter an off-path spoofer has to guess.

    The bits come from the OS CSPRNG; label lengths (<= 63) are never letters, so only label
    bytes change and the name stays the same name (RFC 4343).
    """
    size = len(qname_wire)
    flips = int.from_bytes(os.urandom(size), "big") & int.from_bytes(
        qname_wire.translate(_LETTER_CASE_BIT), "big"
    )
    return (int.from_bytes(qname_wire, "big") ^ flips).to_bytes(size, "big")


class ReplyMatcher:
    """Decides whether a datagram is the reply to one query (RFC 5452 §9.1).

    A reply matches when its ID equals the query's, QR=1, QDCOUNT=1 and its question equals the
    query's: qtype and qclass exactly; the qname case-insensitively (RFC 4343: an upstream
    may answer in another case), or, with `exact_case`, byte for byte (the query's qname was
    spelt in random case, DNS 0x20, and the reply must echo it). The address/port check is done
    by the kernel: every exchange uses a connected socket, which drops datagrams from any other
    source.
    """

    __slots__ = ("_end", "_exact", "_id", "_qname", "_qname_lower", "_qtype_qclass")

    def __init__(self, query_wire: bytes, *, qname_end: int | None = None,
                 exact_case: bool = False) -> None:
        # `qname_end`: where the qname ends, when the caller built the query and knows it.
        end = _question_name_end(query_wire) if qname_end is None else qname_end
        if end + 4 > len(query_wire):
            raise ValueError("query has no complete question section")
        self._id = query_wire[:2]
        self._exact = exact_case
        self._qname = query_wire[HEADER_SIZE:end]
        # bytes.lower() touches only A-Z; label lengths (<= 63) and type/class are kept apart.
        self._qname_lower = self._qname.lower()
        self._qtype_qclass = query_wire[end : end + 4]
        self._end = end

    def matches(self, reply: bytes, *, exact_case: bool | None = None) -> bool:
        """True if `reply` answers the query this matcher was built from; `exact_case`
        overrides, for this call, how the qname's letter case is compared."""
        end = self._end
        if len(reply) < end + 4:
            return False
        if reply[:2] != self._id or not reply[2] & (FLAG_QR >> 8) or reply[4:6] != b"\x00\x01":
            return False
        # The first name in a message cannot be a compression pointer (nothing precedes it to
        # point at), so comparing the same byte span is comparing the name.
        qname = reply[HEADER_SIZE:end]
        exact = self._exact if exact_case is None else exact_case
        return (
            (qname == self._qname if exact else qname.lower() == self._qname_lower)
            and reply[end : end + 4] == self._qtype_qclass
        )

    def case_differs(self, reply: bytes) -> bool:
        """True if, with `exact_case`, `reply` fails to match only because its qname is in
        another letter case: a server that does not preserve case, or a forgery."""
        return (self._exact and not self.matches(reply)
                and self.matches(reply, exact_case=False))


def _question_name_end(wire: bytes) -> int:
    """Offset just past the (uncompressed) qname of the first question of a query we built."""
    pos = HEADER_SIZE
    size = len(wire)
    while True:
        if pos >= size:
            raise ValueError("query qname runs past the end of the message")
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length > 63:
            raise ValueError("query qname is compressed or has a bad label length")
        pos += 1 + length


def reply_rcode(reply: bytes) -> int:
    """The 4-bit header RCODE of a matched reply."""
    return reply[3] & 0x0F


def reply_rejects_edns(reply: bytes) -> bool:
    """True for FORMERR or NOTIMP with an empty additional section, where an OPT would be:
    the answer of a server that does not know EDNS to a query that had one (RFC 6891 §7: ask
    it again without). A server that knows EDNS puts an OPT in its FORMERR, and then its
    objection is to something else."""
    return reply_rcode(reply) in (RCODE_FORMERR, RCODE_NOTIMP) and reply[10:12] == b"\x00\x00"


def reply_truncated(reply: bytes) -> bool:
    """True if the reply has TC=1 (RFC 1035 §4.1.1): ask again over TCP."""
    return bool(reply[2] & (FLAG_TC >> 8))


class UdpExchange:
    """One UDP query to one upstream over a fresh connected socket, driven by loop callbacks.

    The constructor opens the socket, connects it to host:port, sends `query_wire` and starts
    watching the socket through the loop's `_Poller`: no Task, no transport, no Future. The
    outcome arrives through exactly one of the overridable methods below, after which the
    socket is already closed: `reply_received` (the first datagram `matcher` accepts) or
    `error_received` (a socket error, e.g. the upstream's ICMP port unreachable). Datagrams
    that do not match are dropped (RFC 5452 §9.1) and reported to `mismatch_received`; the
    exchange keeps waiting. It never times out by itself: the owner decides how long to wait
    and calls `close()`, which is idempotent and must be called on every exit path.

    Connecting the socket makes the kernel pick a random ephemeral source port (RFC 5452 §9.2)
    and drop datagrams from any address or port but the upstream's.
    """

    __slots__ = ("_fd", "_matcher", "_poller", "_sock")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        query_wire: bytes,
        matcher: ReplyMatcher,
    ) -> None:
        self._matcher = matcher
        # Upstream hosts are IP literals (config validates them), so ":" means IPv6.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = _Socket(family, _SOCK_DGRAM_NONBLOCK)
        except OSError as exc:
            raise UpstreamFailed(f"{format_address(host, port)}: {exc}") from exc
        try:
            if _SOCK_DGRAM_NONBLOCK == socket.SOCK_DGRAM:
                sock.setblocking(False)
            sock.connect((host, port))
            sock.send(query_wire)
            fd = sock.fileno()
            poller = _poller_of(loop)
            poller.register(fd, self)
        except OSError as exc:
            sock.close()
            raise UpstreamFailed(f"{format_address(host, port)}: {exc}") from exc
        self._sock: socket.SocketType | None = sock
        self._fd = fd
        self._poller = poller

    def reply_received(self, reply: bytes) -> None:
        """The matching reply, exactly as received. The socket is closed."""

    def error_received(self, exc: OSError) -> None:
        """The socket reported an error (on a connected socket: the upstream's ICMP error).
        The socket is closed."""

    def mismatch_received(self, data: bytes) -> None:
        """A datagram arrived that does not answer the query; it was dropped."""

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Stop watching and close the socket (idempotent)."""
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._poller.unregister(self._fd)
            sock.close()

    def _on_readable(self) -> None:
        # Drain what is queued: a forged datagram may sit in front of the real reply.
        while True:
            sock = self._sock
            if sock is None:
                return
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close()
                self.error_received(exc)
                return
            if self._matcher.matches(data):
                self.close()
                self.reply_received(data)
                return
            self.mismatch_received(data)


class _Poller:
    """Readiness of every open exchange socket of one loop, through one epoll set (Linux).

    The loop watches the epoll fd; each exchange socket is registered in the set (one
    epoll_ctl) instead of with `loop.add_reader`, which costs a loop handle, a transport
    check and epoll_ctl calls of its own per socket. The set exists only while exchanges are
    open: when the last one closes, the set is closed too, so nothing outlives the exchanges.
    """

    __slots__ = ("_dispatching", "_epoll", "_exchanges", "_fd", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self._exchanges: dict[int, UdpExchange] = {}
        self._dispatching = False
        try:
            loop.add_reader(self._fd, self._dispatch)
        except BaseException:
            self._epoll.close()
            raise

    def register(self, fd: int, exchange: UdpExchange) -> None:
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except OSError:
            if not self._exchanges and not self._dispatching:
                self._close()  # it was opened for this exchange: do not leave it behind
            raise
        self._exchanges[fd] = exchange

    def unregister(self, fd: int) -> None:
        del self._exchanges[fd]
        self._epoll.unregister(fd)
        if not self._exchanges and not self._dispatching:
            self._close()

    def _dispatch(self) -> None:
        self._dispatching = True
        try:
            for fd, _ in self._epoll.poll(0):
                exchange = self._exchanges.get(fd)  # None: closed by an earlier callback
                if exchange is not None:
                    try:
                        exchange._on_readable()
                    except Exception as exc:  # noqa: BLE001 - one exchange must not stop the rest
                        self._loop.call_exception_handler(
                            {"message": "UDP exchange callback failed", "exception": exc}
                        )
        finally:
            self._dispatching = False
            if not self._exchanges:
                self._close()

    def _close(self) -> None:
        if _pollers.get(self._loop) is self:
            del _pollers[self._loop]
        self._loop.remove_reader(self._fd)
        self._epoll.close()


class _LoopReaders:
    """Fallback where there is no epoll: one `loop.add_reader` per exchange socket."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def register(self, fd: int, exchange: UdpExchange) -> None:
        self._loop.add_reader(fd, exchange._on_readable)

    def unregister(self, fd: int) -> None:
        self._loop.remove_reader(fd)


# The open poller of each loop that has exchanges in flight (removed when it closes).
_pollers: dict[asyncio.AbstractEventLoop, _Poller] = {}


def _poller_of(loop: asyncio.AbstractEventLoop) -> _Poller | _LoopReaders:
    poller = _pollers.get(loop)
    if poller is None:
        if not hasattr(select, "epoll"):
            return _LoopReaders(loop)
        poller = _pollers[loop] = _Poller(loop)
    return poller


class _FutureExchange(UdpExchange):
    """A `UdpExchange` whose outcome resolves a Future (for `exchange_udp`)."""

    __slots__ = ("_on_mismatch", "_reply")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        query_wire: bytes,
        matcher: ReplyMatcher,
        reply: asyncio.Future[bytes],
        on_mismatch: MismatchCallback | None,
    ) -> None:
        self._reply = reply
        self._on_mismatch = on_mismatch
        super().__init__(loop, host, port, query_wire, matcher)

    def reply_received(self, reply: bytes) -> None:
        if not self._reply.done():
            self._reply.set_result(reply)

    def error_received(self, exc: OSError) -> None:
        if not self._reply.done():
            self._reply.set_exception(exc)

    def mismatch_received(self, data: bytes) -> None:
        if self._on_mismatch is not None:
            self._on_mismatch(data)
        if self._matcher.case_differs(data) and not self._reply.done():
            # The reply, but for the letter case of its question: with 0x20 this ends the
            # exchange as a failure (waiting on would only wait for a timeout).
            self._reply.set_exception(QnameCaseMismatch("reply question in another letter case"))


def _expire(reply: asyncio.Future[bytes]) -> None:
    if not reply.done():
        reply.set_exception(asyncio.TimeoutError())


async def exchange_udp(
    host: str,
    port: int,
    query_wire: bytes,
    timeout_s: float,
    *,
    on_mismatch: MismatchCallback | None = None,
    exact_case: bool = False,
) -> bytes:
    """Send `query_wire` to host:port over UDP; return the first matching reply, as received.

    Each call opens a fresh socket connected to the upstream (see `UdpExchange`): a random
    ephemeral source port (RFC 5452 §9.2), and the kernel drops datagrams from any other
    address or port. Datagrams that do not match (ID, QR, question) are ignored and reported
    to `on_mismatch`, if given. Raises `UpstreamTimeout` when nothing matches within
    `timeout_s`, `UpstreamFailed` when the socket reports an error (e.g. ICMP port
    unreachable). With `exact_case` (the qname was sent in random case, DNS 0x20), a reply
    whose question differs from the query's only in letter case raises `QnameCaseMismatch`.
    The socket is closed before this returns or raises, cancellation included.
    """
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()
    matcher = ReplyMatcher(query_wire, exact_case=exact_case)
    exchange = _FutureExchange(loop, host, port, query_wire, matcher, reply, on_mismatch)
    timer = loop.call_later(timeout_s, _expire, reply)
    try:
        return await reply
    except asyncio.TimeoutError:
        where = format_address(host, port)
        raise UpstreamTimeout(f"{where}: no reply within {timeout_s:g}s") from None
    except QnameCaseMismatch as exc:
        raise QnameCaseMismatch(f"{format_address(host, port)}: {exc}") from None
    except OSError as exc:
        raise UpstreamFailed(f"{format_address(host, port)}: {exc}") from exc
    finally:
        timer.cancel()
        exchange.close()


async def exchange_tcp(host: str, port: int, query_wire: bytes, timeout_s: float, *,
                       exact_case: bool = False) -> bytes:
    """Send `query_wire` to host:port over TCP; return the first matching reply, as received.

    Messages are framed with a 2-byte length (RFC 1035 §4.2.2, RFC 7766 §8). One connection per
    exchange, closed before this returns: it serves the rare retry after TC=1, where reusing
    connections (RFC 7766 §6.2.1) would buy little. Non-matching messages on the connection are
    skipped. Raises `UpstreamTimeout` past `timeout_s` (connect included), `UpstreamFailed` if
    the connection fails or closes before a matching reply; `exact_case` as for `exchange_udp`.
    """
    if len(query_wire) > 0xFFFF:
        raise ValueError("query too large for TCP framing")
    matcher = ReplyMatcher(query_wire, exact_case=exact_case)
    try:
        return await asyncio.wait_for(_tcp_round_trip(host, port, query_wire, matcher), timeout_s)
    except asyncio.TimeoutError:
        where = format_address(host, port)
        raise UpstreamTimeout(f"{where} (tcp): no reply within {timeout_s:g}s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamFailed(f"{format_address(host, port)} (tcp): {exc!r}") from exc


async def _tcp_round_trip(host: str, port: int, query_wire: bytes, matcher: ReplyMatcher) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_TCP_LENGTH.pack(len(query_wire)) + query_wire)
        await writer.drain()
        while True:
            (length,) = _TCP_LENGTH.unpack(await reader.readexactly(2))
            message = await reader.readexactly(length)
            if matcher.matches(message):
                return message
            if matcher.case_differs(message):
                where = format_address(host, port)
                raise QnameCaseMismatch(f"{where} (tcp): reply question in another letter case")
    finally:
        writer.close()


def format_address(host: str, port: int) -> str:
    """Return host:port, with an IPv6 host in brackets ("[::1]:53"), as config and logs spell it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
