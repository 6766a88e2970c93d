# Wire format of the hit path: parse a query into a C struct, render replies into caller buffers.
# No clock, no I/O, no Python objects: callers pass `elapsed_s` and own every buffer.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    PARSE_OK = 0
    PARSE_DROP = 1        # not worth an answer: shorter than a header, or a response (QR=1)
    PARSE_FORMERR = 2
    PARSE_NOTIMP = 3
    PARSE_REFUSED = 4
    PARSE_BADVERS = 5

cdef enum:
    HEADER_LEN = 12
    MAX_NAME_LEN = 255
    MAX_KEY_LEN = 260          # name + qtype + qclass + flag byte
    OPT_RR_LEN = 11            # root owner, type, class, ttl, rdlength 0
    EDNS_ADVERTISED = 1232     # DNS flag day 2020 payload size we advertise
    MAX_UDP_REPLY = 4096       # we honour the client's size up to this
    MAX_MESSAGE = 65535

cdef enum:
    KEY_FLAG_CD = 1
    KEY_FLAG_DO = 2

# A parsed client query. Everything the hit path needs, without one Python object.
cdef struct Query:
    uint16_t id
    uint16_t flags
    uint16_t qtype
    uint16_t qclass
    Py_ssize_t question_len   # qname + qtype + qclass, starting at HEADER_LEN
    bint has_question         # question parsed: echo it in error replies
    bint has_edns
    bint do_bit
    uint8_t edns_version
    uint16_t udp_limit        # largest UDP reply the client accepts (512 without EDNS)
    Py_ssize_t key_len
    unsigned char key[MAX_KEY_LEN]

cdef int read_query(const unsigned char* buf, Py_ssize_t n, Query* q) noexcept nogil

cdef Py_ssize_t render_header_only(const unsigned char* buf, const Query* q, int rcode, bint tc,
                                   unsigned char* out) noexcept nogil

cdef Py_ssize_t render_cached(const unsigned char* wire, Py_ssize_t wire_len,
                              const uint16_t* ttl_offsets, Py_ssize_t n_ttl, uint32_t elapsed_s,
                              const unsigned char* qbuf, const Query* q, Py_ssize_t limit,
                              unsigned char* out) noexcept nogil
