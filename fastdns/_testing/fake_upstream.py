"""FakeUpstream: a loopback DNS server a test controls (records, failure modes, delay, counts).

It owns one background thread running a selector loop over a UDP socket and a TCP listener
bound to the same loopback port, plus a timer heap for delayed replies. Replies are built
with dnspython. It must never bind or send anywhere but loopback, and it must not leave a
socket or thread behind after `stop()`.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import os
import selectors
import socket
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zonefile

from fastdns.resolve.upstream import format_address

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MODES", "AnswerFn", "FakeUpstream", "QueryRecord", "free_port", "parse_records"]

MODES = frozenset(
    {"answer", "silent", "garbage", "servfail", "refused", "formerr", "wrong_id", "wrong_question"}
)
_RCODE_MODES = {
    "servfail": dns.rcode.SERVFAIL,
    "refused": dns.rcode.REFUSED,
    "formerr": dns.rcode.FORMERR,
}

# RFC 6891 §6.2.5 / DNS flag day 2020: the payload size we advertise in our OPT record.
EDNS_PAYLOAD = 1232
# RFC 1035 §4.2.1: without EDNS a UDP reply is at most 512 bytes.
CLASSIC_UDP_LIMIT = 512
# How many CNAMEs the fake follows inside its own data before it stops.
MAX_CNAME_CHAIN = 8
DEFAULT_TTL_S = 300

AnswerFn = Callable[[dns.message.Message], dns.message.Message | bytes | None]


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One query the fake received, as it arrived on the wire."""

    transport: str  # "udp" or "tcp"
    qname: str  # presentation form with the received letter case, e.g. "ExAmPlE.org."
    qtype: str  # mnemonic, "TYPE65534" for unknown types
    id: int
    src_port: int
    has_edns: bool
    do_bit: bool
    cd_bit: bool = False
    rd_bit: bool = False
    edns_payload: int = 0  # 0 when the query had no OPT record
    qclass: str = "IN"
    wire: bytes = field(default=b"", repr=False)


def _check_loopback(host: str) -> None:
    # The test network rule: nothing here may talk to anything but loopback.
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"FakeUpstream binds to loopback only, got {host!r}")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind a UDP socket and a listening TCP socket on the same loopback port (0 = any free)."""
    family = _family(host)
    last_error: OSError | None = None
    for _ in range(1 if port else 64):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            chosen = udp.getsockname()[1]
            # SO_REUSEADDR lets a restarted fake take its old port back while old
            # connections sit in TIME_WAIT; it does not let two listeners share a port.
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, chosen))
            tcp.listen(128)
        except OSError as exc:
            udp.close()
            tcp.close()
            last_error = exc
            continue
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise OSError(f"could not bind UDP and TCP on {host} port {port}: {last_error}")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that is free on `host` for both UDP and TCP right now."""
    _check_loopback(host)
    udp, tcp = _bind_pair(host, 0)
    try:
        return int(udp.getsockname()[1])
    finally:
        udp.close()
        tcp.close()


def _split_records(text: str) -> list[str]:
    """Split zone-file text into records; a newline inside ( ) or quotes does not end one."""
    records: list[str] = []
    current: list[str] = []
    depth = 0
    in_quote = in_comment = escaped = False
    for ch in text:
        if in_comment:
            if ch != "\n":
                continue
            in_comment = False
        elif escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_quote:
            in_quote = ch != '"'
        elif ch == '"':
            in_quote = True
        elif ch == ";":
            in_comment = True
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "\n" and depth <= 0 and not in_quote:
            records.append("".join(current))
            current = []
        else:
            current.append(ch)
    records.append("".join(current))
    return [record for record in records if record.strip()]


def _read_record(owner: dns.name.Name, text: str) -> list[dns.rrset.RRset]:
    """Parse one record's TTL/class/type/rdata for `owner`; relative names hang off the root."""
    try:
        return _read_rrsets(owner, text, dns.name.root)
    except ValueError as exc:
        if "non-origin SOA" not in str(exc):
            raise
        # dnspython only takes an SOA at the origin; its rdata names are absolute in practice.
        return _read_rrsets(owner, text, owner)


