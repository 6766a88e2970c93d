"""Query log: a bounded ring of per-query tuples, and a writer that encodes them as JSON lines.

Owns the SPEC §4 line format, the batch writer task, the file sink and its size rotation.
Must not block or raise on the hit path: `QueryLog.append` is O(1), never waits, and drops
(and counts) records when the ring is full. It does not decide *whether* queries are logged
(`logging.query_log: false` means the caller never builds a QueryLog).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import sys
import time
from collections import deque
from socket import AF_INET6, inet_ntoa, inet_ntop
from typing import IO, Any, Protocol

import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import orjson

from fastdns.wire import (
    QCLASS_IN,
    QTYPE_A,
    QTYPE_AAAA,
    QTYPE_CNAME,
    QTYPE_MX,
    QTYPE_NS,
    QTYPE_OPT,
    QTYPE_PTR,
    QTYPE_SOA,
    QTYPE_SRV,
    QTYPE_TXT,
)

__all__ = [
    "QueryLog",
    "QueryRecord",
    "encode",
    "encode_batch",
    "summarize",
]

_log = logging.getLogger(__name__)

# One query, as the hit and miss paths hand it over (exact order):
#   (wall_time   float   time.time() when the query arrived
#    client_ip   str
#    query_wire  bytes   the query exactly as the client sent it
#    reply_wire  bytes   the reply exactly as sent to the client
#    cache_hit   bool
#    upstream    str | None   "host:port" that answered, None on a hit
#    elapsed_us  int)
QueryRecord = tuple[float, str, bytes, bytes, bool, str | None, int]

DEFAULT_CAPACITY = 65536
DEFAULT_BATCH_SIZE = 1024
DEFAULT_FLUSH_INTERVAL_S = 0.05
_BYTES_PER_MB = 1024 * 1024


_HEADER_COUNTS = struct.Struct("!HHHH")  # QDCOUNT ANCOUNT NSCOUNT ARCOUNT (RFC 1035 §4.1.1)
_RR_FIXED = struct.Struct("!HHIH")  # TYPE CLASS TTL RDLENGTH (RFC 1035 §4.1.3)
_MX_PREF = struct.Struct("!H")  # preference (RFC 1035 §3.3.9)
_SRV_FIXED = struct.Struct("!HHH")  # priority weight port (RFC 2782)
_SOA_TAIL = struct.Struct("!IIIII")  # serial refresh retry expire minimum (RFC 1035 §3.3.13)

# Everything a truncated or lying packet can make the parser trip over.
_MALFORMED = (IndexError, ValueError, struct.error)


class _Malformed(ValueError):
    """Bytes that are not a well-formed DNS name or RDATA."""


# Label bytes printed as-is in presentation format; the rest is escaped the way dnspython
# does (RFC 1035 §5.1: backslash before specials, \DDD for non-printables).
_NAME_SPECIALS = b'"().;\\@$'
_NAME_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in _NAME_SPECIALS)
_NAME_PLAIN_OR_DOT = _NAME_PLAIN + b"."
# Character-string bytes printed as-is inside quotes (RFC 1035 §5.1).
_TXT_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')

_RCODE_TEXT: dict[int, str] = {int(r): r.name for r in dns.rcode.Rcode}
_QTYPE_TEXT: dict[int, str] = {}


def _qtype_text(qtype: int) -> str:
    text = _QTYPE_TEXT.get(qtype)
    if text is None:
        # RFC 3597 §5: a type without a mnemonic is written TYPEnnn.
        text = _QTYPE_TEXT[qtype] = dns.rdatatype.RdataType.to_text(qtype)
    return text


def _rcode_text(rcode: int) -> str:
    text = _RCODE_TEXT.get(rcode)
    return text if text is not None else dns.rcode.Rcode.to_text(rcode)


def _escape_label(label: bytes) -> str:
    out = []
    for c in label:
        if c in _NAME_SPECIALS:
            out.append("\\" + chr(c))
        elif 0x20 < c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


def _labels_text(labels: list[bytes]) -> str:
    """Presentation text of a name without its trailing dot ("" for the root)."""
    raw = b".".join(labels)
    # Fast path: only plain bytes, and no "." inside a label (the dots counted are separators).
    if not raw.translate(None, _NAME_PLAIN_OR_DOT) and raw.count(b".") == len(labels) - 1:
        return raw.decode("ascii")
    return ".".join([_escape_label(label) for label in labels])


def _read_name(wire: bytes, pos: int, end: int) -> tuple[list[bytes], int]:
    """Read a possibly compressed name at `pos`; return its labels and the offset after it.

    RFC 1035 §4.1.4 compression. As in dnspython, every pointer must point strictly before the
    start of the segment holding it, and the target segment must end before that start: the
    targets strictly decrease, so no pointer loop can exist and the walk always terminates.
    `end` bounds the first segment (the RDLENGTH end for names inside RDATA).
    """
    labels: list[bytes] = []
    segment_start = pos
    after = -1
    wire_len = 1
    while True:
        if pos >= end:
            raise _Malformed("name runs past its bounds")
        n = wire[pos]
        if n == 0:
            pos += 1
            break
        if n < 0x40:
            stop = pos + 1 + n
            if stop > end:
                raise _Malformed("label runs past its bounds")
            wire_len += n + 1
            if wire_len > 255:  # RFC 1035 §3.1
                raise _Malformed("name longer than 255 octets")
            labels.append(wire[pos + 1 : stop])
            pos = stop
        elif n >= 0xC0:
            if pos + 1 >= end:
                raise _Malformed("truncated compression pointer")
            target = ((n & 0x3F) << 8) | wire[pos + 1]
            if target >= segment_start:
                raise _Malformed("compression pointer does not point backwards")
            if after < 0:
                after = pos + 2
            end = segment_start
            segment_start = pos = target
        else:
            # RFC 6891 §5: extended label types are deprecated; nothing sends them.
            raise _Malformed("unknown label type")
    return labels, (after if after >= 0 else pos)


def _skip_name(wire: bytes, pos: int) -> int:
    """Offset just after the name at `pos`, without following pointers."""
    while True:
        n = wire[pos]
        if n == 0:
            return pos + 1
        if n >= 0xC0:
            if pos + 1 >= len(wire):
                raise _Malformed("truncated compression pointer")
            return pos + 2
        if n >= 0x40:
            raise _Malformed("unknown label type")
        pos += n + 1


def _rdata_name(wire: bytes, pos: int, end: int) -> tuple[str, int]:
    labels, pos = _read_name(wire, pos, end)
    if not labels:
        return ".", pos
    return _labels_text(labels) + ".", pos


def _exact(pos: int, end: int) -> None:
    # RFC 1035 §4.1.3: RDATA is exactly RDLENGTH octets; leftovers mean a malformed RR.
    if pos != end:
        raise _Malformed("RDATA does not fill RDLENGTH exactly")


def _generic_text(rdata: bytes) -> str:
    # RFC 3597 §5: \# <length> <hex>, the form every type can be written in.
    if not rdata:
        return "\\# 0"
    return f"\\# {len(rdata)} {rdata.hex()}"


def _escape_string(s: bytes) -> str:
    out = []
    for c in s:
        if c == 0x22 or c == 0x5C:
            out.append("\\" + chr(c))
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


def _txt_text(wire: bytes, pos: int, end: int) -> str:
    parts = []
    while pos < end:
        stop = pos + 1 + wire[pos]
        if stop > end:
            raise _Malformed("character-string runs past RDLENGTH")
        s = wire[pos + 1 : stop]
        quoted = _escape_string(s) if s.translate(None, _TXT_PLAIN) else s.decode("ascii")
        parts.append(f'"{quoted}"')
        pos = stop
    if not parts:
        raise _Malformed("TXT with no character-string")  # RFC 1035 §3.3.14: one or more
    return " ".join(parts)


def _rdata_text(wire: bytes, rtype: int, rclass: int, pos: int, end: int) -> str:
    """Presentation text of one RDATA in `wire[pos:end]`; never raises."""
    try:
        if rtype == QTYPE_A and rclass == QCLASS_IN:
            if end - pos == 4:
                return inet_ntoa(wire[pos:end])
        elif rtype == QTYPE_AAAA and rclass == QCLASS_IN:
            if end - pos == 16:
                return inet_ntop(AF_INET6, wire[pos:end])
        elif rtype == QTYPE_CNAME or rtype == QTYPE_NS or rtype == QTYPE_PTR:
            text, after = _rdata_name(wire, pos, end)
            _exact(after, end)
            return text
        elif rtype == QTYPE_MX:
            (pref,) = _MX_PREF.unpack_from(wire, pos)
            text, after = _rdata_name(wire, pos + 2, end)
            _exact(after, end)
            return f"{pref} {text}"
        elif rtype == QTYPE_TXT:
            return _txt_text(wire, pos, end)
        elif rtype == QTYPE_SOA:
            mname, after = _rdata_name(wire, pos, end)
            rname, after = _rdata_name(wire, after, end)
            _exact(after + _SOA_TAIL.size, end)
            serial, refresh, retry, expire, minimum = _SOA_TAIL.unpack_from(wire, after)
            return f"{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"
        elif rtype == QTYPE_SRV and rclass == QCLASS_IN:
            if end - pos >= _SRV_FIXED.size:
                priority, weight, port = _SRV_FIXED.unpack_from(wire, pos)
                text, after = _rdata_name(wire, pos + _SRV_FIXED.size, end)
                _exact(after, end)
                return f"{priority} {weight} {port} {text}"
        else:
            return _dnspython_text(wire, rtype, rclass, pos, end)
    except _MALFORMED:
        pass
    return _generic_text(wire[pos:end])


def _dnspython_text(wire: bytes, rtype: int, rclass: int, pos: int, end: int) -> str:
    # Types without a formatter here; dnspython knows most, and writes the rest as RFC 3597.
    try:
        rdclass = dns.rdataclass.RdataClass.make(rclass)
        rdtype = dns.rdatatype.RdataType.make(rtype)
        return dns.rdata.from_wire(rdclass, rdtype, wire, pos, end - pos).to_text()
    except Exception:  # noqa: BLE001 -- third-party parser on hostile bytes; encode never raises
        return _generic_text(wire[pos:end])


def _parse_question(wire: bytes) -> tuple[str | None, str | None]:
    """(domain, qtype mnemonic) of the first question, as far as the bytes allow."""
    try:
        if len(wire) < 12 or not (wire[4] or wire[5]):
            return None, None
        labels, pos = _read_name(wire, 12, len(wire))
    except _MALFORMED:
        return None, None
    domain = _labels_text(labels) if labels else "."
    if pos + 2 > len(wire):
        return domain, None
    return domain, _qtype_text((wire[pos] << 8) | wire[pos + 1])


def _parse_reply(wire: bytes) -> tuple[str | None, list[str]]:
    """(rcode mnemonic, ANSWER rdata texts) of a reply, as far as the bytes allow."""
    size = len(wire)
    if size < 4:
        return None, []
    rcode = wire[3] & 0x0F
    data: list[str] = []
    try:
        qdcount, ancount, nscount, arcount = _HEADER_COUNTS.unpack_from(wire, 4)
        pos = 12
        for _ in range(qdcount):
            pos = _skip_name(wire, pos) + 4
        for _ in range(ancount):
            pos = _skip_name(wire, pos)
            rtype, rclass, _ttl, rdlength = _RR_FIXED.unpack_from(wire, pos)
            pos += 10
            end = pos + rdlength
            if end > size:
                break
            data.append(_rdata_text(wire, rtype, rclass, pos, end))
            pos = end
        else:
            if arcount:
                rcode = _extended_rcode(wire, pos, nscount, arcount, rcode)
    except _MALFORMED:
        pass
    return _rcode_text(rcode), data


def _extended_rcode(wire: bytes, pos: int, nscount: int, arcount: int, rcode: int) -> int:
    # RFC 6891 §6.1.3: the OPT TTL's top octet holds the upper 8 bits of a 12-bit RCODE
    # (BADVERS = 16 lives only there).
    for _ in range(nscount):
        pos = _skip_name(wire, pos)
        pos += 10 + _RR_FIXED.unpack_from(wire, pos)[3]
    for _ in range(arcount):
        pos = _skip_name(wire, pos)
        rtype, _rclass, ttl, rdlength = _RR_FIXED.unpack_from(wire, pos)
        if rtype == QTYPE_OPT:
            return ((ttl >> 24) << 4) | rcode
        pos += 10 + rdlength
    return rcode


class _Clock:
    """UTC timestamps with millisecond precision; the per-second prefix is cached."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def text(self, wall_time: float) -> str | None:
        try:
            second, ms = divmod(round(wall_time * 1000), 1000)
            if second != self._second:
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._second = second
        except (TypeError, ValueError, OverflowError, OSError):
            return None  # not a usable time.time() value
        return f"{self._prefix}.{ms:03d}Z"


