# cython: language_level=3
"""The hit path: datagrams in, answered in C, replies out; only misses reach Python.

Owns: the UDP batch loop (recvmmsg/sendmmsg on a non-blocking socket driven by the event
loop's reader callback), the plain UDP protocol base for platforms without them (one
datagram per call, same guards and counters), the guards that run per packet (ACL,
per-client rate limit), the cache probe, the hit counters and the compact query-log buffer.
Must not: await, create Tasks, call dnspython, or build Python objects for a hit (the only
object a TCP hit creates is its reply bytes; a UDP hit creates none).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.errno cimport EAGAIN, EINTR, ENOSYS, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from fastdns._logenc cimport LogHead, encode_log, log_record_size
from fastdns._lru cimport Entry, LruCache, entry_offsets, entry_wire
from fastdns._wire cimport (
    HEADER_LEN, MAX_MESSAGE, MAX_NAME_LEN, MAX_UDP_REPLY, OPT_RR_LEN, PARSE_BADVERS, PARSE_DROP,
    PARSE_FORMERR, PARSE_NOTIMP, PARSE_OK, PARSE_REFUSED, Query, read_query, render_cached,
    render_header_only,
)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC
    int CLOCK_REALTIME

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

# recvmmsg/sendmmsg are Linux's (FASTDNS_HAVE_MMSG=0 from setup.py forces them off). Elsewhere
# the names below stand for a stub that fails with ENOSYS, so the batch loop compiles
# unchanged; attach_udp() refuses to start it and the server serves UDP through
# _UdpProtocolBase instead. The renames come after <sys/socket.h>, so they never clash with
# a platform's own mmsghdr.
cdef extern from *:
    """
    #include <errno.h>
    #include <time.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef FASTDNS_HAVE_MMSG
    #  if defined(__linux__)
    #    define FASTDNS_HAVE_MMSG 1
    #  else
    #    define FASTDNS_HAVE_MMSG 0
    #  endif
    #endif
    #if !FASTDNS_HAVE_MMSG
    #define mmsghdr fastdns_mmsghdr
    #define recvmmsg fastdns_recvmmsg
    #define sendmmsg fastdns_sendmmsg
    struct fastdns_mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
    static int fastdns_recvmmsg(int fd, struct fastdns_mmsghdr* v, unsigned int n, int flags,
                                struct timespec* timeout)
    { (void)fd; (void)v; (void)n; (void)flags; (void)timeout; errno = ENOSYS; return -1; }
    static int fastdns_sendmmsg(int fd, struct fastdns_mmsghdr* v, unsigned int n, int flags)
    { (void)fd; (void)v; (void)n; (void)flags; errno = ENOSYS; return -1; }
    #endif
    """
    const int FASTDNS_HAVE_MMSG

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags, timespec* timeout)
    int sendmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags)
    int MSG_DONTWAIT
    int MSG_TRUNC
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t ntohs(uint16_t)
    uint16_t htons(uint16_t)

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)
    int inet_pton(int af, const char* src, void* dst)

cdef enum:
    BATCH = 64                 # datagrams per recvmmsg/sendmmsg call
    MAX_BATCHES_PER_WAKEUP = 16  # then yield to the event loop (TCP, timers, misses)
    IN_BUF = 4096              # larger queries are dropped (MSG_TRUNC)
    OUT_BUF = MAX_UDP_REPLY
    ERR_BUF = HEADER_LEN + MAX_NAME_LEN + 4 + OPT_RR_LEN
    RL_BUCKETS = 65536         # rate-limit table slots (power of two)

cdef enum:
    ACTION_DROP = 0
    ACTION_SEND = 1            # a reply we made: error, refusal, truncation
    ACTION_MISS = 2
    ACTION_HIT = 3             # a reply rendered from the cache


cdef inline double clock_now(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# Whether the UDP batch loop (HitPath.attach_udp/on_readable) exists on this platform.
HAVE_MMSG = FASTDNS_HAVE_MMSG != 0


def monotonic_now() -> float:
    """The clock the hit path uses (CLOCK_MONOTONIC), for the miss path to stay consistent."""
    return clock_now(CLOCK_MONOTONIC)


# A client address reduced to what guards compare: 16 bytes (IPv4 mapped into ::ffff:0:0/96,
# RFC 4291 §2.5.5.2), so one code path serves both families.
cdef struct ClientAddr:
    unsigned char ip[16]
    bint v4


cdef inline void client_addr(const sockaddr* sa, ClientAddr* out) noexcept nogil:
    cdef const sockaddr_in* s4
    cdef const sockaddr_in6* s6
    if sa.sa_family == AF_INET:
        s4 = <const sockaddr_in*>sa
        memset(out.ip, 0, 10)
        out.ip[10] = 0xFF
        out.ip[11] = 0xFF
        memcpy(out.ip + 12, &s4.sin_addr, 4)
        out.v4 = 1
    else:
        s6 = <const sockaddr_in6*>sa
        memcpy(out.ip, s6.sin6_addr.s6_addr, 16)
        out.v4 = (memcmp(out.ip, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0)


# One allowed network: address and prefix length, both in the 16-byte mapped form.
cdef struct Net:
    unsigned char ip[16]
    int prefix


cdef inline bint net_contains(const Net* net, const ClientAddr* a) noexcept nogil:
    cdef int full = net.prefix >> 3
    cdef int rest = net.prefix & 7
    if memcmp(net.ip, a.ip, full) != 0:
        return 0
    if rest == 0:
        return 1
    return (net.ip[full] ^ a.ip[full]) & (0xFF << (8 - rest)) & 0xFF == 0


# A set of networks; `everyone` when it holds both 0.0.0.0/0 and ::/0 (the scan is skipped).
cdef struct NetList:
    Net* nets
    int n
    bint everyone


cdef int net_list_init(NetList* nl, list networks) except -1:
    """networks: (packed address bytes, prefix length) pairs; v4 given as 4 bytes."""
    cdef Net* net
    nl.nets = <Net*>malloc(max(1, len(networks)) * sizeof(Net))
    if nl.nets == NULL:
        raise MemoryError()
    nl.n = 0
    for packed, prefix in networks:
        net = &nl.nets[nl.n]
        memset(net.ip, 0, 16)
        if len(packed) == 4:
            net.ip[10] = 0xFF
            net.ip[11] = 0xFF
            memcpy(net.ip + 12, <const char*>packed, 4)
            net.prefix = 96 + prefix
        else:
            memcpy(net.ip, <const char*>packed, 16)
            net.prefix = prefix
        nl.n += 1
    nl.everyone = (any(len(p) == 4 and n == 0 for p, n in networks)
                   and any(len(p) == 16 and n == 0 for p, n in networks))
    return 0


cdef inline bint net_list_contains(const NetList* nl, const ClientAddr* a) noexcept nogil:
    cdef int i
    if nl.everyone:
        return 1
    for i in range(nl.n):
        if net_contains(&nl.nets[i], a):
            return 1
    return 0


# Token bucket per client. The table is fixed-size and a slot is taken over by a new
# address, so memory stays flat however many sources (spoofed or not) appear.
cdef struct RateSlot:
    unsigned char ip[16]
    double tokens
    double last


@cython.final
cdef class HitPath:
    """Answers what it can in C; hands misses to `on_miss(data, addr)`."""
    cdef readonly LruCache cache
    cdef NetList allowed
    cdef NetList rate_exempt
    cdef double rate_per_s
    cdef double burst
    cdef RateSlot* slots
    cdef uint64_t rl_seed
    cdef bint log_enabled
    cdef unsigned char* log_buf
    cdef size_t log_cap
    # Records are appended at log_len; the pump reads from log_start. The space before
    # log_start is reclaimed when the pump catches up, or by one move (_compact_log) when an
    # append finds no room after log_len.
    #   log_buf: [ drained | waiting: log_start .. log_len | free ... log_cap ]
    cdef size_t log_start
    cdef size_t log_len
    cdef size_t log_batch_mark  # where this recvmmsg batch's records start (moves with them)
    cdef public object on_miss
    cdef int fd
    cdef mmsghdr in_msgs[BATCH]
    cdef iovec in_iov[BATCH]
    cdef sockaddr_storage in_addr[BATCH]
    cdef mmsghdr out_msgs[BATCH]
    cdef iovec out_iov[BATCH]
    cdef unsigned char* in_bufs
    cdef unsigned char* out_bufs
    cdef unsigned char* tcp_out
    # Counters, read at scrape time (DESIGN.md: C integers, never a .inc() per packet).
    cdef readonly uint64_t udp_queries
    cdef readonly uint64_t tcp_queries
    cdef readonly uint64_t dropped
    cdef readonly uint64_t formerr
    cdef readonly uint64_t notimp
    cdef readonly uint64_t refused
    cdef readonly uint64_t badvers
    cdef readonly uint64_t acl_refused
    cdef readonly uint64_t rate_limited
    cdef readonly uint64_t cache_hits
    cdef readonly uint64_t cache_misses
    cdef readonly uint64_t send_errors
    cdef readonly uint64_t log_dropped

    def __cinit__(self, LruCache cache not None, *, list allowed_networks, double rate_per_s,
                  bint log_enabled, list rate_exempt_networks=None,
                  size_t log_buffer_bytes=16 * 1024 * 1024, uint64_t seed=0):
        self.cache = cache
        self.fd = -1
        self.in_bufs = <unsigned char*>malloc(BATCH * IN_BUF)
        self.out_bufs = <unsigned char*>malloc(BATCH * OUT_BUF)
        self.tcp_out = <unsigned char*>malloc(MAX_MESSAGE + OPT_RR_LEN)
        if self.in_bufs == NULL or self.out_bufs == NULL or self.tcp_out == NULL:
            raise MemoryError()
        net_list_init(&self.allowed, allowed_networks)
        net_list_init(&self.rate_exempt, rate_exempt_networks or [])
        self.rate_per_s = rate_per_s
        self.burst = rate_per_s if rate_per_s >= 1 else 1
        self.rl_seed = seed | 1
        if rate_per_s > 0:
            self.slots = <RateSlot*>malloc(RL_BUCKETS * sizeof(RateSlot))
            if self.slots == NULL:
                raise MemoryError()
            memset(self.slots, 0, RL_BUCKETS * sizeof(RateSlot))
            for i in range(RL_BUCKETS):
                self.slots[i].last = -1.0      # unused slot
        self.log_enabled = log_enabled
        if log_enabled:
            self.log_cap = log_buffer_bytes
            self.log_buf = <unsigned char*>malloc(self.log_cap)
            if self.log_buf == NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self.in_bufs)
        free(self.out_bufs)
        free(self.tcp_out)
        free(self.allowed.nets)
        free(self.rate_exempt.nets)
        free(self.slots)
        free(self.log_buf)

    cdef bint take_token(self, const ClientAddr* a, double now) noexcept nogil:
        """Token bucket keyed on the transport source address (IPv6 by /64): the client
        cannot choose its bucket by anything it puts in the packet."""
        cdef unsigned char key[16]
        cdef uint64_t h = self.rl_seed
        cdef int i
        cdef int klen = 16 if a.v4 else 8
        cdef RateSlot* s
        memset(key, 0, 16)
        memcpy(key, a.ip, klen)
        for i in range(klen):
            h = (h ^ key[i]) * <uint64_t>1099511628211ULL
        s = &self.slots[(h ^ (h >> 29)) & (RL_BUCKETS - 1)]
        if s.last < 0 or memcmp(s.ip, key, 16) != 0:
            memcpy(s.ip, key, 16)
            s.tokens = self.burst
            s.last = now
        else:
            s.tokens += (now - s.last) * self.rate_per_s
            if s.tokens > self.burst:
                s.tokens = self.burst
            s.last = now
        if s.tokens >= 1.0:
            s.tokens -= 1.0
            return 1
        return 0

    cdef int process(self, const unsigned char* buf, Py_ssize_t n, const sockaddr* sa, bint udp,
                     double now, unsigned char* out, Py_ssize_t* out_len, Query* q) noexcept:
        """Parse → guards → cache. Guards run in this order, each for a reason:
        1. drop non-queries: answering a response invites reflection loops;
        2. ACL: cheapest, and a refused client learns nothing but REFUSED;
        3. rate limit (UDP only; TCP proves the source; exempt networks skip it): over the
           limit the reply is an empty TC=1, no larger than the query, so the server cannot
           amplify (RRL "slip");
        4. protocol errors get their rcode; 5. the cache answers or it is a miss."""
        cdef ClientAddr a
        cdef int status = read_query(buf, n, q)
        cdef Entry* e
        cdef Py_ssize_t limit
        cdef double age
        if status == PARSE_DROP:
            self.dropped += 1
            return ACTION_DROP
        client_addr(sa, &a)
        if not net_list_contains(&self.allowed, &a):
            self.acl_refused += 1
            out_len[0] = render_header_only(buf, q, 5, 0, out)
            return ACTION_SEND
        if (udp and self.slots != NULL and not net_list_contains(&self.rate_exempt, &a)
                and not self.take_token(&a, now)):
            self.rate_limited += 1
            out_len[0] = render_header_only(buf, q, 0, 1, out)
            return ACTION_SEND
        if status != PARSE_OK:
            if status == PARSE_FORMERR:
                self.formerr += 1
                out_len[0] = render_header_only(buf, q, 1, 0, out)
            elif status == PARSE_NOTIMP:
                self.notimp += 1
                out_len[0] = render_header_only(buf, q, 4, 0, out)
            elif status == PARSE_REFUSED:
                self.refused += 1
                out_len[0] = render_header_only(buf, q, 5, 0, out)
            else:
                self.badvers += 1
                out_len[0] = render_header_only(buf, q, 16, 0, out)   # BADVERS, RFC 6891 §6.1.3
            return ACTION_SEND
        e = self.cache.lookup(q.key, q.key_len, now)
        if e == NULL:
            self.cache_misses += 1
            return ACTION_MISS
        self.cache_hits += 1
        limit = q.udp_limit if udp else MAX_MESSAGE
        if e.wire_len + OPT_RR_LEN > MAX_MESSAGE:
            out_len[0] = render_header_only(buf, q, 0, 1, out)
            return ACTION_HIT
        age = now - e.stored_at
        out_len[0] = render_cached(entry_wire(e), e.wire_len, entry_offsets(e), e.n_ttl,
                                   <uint32_t>age if age > 0 else 0, buf, q, limit, out)
        return ACTION_HIT

    cdef void log_record(self, const unsigned char* query, Py_ssize_t qlen,
                         const unsigned char* reply, Py_ssize_t rlen, const sockaddr* sa,
                         double wall, double elapsed, bint hit, uint16_t upstream) noexcept:
        cdef size_t need = sizeof(LogHead) + qlen + rlen
        cdef LogHead* h
        cdef ClientAddr a
        if self.log_len + need > self.log_cap:
            if self.log_len - self.log_start + need > self.log_cap:
                self.log_dropped += 1  # DNS never waits for logging
                return
            self._compact_log()        # room before log_start that the pump has drained
        h = <LogHead*>(self.log_buf + self.log_len)
        client_addr(sa, &a)
        h.wall_time = wall
        h.elapsed_s = elapsed
        memcpy(h.ip, a.ip, 16)
        h.v4 = a.v4
        h.port = ntohs((<const sockaddr_in*>sa).sin_port)
        h.cache_hit = hit
        h.upstream = upstream
        h.query_len = qlen
        h.reply_len = rlen
        memcpy(<unsigned char*>(h + 1), query, qlen)
        memcpy(<unsigned char*>(h + 1) + qlen, reply, rlen)
        # Keep records 8-byte aligned so the next LogHead's doubles are aligned.
        self.log_len += (need + 7) & ~(<size_t>7)

    cdef void _compact_log(self) noexcept:
        # Move the records still waiting to the front of the buffer.
        cdef size_t shift = self.log_start
        memmove(self.log_buf, self.log_buf + shift, self.log_len - shift)
        self.log_len -= shift
        self.log_batch_mark = self.log_batch_mark - shift if self.log_batch_mark > shift else 0
        self.log_start = 0

    # -- UDP: batches in C ---------------------------------------------------------------

    def attach_udp(self, int fd) -> None:
        """Serve UDP on this non-blocking socket; call on_readable() when it is readable."""
        cdef int i
        if not FASTDNS_HAVE_MMSG:
            raise OSError(ENOSYS, "recvmmsg/sendmmsg are not available on this platform")
        self.fd = fd
        # Everything about the message headers that never changes is set here, once: per
        # batch the kernel rewrites only msg_namelen/msg_flags/msg_len, and we only the
        # destination and length of each reply.
        memset(self.in_msgs, 0, sizeof(self.in_msgs))
        memset(self.out_msgs, 0, sizeof(self.out_msgs))
        for i in range(BATCH):
            self.in_iov[i].iov_base = self.in_bufs + i * IN_BUF
            self.in_iov[i].iov_len = IN_BUF
            self.in_msgs[i].msg_hdr.msg_name = &self.in_addr[i]
            self.in_msgs[i].msg_hdr.msg_iov = &self.in_iov[i]
            self.in_msgs[i].msg_hdr.msg_iovlen = 1
            self.out_iov[i].iov_base = self.out_bufs + i * OUT_BUF
            self.out_msgs[i].msg_hdr.msg_iov = &self.out_iov[i]
            self.out_msgs[i].msg_hdr.msg_iovlen = 1

    def on_readable(self) -> None:
        """Drain the socket in batches: hits, errors and refusals are answered here with one
        sendmmsg per batch; each miss becomes one call to on_miss."""
        cdef int got, i, nsend, sent, batches = 0
        cdef Py_ssize_t n, out_len
        cdef Query q
        cdef int action
        cdef double now, wall, done
        cdef unsigned char* inb
        cdef unsigned char* outb
        if self.fd < 0:
            return
        while batches < MAX_BATCHES_PER_WAKEUP:
            batches += 1
            for i in range(BATCH):
                self.in_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            got = recvmmsg(self.fd, self.in_msgs, BATCH, MSG_DONTWAIT, NULL)
            if got <= 0:
                break
            now = clock_now(CLOCK_MONOTONIC)
            wall = clock_now(CLOCK_REALTIME) if self.log_enabled else 0.0
            self.log_batch_mark = self.log_len
            nsend = 0
            self.udp_queries += got
            for i in range(got):
                if self.in_msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    self.dropped += 1          # larger than any sane query
                    continue
                n = self.in_msgs[i].msg_len
                inb = self.in_bufs + i * IN_BUF
                outb = self.out_bufs + nsend * OUT_BUF
                action = self.process(inb, n, <sockaddr*>&self.in_addr[i], 1, now, outb, &out_len, &q)
                if action == ACTION_SEND or action == ACTION_HIT:
                    self.out_iov[nsend].iov_len = out_len
                    self.out_msgs[nsend].msg_hdr.msg_name = &self.in_addr[i]
                    self.out_msgs[nsend].msg_hdr.msg_namelen = self.in_msgs[i].msg_hdr.msg_namelen
                    nsend += 1
                    if self.log_enabled:
                        self.log_record(inb, n, outb, out_len, <sockaddr*>&self.in_addr[i],
                                        wall, 0.0, action == ACTION_HIT, 0xFFFF)
                elif action == ACTION_MISS:
                    self.on_miss(PyBytes_FromStringAndSize(<char*>inb, n),
                                 sockaddr_to_tuple(<sockaddr*>&self.in_addr[i]))
            sent = 0
            while sent < nsend:
                i = sendmmsg(self.fd, &self.out_msgs[sent], nsend - sent, MSG_DONTWAIT)
                if i < 0:
                    if errno == EINTR:
                        continue
                    # EAGAIN (send buffer full) or a per-destination error: skip one datagram.
                    self.send_errors += 1
                    sent += 1
                    continue
                sent += i
            if self.log_enabled and self.log_len > self.log_batch_mark:
                done = clock_now(CLOCK_MONOTONIC) - now
                self._stamp_elapsed(self.log_batch_mark, done)
            if got < BATCH:
                break

    cdef void _stamp_elapsed(self, size_t start, double elapsed) noexcept:
        cdef LogHead* h
        cdef size_t pos = start
        while pos < self.log_len:
            h = <LogHead*>(self.log_buf + pos)
            h.elapsed_s = elapsed
            pos += (sizeof(LogHead) + h.query_len + h.reply_len + 7) & ~(<size_t>7)

    # -- One message at a time: TCP, and tests --------------------------------------------

    def answer(self, bytes data not None, bytes peer not None, bint udp=False, double now=-1.0):
        """Reply bytes for a hit or a protocol error, None for a miss, b"" for silence.
        peer is a packed sockaddr (see pack_sockaddr)."""
        cdef Query q
        cdef Py_ssize_t out_len = 0
        cdef int action
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef double wall
        if PyBytes_GET_SIZE(peer) < <Py_ssize_t>sizeof(sockaddr_in):
            raise ValueError("peer must be a packed sockaddr (pack_sockaddr)")
        if now < 0:
            now = clock_now(CLOCK_MONOTONIC)
        if udp:
            self.udp_queries += 1
        else:
            self.tcp_queries += 1
        action = self.process(buf, n, <const sockaddr*>PyBytes_AS_STRING(peer), udp, now,
                              self.tcp_out, &out_len, &q)
        if action == ACTION_MISS:
            return None
        if action == ACTION_DROP:
            return b""
        if self.log_enabled:
            wall = clock_now(CLOCK_REALTIME)
            self.log_record(buf, n, self.tcp_out, out_len, <const sockaddr*>PyBytes_AS_STRING(peer),
                            wall, clock_now(CLOCK_MONOTONIC) - now, action == ACTION_HIT, 0xFFFF)
        return PyBytes_FromStringAndSize(<char*>self.tcp_out, out_len)

    def log_miss(self, bytes query not None, bytes reply not None, bytes peer not None,
                 double elapsed_s, int upstream) -> None:
        """Record a reply the miss path sent (upstream: index into the caller's table)."""
        if PyBytes_GET_SIZE(peer) < <Py_ssize_t>sizeof(sockaddr_in):
            raise ValueError("peer must be a packed sockaddr (pack_sockaddr)")
        if not self.log_enabled:
            return
        self.log_record(<const unsigned char*>PyBytes_AS_STRING(query), PyBytes_GET_SIZE(query),
                        <const unsigned char*>PyBytes_AS_STRING(reply), PyBytes_GET_SIZE(reply),
                        <const sockaddr*>PyBytes_AS_STRING(peer),
                        clock_now(CLOCK_REALTIME) - elapsed_s,   # when the query arrived
                        elapsed_s, 0, <uint16_t>upstream if upstream >= 0 else 0xFFFF)

    def drain_log(self) -> list:
        """Every buffered record as (wall_time, client_ip, query, reply, cache_hit,
        upstream_index or -1, elapsed_us); empties the buffer. Runs in the writer task."""
        cdef list out = []
        cdef size_t pos = self.log_start
        cdef LogHead* h
        cdef char text[64]
        cdef const unsigned char* body
        while pos < self.log_len:
            h = <LogHead*>(self.log_buf + pos)
            body = <const unsigned char*>(h + 1)
            if h.v4:
                inet_ntop(AF_INET, h.ip + 12, text, sizeof(text))
            else:
                inet_ntop(AF_INET6, h.ip, text, sizeof(text))
            out.append((h.wall_time, text.decode("ascii"),
                        PyBytes_FromStringAndSize(<const char*>body, h.query_len),
                        PyBytes_FromStringAndSize(<const char*>body + h.query_len, h.reply_len),
                        bool(h.cache_hit), -1 if h.upstream == 0xFFFF else h.upstream,
                        int(h.elapsed_s * 1e6)))
            pos += log_record_size(h)
        self.log_start = self.log_len = 0
        return out

    def drain_log_json(self, list upstream_names not None, random_bytes=None,
                       size_t max_bytes=0) -> bytes:
        """Buffered records as SPEC §4 JSON lines (fastdns._logenc, one call per chunk), oldest
        first, removed from the buffer: all of them, or with max_bytes > 0 the oldest records
        that fit in max_bytes (at least one), so the pump can let the hit path run between
        bounded chunks. upstream_names maps upstream indexes to names; random_bytes (16 per
        record, default os.urandom) supplies the request ids. Runs in the log pump."""
        cdef size_t start = self.log_start
        cdef size_t end = self.log_len
        cdef size_t size
        if max_bytes and end - start > max_bytes:
            end = start + log_record_size(<LogHead*>(self.log_buf + start))
            while end < self.log_len:
                size = log_record_size(<LogHead*>(self.log_buf + end))
                if end - start + size > max_bytes:
                    break
                end += size
        try:
            return encode_log(self.log_buf + start, end - start, upstream_names, random_bytes)
        finally:
            if end == self.log_len:
                self.log_start = self.log_len = 0
            else:
                self.log_start = end   # reclaimed when the pump catches up, or by log_record

    @property
    def log_pending_bytes(self) -> int:
        """Bytes of query-log records waiting for the pump."""
        return self.log_len - self.log_start

    def counters(self) -> dict:
        return {
            "udp_queries": self.udp_queries, "tcp_queries": self.tcp_queries,
            "dropped": self.dropped, "formerr": self.formerr, "notimp": self.notimp,
            "refused": self.refused, "badvers": self.badvers, "acl_refused": self.acl_refused,
            "rate_limited": self.rate_limited, "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses, "send_errors": self.send_errors,
            "log_dropped": self.log_dropped,
        }


# -- UDP one datagram at a time: where recvmmsg/sendmmsg do not exist ---------------------

cdef class _UdpProtocolBase:
    """The plain UDP edge (asyncio.DatagramProtocol methods): each datagram goes through the
    same process() as the batch loop and TCP, with the batch loop's counters and log
    records; the reply leaves by transport.sendto, a miss goes to hitpath.on_miss."""
    cdef HitPath hitpath
    cdef object sendto         # the transport's bound sendto, looked up once
    cdef bint serving
    cdef bint paused           # transport buffer over its high-water mark

    def __init__(self, HitPath hitpath not None):
        self.hitpath = hitpath

    def connection_made(self, transport) -> None:
        self.sendto = transport.sendto
        self.serving = 1

    def connection_lost(self, exc) -> None:
        self.serving = 0
        self.sendto = None

    def stop_serving(self) -> None:
        """Ignore datagrams from now on (graceful stop); the socket stays open for the
        replies the miss path still owes."""
        self.serving = 0

    def pause_writing(self) -> None:
        # The kernel's send buffer is full and the transport is queueing: drop replies, as
        # the batch loop does on EAGAIN, instead of buffering without bound.
        self.paused = 1

    def resume_writing(self) -> None:
        self.paused = 0

    def error_received(self, exc) -> None:
        # asyncio reports a failed sendto here (an unconnected UDP socket gets no ICMP errors).
        self.hitpath.send_errors += 1

    def datagram_received(self, bytes data not None, addr) -> None:
        cdef HitPath hp = self.hitpath
        cdef sockaddr_storage ss
        cdef Query q
        cdef Py_ssize_t out_len = 0
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef int action
        cdef double now, wall = 0.0
        if not self.serving:
            return
        now = clock_now(CLOCK_MONOTONIC)
        if hp.log_enabled:
            wall = clock_now(CLOCK_REALTIME)
        hp.udp_queries += 1
        if n > IN_BUF or sockaddr_from_tuple(addr, &ss) < 0:
            hp.dropped += 1            # what the batch loop drops as MSG_TRUNC
            return
        action = hp.process(buf, n, <const sockaddr*>&ss, 1, now, hp.tcp_out, &out_len, &q)
        if action == ACTION_MISS:
            hp.on_miss(data, addr)
            return
        if action == ACTION_DROP:
            return
        if self.paused:
            hp.send_errors += 1
        else:
            self.sendto(PyBytes_FromStringAndSize(<char*>hp.tcp_out, out_len), addr)
        if hp.log_enabled:
            hp.log_record(buf, n, hp.tcp_out, out_len, <const sockaddr*>&ss, wall,
                          clock_now(CLOCK_MONOTONIC) - now, action == ACTION_HIT, 0xFFFF)


cdef int sockaddr_from_tuple(object addr, sockaddr_storage* out) except -2:
    """Fill `out` from a socket-module address tuple; -1 if it is not an IP address."""
    cdef sockaddr_in* s4 = <sockaddr_in*>out
    cdef sockaddr_in6* s6 = <sockaddr_in6*>out
    cdef const char* host
    cdef const char* scope
    cdef Py_ssize_t host_len
    cdef char text[64]
    if not isinstance(addr, tuple) or len(addr) < 2 or not isinstance(addr[0], str):
        return -1
    host = PyUnicode_AsUTF8AndSize(addr[0], &host_len)
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, host, &s4.sin_addr) == 1:
        s4.sin_family = AF_INET
        s4.sin_port = htons(addr[1])
        return 0
    # A scoped IPv6 literal ("fe80::1%eth0"): the scope travels in addr[3].
    scope = <const char*>memchr(host, ord("%"), host_len)
    if scope != NULL:
        if scope - host >= <Py_ssize_t>sizeof(text):
            return -1
        memcpy(text, host, scope - host)
        text[scope - host] = 0
        host = text
    if inet_pton(AF_INET6, host, &s6.sin6_addr) != 1:
        return -1
    s6.sin6_family = AF_INET6
    s6.sin6_port = htons(addr[1])
    return 0


