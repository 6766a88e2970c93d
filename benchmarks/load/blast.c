/* blast: a DNS load generator that is cheaper per query than the servers it drives.
 *
 * Owns: reading a dnsperf query file ("name TYPE" per line), encoding every query once,
 * and keeping a fixed window of queries outstanding against 127.0.0.1 over UDP
 * (sendmmsg/recvmmsg batches on one or a few sockets) or over many TCP connections (epoll),
 * with random IDs; counting sent/answered/lost, response codes and latency, and printing
 * one JSON line. Optional: Zipf-distributed name choice (-z), a cap on qps (-Q), retries of
 * timed-out queries (-r), and a file that remembers which names were already sent (-k), so
 * that a warm-up and the measured run share the "seen before" set.
 * Must not: talk to anything but 127.0.0.1 (the address is not an option).
 *
 * Built at run time by benchmarks/load/blast.py with the machine's gcc:
 *   gcc -O2 -o blast blast.c -lm
 * Usage: blast -p PORT -d FILE [-m udp|tcp] [-l SECONDS] [-n PASSES] [-w WINDOW]
 *              [-c SOCKETS_OR_CONNECTIONS] [-t TIMEOUT_S] [-r RETRIES] [-Q QPS]
 *              [-z ZIPF_S] [-k SEEN_FILE]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXQ 300
#define RBUF 1500
#define IDS 65536

static void die(const char *msg) { perror(msg); exit(2); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_state;
static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static double urand(void) { return (rng() >> 11) * (1.0 / 9007199254740992.0); }

/* --- queries ------------------------------------------------------------------------- */
static uint8_t *qbuf; static uint32_t *qoff; static uint16_t *qlen; static size_t nq;
static double *zcdf;           /* Zipf CDF over the file's names, in file order (rank 1 first) */
static uint8_t *seen;          /* one bit per name: already sent once (ever, with -k) */
static uint64_t distinct, repeats;

static int qtype_of(const char *t) {
    static const struct { const char *n; int v; } map[] = {
        {"A", 1}, {"NS", 2}, {"CNAME", 5}, {"SOA", 6}, {"PTR", 12}, {"MX", 15}, {"TXT", 16},
        {"AAAA", 28}, {"SRV", 33}, {"DS", 43}, {"DNSKEY", 48}, {"HTTPS", 65}, {"ANY", 255}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcasecmp(t, map[i].n)) return map[i].v;
    return atoi(t) > 0 ? atoi(t) : 1;
}

static void load_queries(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    size_t cap = 1 << 16, bcap = 1 << 22, bused = 0;
    qoff = malloc(cap * sizeof *qoff); qlen = malloc(cap * sizeof *qlen); qbuf = malloc(bcap);
    char line[1024], name[512], type[32];
    while (fgets(line, sizeof line, f)) {
        type[0] = 0;
        if (sscanf(line, "%511s %31s", name, type) < 1 || name[0] == '#') continue;
        if (nq == cap) { cap *= 2; qoff = realloc(qoff, cap * sizeof *qoff);
                         qlen = realloc(qlen, cap * sizeof *qlen); }
        if (bused + MAXQ > bcap) { bcap *= 2; qbuf = realloc(qbuf, bcap); }
        uint8_t *p = qbuf + bused, *w = p;
        static const uint8_t hdr[12] = {0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}; /* RD, QD=1 */
        memcpy(w, hdr, 12); w += 12;
        for (char *label = name; *label;) {
            char *dot = strchr(label, '.');
            size_t len = dot ? (size_t)(dot - label) : strlen(label);
            if (len == 0 || len > 63 || w + len + 6 - p > MAXQ) break;
            *w++ = (uint8_t)len; memcpy(w, label, len); w += len;
            if (!dot) break;
            label = dot + 1;
        }
        *w++ = 0;
        int t = type[0] ? qtype_of(type) : 1;
        *w++ = (uint8_t)(t >> 8); *w++ = (uint8_t)t; *w++ = 0; *w++ = 1;
        qoff[nq] = (uint32_t)bused; qlen[nq] = (uint16_t)(w - p); bused += (size_t)(w - p); nq++;
    }
    fclose(f);
    if (!nq) { fprintf(stderr, "blast: no queries in %s\n", path); exit(2); }
}

/* --- work source: retries first, then sequential passes or Zipf draws ----------------- */
static long passes = 0;        /* 0: unlimited */
static size_t seq_next; static long seq_pass;
static uint32_t *retryq; static size_t rq_head, rq_len, rq_cap;
static uint8_t *retryt;        /* tries so far of each queued retry */
static int stop_sending;