_CLOCK = _Clock()
# RFC 9562 §5.4: a version-4 UUID is 122 random bits, version nibble 4, variant bits 10.
_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _request_ids(count: int, random_bytes: bytes | None = None) -> list[str]:
    """`count` uuid4 texts from 16 random bytes each (os.urandom unless given; tests inject
    bytes so this encoder and fastdns._logenc can be compared byte for byte)."""
    if random_bytes is None:
        random_bytes = os.urandom(16 * count)
    hexes = random_bytes[: 16 * count].hex()
    ids = []
    for i in range(0, 32 * count, 32):
        h = hexes[i : i + 32]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


def _as_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    try:
        return bytes(value)
    except (TypeError, ValueError):
        return b""


def summarize(record: QueryRecord, request_id: str | None = None) -> dict[str, Any]:
    """The SPEC §4 fields of one record, keys in their fixed order. Never raises on bad bytes.

    Fields the bytes do not yield are null: `domain`/`query_type` when the question cannot be
    read from the query (or, failing that, the reply), `response_code` when the reply is
    shorter than the 4 octets that hold it.
    """
    wall_time, client_ip, query_wire, reply_wire, cache_hit, upstream, elapsed_us = record
    query_wire = _as_bytes(query_wire)
    reply_wire = _as_bytes(reply_wire)
    domain, query_type = _parse_question(query_wire)
    if domain is None:
        domain, query_type = _parse_question(reply_wire)
    response_code, response_data = _parse_reply(reply_wire)
    return {
        "timestamp": _CLOCK.text(wall_time),
        "request_id": request_id if request_id is not None else _request_ids(1)[0],
        "client_ip": client_ip,
        "query_type": query_type,
        "domain": domain,
        "response_code": response_code,
        "response_time_ms": round(elapsed_us / 1000, 3),
        "cache_hit": bool(cache_hit),
        "upstream_server": upstream,
        "response_data": response_data,
    }


