# cython: language_level=3
"""DNS wire format for the hit path: query parsing, cache keys, reply preparation and rendering.

Owns: RFC 1035 message layout, EDNS0 (RFC 6891) handling, TTL indexing, truncation.
Must not: read the clock, do I/O, log, or keep state. `now`/`elapsed_s` come from the caller.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

# Section and type numbers used here (RFC 1035 §3.2.2, RFC 6891 §6.1.1).
cdef enum:
    QTYPE_SOA = 6
    QTYPE_OPT = 41
    QTYPE_TKEY = 249
    QTYPE_TSIG = 250
    QTYPE_IXFR = 251
    QTYPE_AXFR = 252
    QTYPE_MAILB = 253
    QTYPE_MAILA = 254

cdef enum:
    FLAG_QR = 0x8000
    FLAG_TC = 0x0200
    FLAG_RD = 0x0100
    FLAG_CD = 0x0010
    FLAG_AD = 0x0020
    EDNS_DO = 0x8000
    MAX_POINTER_HOPS = 64


cdef inline uint16_t rd16(const unsigned char* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void wr16(unsigned char* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void wr32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


@cython.boundscheck(False)  # every index is checked against n before use
cdef Py_ssize_t question_name_len(const unsigned char* buf, Py_ssize_t n, Py_ssize_t pos) noexcept nogil:
    """Length of the uncompressed name at pos, or -1. A query's qname may not be compressed:
    the only earlier bytes are the header, so a pointer there is always invalid."""
    cdef Py_ssize_t start = pos
    cdef unsigned char label
    while True:
        if pos >= n:
            return -1
        label = buf[pos]
        if label == 0:
            pos += 1
            break
        if label & 0xC0:      # pointer, or an extended label type (RFC 6891 §5: obsolete)
            return -1
        pos += 1 + label
        if pos - start > MAX_NAME_LEN:
            return -1
    if pos - start > MAX_NAME_LEN:
        return -1
    return pos - start


@cython.boundscheck(False)  # every index is checked against n before use
cdef Py_ssize_t skip_name(const unsigned char* buf, Py_ssize_t n, Py_ssize_t pos) noexcept nogil:
    """Validate the possibly compressed name at pos, reading nothing at or past n; return the
    offset after it, or -1. Each pointer must point strictly before the previous one (before
    the name's start for the first), as dnspython requires, so no loop is possible; the
    decoded name must still fit in 255 octets (RFC 1035 §3.1)."""
    cdef Py_ssize_t end = -1
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t bound = pos
    cdef Py_ssize_t target
    cdef unsigned char label
    while True:
        if pos >= n:
            return -1
        label = buf[pos]
        if label == 0:
            total += 1
            if end < 0:
                end = pos + 1
            break
        if (label & 0xC0) == 0xC0:
            if pos + 1 >= n:
                return -1
            target = ((label & 0x3F) << 8) | buf[pos + 1]
            if target >= bound:
                return -1
            bound = target
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if label & 0xC0:
            return -1
        total += 1 + label
        if total > MAX_NAME_LEN:
            return -1
        pos += 1 + label
    if total > MAX_NAME_LEN:
        return -1
    return end


cdef enum:
    QTYPE_A = 1
    QTYPE_NS = 2
    QTYPE_MD = 3
    QTYPE_MF = 4
    QTYPE_CNAME = 5
    QTYPE_MB = 7
    QTYPE_MG = 8
    QTYPE_MR = 9
    QTYPE_PTR = 12
    QTYPE_MINFO = 14
    QTYPE_MX = 15
    QTYPE_TXT = 16
    QTYPE_RP = 17
    QTYPE_AFSDB = 18
    QTYPE_RT = 21
    QTYPE_AAAA = 28
    QTYPE_SRV = 33
    QTYPE_KX = 36
    QTYPE_DNAME = 39


@cython.boundscheck(False)  # every read is bounded by rdend
cdef bint rdata_valid(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t rdend, uint16_t rrtype) noexcept nogil:
    """RDATA of the types whose layout we know must use RDLENGTH exactly, with every
    embedded name valid (RFC 1035 §3.3, RFC 3596, RFC 2782). Other types pass as opaque
    data (RFC 3597)."""
    cdef Py_ssize_t fixed = 0
    cdef int names = 1
    if rrtype == QTYPE_A:
        return rdend - pos == 4
    if rrtype == QTYPE_AAAA:
        return rdend - pos == 16
    if rrtype == QTYPE_TXT:
        if pos >= rdend:
            return 0                       # at least one <character-string>
        while pos < rdend:
            pos += 1 + buf[pos]
        return pos == rdend
    if rrtype in (QTYPE_NS, QTYPE_MD, QTYPE_MF, QTYPE_CNAME, QTYPE_MB, QTYPE_MG, QTYPE_MR,
                  QTYPE_PTR, QTYPE_DNAME):
        pass
    elif rrtype in (QTYPE_MX, QTYPE_AFSDB, QTYPE_RT, QTYPE_KX):
        fixed = 2
    elif rrtype == QTYPE_SRV:
        fixed = 6
    elif rrtype == QTYPE_SOA:
        names = 2
    elif rrtype == QTYPE_MINFO or rrtype == QTYPE_RP:
        names = 2
    else:
        return 1
    pos += fixed
    if pos > rdend:
        return 0
    for _ in range(names):
        pos = skip_name(buf, rdend, pos)
        if pos < 0:
            return 0
    if rrtype == QTYPE_SOA:
        pos += 20                          # SERIAL REFRESH RETRY EXPIRE MINIMUM
    return pos == rdend


@cython.boundscheck(False)  # guarded by explicit length checks; fuzzed in tests/fuzz/test_wire_fuzz.py
cdef Py_ssize_t read_records(const unsigned char* buf, Py_ssize_t n, Py_ssize_t pos,
                             int skip, int arcount, Query* q) noexcept nogil:
    """Walk `skip` records, then the additional section, taking EDNS0 from its OPT into q.
    Returns the offset after the last record, or -1 if any record is malformed."""
    cdef Py_ssize_t rr_start, rdend, optpos
    cdef uint16_t rrtype, optlen
    cdef uint32_t ttl
    cdef int i
    for i in range(skip + arcount):
        rr_start = pos
        pos = skip_name(buf, n, pos)
        if pos < 0 or pos + 10 > n:
            return -1
        rrtype = rd16(buf + pos)
        rdend = pos + 10 + rd16(buf + pos + 8)
        if rdend > n:
            return -1
        if i >= skip and rrtype == QTYPE_OPT:
            # RFC 6891 §6.1.1: one OPT at most, owned by the root.
            if q.has_edns or pos != rr_start + 1 or buf[rr_start] != 0:
                return -1
            optpos = pos + 10
            while optpos < rdend:   # options must tile RDATA exactly
                if optpos + 4 > rdend:
                    return -1
                optlen = rd16(buf + optpos + 2)
                optpos += 4 + optlen
            if optpos != rdend:
                return -1
            q.has_edns = 1
            ttl = rd32(buf + pos + 4)
            q.edns_version = (ttl >> 16) & 0xFF
            q.do_bit = (ttl & EDNS_DO) != 0
            q.udp_limit = rd16(buf + pos + 2)
            # RFC 6891 §6.2.5: values below 512 are treated as 512.
            if q.udp_limit < 512:
                q.udp_limit = 512
            elif q.udp_limit > MAX_UDP_REPLY:
                q.udp_limit = MAX_UDP_REPLY
        pos = rdend
    return pos


@cython.boundscheck(False)  # guarded by explicit length checks; fuzzed in tests/fuzz/test_wire_fuzz.py
cdef int read_query(const unsigned char* buf, Py_ssize_t n, Query* q) noexcept nogil:
    """Parse a client query. The checks follow the order Unbound's worker uses, so the
    answer to a broken packet is the same one a client gets from it."""
    cdef uint16_t qdcount, ancount, nscount, arcount
    cdef Py_ssize_t name_len, i
    cdef unsigned char c
    cdef int opcode
    q.has_question = 0
    q.has_edns = 0
    q.do_bit = 0
    q.edns_version = 0
    q.udp_limit = 512
    q.key_len = 0
    q.question_len = 0
    q.qtype = 0
    q.qclass = 0
    if n < HEADER_LEN:
        return PARSE_DROP
    q.id = rd16(buf)
    q.flags = rd16(buf + 2)
    if q.flags & FLAG_QR:
        # Never answer a response: that is how reflection loops between servers start.
        return PARSE_DROP
    qdcount = rd16(buf + 4)
    ancount = rd16(buf + 6)
    nscount = rd16(buf + 8)
    arcount = rd16(buf + 10)
    opcode = (q.flags >> 11) & 0xF

    if qdcount == 1:
        name_len = question_name_len(buf, n, HEADER_LEN)
        if name_len > 0 and HEADER_LEN + name_len + 4 <= n:
            q.question_len = name_len + 4
            q.qtype = rd16(buf + HEADER_LEN + name_len)
            q.qclass = rd16(buf + HEADER_LEN + name_len + 2)
            q.has_question = 1
    if opcode != 0:
        # RFC 1035 §4.1.1: only standard QUERY is served. Still look for the client's OPT:
        # RFC 6891 §7 wants one in the reply to a request that carried one.
        if q.has_question:
            read_records(buf, n, HEADER_LEN + q.question_len, ancount + nscount, arcount, q)
        return PARSE_NOTIMP
    if not q.has_question:
        return PARSE_FORMERR           # no question, several, or a malformed one
    if q.flags & FLAG_TC:
        return PARSE_FORMERR           # a query cannot be truncated
    if ancount != 0 or nscount != 0:
        return PARSE_FORMERR

    if read_records(buf, n, HEADER_LEN + q.question_len, 0, arcount, q) != n:
        return PARSE_FORMERR           # malformed records, or trailing bytes after them
    if q.has_edns and q.edns_version > 0:
        return PARSE_BADVERS           # RFC 6891 §6.1.3
    if q.qtype == QTYPE_OPT or q.qtype == QTYPE_TSIG or q.qtype == QTYPE_TKEY:
        return PARSE_FORMERR           # meta types are not questions (RFC 6895 §3.1)
    if q.qtype == QTYPE_AXFR or q.qtype == QTYPE_IXFR:
        return PARSE_REFUSED           # zone transfers: we are not authoritative
    if q.qtype == QTYPE_MAILA or q.qtype == QTYPE_MAILB:
        return PARSE_NOTIMP

    # Cache key: lowercased qname wire, qtype, qclass, DO and CD (DESIGN.md "Contracts").
    # Length octets are <= 63, so lowercasing the whole name only touches letters.
    for i in range(q.question_len):
        c = buf[HEADER_LEN + i]
        if i < q.question_len - 4 and 65 <= c <= 90:
            c += 32
        q.key[i] = c
    q.key[q.question_len] = (KEY_FLAG_CD if q.flags & FLAG_CD else 0) | (KEY_FLAG_DO if q.do_bit else 0)
    q.key_len = q.question_len + 1
    return PARSE_OK


cdef inline Py_ssize_t write_opt(unsigned char* out, const Query* q, uint8_t ext_rcode) noexcept nogil:
    # RFC 6891 §6.1.2: root owner, TYPE=OPT, CLASS=our payload size, TTL = ext-rcode,
    # version 0, DO echoed (RFC 3225 §3), no options.
    out[0] = 0
    wr16(out + 1, QTYPE_OPT)
    wr16(out + 3, EDNS_ADVERTISED)
    out[5] = ext_rcode
    out[6] = 0
    wr16(out + 7, EDNS_DO if q.do_bit else 0)
    wr16(out + 9, 0)
    return OPT_RR_LEN


cdef inline void write_reply_flags(unsigned char* out, const Query* q, int rcode, bint tc) noexcept nogil:
    # QR=1, opcode echoed, AA=0 (we are not authoritative), RD echoed, RA=1, AD=0 (the
    # renderer of validated data sets it), CD echoed (RFC 4035 §3.2.2).
    out[2] = 0x80 | ((q.flags >> 8) & 0x79) | (0x02 if tc else 0)
    out[3] = 0x80 | (q.flags & FLAG_CD) | (rcode & 0x0F)


@cython.boundscheck(False)  # out holds at least HEADER_LEN + MAX_NAME_LEN + 4 + OPT_RR_LEN bytes
cdef Py_ssize_t render_header_only(const unsigned char* buf, const Query* q, int rcode, bint tc,
                                   unsigned char* out) noexcept nogil:
    """A reply made of the header, the echoed question and (if the client sent one) OPT.
    Used for errors, refusals and truncation (TC=1, no records)."""
    cdef Py_ssize_t pos = HEADER_LEN
    wr16(out, q.id)
    write_reply_flags(out, q, rcode, tc)
    wr16(out + 4, 1 if q.has_question else 0)
    wr16(out + 6, 0)
    wr16(out + 8, 0)
    wr16(out + 10, 1 if q.has_edns else 0)
    if q.has_question:
        memcpy(out + HEADER_LEN, buf + HEADER_LEN, q.question_len)
        pos += q.question_len
    if q.has_edns:
        pos += write_opt(out + pos, q, rcode >> 4)
    return pos


@cython.boundscheck(False)  # offsets were validated against wire_len when the entry was prepared
cdef Py_ssize_t render_cached(const unsigned char* wire, Py_ssize_t wire_len,
                              const uint16_t* ttl_offsets, Py_ssize_t n_ttl, uint32_t elapsed_s,
                              const unsigned char* qbuf, const Query* q, Py_ssize_t limit,
                              unsigned char* out) noexcept nogil:
    """Render a stored reply for this client into out (capacity >= limit).

    Stored bytes are never modified: we copy, then write the client's ID, its question bytes
    (same length as the stored ones, so compression pointers stay valid and 0x20 case is
    kept), each TTL counted down by elapsed_s, and OPT if the client sent one. A reply that
    would exceed the client's limit becomes header + question with TC=1 (RFC 1035 §4.1.1,
    RFC 6891 §7); the client retries over TCP."""
    cdef Py_ssize_t total = wire_len + (OPT_RR_LEN if q.has_edns else 0)
    cdef Py_ssize_t i
    cdef uint32_t ttl
    cdef unsigned char* p
    if total > limit:
        return render_header_only(qbuf, q, wire[3] & 0x0F, 1, out)
    memcpy(out, wire, wire_len)
    wr16(out, q.id)
    write_reply_flags(out, q, wire[3] & 0x0F, 0)
    # RFC 6840 §5.7: AD for validated data, to clients that asked with DO or AD.
    if (wire[3] & FLAG_AD) and (q.do_bit or (q.flags & FLAG_AD)):
        out[3] |= FLAG_AD
    memcpy(out + HEADER_LEN, qbuf + HEADER_LEN, q.question_len)
    for i in range(n_ttl):
        p = out + ttl_offsets[i]
        ttl = rd32(p)
        wr32(p, ttl - elapsed_s if ttl > elapsed_s else 0)
    if q.has_edns:
        write_opt(out + wire_len, q, 0)
        wr16(out + 10, rd16(out + 10) + 1)
    return total


# ---------------------------------------------------------------------------------------------
# Python faces for the miss path and for tests. One parse per call; never on the hit path.

class WireError(ValueError):
    """The bytes are not a well-formed DNS message of the expected kind."""


@cython.final
cdef class ParsedQuery:
    """A client query as the miss path sees it (read-only)."""
    cdef Query q
    cdef readonly int status
    cdef readonly bytes data

    @property
    def id(self) -> int:
        return self.q.id

    @property
    def flags(self) -> int:
        return self.q.flags

    @property
    def qtype(self) -> int:
        return self.q.qtype

    @property
    def qclass(self) -> int:
        return self.q.qclass

    @property
    def has_edns(self) -> bool:
        return self.q.has_edns

    @property
    def do(self) -> bool:
        return self.q.do_bit

    @property
    def cd(self) -> bool:
        return (self.q.flags & FLAG_CD) != 0

    @property
    def udp_limit(self) -> int:
        return self.q.udp_limit

    @property
    def edns_version(self) -> int:
        return self.q.edns_version

    @property
    def key(self) -> bytes:
        return PyBytes_FromStringAndSize(<char*>self.q.key, self.q.key_len)

    @property
    def qname_wire(self) -> bytes:
        """The qname exactly as the client sent it (case kept)."""
        if not self.q.has_question:
            return b""
        return self.data[HEADER_LEN:HEADER_LEN + self.q.question_len - 4]

    @property
    def qname_wire_lower(self) -> bytes:
        if self.q.key_len == 0:
            return b""
        return PyBytes_FromStringAndSize(<char*>self.q.key, self.q.question_len - 4)


def parse_query(bytes data not None) -> ParsedQuery:
    """Parse a client query; `status` says PARSE_OK or which error reply it deserves."""
    cdef ParsedQuery pq = ParsedQuery.__new__(ParsedQuery)
    pq.data = data
    pq.status = read_query(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &pq.q)
    return pq


def render_error(ParsedQuery pq not None, int rcode, bint tc=False) -> bytes:
    """Header + echoed question (+ OPT) with this rcode; rcode > 15 goes into OPT (BADVERS)."""
    cdef unsigned char out[HEADER_LEN + MAX_NAME_LEN + 4 + OPT_RR_LEN]
    cdef Py_ssize_t n
    if pq.status == PARSE_DROP:
        raise WireError("no reply is sent to this packet")
    n = render_header_only(<const unsigned char*>PyBytes_AS_STRING(pq.data), &pq.q, rcode, tc, out)
    return PyBytes_FromStringAndSize(<char*>out, n)


@cython.final
cdef class PreparedReply:
    """An upstream reply in stored form: OPT stripped, TTLs clamped, every TTL offset indexed.

    `wire` is immutable; rendering always copies it. `lifetime_s` is how long it may be
    cached (0 = must not be cached); `ttl_offsets` holds native uint16 offsets."""
    cdef readonly bytes wire
    cdef readonly bytes ttl_offsets
    cdef readonly uint32_t lifetime_s
    cdef readonly int rcode
    cdef readonly int answer_count
    cdef readonly bint negative

    @property
    def cacheable(self) -> bool:
        return self.lifetime_s > 0


@cython.boundscheck(False)  # every index is checked against n before use
def prepare_reply(bytes reply not None, *, uint32_t min_ttl, uint32_t max_ttl,
                  uint32_t negative_ttl, uint32_t default_ttl,
                  bint authentic=False) -> PreparedReply:
    """Turn an upstream reply into its stored form and decide how long it may be cached.

    RFC 2308 §5: NXDOMAIN/NODATA are cached only with a SOA in authority, for
    min(SOA TTL, SOA MINIMUM, negative_ttl); the SOA's TTL is rewritten to that.
    TC replies and every rcode but NOERROR/NXDOMAIN are not cached (lifetime 0).
    Positive TTLs are capped by max_ttl; the cache lifetime is raised to min_ttl, but a
    served TTL never exceeds what upstream gave (SPEC §3).

    The stored header's AD bit says whether we validated the data as secure (`authentic`);
    an upstream's own AD is never trusted (RFC 4035 §4.9.3), so it is cleared otherwise."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reply)
    cdef Py_ssize_t pos, name_len, opt_start = -1, rdend, rr_start, stored_len
    cdef int opt_index = 0
    cdef bint negative
    cdef uint16_t counts[3]
    cdef uint16_t rrtype, rdlen, flags
    cdef uint32_t ttl, min_seen = 0xFFFFFFFF, soa_ttl = 0, soa_min = 0, neg
    cdef Py_ssize_t soa_ttl_off = -1
    cdef int section, i, rcode
    cdef list offsets = []
    cdef bytearray out
    cdef unsigned char* o
    cdef PreparedReply prepared
    cdef bint any_ttl = 0

    if n < HEADER_LEN or n > MAX_MESSAGE:
        raise WireError("reply shorter than a header")
    flags = rd16(buf + 2)
    if not flags & FLAG_QR:
        raise WireError("not a response")
    if rd16(buf + 4) != 1:
        raise WireError("reply must carry exactly one question")
    counts[0] = rd16(buf + 6)
    counts[1] = rd16(buf + 8)
    counts[2] = rd16(buf + 10)
    name_len = question_name_len(buf, n, HEADER_LEN)
    if name_len < 0 or HEADER_LEN + name_len + 4 > n:
        raise WireError("malformed question")
    pos = HEADER_LEN + name_len + 4
    rcode = flags & 0x0F
    for section in range(3):
        for i in range(counts[section]):
            rr_start = pos
            pos = skip_name(buf, n, pos)
            if pos < 0 or pos + 10 > n:
                raise WireError(f"malformed record in section {section}")
            rrtype = rd16(buf + pos)
            rdlen = rd16(buf + pos + 8)
            rdend = pos + 10 + rdlen
            if rdend > n:
                raise WireError("RDATA runs past the end of the message")
            if not rdata_valid(buf, pos + 10, rdend, rrtype):
                raise WireError(f"malformed RDATA of type {rrtype}")
            if section == 2 and rrtype == QTYPE_OPT:
                if opt_start >= 0:
                    raise WireError("more than one OPT record")
                opt_start = rr_start
                opt_index = i
                rcode |= (buf[pos + 4] << 4)     # extended rcode (RFC 6891 §6.1.3)
            else:
                ttl = rd32(buf + pos + 4)
                if ttl & 0x80000000:
                    ttl = default_ttl            # unusable TTL (RFC 2181 §8)
                if ttl > max_ttl:
                    ttl = max_ttl
                if section == 1 and rrtype == QTYPE_SOA and soa_ttl_off < 0 and rdlen >= 22:
                    soa_ttl_off = pos + 4
                    soa_ttl = ttl
                    soa_min = rd32(buf + rdend - 4)
                offsets.append((pos + 4, ttl))
            pos = rdend
    if pos != n:
        raise WireError("trailing bytes after the last record")

    # The stored form ends where the upstream's OPT began. Records after an OPT (rare: it is
    # normally last) are additional data and are dropped with it, since removing bytes from
    # the middle would shift every later compression target. The client gets our own OPT.
    stored_len = opt_start if opt_start >= 0 else n
    out = bytearray(reply[:stored_len])
    o = out
    o[3] = (o[3] | (FLAG_AD & 0xFF)) if authentic else (o[3] & ~(FLAG_AD & 0xFF))
    if opt_start >= 0:
        wr16(o + 10, opt_index)
        offsets = [(off, t) for off, t in offsets if off < stored_len]

    negative = rcode == 3 or (rcode == 0 and counts[0] == 0)
    if negative and soa_ttl_off >= 0:
        neg = min(soa_ttl, soa_min, negative_ttl)
        offsets = [(off, neg if off == soa_ttl_off else t) for off, t in offsets]
    for off, t in offsets:
        wr32(o + <Py_ssize_t>off, <uint32_t>t)
        any_ttl = 1
        if t < min_seen:
            min_seen = t

    prepared = PreparedReply.__new__(PreparedReply)
    prepared.wire = bytes(out)
    prepared.ttl_offsets = b"".join([(<uint16_t>off).to_bytes(2, "little" if _LITTLE else "big")
                                     for off, _ in offsets])
    prepared.rcode = rcode
    prepared.answer_count = counts[0]
    prepared.negative = negative
    if (flags & FLAG_TC) or rcode not in (0, 3) or not any_ttl:
        prepared.lifetime_s = 0
    elif negative and (soa_ttl_off < 0 or negative_ttl == 0):
        prepared.lifetime_s = 0          # RFC 2308 §5: no SOA, no negative caching
    else:
        prepared.lifetime_s = max(min_seen, min_ttl)
        # negative_ttl is the operator's ceiling for negative answers and wins over min_ttl.
        ceiling = negative_ttl if negative else max_ttl
        if prepared.lifetime_s > ceiling:
            prepared.lifetime_s = ceiling
    return prepared


