# cython: language_level=3
"""Query-log encoder: the hit path's compact C log records to SPEC §4 JSON lines, in C.

Owns: the C rendering of one line per record, byte-for-byte what `fastdns.querylog.encode`
produces (keys, order, escaping, number formatting), for well-formed records whose answers
are A, AAAA, CNAME, NS, PTR, MX, TXT, SOA or SRV.
Must not: decide differently from `querylog`. Anything it does not render itself (other
types, other classes, malformed bytes, unusual times) is handed to `querylog.encode` for
that one record, so the Python encoder stays the single definition of the format.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport isfinite, rint
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset, strlen

import os

import dns.rdatatype
import orjson

from fastdns import querylog as _querylog

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct tm:
        pass
    tm* gmtime_r(const time_t* timep, tm* result)
    size_t strftime(char* s, size_t maxsize, const char* fmt, const tm* t)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)
    int inet_pton(int af, const char* src, void* dst)

cdef enum:
    T_A = 1
    T_NS = 2
    T_CNAME = 5
    T_SOA = 6
    T_PTR = 12
    T_MX = 15
    T_TXT = 16
    T_AAAA = 28
    T_SRV = 33
    T_OPT = 41
    C_IN = 1
    ESC_MAX = 12          # longest JSON-escaped presentation of one byte ("\\\\123" is 5)
    NAME_TEXT_MAX = 255 * 6 + 2


# A growing output buffer (malloc'd; the caller frees it).
cdef struct Out:
    char* buf
    size_t len
    size_t cap


cdef int grow(Out* o, size_t n) except -1:
    cdef size_t cap = o.cap * 2
    cdef char* p
    if cap < o.len + n + 4096:
        cap = o.len + n + 4096
    p = <char*>realloc(o.buf, cap)
    if p == NULL:
        raise MemoryError()
    o.buf = p
    o.cap = cap
    return 0


cdef inline int reserve(Out* o, size_t n) except -1:
    if o.len + n > o.cap:
        grow(o, n)
    return 0


cdef inline int put(Out* o, const char* s, size_t n) except -1:
    if o.len + n > o.cap:
        grow(o, n)
    memcpy(o.buf + o.len, s, n)
    o.len += n
    return 0


cdef inline int puts(Out* o, const char* s) except -1:
    return put(o, s, strlen(s))


# Writes the decimal digits of v; needs 20 bytes reserved.
cdef inline void put_uint(Out* o, uint32_t v) noexcept:
    cdef char tmp[12]
    cdef int i = 12
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    memcpy(o.buf + o.len, tmp + i, 12 - i)
    o.len += 12 - i


# Per-byte JSON-escaped presentation text, derived once from querylog's own escapers so the
# two encoders cannot drift: NAME_ESC for label bytes (RFC 1035 §5.1 specials and \DDD),
# TXT_ESC for character-string bytes inside quotes.
cdef char NAME_ESC[256][ESC_MAX]
cdef uint8_t NAME_ESC_LEN[256]
cdef char TXT_ESC[256][ESC_MAX]
cdef uint8_t TXT_ESC_LEN[256]
cdef const char* HEX = b"0123456789abcdef"


cdef const char* VARIANT = b"89ab"


cdef void _fill_table(char* table, uint8_t* lengths, object escape):
    cdef int c
    cdef bytes text
    for c in range(256):
        text = orjson.dumps(escape(bytes([c])))[1:-1]
        assert len(text) < ESC_MAX
        memcpy(table + c * ESC_MAX, PyBytes_AS_STRING(text), len(text))
        lengths[c] = len(text)


_fill_table(<char*>NAME_ESC, NAME_ESC_LEN, _querylog._escape_label)
_fill_table(<char*>TXT_ESC, TXT_ESC_LEN, _querylog._escape_string)

# JSON text (with quotes) of every RCODE a reply can carry (12 bits with EDNS, RFC 6891
# §6.1.3), and of every QTYPE dnspython names; other QTYPEs are written TYPEnnn (RFC 3597 §5).
cdef list _RCODE_JSON = []
cdef list _QTYPE_JSON = []


cdef void _fill_names():
    cdef int i
    for i in range(4096):
        _RCODE_JSON.append(orjson.dumps(_querylog._rcode_text(i)))
    for i in range(65536):
        _QTYPE_JSON.append(None)
    for member in dns.rdatatype.RdataType:
        _QTYPE_JSON[int(member)] = orjson.dumps(_querylog._qtype_text(int(member)))


_fill_names()


cdef inline int put_bytes_obj(Out* o, bytes b) except -1:
    return put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# Walk the (possibly compressed) name at pos exactly as querylog._read_name does, optionally
# writing its JSON-escaped presentation text. Returns the offset after the name, or -1 if
# querylog would call it malformed.
@cython.boundscheck(False)  # every index is checked against end/segment bounds below
@cython.wraparound(False)
cdef Py_ssize_t walk_name(Out* o, const unsigned char* wire, Py_ssize_t pos, Py_ssize_t end,
                          bint emit, bint trailing_dot) except -2:
    cdef Py_ssize_t segment_start = pos
    cdef Py_ssize_t after = -1
    cdef Py_ssize_t stop, target, i
    cdef int wire_len = 1
    cdef int n
    cdef int labels = 0
    while True:
        if pos >= end:
            return -1
        n = wire[pos]
        if n == 0:
            pos += 1
            break
        if n < 0x40:
            stop = pos + 1 + n
            if stop > end:
                return -1
            wire_len += n + 1
            if wire_len > 255:  # RFC 1035 §3.1
                return -1
            if emit:
                reserve(o, n * ESC_MAX + 1)
                if labels:
                    o.buf[o.len] = b'.'
                    o.len += 1
                for i in range(pos + 1, stop):
                    memcpy(o.buf + o.len, NAME_ESC[wire[i]], NAME_ESC_LEN[wire[i]])
                    o.len += NAME_ESC_LEN[wire[i]]
            labels += 1
            pos = stop
        elif n >= 0xC0:
            if pos + 1 >= end:
                return -1
            target = ((n & 0x3F) << 8) | wire[pos + 1]
            if target >= segment_start:
                return -1
            if after < 0:
                after = pos + 2
            end = segment_start
            segment_start = pos = target
        else:
            return -1
    if emit and (labels == 0 or trailing_dot):
        put(o, b".", 1)
    return after if after >= 0 else pos


# Offset just after the name at pos without following pointers (querylog._skip_name); -1
# where the Python version would raise.
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t skip_name(const unsigned char* wire, Py_ssize_t size,
                                 Py_ssize_t pos) noexcept:
    cdef int n
    while True:
        if pos < 0 or pos >= size:
            return -1
        n = wire[pos]
        if n == 0:
            return pos + 1
        if n >= 0xC0:
            if pos + 1 >= size:
                return -1
            return pos + 2
        if n >= 0x40:
            return -1
        pos += n + 1


cdef inline uint32_t be16(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t be32(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


# One answer RDATA as a JSON string (with quotes) into o; 0 if querylog would not take its
# own formatter's success path for it (other type or class, malformed): caller falls back.
@cython.boundscheck(False)
@cython.wraparound(False)
cdef int put_rdata(Out* o, const unsigned char* wire, uint32_t rtype, uint32_t rclass,
                   Py_ssize_t pos, Py_ssize_t end) except -1:
    cdef char text[64]
    cdef Py_ssize_t after, stop, i
    cdef int k
    cdef bint first = 1
    reserve(o, 80)
    o.buf[o.len] = b'"'
    o.len += 1
    if rtype == T_A and rclass == C_IN:
        if end - pos != 4:
            return 0
        for k in range(4):
            if k:
                o.buf[o.len] = b'.'
                o.len += 1
            put_uint(o, wire[pos + k])
    elif rtype == T_AAAA and rclass == C_IN:
        if end - pos != 16:
            return 0
        inet_ntop(AF_INET6, wire + pos, text, sizeof(text))
        puts(o, text)
    elif rtype == T_CNAME or rtype == T_NS or rtype == T_PTR:
        if walk_name(o, wire, pos, end, 1, 1) != end:
            return 0
    elif rtype == T_MX:
        if end - pos < 2:
            return 0
        put_uint(o, be16(wire + pos))
        o.buf[o.len] = b' '
        o.len += 1
        if walk_name(o, wire, pos + 2, end, 1, 1) != end:
            return 0
    elif rtype == T_TXT:
        if pos >= end:
            return 0  # RFC 1035 §3.3.14: one or more character-strings
        while pos < end:
            stop = pos + 1 + wire[pos]
            if stop > end:
                return 0
            reserve(o, (stop - pos) * ESC_MAX + 8)
            if not first:
                o.buf[o.len] = b' '
                o.len += 1
            first = 0
            memcpy(o.buf + o.len, b'\\"', 2)
            o.len += 2
            for i in range(pos + 1, stop):
                memcpy(o.buf + o.len, TXT_ESC[wire[i]], TXT_ESC_LEN[wire[i]])
                o.len += TXT_ESC_LEN[wire[i]]
            memcpy(o.buf + o.len, b'\\"', 2)
            o.len += 2
            pos = stop
    elif rtype == T_SOA:
        after = walk_name(o, wire, pos, end, 1, 1)
        if after < 0:
            return 0
        put(o, b" ", 1)
        after = walk_name(o, wire, after, end, 1, 1)
        if after < 0 or after + 20 != end:
            return 0
        reserve(o, 64)
        for k in range(5):
            o.buf[o.len] = b' '
            o.len += 1
            put_uint(o, be32(wire + after + 4 * k))
    elif rtype == T_SRV and rclass == C_IN:
        if end - pos < 6:
            return 0
        for k in range(3):
            put_uint(o, be16(wire + pos + 2 * k))
            o.buf[o.len] = b' '
            o.len += 1
        if walk_name(o, wire, pos + 6, end, 1, 1) != end:
            return 0
    else:
        return 0
    put(o, b'"', 1)
    return 1


# The "timestamp" value: UTC, milliseconds rounded half-to-even as Python's round() does.
cdef int64_t _prefix_second = -1
cdef char _prefix[32]


cdef int put_timestamp(Out* o, double wall) except -1:
    global _prefix_second
    cdef double total_ms
    cdef int64_t msi, second
    cdef int ms
    cdef time_t t
    cdef tm parts
    if not (wall >= 0.0 and wall < 253402300799.0):
        return 0  # outside years 1970..9999: leave the odd cases to querylog
    total_ms = rint(wall * 1000.0)
    msi = <int64_t>total_ms
    second = msi // 1000
    ms = <int>(msi % 1000)
    if second != _prefix_second:
        t = <time_t>second
        if gmtime_r(&t, &parts) == NULL:
            return 0
        if strftime(_prefix, sizeof(_prefix), b"%Y-%m-%dT%H:%M:%S", &parts) == 0:
            return 0
        _prefix_second = second
    reserve(o, 48)
    puts(o, _prefix)
    o.buf[o.len] = b'.'
    o.buf[o.len + 1] = <char>(48 + ms // 100)
    o.buf[o.len + 2] = <char>(48 + ms // 10 % 10)
    o.buf[o.len + 3] = <char>(48 + ms % 10)
    o.buf[o.len + 4] = b'Z'
    o.len += 5
    return 1


# RFC 9562 §5.4 version-4 UUID text from 16 random bytes, the way querylog._request_ids
# lays out the hex digits (version nibble replaces hex digit 12, variant from digit 16).
cdef void put_uuid(Out* o, const unsigned char* r) noexcept:
    cdef char h[32]
    cdef char* p
    cdef int i
    for i in range(16):
        h[2 * i] = HEX[r[i] >> 4]
        h[2 * i + 1] = HEX[r[i] & 15]
    p = o.buf + o.len
    memcpy(p, h, 8)
    p[8] = b'-'
    memcpy(p + 9, h + 8, 4)
    p[13] = b'-'
    p[14] = b'4'
    memcpy(p + 15, h + 13, 3)
    p[18] = b'-'
    p[19] = VARIANT[(r[8] >> 4) & 3]
    memcpy(p + 20, h + 17, 3)
    p[23] = b'-'
    memcpy(p + 24, h + 20, 12)
    o.len += 36


cdef inline bint elapsed_us(double elapsed_s, int64_t* us) noexcept:
    # What drain_log hands over: int(elapsed_s * 1e6), truncated toward zero.
    cdef double x = elapsed_s * 1e6
    if not isfinite(x) or x <= -1e15 or x >= 1e15:
        us[0] = 0
        return 0
    us[0] = <int64_t>x
    return 1


cdef void put_ms(Out* o, int64_t us) noexcept:
    # repr(round(us / 1000, 3)) for 0 <= us < 1e12: integer part, then 1-3 decimals.
    cdef int frac = <int>(us % 1000)
    cdef int64_t whole = us // 1000
    cdef char tmp[24]
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = <char>(48 + whole % 10)
        whole //= 10
        if whole == 0:
            break
    memcpy(o.buf + o.len, tmp + i, 24 - i)
    o.len += 24 - i
    o.buf[o.len] = b'.'
    o.len += 1
    o.buf[o.len] = <char>(48 + frac // 100)
    o.len += 1
    frac %= 100
    if frac:
        o.buf[o.len] = <char>(48 + frac // 10)
        o.len += 1
        frac %= 10
        if frac:
            o.buf[o.len] = <char>(48 + frac)
            o.len += 1


cdef inline void client_ip_text(const LogHead* h, char* text, unsigned int size) noexcept:
    if h.v4:
        inet_ntop(AF_INET, h.ip + 12, text, size)
    else:
        inet_ntop(AF_INET6, h.ip, text, size)


# One record as a JSON line into o. Returns 1, or 0 when querylog must encode it (o may then
# hold a partial line; the caller rewinds). data is scratch for the response_data array.
@cython.boundscheck(False)
@cython.wraparound(False)
cdef int encode_one(Out* o, Out* data, const LogHead* h, const unsigned char* rid,
                    object upstream_json) except -1:
    cdef const unsigned char* query = <const unsigned char*>(h + 1)
    cdef const unsigned char* reply = query + h.query_len
    cdef Py_ssize_t qlen = h.query_len
    cdef Py_ssize_t size = h.reply_len
    cdef Py_ssize_t qname_end, pos, end
    cdef uint32_t qtype, rcode, qdcount, ancount, nscount, arcount, rtype, rclass, i
    cdef int64_t us
    cdef char text[64]
    cdef object qtype_json
    # Question (querylog._parse_question on the query; anything less goes to Python).
    if qlen < 12 or not (query[4] or query[5]):
        return 0
    qname_end = walk_name(NULL, query, 12, qlen, 0, 0)
    if qname_end < 0 or qname_end + 2 > qlen:
        return 0
    qtype = be16(query + qname_end)
    if not elapsed_us(h.elapsed_s, &us) or us < 0 or us >= 1000000000000:
        return 0
    # Reply (querylog._parse_reply): counts, questions skipped, ANSWER rdata into `data`.
    if size < 12:
        return 0
    rcode = reply[3] & 0x0F
    qdcount = be16(reply + 4)
    ancount = be16(reply + 6)
    nscount = be16(reply + 8)
    arcount = be16(reply + 10)
    pos = 12
    for i in range(qdcount):
        pos = skip_name(reply, size, pos)
        if pos < 0:
            return 0
        pos += 4
    data.len = 0
    put(data, b"[", 1)
    for i in range(ancount):
        pos = skip_name(reply, size, pos)
        if pos < 0 or pos + 10 > size:
            return 0
        rtype = be16(reply + pos)
        rclass = be16(reply + pos + 2)
        end = pos + 10 + be16(reply + pos + 8)
        pos += 10
        if end > size:
            return 0
        if i:
            put(data, b",", 1)
        if not put_rdata(data, reply, rtype, rclass, pos, end):
            return 0
        pos = end
    put(data, b"]", 1)
    if arcount:
        # RFC 6891 §6.1.3: the OPT TTL's top octet holds the upper 8 bits of the RCODE.
        for i in range(nscount):
            pos = skip_name(reply, size, pos)
            if pos < 0 or pos + 10 > size:
                return 0
            pos += 10 + be16(reply + pos + 8)
        for i in range(arcount):
            pos = skip_name(reply, size, pos)
            if pos < 0 or pos + 10 > size:
                return 0
            if be16(reply + pos) == T_OPT:
                rcode |= <uint32_t>reply[pos + 4] << 4
                break
            pos += 10 + be16(reply + pos + 8)
    # The line, keys in SPEC §4 order.
    reserve(o, 256)
    puts(o, b'{"timestamp":"')
    if not put_timestamp(o, h.wall_time):
        return 0
    puts(o, b'","request_id":"')
    reserve(o, 40)
    put_uuid(o, rid)
    puts(o, b'","client_ip":"')
    client_ip_text(h, text, sizeof(text))
    puts(o, text)
    puts(o, b'","query_type":')
    qtype_json = _QTYPE_JSON[qtype]
    if qtype_json is None:
        reserve(o, 16)
        puts(o, b'"TYPE')
        put_uint(o, qtype)
        put(o, b'"', 1)
    else:
        put_bytes_obj(o, <bytes>qtype_json)
    puts(o, b',"domain":"')
    walk_name(o, query, 12, qlen, 1, 0)
    puts(o, b'","response_code":')
    put_bytes_obj(o, <bytes>_RCODE_JSON[rcode])
    puts(o, b',"response_time_ms":')
    reserve(o, 32)
    put_ms(o, us)
    if h.cache_hit:
        puts(o, b',"cache_hit":true')
    else:
        puts(o, b',"cache_hit":false')
    puts(o, b',"upstream_server":')
    if upstream_json is None:
        puts(o, b"null")
    else:
        put_bytes_obj(o, <bytes>upstream_json)
    puts(o, b',"response_data":')
    put(o, data.buf, data.len)
    puts(o, b"}\n")
    return 1


cdef str request_id_text(const unsigned char* rid):
    cdef Out o
    o.buf = <char*>malloc(64)
    if o.buf == NULL:
        raise MemoryError()
    o.len = 0
    o.cap = 64
    put_uuid(&o, rid)
    try:
        return o.buf[:o.len].decode("ascii")
    finally:
        free(o.buf)


# The record querylog.encode sees for a line this module does not render itself.
cdef bytes encode_in_python(const LogHead* h, const unsigned char* rid, object upstream_name):
    cdef const char* body = <const char*>(h + 1)
    cdef char text[64]
    cdef int64_t us
    cdef object record  # typed: Cython 3.3's inference of this tuple does not terminate
    elapsed_us(h.elapsed_s, &us)
    client_ip_text(h, text, sizeof(text))
    record = (h.wall_time, text.decode("ascii"),
              PyBytes_FromStringAndSize(body, h.query_len),
              PyBytes_FromStringAndSize(body + h.query_len, h.reply_len),
              bool(h.cache_hit), upstream_name, us)
    try:
        return _querylog.encode(record, request_id_text(rid))
    except (TypeError, ValueError, OverflowError):
        return None


cdef size_t _count(const unsigned char* buf, size_t length) noexcept:
    cdef size_t pos = 0
    cdef size_t n = 0
    while pos < length:
        pos += log_record_size(<const LogHead*>(buf + pos))
        n += 1
    return n


cdef bytes encode_log(const unsigned char* buf, size_t length, list upstream_names,
                      object random_bytes):
    """See encode_buffer. Returns the lines; records querylog cannot encode are skipped."""
    cdef size_t count = _count(buf, length)
    cdef size_t pos = 0
    cdef size_t k = 0
    cdef size_t mark
    cdef const LogHead* h
    cdef const unsigned char* rids
    cdef Out o
    cdef Out data
    cdef list names_json = [orjson.dumps(n) for n in upstream_names]
    cdef Py_ssize_t n_names = len(upstream_names)
    cdef Py_ssize_t upstream
    cdef bytes line
    if random_bytes is None:
        random_bytes = os.urandom(16 * count)
    elif type(random_bytes) is not bytes:
        random_bytes = bytes(random_bytes)
    if <size_t>PyBytes_GET_SIZE(random_bytes) < 16 * count:
        raise ValueError(f"need {16 * count} random bytes for {count} records")
    rids = <const unsigned char*>PyBytes_AS_STRING(random_bytes)
    o.buf = NULL
    o.len = o.cap = 0
    data.buf = NULL
    data.len = data.cap = 0
    try:
        grow(&o, count * 320)
        grow(&data, 512)
        while pos < length:
            h = <const LogHead*>(buf + pos)
            upstream = h.upstream if h.upstream < n_names else -1
            mark = o.len
            if not encode_one(&o, &data, h, rids + 16 * k,
                              names_json[upstream] if upstream >= 0 else None):
                o.len = mark
                line = encode_in_python(h, rids + 16 * k,
                                        upstream_names[upstream] if upstream >= 0 else None)
                if line is not None:
                    put_bytes_obj(&o, line)
            pos += log_record_size(h)
            k += 1
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        free(o.buf)
        free(data.buf)


def encode_buffer(bytes buf not None, list upstream_names not None, random_bytes=None) -> bytes:
    """JSON lines for every record in `buf` (concatenated LogHead records, as HitPath's log
    buffer holds them). `random_bytes` (16 per record) supplies the request ids; default
    os.urandom, once per call. Upstream indexes outside `upstream_names` log as null."""
    cdef size_t n = PyBytes_GET_SIZE(buf)
    cdef unsigned char* copy = <unsigned char*>malloc(n + 8)  # malloc: 8-byte aligned heads
    if copy == NULL:
        raise MemoryError()
    memcpy(copy, PyBytes_AS_STRING(buf), n)
    try:
        return encode_log(copy, n, upstream_names, random_bytes)
    finally:
        free(copy)


def count_records(bytes buf not None) -> int:
    """How many records `buf` holds."""
    return _count(<const unsigned char*>PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf))


def pack_record(double wall_time, str client_ip, bytes query_wire, bytes reply_wire,
                bint cache_hit, int upstream, double elapsed_s) -> bytes:
    """One log record exactly as HitPath.log_record lays it out (tests and benchmarks)."""
    cdef LogHead h
    cdef bytes ip = client_ip.encode("ascii")
    cdef size_t qlen = len(query_wire)
    cdef size_t rlen = len(reply_wire)
    cdef size_t total
    if qlen > 0xFFFF or rlen > 0xFFFF:
        raise ValueError("query and reply must each fit in 65535 bytes")
    memset(&h, 0, sizeof(h))
    if inet_pton(AF_INET, ip, h.ip + 12) == 1:
        h.ip[10] = 0xFF
        h.ip[11] = 0xFF
        h.v4 = 1
    elif inet_pton(AF_INET6, ip, h.ip) != 1:
        raise ValueError(f"not an IP address: {client_ip!r}")
    h.wall_time = wall_time
    h.elapsed_s = elapsed_s
    h.cache_hit = cache_hit
    h.upstream = <uint16_t>upstream if upstream >= 0 else 0xFFFF
    h.query_len = qlen
    h.reply_len = rlen
    total = log_record_size(&h)
    head = PyBytes_FromStringAndSize(<char*>&h, sizeof(h))
    return head + query_wire + reply_wire + b"\0" * (total - sizeof(h) - qlen - rlen)