static int next_query(uint32_t *idx, uint8_t *tries) {
    if (rq_len) {
        *idx = retryq[rq_head]; *tries = retryt[rq_head];
        rq_head = (rq_head + 1) % rq_cap; rq_len--;
        return 1;
    }
    if (stop_sending) return 0;
    if (zcdf) {
        double u = urand();
        size_t lo = 0, hi = nq - 1;
        while (lo < hi) { size_t mid = (lo + hi) / 2; if (zcdf[mid] < u) lo = mid + 1; else hi = mid; }
        *idx = (uint32_t)lo;
    } else {
        if (passes && seq_pass >= passes) return 0;
        *idx = (uint32_t)seq_next;
        if (++seq_next == nq) { seq_next = 0; seq_pass++; }
    }
    *tries = 0;
    if (seen[*idx >> 3] & (1 << (*idx & 7))) repeats++;
    else { seen[*idx >> 3] |= (uint8_t)(1 << (*idx & 7)); distinct++; }
    return 1;
}
static int have_work(void) {
    return rq_len || (!stop_sending && (zcdf || !passes || seq_pass < passes));
}
static void requeue(uint32_t idx, uint8_t tries) {
    size_t at = (rq_head + rq_len) % rq_cap;
    retryq[at] = idx; retryt[at] = tries; rq_len++;
}

/* --- accounting ---------------------------------------------------------------------- */
static uint64_t sent, completed, lost, retried, noanswer, lat_sum, lat_max, lat_min = UINT64_MAX;
static uint64_t rcodes[16];
static int max_retries = 0;
static uint64_t timeout_ns = 5000000000ull;

static void lost_or_retry(uint32_t idx, uint8_t tries) {
    if (tries < max_retries) { requeue(idx, tries + 1); retried++; }
    else lost++;
}

/* Header and question of a reply must match what we sent for this index. */
static int check_reply(const uint8_t *r, size_t n, uint32_t idx, uint64_t sent_at, uint64_t t) {
    const uint8_t *q = qbuf + qoff[idx];
    size_t ql = qlen[idx];
    if (n < ql || !(r[2] & 0x80) || memcmp(r + 12, q + 12, ql - 12)) return 0;
    int rc = r[3] & 0x0f;
    rcodes[rc]++;
    if (rc == 0 && r[6] == 0 && r[7] == 0) noanswer++;
    uint64_t lat = t - sent_at;
    lat_sum += lat; if (lat > lat_max) lat_max = lat; if (lat < lat_min) lat_min = lat;
    completed++;
    return 1;
}

/* --- UDP ----------------------------------------------------------------------------- */
struct slot { uint64_t sent_at; uint32_t idx; uint8_t tries, busy; };
struct usock { int fd; size_t inflight; struct slot *slots; uint16_t *free_ids; size_t fhead, flen; };

static struct sockaddr_in server;