cdef object sockaddr_to_tuple(const sockaddr* sa):
    """The (host, port[, flowinfo, scope_id]) tuple Python's socket module uses."""
    cdef char text[64]
    cdef const sockaddr_in* s4
    cdef const sockaddr_in6* s6
    if sa.sa_family == AF_INET:
        s4 = <const sockaddr_in*>sa
        inet_ntop(AF_INET, &s4.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(s4.sin_port))
    s6 = <const sockaddr_in6*>sa
    inet_ntop(AF_INET6, &s6.sin6_addr, text, sizeof(text))
    return (text.decode("ascii"), ntohs(s6.sin6_port), s6.sin6_flowinfo, s6.sin6_scope_id)


def pack_sockaddr(tuple addr) -> bytes:
    """Pack a socket-module address tuple as a C sockaddr (done once per TCP connection)."""
    cdef sockaddr_in s4
    cdef sockaddr_in6 s6
    host = addr[0].encode("ascii")
    memset(&s4, 0, sizeof(s4))
    if inet_pton(AF_INET, host, &s4.sin_addr) == 1:
        s4.sin_family = AF_INET
        s4.sin_port = htons(addr[1])
        return PyBytes_FromStringAndSize(<char*>&s4, sizeof(s4))
    memset(&s6, 0, sizeof(s6))
    if inet_pton(AF_INET6, host.split(b"%")[0], &s6.sin6_addr) == 1:
        s6.sin6_family = AF_INET6
        s6.sin6_port = htons(addr[1])
        return PyBytes_FromStringAndSize(<char*>&s6, sizeof(s6))
    raise ValueError(f"not an IP address: {addr[0]!r}")