import sys as _sys
_LITTLE = _sys.byteorder == "little"


def render_prepared(PreparedReply prepared not None, ParsedQuery pq not None,
                    uint32_t elapsed_s=0, bint tcp=False) -> bytes:
    """Render a prepared reply for one client (miss path: every waiter gets its own copy)."""
    cdef Py_ssize_t limit = MAX_MESSAGE if tcp else pq.q.udp_limit
    cdef Py_ssize_t wire_len = PyBytes_GET_SIZE(prepared.wire)
    cdef Py_ssize_t cap = max(limit, HEADER_LEN + MAX_NAME_LEN + 4 + OPT_RR_LEN)
    cdef bytearray out = bytearray(cap)
    cdef Py_ssize_t n
    if pq.status != PARSE_OK:
        raise WireError("query did not parse")
    if wire_len + (OPT_RR_LEN if pq.q.has_edns else 0) > MAX_MESSAGE:
        return render_error(pq, 0, True)
    n = render_cached(<const unsigned char*>PyBytes_AS_STRING(prepared.wire), wire_len,
                      <const uint16_t*>PyBytes_AS_STRING(prepared.ttl_offsets),
                      PyBytes_GET_SIZE(prepared.ttl_offsets) // 2, elapsed_s,
                      <const unsigned char*>PyBytes_AS_STRING(pq.data), &pq.q, limit,
                      <unsigned char*>out)
    return bytes(out[:n])
