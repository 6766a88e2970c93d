"""Direct answers: an authoritative response that already is the client's reply, seen on its wire.

Most questions a warm recursor asks end in one authoritative response that holds exactly the
data asked for: AA=1, NOERROR, every answer record owned by the question name and of its type
(with its RRSIGs after it). Such a response needs no scrubbing, no chain to follow and nothing
from its other sections, so the reply is its header and question plus the answer section, cut
off at the end (or before the RRSIGs, for a client without DO). Recognising it on the raw bytes
spares the resolver a dnspython parse and re-encode, its largest cost per question.

Owns that recognition and that cut. Anything it is not sure of (a CNAME, a wildcard expansion,
denial records, a name spelt with a pointer elsewhere, odd counts) returns None, and the
recursor takes its general path. Must not: accept what the general path would not (data
outside the question, non-authoritative data), or raise on malformed input.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from fastdns.resolve.upstream import FLAG_TC, HEADER_SIZE
from fastdns.wire import QTYPE_ANY, QTYPE_CNAME

QTYPE_DNAME = 39
QTYPE_RRSIG = 46
QTYPE_NSEC = 47
QTYPE_NSEC3 = 50
# Meta and question-only types (RFC 6895 §3.1: 128-255) never come back as plain data.
_FIRST_META_QTYPE = 128
CLASS_IN = 1

_FLAG_AA = 0x0400
_OPCODE_MASK = 0x7800
_RCODE_MASK = 0x000F
# The reply's flags: QR and RA, as the general path's assembled reply has them; the hit path
# writes the client's ID and RD/CD when it renders.
_REPLY_FLAGS = 0x8080

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH after the owner name
_POINTER_TO_QNAME = b"\xc0\x0c"  # RFC 1035 §4.1.4: a pointer to the question's name


class DirectAnswer(NamedTuple):
    """A direct answer: the response, and where its answer section ends, with and without
    its RRSIGs."""

    wire: bytes  # the server's response, as received
    data_count: int  # answer records of the question's type
    data_end: int  # offset just past them (where the first RRSIG starts, if any)
    rrsig_count: int
    answer_end: int  # offset just past the whole answer section

    def reply(self, *, keep_dnssec: bool) -> bytes:
        """The client's reply: header, question and answer records, RRSIGs only if
        `keep_dnssec` (RFC 4035 §3.2.1). The authority and additional sections are left out,
        as the general path leaves them out of a final answer; nothing after the cut can be
        pointed at by what comes before it, since compression pointers only point backwards
        (RFC 1035 §4.1.4)."""
        if keep_dnssec:
            count, end = self.data_count + self.rrsig_count, self.answer_end
        else:
            count, end = self.data_count, self.data_end
        wire = self.wire
        return wire[:2] + _HEADER.pack(0, _REPLY_FLAGS, 1, count, 0, 0)[2:] + wire[HEADER_SIZE:end]


class _Malformed(Exception):
    """The message runs past its end or spells a name badly: not a direct answer."""


def scan_direct_answer(wire: bytes, qtype: int) -> DirectAnswer | None:
    """The answer section's layout if `wire` is a direct answer to its own question, else None.

    `wire` is a response already matched to the query (ID, question) by the upstream client.
    """
    if len(wire) < HEADER_SIZE or qtype in _NOT_DIRECT_QTYPES or qtype >= _FIRST_META_QTYPE:
        return None
    _, flags, qdcount, ancount, nscount, _ = _HEADER.unpack_from(wire)
    if (
        not flags & _FLAG_AA
        or flags & (FLAG_TC | _OPCODE_MASK | _RCODE_MASK)
        or qdcount != 1
        or ancount == 0
    ):
        return None
    try:
        qname_end, qname_labels = _name_labels(wire, HEADER_SIZE)
        return _scan(wire, qtype, qname_end, qname_labels, ancount, nscount)
    except (_Malformed, struct.error, IndexError):
        return None


def _scan(wire: bytes, qtype: int, qname_end: int, qname_labels: int, ancount: int,
          nscount: int) -> DirectAnswer | None:
    qname = wire[HEADER_SIZE:qname_end]
    pos = qname_end + 4  # past QTYPE and QCLASS
    data_count = rrsig_count = 0
    data_end = -1
    for _ in range(ancount):
        owner_end = _skip_name(wire, pos)
        owner = wire[pos:owner_end]
        if owner != _POINTER_TO_QNAME and owner != qname:
            # Another owner (a CNAME chain, or a spelling we do not follow), or the question's
            # name spelt in another case, e.g. the random case of a DNS 0x20 query echoed back:
            # the general path writes that owner as a pointer to the client's own question.
            return None
        rrtype, rrclass, _, rdlength = _RR_FIXED.unpack_from(wire, owner_end)
        rdata = owner_end + _RR_FIXED.size
        if rrclass != CLASS_IN or rdata + rdlength > len(wire):
            return None
        if rrtype == qtype and rrsig_count == 0:
            data_count += 1
        elif rrtype == QTYPE_RRSIG and rdlength >= 4 and data_count:
            covered = int.from_bytes(wire[rdata:rdata + 2], "big")
            if covered != qtype or wire[rdata + 3] < qname_labels:
                # RFC 4035 §5.3.4: fewer labels than the owner means a wildcard expansion,
                # whose proof lives in the authority section: the general path keeps it.
                return None
            if rrsig_count == 0:
                data_end = pos
            rrsig_count += 1
        else:
            return None
        pos = rdata + rdlength
    answer_end = pos
    for _ in range(nscount):
        # Denial records beside an answer belong to a wildcard proof: the general path.
        owner_end = _skip_name(wire, pos)
        rrtype, _, _, rdlength = _RR_FIXED.unpack_from(wire, owner_end)
        rdata = owner_end + _RR_FIXED.size
        if rrtype == QTYPE_RRSIG and rdlength >= 2:
            rrtype = int.from_bytes(wire[rdata:rdata + 2], "big")  # the type it covers
        if rrtype in (QTYPE_NSEC, QTYPE_NSEC3):
            return None
        pos = rdata + rdlength
        if pos > len(wire):
            return None
    if data_count == 0:
        return None
    return DirectAnswer(wire, data_count, answer_end if data_end < 0 else data_end, rrsig_count,
                        answer_end)


def _skip_name(wire: bytes, pos: int) -> int:
    """Offset just past the name at `pos` (labels, ending in a root label or a pointer)."""
    return _walk_name(wire, pos)[0]


def _name_labels(wire: bytes, pos: int) -> tuple[int, int]:
    """End offset and label count of an uncompressed name (the question's, which we sent)."""
    end, labels, compressed = _walk_name(wire, pos)
    if compressed:
        raise _Malformed  # nothing precedes the question for a pointer to point at
    return end, labels


def _walk_name(wire: bytes, pos: int) -> tuple[int, int, bool]:
    """(end offset, labels before the end, whether it ends in a compression pointer)."""
    size = len(wire)
    labels = 0
    while True:
        if pos >= size:
            raise _Malformed
        length = wire[pos]
        if length == 0:
            return pos + 1, labels, False
        if length >= 0xC0:
            if pos + 2 > size:
                raise _Malformed
            return pos + 2, labels, True
        if length > 63:
            raise _Malformed  # 0x40/0x80: label types no longer in use (RFC 6891 §5)
        labels += 1
        pos += 1 + length


_NOT_DIRECT_QTYPES = frozenset({QTYPE_CNAME, QTYPE_DNAME, QTYPE_RRSIG, QTYPE_ANY})