def _read_rrsets(owner: dns.name.Name, text: str, origin: dns.name.Name) -> list[dns.rrset.RRset]:
    return dns.zonefile.read_rrsets(
        text,
        name=owner,
        rdclass=None,
        default_ttl=DEFAULT_TTL_S,
        origin=origin,
        relativize=False,
    )


def parse_records(*lines: str) -> list[dns.rrset.RRset]:
    """RRsets from zone-file presentation lines (several args or multi-line text).

    Owner names are absolute (relative ones hang off the root); a blank owner repeats the
    previous one; lines without a TTL get 300 s. Raises ValueError on text it cannot parse.
    """
    # Dedent each argument so triple-quoted, indented blocks in test code work.
    text = "\n".join(textwrap.dedent(line) for line in lines)
    rrsets: list[dns.rrset.RRset] = []
    owner: dns.name.Name | None = None
    try:
        for record in _split_records(text):
            if record[0].isspace():
                # RFC 1035 §5.1: a blank owner field repeats the previous owner.
                if owner is None:
                    raise ValueError("the first record has no owner name")
                rest = record
            else:
                owner_text, rest = (record.split(None, 1) + [""])[:2]
                owner = dns.name.from_text(owner_text, dns.name.root)
            rrsets.extend(_read_record(owner, rest))
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"cannot parse records {text!r}: {exc}") from exc
    return rrsets


class _TcpConn:
    """One accepted TCP connection: RFC 1035 §4.2.2 frames in, framed replies out."""

    __slots__ = ("closed", "eof", "inbuf", "outbuf", "peer_port", "pending", "registered", "sock")

    def __init__(self, sock: socket.socket, peer_port: int) -> None:
        self.sock = sock
        self.peer_port = peer_port
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pending = 0  # replies decided but still waiting on their delay timer
        self.eof = False  # peer sent FIN: finish pending replies, then close
        self.registered = False  # in the selector (not while idle after EOF)
        self.closed = False