_DUMPS = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def _dumps(fields: dict[str, Any]) -> bytes:
    try:
        return _DUMPS(fields, option=_NEWLINE)
    except TypeError:
        # A caller handed over a non-JSON value (e.g. an IPv4Address as client_ip).
        return _DUMPS(fields, option=_NEWLINE, default=str)


def encode(record: QueryRecord, request_id: str | None = None) -> bytes:
    """One JSON line (newline-terminated) for `record`, in the SPEC §4 shape."""
    return _dumps(summarize(record, request_id))


def encode_batch(records: list[QueryRecord]) -> tuple[list[bytes], int]:
    """Encode records in order; return (lines, number of records that could not be encoded).

    Only a record that is not a 7-tuple of the documented types is skipped: bad wire bytes
    still produce a line.
    """
    lines = []
    failed = 0
    for record, request_id in zip(records, _request_ids(len(records))):
        try:
            lines.append(_dumps(summarize(record, request_id)))
        except (TypeError, ValueError, OverflowError):
            failed += 1
    return lines, failed


class _Sink(Protocol):
    def write_lines(self, lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


class _StreamSink:
    """Lines to a text stream's binary buffer (stdout); the stream is not ours to close."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write_lines(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        buffer = getattr(self._stream, "buffer", None)
        if buffer is not None:
            self._stream.flush()
            buffer.write(data)
            buffer.flush()
        else:
            self._stream.write(data.decode("utf-8"))
            self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class _RotatingFileSink:
    """Append-only file, rotated to path.1 .. path.N (path.1 newest) before it would grow past
    `max_size_bytes`. With backup_count 0 the file is truncated instead. A size of 0 or less
    disables rotation. Opened lazily, O_APPEND, unbuffered: one batch is one write(2).

    Several worker processes may share the file: each batch is written under an exclusive
    flock on the file's directory (which rotation does not rename), after checking that `path` is still the file we hold open (another
    worker, or an external logrotate, may have rotated it) and reading its real size.
    """

    def __init__(self, path: str, max_size_bytes: int, backup_count: int) -> None:
        self.path = path
        self.max_size_bytes = max_size_bytes
        self.backup_count = backup_count
        self._fd = -1
        self._size = 0
        self._lock_fd = -1
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)

    def _sync_with_path(self) -> None:
        """Reopen if path is no longer our file; take its current size (others append too)."""
        if self._fd >= 0:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                self._close_file()
        if self._fd < 0:
            self._open()
        else:
            self._size = os.fstat(self._fd).st_size

    def _open(self, truncate: bool = False) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if truncate:
            flags |= os.O_TRUNC
        fd = self._fd = os.open(self.path, flags, 0o644)
        self._size = os.fstat(fd).st_size
        return fd

    def write_lines(self, lines: list[bytes]) -> None:
        if self._lock_fd < 0:
            directory = os.path.dirname(os.path.abspath(self.path))
            self._lock_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._sync_with_path()
            self._write_lines_locked(lines)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _write_lines_locked(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        limit = self.max_size_bytes
        if limit <= 0 or self._size + len(data) <= limit:
            self._write(data)
            return
        # Callers may hand over several lines as one chunk (QueryLog.write_encoded).
        lines = [chunk + b"\n" for chunk in data.split(b"\n")]
        if data.endswith(b"\n"):
            lines.pop()
        else:
            lines[-1] = lines[-1][:-1]
        # Split at line boundaries so every file stays under the limit (a single line longer
        # than the limit gets a file of its own).
        chunk: list[bytes] = []
        chunk_len = 0
        for line in lines:
            if self._size + chunk_len + len(line) > limit and self._size + chunk_len > 0:
                if chunk:
                    self._write(b"".join(chunk))
                    chunk, chunk_len = [], 0
                self._rotate()
            chunk.append(line)
            chunk_len += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        fd = self._fd
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self._size += len(data)

    def _rotate(self) -> None:
        self._close_file()
        if self.backup_count <= 0:
            self._open(truncate=True)
            return
        path = self.path
        for i in range(self.backup_count - 1, 0, -1):
            source = f"{path}.{i}"
            if os.path.exists(source):
                os.replace(source, f"{path}.{i + 1}")
        try:
            os.replace(path, f"{path}.1")
        except FileNotFoundError:
            pass  # removed under us (an external logrotate): just start a new file
        self._open()

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Close the log file and the lock file (at shutdown)."""
        self._close_file()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class QueryLog:
    """Bounded ring of query records plus the writer that turns them into JSON lines.

    `append` is called from the event loop thread on every query; `run` is the writer task;
    `close` (or `flush_now` at shutdown) writes whatever is still pending.
    """

    encode = staticmethod(encode)

    def __init__(
        self,
        path: str | None,
        max_size_bytes: int = 50 * _BYTES_PER_MB,
        backup_count: int = 5,
        *,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        stream: IO[str] | None = None,
    ) -> None:
        """Log to `path` (None or "-": to `stream`, default stdout).

        `capacity` bounds the records waiting for the writer; `batch_size` records pending
        wake the writer early, otherwise it writes every `flush_interval_s`.
        """
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be at least 1")
        self._sink: _Sink
        if path is None or path == "-":
            self._sink = _StreamSink(stream if stream is not None else sys.stdout)
        else:
            self._sink = _RotatingFileSink(path, max_size_bytes, backup_count)
        self.path = path
        self._ring: deque[QueryRecord] = deque()
        self._capacity = capacity
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

    @classmethod
    def from_settings(cls, settings: Any, *, capacity: int = DEFAULT_CAPACITY) -> QueryLog:
        """Build from a `LoggingSettings` (file, max_size_mb, backup_count); 1 MB = 2**20 bytes."""
        return cls(
            settings.file,
            int(settings.max_size_mb * _BYTES_PER_MB),
            settings.backup_count,
            capacity=capacity,
        )

    @property
    def pending(self) -> int:
        """Records appended and not yet written."""
        return len(self._ring)

    def append(self, record: QueryRecord) -> None:
        """Queue one record; O(1), never blocks. When the ring is full the record is dropped."""
        ring = self._ring
        if len(ring) >= self._capacity:
            self.dropped += 1
            return
        ring.append(record)
        if len(ring) == self._batch_size and self._waiter is not None:
            _wake(self._waiter)

    async def run(self) -> None:
        """Writer task: write pending records every flush interval, or at once when a batch
        is full. Returns after `close()`; if cancelled, writes what is pending first.
        """
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                if len(self._ring) < self._batch_size:
                    waiter = self._waiter = loop.create_future()
                    timer = loop.call_later(self._flush_interval_s, _wake, waiter)
                    try:
                        await waiter
                    finally:
                        timer.cancel()
                        self._waiter = None
                else:
                    await asyncio.sleep(0)  # between full batches, let DNS traffic run
                if not self._closed:
                    self._write_batch()
        finally:
            if not self._closed:
                self.flush_now()

    def _write_batch(self) -> None:
        ring = self._ring
        count = min(len(ring), self._batch_size)
        if not count:
            return
        popleft = ring.popleft
        records = [popleft() for _ in range(count)]
        lines, failed = encode_batch(records)
        self.dropped += failed
        if not lines:
            return
        try:
            self._sink.write_lines(lines)
        except OSError as exc:
            self.write_errors += 1
            self.dropped += len(lines)
            _log.warning("query log: write to %s failed: %s", self.path or "stdout", exc)
            return
        self.written += len(lines)

    def write_encoded(self, data: bytes, count: int) -> None:
        """Write `count` ready-made JSON lines (`data`, newline-terminated, e.g. from
        HitPath.drain_log_json) through the same sink, rotation and counters as the writer.

        Synchronous, one write per call. After `close()` the lines are counted as dropped.
        """
        if not count:
            return
        if self._closed:
            self.dropped += count
            return
        try:
            self._sink.write_lines([data])
        except OSError as exc:
            self.write_errors += 1
            self.dropped += count
            _log.warning("query log: write to %s failed: %s", self.path or "stdout", exc)
            return
        self.written += count

    def flush_now(self) -> None:
        """Write every pending record now (synchronously); used at shutdown."""
        while self._ring:
            self._write_batch()

    async def close(self) -> None:
        """Write everything pending, close the sink, and let `run()` return.

        Records appended afterwards are counted as dropped.
        """
        if self._closed:
            return
        self.flush_now()
        self._closed = True
        self._capacity = 0
        if self._waiter is not None:
            _wake(self._waiter)
        self._sink.close()