static void run_udp(int nsock, size_t window, double duration, double max_qps, uint64_t *t0, uint64_t *t1) {
    struct usock *s = calloc((size_t)nsock, sizeof *s);
    size_t cap = (window + (size_t)nsock - 1) / (size_t)nsock;
    if (cap > IDS - 1) cap = IDS - 1;
    struct pollfd *pfd = calloc((size_t)nsock, sizeof *pfd);
    for (int i = 0; i < nsock; i++) {
        s[i].fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (s[i].fd < 0) die("socket");
        int buf = 8 << 20;
        if (setsockopt(s[i].fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf))
            setsockopt(s[i].fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
        if (setsockopt(s[i].fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf))
            setsockopt(s[i].fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        if (connect(s[i].fd, (struct sockaddr *)&server, sizeof server)) die("connect");
        s[i].slots = calloc(IDS, sizeof *s[i].slots);
        s[i].free_ids = malloc(IDS * sizeof *s[i].free_ids);
        for (size_t k = 0; k < IDS; k++) s[i].free_ids[k] = (uint16_t)k;
        for (size_t k = IDS - 1; k > 0; k--) { /* random order, so IDs are unpredictable */
            size_t j = rng() % (k + 1); uint16_t x = s[i].free_ids[k];
            s[i].free_ids[k] = s[i].free_ids[j]; s[i].free_ids[j] = x;
        }
        s[i].flen = IDS;
        pfd[i].fd = s[i].fd; pfd[i].events = POLLIN;
    }
    static uint8_t out[BATCH][MAXQ], in[BATCH][RBUF];
    struct mmsghdr msgs[BATCH]; struct iovec iov[BATCH]; uint16_t ids[BATCH];
    uint64_t start = now_ns(), deadline = duration > 0 ? start + (uint64_t)(duration * 1e9) : 0;
    uint64_t last_scan = start, end_send = 0, last_event = start;
    *t0 = start;
    for (;;) {
        uint64_t t = now_ns();
        size_t inflight = 0;
        for (int i = 0; i < nsock; i++) inflight += s[i].inflight;
        if (!stop_sending && deadline && t >= deadline) stop_sending = 1;
        if (!end_send && !have_work()) { stop_sending = 1; end_send = t; }
        if (end_send && inflight == 0 && rq_len == 0) break;
        if (end_send && t > end_send + timeout_ns + 100000000ull) break;
        int rate_limited = 0;
        /* send */
        for (int i = 0; i < nsock; i++) {
            struct usock *u = &s[i];
            while (u->inflight < cap && have_work()) {
                int n = 0;
                while (n < BATCH && u->inflight + (size_t)n < cap) {
                    if (max_qps > 0 && (double)(sent + (uint64_t)n) >= max_qps * (double)(t - start) / 1e9) {
                        rate_limited = 1; break;
                    }
                    uint32_t idx; uint8_t tries;
                    if (!next_query(&idx, &tries)) break;
                    uint16_t id = u->free_ids[u->fhead]; u->fhead = (u->fhead + 1) % IDS; u->flen--;
                    memcpy(out[n], qbuf + qoff[idx], qlen[idx]);
                    out[n][0] = (uint8_t)(id >> 8); out[n][1] = (uint8_t)id;
                    iov[n].iov_base = out[n]; iov[n].iov_len = qlen[idx];
                    memset(&msgs[n].msg_hdr, 0, sizeof msgs[n].msg_hdr);
                    msgs[n].msg_hdr.msg_iov = &iov[n]; msgs[n].msg_hdr.msg_iovlen = 1;
                    u->slots[id] = (struct slot){t, idx, tries, 1};
                    ids[n++] = id;
                }
                if (n == 0) break;
                int k = sendmmsg(u->fd, msgs, (unsigned)n, 0);
                if (k < 0) k = 0;
                for (int j = 0; j < n; j++) {
                    if (j < k) continue;
                    struct slot *sl = &u->slots[ids[j]]; /* not sent: back to the queue */
                    sl->busy = 0; requeue(sl->idx, sl->tries);
                    u->free_ids[(u->fhead + u->flen) % IDS] = ids[j]; u->flen++;
                }
                u->inflight += (size_t)k; sent += (uint64_t)k;
                if (k < n) break;
            }
        }
        /* receive */
        int got = 0;
        for (int i = 0; i < nsock; i++) {
            struct usock *u = &s[i];
            for (;;) {
                for (int j = 0; j < BATCH; j++) {
                    iov[j].iov_base = in[j]; iov[j].iov_len = RBUF;
                    memset(&msgs[j].msg_hdr, 0, sizeof msgs[j].msg_hdr);
                    msgs[j].msg_hdr.msg_iov = &iov[j]; msgs[j].msg_hdr.msg_iovlen = 1;
                }
                int k = recvmmsg(u->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                if (k <= 0) break;
                uint64_t tr = now_ns();
                got += k; last_event = tr;
                for (int j = 0; j < k; j++) {
                    if (msgs[j].msg_len < 12) continue;
                    uint16_t id = (uint16_t)(in[j][0] << 8 | in[j][1]);
                    struct slot *sl = &u->slots[id];
                    if (!sl->busy) continue;
                    if (!check_reply(in[j], msgs[j].msg_len, sl->idx, sl->sent_at, tr)) continue;
                    sl->busy = 0; u->inflight--;
                    u->free_ids[(u->fhead + u->flen) % IDS] = id; u->flen++;
                }
                if (k < BATCH) break;
            }
        }
        t = now_ns();
        if (t - last_scan > 50000000ull) { /* timeouts */
            last_scan = t;
            for (int i = 0; i < nsock; i++)
                for (size_t id = 0; id < IDS; id++) {
                    struct slot *sl = &s[i].slots[id];
                    if (!sl->busy || t - sl->sent_at < timeout_ns) continue;
                    sl->busy = 0; s[i].inflight--;
                    s[i].free_ids[(s[i].fhead + s[i].flen) % IDS] = (uint16_t)id; s[i].flen++;
                    lost_or_retry(sl->idx, sl->tries);
                }
        }
        if (!got) poll(pfd, (nfds_t)nsock, rate_limited ? 1 : 10);
    }
    for (int i = 0; i < nsock; i++) {
        for (size_t id = 0; id < IDS; id++) if (s[i].slots[id].busy) lost++;
        close(s[i].fd);
    }
    lost += rq_len; /* queued retries never sent */
    *t1 = completed ? last_event : now_ns();
}

/* --- TCP ----------------------------------------------------------------------------- */
struct tslot { uint64_t sent_at; uint32_t idx; uint16_t id; uint8_t tries, busy; };
struct tconn {
    int fd, connected; size_t inflight;
    struct tslot *slots;
    uint8_t *rbuf; size_t rlen;
    uint8_t *wbuf; size_t wlen;
};
#define TRBUF 65536
#define TWBUF 65536

static int tcp_open(struct tconn *c, int ep, int index) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&server, sizeof server) && errno != EINPROGRESS) {
        close(c->fd); c->fd = -1; return -1;
    }
    c->connected = 0; c->rlen = c->wlen = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)index};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void tcp_close(struct tconn *c, size_t depth, int requeue_inflight) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1; c->connected = 0;
    for (size_t j = 0; j < depth; j++)
        if (c->slots[j].busy) {
            c->slots[j].busy = 0;
            if (requeue_inflight) lost_or_retry(c->slots[j].idx, c->slots[j].tries); else lost++;
        }
    c->inflight = 0;
}