class FakeUpstream:
    """A DNS server on loopback that answers from records the test gives it.

    Usage::

        up = FakeUpstream().answer("example.org. 300 IN A 192.0.2.1")
        with up:
            ...  # point the code under test at up.address
        assert up.calls == 1
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "answer",
        delay_s: float = 0.0,
        truncate_udp: bool = False,
    ) -> None:
        _check_loopback(host)
        self._host = host
        self._port = port
        self.mode = mode
        self.delay_s = delay_s
        self.truncate_udp = truncate_udp
        self._answer_fn: AnswerFn | None = None
        # Records: owner name (dnspython Names hash and compare case-insensitively)
        #   -> (rdclass, rdtype) -> RRset.  RRsets are replaced, never mutated, so a reply
        #   being rendered on the loop thread never sees a half-updated set.
        self._rrsets: dict[dns.name.Name, dict[tuple[int, int], dns.rrset.RRset]] = {}
        # Zone apex -> SOA RRset used in the authority section of NXDOMAIN/NODATA replies.
        self._soas: dict[dns.name.Name, dns.rrset.RRset] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._calls = 0
        self._udp_calls = 0
        self._tcp_calls = 0
        self._tcp_accepts = 0
        self._queries: list[QueryRecord] = []
        self._errors: list[BaseException] = []
        # Loop state, touched only by the loop thread while it runs.
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sel: selectors.DefaultSelector | None = None
        self._udp: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._conns: set[_TcpConn] = set()
        # Timer heap of (due monotonic seconds, sequence, callback) for delayed replies.
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._timers_lock = threading.Lock()

    # ----------------------------------------------------------------- records

    def answer(self, *lines: str) -> Self:
        """Add records given as zone-file presentation lines (several args or multi-line text).

        Lines without a TTL get 300 s. Records with the same owner, class and type are merged
        into one RRset. Returns self so calls chain.
        """
        rrsets = parse_records(*lines)
        with self._lock:
            for rrset in rrsets:
                self._add(rrset)
        return self

    def zone_soa(self, *lines: str) -> Self:
        """Declare zone apexes by their SOA; the SOA also becomes an answerable record.

        NXDOMAIN and NODATA replies carry the SOA of the longest zone containing the name in
        their authority section (RFC 2308 §3), with the TTL exactly as given here.
        """
        rrsets = parse_records(*lines)
        for rrset in rrsets:
            if rrset.rdtype != dns.rdatatype.SOA:
                raise ValueError(f"zone_soa() takes SOA records only, got {rrset.to_text()!r}")
        with self._lock:
            for rrset in rrsets:
                self._soas[rrset.name] = rrset
                self._add(rrset)
        return self

    def clear(self) -> Self:
        """Forget every record and SOA (counters are kept; see reset_counts())."""
        with self._lock:
            self._rrsets.clear()
            self._soas.clear()
        return self

    def answer_fn(self, fn: AnswerFn | None) -> Self:
        """Let `fn(query)` compute the reply instead of the records (None restores records).

        `fn` returns a dns.message.Message (rendered, truncated for UDP like any reply),
        raw bytes (sent as they are), or None (no reply). It runs on the fake's thread, in
        the modes that send a real answer ("answer", "wrong_id", "wrong_question"); the
        other modes win over it. An exception in `fn` means no reply and is raised again by
        stop(). `build_answer(query)` gives the reply the records would produce.
        """
        self._answer_fn = fn
        return self

    def _add(self, rrset: dns.rrset.RRset) -> None:
        node = self._rrsets.setdefault(rrset.name, {})
        key = (int(rrset.rdclass), int(rrset.rdtype))
        old = node.get(key)
        if old is not None:
            # RFC 2181 §5.2: one TTL per RRset; the merged set keeps the smaller.
            rrset = dns.rrset.from_rdata_list(rrset.name, min(old.ttl, rrset.ttl), [*old, *rrset])
        node[key] = rrset

    # ----------------------------------------------------------------- settings

    @property
    def mode(self) -> str:
        """How the fake replies; one of MODES."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; expected one of {sorted(MODES)}")
        self._mode = value

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeUpstream has no port until start()")
        return self._port

    @property
    def address(self) -> str:
        """The "host:port" string ("[v6]:port" for IPv6) that fastdns configs take."""
        return format_address(self._host, self.port)

    # ----------------------------------------------------------------- counters

    @property
    def calls(self) -> int:
        """Queries received (UDP + TCP), whatever the mode did with them."""
        with self._lock:
            return self._calls

    @property
    def udp_calls(self) -> int:
        with self._lock:
            return self._udp_calls

    @property
    def tcp_calls(self) -> int:
        with self._lock:
            return self._tcp_calls

    @property
    def tcp_connections(self) -> int:
        """TCP connections accepted."""
        with self._lock:
            return self._tcp_accepts

    @property
    def queries(self) -> list[QueryRecord]:
        """A copy of the received queries, oldest first."""
        with self._lock:
            return list(self._queries)

    def reset_counts(self) -> None:
        """Zero every counter and forget the recorded queries."""
        with self._lock:
            self._calls = self._udp_calls = self._tcp_calls = self._tcp_accepts = 0
            self._queries.clear()

    def wait_for_calls(self, n: int, timeout: float = 5.0) -> int:
        """Block until at least `n` queries arrived; return the count or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._calls < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self!r}: {self._calls} queries, wanted {n}")
                self._cond.wait(left)
            return self._calls

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind UDP+TCP on the port (the same one again after a stop()) and start serving."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already running")
        udp, listener = _bind_pair(self._host, self._port)
        self._port = int(udp.getsockname()[1])
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(udp, selectors.EVENT_READ, "udp")
        sel.register(listener, selectors.EVENT_READ, "listen")
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        self._udp, self._listener, self._sel = udp, listener, sel
        self._wake_r, self._wake_w = wake_r, wake_w
        self._stopping = False
        self._timers = []
        self._thread = threading.Thread(
            target=self._run, name=f"FakeUpstream-{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every socket, join the thread; re-raise answer_fn errors."""
        self._shutdown()
        self.raise_errors()

    def raise_errors(self) -> None:
        """Raise the first error the loop thread swallowed (answer_fn or internal), if any."""
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(f"{self!r}: {len(errors)} error(s) while serving") from errors[0]

    def _shutdown(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        assert self._wake_w is not None
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        thread.join(10.0)
        if thread.is_alive():
            raise RuntimeError(f"{self!r}: serving thread did not stop")
        self._wake_w.close()
        self._wake_w = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown()
        if exc_type is None:
            self.raise_errors()

    def __repr__(self) -> str:
        where = self.address if self._port else f"{self._host}:?"
        state = "running" if self._thread is not None else "stopped"
        return f"<FakeUpstream {where} mode={self._mode} {state}>"

    # ----------------------------------------------------------------- loop thread

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                for key, mask in sel.select(self._next_timeout()):
                    if self._stopping:
                        break
                    try:
                        self._dispatch(key.data, mask)
                    except Exception as exc:  # noqa: BLE001 - kept for stop() to raise
                        self._record_error(exc)
                self._run_due_timers()
        except Exception as exc:  # noqa: BLE001 - kept for stop() to raise
            self._record_error(exc)
        finally:
            self._close_all()

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close_conn(conn)
        sel = self._sel
        for sock in (self._udp, self._listener, self._wake_r):
            if sock is None:
                continue
            if sel is not None:
                try:
                    sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            sock.close()
        if sel is not None:
            sel.close()
        self._udp = self._listener = self._wake_r = None
        self._sel = None
        with self._timers_lock:
            self._timers = []

    def _next_timeout(self) -> float | None:
        with self._timers_lock:
            if not self._timers:
                return None
            return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        while True:
            with self._timers_lock:
                if not self._timers or self._timers[0][0] > time.monotonic():
                    return
                _, _, callback = heapq.heappop(self._timers)
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - kept for stop() to raise
                self._record_error(exc)

    def _later(self, delay_s: float, callback: Callable[[], None]) -> None:
        with self._timers_lock:
            heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), callback))

    def _dispatch(self, data: object, mask: int) -> None:
        if data == "wake":
            assert self._wake_r is not None
            try:
                self._wake_r.recv(64)
            except OSError:
                pass
        elif data == "udp":
            self._on_udp_readable()
        elif data == "listen":
            self._on_accept()
        elif isinstance(data, _TcpConn):
            if mask & selectors.EVENT_READ and not data.closed:
                self._on_tcp_readable(data)
            if mask & selectors.EVENT_WRITE and not data.closed:
                self._flush(data)

    def _on_udp_readable(self) -> None:
        udp = self._udp
        assert udp is not None
        while True:
            try:
                wire, peer = udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. an ICMP error queued by an earlier send; nothing to answer.
                continue
            self._on_query(wire, "udp", peer, None)

    def _on_accept(self) -> None:
        listener = self._listener
        assert listener is not None and self._sel is not None
        while True:
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            conn = _TcpConn(sock, int(peer[1]))
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)
            conn.registered = True
            with self._lock:
                self._tcp_accepts += 1

    def _on_tcp_readable(self, conn: _TcpConn) -> None:
        try:
            data = conn.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_conn(conn)
            return
        if not data:
            conn.eof = True
            self._update_interest(conn)
            self._maybe_close(conn)
            return
        conn.inbuf += data
        # RFC 7766 §6.2.1: several queries may be pipelined on one connection.
        while len(conn.inbuf) >= 2:
            size = int.from_bytes(conn.inbuf[:2], "big")
            if len(conn.inbuf) < 2 + size:
                break
            wire = bytes(conn.inbuf[2 : 2 + size])
            del conn.inbuf[: 2 + size]
            self._on_query(wire, "tcp", None, conn)

    def _update_interest(self, conn: _TcpConn) -> None:
        sel = self._sel
        if conn.closed or sel is None:
            return
        events = 0 if conn.eof else selectors.EVENT_READ
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        if events and conn.registered:
            sel.modify(conn.sock, events, conn)
        elif events:
            sel.register(conn.sock, events, conn)
            conn.registered = True
        elif conn.registered:
            # After EOF with delayed replies still due: nothing to watch until one is sent.
            sel.unregister(conn.sock)
            conn.registered = False

    def _maybe_close(self, conn: _TcpConn) -> None:
        if conn.eof and conn.pending == 0 and not conn.outbuf:
            self._close_conn(conn)

    def _close_conn(self, conn: _TcpConn) -> None:
        self._conns.discard(conn)
        if conn.closed:
            return
        conn.closed = True
        if conn.registered and self._sel is not None:
            conn.registered = False
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    def _flush(self, conn: _TcpConn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close_conn(conn)
                return
            del conn.outbuf[:sent]
        self._update_interest(conn)
        self._maybe_close(conn)

    # ----------------------------------------------------------------- queries

    def _on_query(
        self,
        wire: bytes,
        transport: str,
        peer: tuple[str, int] | None,
        conn: _TcpConn | None,
    ) -> None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - any parse failure means junk
            return  # unparseable: ignored
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return
        self._record(query, wire, transport, peer, conn)
        reply = self._reply_wire(query, transport)
        if reply is None:
            return
        delay_s = float(self.delay_s)
        if conn is not None:
            conn.pending += 1
            send: Callable[[], None] = functools.partial(self._send_tcp, conn, reply)
        else:
            assert peer is not None
            send = functools.partial(self._send_udp, peer, reply)
        if delay_s > 0:
            self._later(delay_s, send)
        else:
            send()

    def _record(
        self,
        query: dns.message.Message,
        wire: bytes,
        transport: str,
        peer: tuple[str, int] | None,
        conn: _TcpConn | None,
    ) -> None:
        question = query.question[0]
        has_edns = query.edns >= 0
        record = QueryRecord(
            transport=transport,
            qname=question.name.to_text(),
            qtype=dns.rdatatype.to_text(question.rdtype),
            id=query.id,
            src_port=int(peer[1]) if peer is not None else conn.peer_port if conn else 0,
            has_edns=has_edns,
            do_bit=bool(has_edns and query.ednsflags & dns.flags.DO),
            cd_bit=bool(query.flags & dns.flags.CD),
            rd_bit=bool(query.flags & dns.flags.RD),
            edns_payload=int(query.payload) if has_edns else 0,
            qclass=dns.rdataclass.to_text(question.rdclass),
            wire=wire,
        )
        with self._cond:
            self._calls += 1
            if transport == "udp":
                self._udp_calls += 1
            else:
                self._tcp_calls += 1
            self._queries.append(record)
            self._cond.notify_all()

    def _send_udp(self, peer: tuple[str, int], reply: bytes) -> None:
        if self._udp is None:
            return
        try:
            self._udp.sendto(reply, peer)
        except OSError:
            pass  # UDP: a reply that cannot be sent is a lost reply

    def _send_tcp(self, conn: _TcpConn, reply: bytes) -> None:
        conn.pending -= 1
        if conn.closed:
            return
        conn.outbuf += len(reply).to_bytes(2, "big") + reply
        self._flush(conn)

    def _reply_wire(self, query: dns.message.Message, transport: str) -> bytes | None:
        mode = self._mode
        if mode == "silent":
            return None
        if mode == "garbage":
            # Echo the ID so the junk gets past an ID check and must fail the parse or the
            # question match; the rest is random.
            return query.id.to_bytes(2, "big") + os.urandom(30)
        if mode in _RCODE_MODES:
            reply: dns.message.Message | bytes | None = self._base_response(query)
            assert isinstance(reply, dns.message.Message)
            reply.set_rcode(_RCODE_MODES[mode])
        else:
            fn = self._answer_fn
            if fn is None:
                reply = self.build_answer(query)
            else:
                try:
                    reply = fn(query)
                except Exception as exc:  # noqa: BLE001 - the test's bug, raised by stop()
                    self._record_error(exc)
                    return None
            if reply is None:
                return None
        if isinstance(reply, dns.message.Message):
            if mode == "wrong_question":
                question = reply.question[0] if reply.question else query.question[0]
                other = dns.name.Name((b"wrong-question",) + question.name.labels)
                reply.question = [dns.rrset.RRset(other, question.rdclass, question.rdtype)]
            wire = reply.to_wire()
            if transport == "udp":
                wire = self._fit_udp(query, reply, wire)
        else:
            wire = bytes(reply)
        if mode == "wrong_id" and len(wire) >= 2:
            wrong = int.from_bytes(wire[:2], "big") + 1 + int.from_bytes(os.urandom(1), "big")
            wire = (wrong & 0xFFFF).to_bytes(2, "big") + wire[2:]
        return wire

    def _fit_udp(
        self, query: dns.message.Message, reply: dns.message.Message, wire: bytes
    ) -> bytes:
        # RFC 1035 §4.2.1 / RFC 6891 §6.2.3: a UDP reply fits the requester's size, else TC=1.
        limit = max(CLASSIC_UDP_LIMIT, int(query.payload)) if query.edns >= 0 else CLASSIC_UDP_LIMIT
        if not self.truncate_udp and len(wire) <= limit:
            return wire
        cut = dns.message.Message(id=reply.id)
        cut.flags = reply.flags | dns.flags.TC
        cut.question = list(reply.question)
        if reply.edns >= 0:
            cut.use_edns(reply.edns, reply.ednsflags, reply.payload)
        cut.set_rcode(reply.rcode())
        return cut.to_wire()

    def _base_response(self, query: dns.message.Message) -> dns.message.Message:
        # Echo ID, question (letter case as received: DNS 0x20) and RD; RA=1, AA=1.
        reply = dns.message.make_response(query, recursion_available=True, our_payload=EDNS_PAYLOAD)
        reply.flags |= dns.flags.AA | (query.flags & dns.flags.CD)
        if query.edns >= 0 and query.ednsflags & dns.flags.DO:
            reply.want_dnssec(True)  # RFC 3225 §3: DO is copied into the reply
        return reply

    def build_answer(self, query: dns.message.Message) -> dns.message.Message:
        """The reply the records give to `query` (what mode "answer" sends)."""
        reply = self._base_response(query)
        question = query.question[0]
        rdclass, rdtype = int(question.rdclass), int(question.rdtype)
        name = question.name
        seen: set[dns.name.Name] = set()
        with self._lock:
            for _ in range(MAX_CNAME_CHAIN + 1):
                node = self._rrsets.get(name)
                if node is None:
                    if not self._has_descendant(name):
                        # RFC 6604 §3: after a CNAME chain the rcode describes the last name.
                        reply.set_rcode(dns.rcode.NXDOMAIN)
                    break
                rrset = node.get((rdclass, rdtype))
                if rrset is not None:
                    reply.answer.append(rrset)
                    return reply
                if rdtype == dns.rdatatype.ANY:
                    reply.answer.extend(node.values())
                    return reply
                cname = node.get((rdclass, dns.rdatatype.CNAME))
                if cname is None or name in seen or len(seen) >= MAX_CNAME_CHAIN:
                    break  # NODATA (or a chain too long / looping: stop here)
                reply.answer.append(cname)
                seen.add(name)
                name = cname[0].target
            soa = self._soa_for(name)
        # RFC 2308 §3: negative answers carry the zone's SOA so they can be cached.
        if soa is not None:
            reply.authority.append(soa)
        return reply

    def _has_descendant(self, name: dns.name.Name) -> bool:
        # An empty non-terminal (RFC 8020) exists: answer NODATA, not NXDOMAIN.
        return any(owner.is_subdomain(name) for owner in self._rrsets)

    def _soa_for(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        best: dns.rrset.RRset | None = None
        for apex, soa in self._soas.items():
            if name.is_subdomain(apex) and (best is None or len(apex) > len(best.name)):
                best = soa
        return best