static int tcp_flush(struct tconn *c, int ep, int index) {
    while (c->wlen) {
        ssize_t k = write(c->fd, c->wbuf, c->wlen);
        if (k < 0) {
            if (errno == EAGAIN || errno == ENOTCONN) break;
            return -1;
        }
        memmove(c->wbuf, c->wbuf + k, c->wlen - (size_t)k); c->wlen -= (size_t)k;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->wlen ? EPOLLOUT : 0), .data.u32 = (uint32_t)index};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* Top connection i up to `depth` queries in flight; 1 if the qps cap stopped it. */
static int tcp_refill(struct tconn *c, int i, int ep, size_t depth, double max_qps, uint64_t start,
                      uint64_t t, size_t *inflight) {
    struct tconn *x = &c[i];
    int limited = 0;
    if (!x->connected || x->fd < 0 || x->inflight >= depth) return 0;
    for (size_t j = 0; j < depth && have_work(); j++) {
        if (x->slots[j].busy) continue;
        if (max_qps > 0 && (double)sent >= max_qps * (double)(t - start) / 1e9) { limited = 1; break; }
        if (x->wlen + MAXQ + 2 > TWBUF) break;
        uint32_t idx; uint8_t tries;
        if (!next_query(&idx, &tries)) break;
        uint16_t id = (uint16_t)rng();
        uint8_t *w = x->wbuf + x->wlen;
        w[0] = (uint8_t)(qlen[idx] >> 8); w[1] = (uint8_t)qlen[idx];
        memcpy(w + 2, qbuf + qoff[idx], qlen[idx]);
        w[2] = (uint8_t)(id >> 8); w[3] = (uint8_t)id;
        x->wlen += 2u + qlen[idx];
        x->slots[j] = (struct tslot){t, idx, id, tries, 1};
        x->inflight++; (*inflight)++; sent++;
    }
    if (x->wlen && tcp_flush(x, ep, i)) { *inflight -= x->inflight; tcp_close(x, depth, 1); }
    return limited;
}

static void run_tcp(int nconn, size_t window, double duration, double max_qps, uint64_t *t0, uint64_t *t1) {
    size_t depth = window / (size_t)nconn; if (depth < 1) depth = 1;
    struct tconn *c = calloc((size_t)nconn, sizeof *c);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        c[i].slots = calloc(depth, sizeof *c[i].slots);
        c[i].rbuf = malloc(TRBUF); c[i].wbuf = malloc(TWBUF);
        if (tcp_open(&c[i], ep, i)) die("tcp connect");
    }
    struct epoll_event evs[256];
    /* Connect everything first: the run measures answering, not the accept backlog. */
    int up = 0; uint64_t cdead = now_ns() + 15000000000ull;
    while (up < nconn && now_ns() < cdead) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < n; e++) {
            struct tconn *x = &c[evs[e].data.u32];
            if (x->connected || x->fd < 0) continue;
            int err = 0; socklen_t el = sizeof err;
            getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) { close(x->fd); x->fd = -1; continue; }
            x->connected = 1; up++;
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[e].data.u32};
            epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
        }
    }
    fprintf(stderr, "blast: %d of %d TCP connections up\n", up, nconn);
    uint64_t start = now_ns(), deadline = duration > 0 ? start + (uint64_t)(duration * 1e9) : 0;
    uint64_t last_scan = start, end_send = 0, last_event = start;
    size_t inflight = 0;
    int full_sweep = 1;
    *t0 = start;
    for (;;) {
        uint64_t t = now_ns();
        if (!stop_sending && deadline && t >= deadline) stop_sending = 1;
        if (!end_send && !have_work()) { stop_sending = 1; end_send = t; }
        if (end_send && inflight == 0 && rq_len == 0) break;
        if (end_send && t > end_send + timeout_ns + 100000000ull) break;
        int rate_limited = 0;
        if (full_sweep) {
            full_sweep = 0;
            for (int i = 0; i < nconn && have_work(); i++)
                rate_limited |= tcp_refill(c, i, ep, depth, max_qps, start, t, &inflight);
        }
        int n = epoll_wait(ep, evs, 256, rate_limited ? 1 : (inflight ? 10 : 1));
        uint64_t tr = now_ns();
        for (int e = 0; e < n; e++) {
            int i = (int)evs[e].data.u32;
            struct tconn *x = &c[i];
            if (x->fd < 0) continue;
            if (!x->connected) {
                if (!(evs[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                int err = 0; socklen_t el = sizeof err;
                getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { close(x->fd); x->fd = -1; continue; }
                x->connected = 1; full_sweep = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
                continue;
            }
            if (evs[e].events & EPOLLOUT) {
                if (tcp_flush(x, ep, i)) { inflight -= x->inflight; tcp_close(x, depth, 1); continue; }
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t k = read(x->fd, x->rbuf + x->rlen, TRBUF - x->rlen);
            if (k <= 0) {
                if (k < 0 && errno == EAGAIN) continue;
                inflight -= x->inflight; tcp_close(x, depth, 1); /* server closed it */
                continue;
            }
            x->rlen += (size_t)k; last_event = tr;
            size_t off = 0;
            while (x->rlen - off >= 2) {
                size_t mlen = (size_t)x->rbuf[off] << 8 | x->rbuf[off + 1];
                if (x->rlen - off < 2 + mlen) break;
                const uint8_t *m = x->rbuf + off + 2;
                if (mlen >= 12) {
                    uint16_t id = (uint16_t)(m[0] << 8 | m[1]);
                    for (size_t j = 0; j < depth; j++) {
                        struct tslot *sl = &x->slots[j];
                        if (!sl->busy || sl->id != id) continue;
                        if (check_reply(m, mlen, sl->idx, sl->sent_at, tr)) {
                            sl->busy = 0; x->inflight--; inflight--;
                        }
                        break;
                    }
                }
                off += 2 + mlen;
            }
            memmove(x->rbuf, x->rbuf + off, x->rlen - off); x->rlen -= off;
            if (have_work()) rate_limited |= tcp_refill(c, i, ep, depth, max_qps, start, tr, &inflight);
        }
        if (rate_limited || rq_len) full_sweep = 1;
        if (tr - last_scan > 50000000ull) {
            last_scan = tr;
            for (int i = 0; i < nconn; i++)
                for (size_t j = 0; j < depth; j++) {
                    struct tslot *sl = &c[i].slots[j];
                    if (!sl->busy || tr - sl->sent_at < timeout_ns) continue;
                    sl->busy = 0; c[i].inflight--; inflight--;
                    lost_or_retry(sl->idx, sl->tries);
                }
            full_sweep = 1;
        }
        /* Reconnect closed connections while there is still work. */
        if (!stop_sending)
            for (int i = 0; i < nconn; i++)
                if (c[i].fd < 0) tcp_open(&c[i], ep, i);
    }
    for (int i = 0; i < nconn; i++) {
        for (size_t j = 0; j < depth; j++) if (c[i].slots[j].busy) lost++;
        if (c[i].fd >= 0) close(c[i].fd);
    }
    lost += rq_len;
    *t1 = completed ? last_event : now_ns();
}

/* --- main ---------------------------------------------------------------------------- */
int main(int argc, char **argv) {
    int port = 0, nsock = 1, tcp = 0, opt;
    size_t window = 1000;
    double duration = 0, max_qps = 0, zipf = 0;
    const char *file = NULL, *seen_path = NULL;
    while ((opt = getopt(argc, argv, "p:d:m:l:n:w:c:t:r:Q:z:k:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'd': file = optarg; break;
        case 'm': tcp = !strcmp(optarg, "tcp"); break;
        case 'l': duration = atof(optarg); break;
        case 'n': passes = atol(optarg); break;
        case 'w': window = (size_t)atol(optarg); break;
        case 'c': nsock = atoi(optarg); break;
        case 't': timeout_ns = (uint64_t)(atof(optarg) * 1e9); break;
        case 'r': max_retries = atoi(optarg); break;
        case 'Q': max_qps = atof(optarg); break;
        case 'z': zipf = atof(optarg); break;
        case 'k': seen_path = optarg; break;
        default:
            fprintf(stderr, "usage: blast -p PORT -d FILE [-m udp|tcp] [-l S] [-n PASSES] [-w WINDOW] "
                            "[-c N] [-t TIMEOUT] [-r RETRIES] [-Q QPS] [-z S] [-k SEEN_FILE]\n");
            return 2;
        }
    }
    if (!port || !file || window < 1 || nsock < 1) { fprintf(stderr, "blast: -p and -d are required\n"); return 2; }
    if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || !rng_state) rng_state = now_ns() | 1;
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET; server.sin_port = htons((uint16_t)port);
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1, and nothing else */
    load_queries(file);
    seen = calloc((nq + 7) / 8, 1);
    if (seen_path) {
        FILE *f = fopen(seen_path, "rb");
        if (f) { if (fread(seen, 1, (nq + 7) / 8, f) != (nq + 7) / 8) memset(seen, 0, (nq + 7) / 8); fclose(f); }
    }
    if (zipf > 0) {
        zcdf = malloc(nq * sizeof *zcdf);
        double sum = 0;
        for (size_t i = 0; i < nq; i++) { sum += pow((double)(i + 1), -zipf); zcdf[i] = sum; }
        for (size_t i = 0; i < nq; i++) zcdf[i] /= sum;
        if (duration <= 0) { fprintf(stderr, "blast: -z needs -l\n"); return 2; }
    }
    rq_cap = window + (size_t)nsock * BATCH + 1;
    if (tcp) rq_cap = window + (size_t)nsock + 1;
    retryq = malloc(rq_cap * sizeof *retryq); retryt = malloc(rq_cap);
    uint64_t t0, t1;
    if (tcp) run_tcp(nsock, window, duration, max_qps, &t0, &t1);
    else run_udp(nsock, window, duration, max_qps, &t0, &t1);
    if (seen_path) {
        FILE *f = fopen(seen_path, "wb");
        if (f) { fwrite(seen, 1, (nq + 7) / 8, f); fclose(f); }
    }
    static const char *names[16] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
        "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13",
        "RCODE14", "RCODE15"};
    double secs = (double)(t1 - t0) / 1e9;
    printf("{\"mode\": \"%s\", \"names\": %zu, \"sent\": %llu, \"completed\": %llu, \"lost\": %llu, "
           "\"retried\": %llu, \"run_time_s\": %.6f, \"qps\": %.1f, \"avg_latency_s\": %.9f, "
           "\"min_latency_s\": %.9f, \"max_latency_s\": %.9f, \"noerror_without_answer\": %llu, "
           "\"distinct\": %llu, \"repeats\": %llu, \"rcodes\": {",
           tcp ? "tcp" : "udp", nq, (unsigned long long)sent, (unsigned long long)completed,
           (unsigned long long)lost, (unsigned long long)retried, secs,
           secs > 0 ? (double)completed / secs : 0.0,
           /* -1: nothing answered (JSON has no NaN) */
           completed ? (double)lat_sum / (double)completed / 1e9 : -1.0,
           completed ? (double)lat_min / 1e9 : -1.0, completed ? (double)lat_max / 1e9 : -1.0,
           (unsigned long long)noanswer, (unsigned long long)distinct, (unsigned long long)repeats);
    int first = 1;
    for (int i = 0; i < 16; i++)
        if (rcodes[i]) { printf("%s\"%s\": %llu", first ? "" : ", ", names[i], (unsigned long long)rcodes[i]); first = 0; }
    printf("}}\n");
    return 0;
}
