# cython: language_level=3
"""Byte-bounded LRU with TTL expiry for stored replies, entirely in C memory.

Owns: hashing (CPython's keyed SipHash, so attackers cannot aim for one bucket), recency
order, byte accounting, eviction and lazy expiry. Must not: read the clock, parse DNS or
decide TTL policy; `now` and `lifetime_s` come from the caller (fastdns.cache).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    Py_hash_t _Py_HashBytes(const void* src, Py_ssize_t length) nogil

cdef enum:
    INITIAL_BUCKETS = 1024
    BUCKET_BYTES = 8          # the bucket pointer each entry costs, counted against the limit


cdef inline size_t hash_key(const unsigned char* key, Py_ssize_t key_len) noexcept:
    return <size_t>_Py_HashBytes(key, key_len)


@cython.final
cdef class LruCache:
    """Maps cache keys to stored replies; evicts least recently used past `max_bytes`."""

    def __cinit__(self, size_t max_bytes):
        self.buckets = <Entry**>PyMem_Calloc(INITIAL_BUCKETS, sizeof(Entry*))
        if self.buckets == NULL:
            raise MemoryError()
        self.mask = INITIAL_BUCKETS - 1
        self.max_bytes = max_bytes

    def __dealloc__(self):
        self._free_all()
        PyMem_Free(self.buckets)

    cdef void _free_all(self) noexcept:
        cdef Entry* e = self.head
        cdef Entry* nxt
        while e != NULL:
            nxt = e.next
            free(e)
            e = nxt
        self.head = self.tail = NULL
        if self.buckets != NULL:
            for i in range(self.mask + 1):
                self.buckets[i] = NULL
        self.entries = 0
        self.bytes_used = 0

    cdef void unlink(self, Entry* e) noexcept:
        """Remove e from its bucket and the LRU list and free it."""
        cdef Entry** slot = &self.buckets[e.hash & self.mask]
        while slot[0] != e:
            slot = &slot[0].hnext
        slot[0] = e.hnext
        if e.prev != NULL:
            e.prev.next = e.next
        else:
            self.head = e.next
        if e.next != NULL:
            e.next.prev = e.prev
        else:
            self.tail = e.prev
        self.entries -= 1
        self.bytes_used -= e.alloc_size
        free(e)

    cdef Entry* lookup(self, const unsigned char* key, Py_ssize_t key_len, double now) noexcept:
        """The live entry for key (moved to the front), or NULL. Expired entries are removed."""
        cdef size_t h = hash_key(key, key_len)
        cdef Entry* e = self.buckets[h & self.mask]
        while e != NULL:
            if e.hash == h and e.key_len == key_len and memcmp(entry_key(e), key, key_len) == 0:
                break
            e = e.hnext
        if e == NULL:
            self.misses += 1
            return NULL
        if e.expires_at <= now:
            self.unlink(e)
            self.expirations += 1
            self.misses += 1
            return NULL
        if e != self.head:          # move to front
            e.prev.next = e.next
            if e.next != NULL:
                e.next.prev = e.prev
            else:
                self.tail = e.prev
            e.prev = NULL
            e.next = self.head
            self.head.prev = e
            self.head = e
        self.hits += 1
        return e

    cdef int grow(self) except -1:
        cdef size_t new_size = (self.mask + 1) * 2
        cdef Entry** nb = <Entry**>PyMem_Calloc(new_size, sizeof(Entry*))
        cdef Entry* e
        cdef Entry* nxt
        if nb == NULL:
            raise MemoryError()
        for i in range(self.mask + 1):
            e = self.buckets[i]
            while e != NULL:
                nxt = e.hnext
                e.hnext = nb[e.hash & (new_size - 1)]
                nb[e.hash & (new_size - 1)] = e
                e = nxt
        PyMem_Free(self.buckets)
        self.buckets = nb
        self.mask = new_size - 1
        return 0

    cdef int store(self, const unsigned char* key, Py_ssize_t key_len,
                   const unsigned char* wire, Py_ssize_t wire_len,
                   const uint16_t* offsets, Py_ssize_t n_ttl,
                   double now, double lifetime_s) except -1:
        """Insert or replace key. Returns 1 if stored, 0 if it can never fit."""
        cdef size_t h = hash_key(key, key_len)
        cdef size_t size = sizeof(Entry) + 2 * n_ttl + key_len + wire_len
        cdef Entry* e = self.buckets[h & self.mask]
        cdef Entry* old = NULL
        if key_len > 0xFFFF or n_ttl > 0xFFFF or wire_len > 0xFFFF:
            raise ValueError("entry too large")
        if size + BUCKET_BYTES > self.max_bytes:
            return 0
        while e != NULL:
            if e.hash == h and e.key_len == key_len and memcmp(entry_key(e), key, key_len) == 0:
                old = e
                break
            e = e.hnext
        if old != NULL:
            self.unlink(old)
        e = <Entry*>malloc(size)
        if e == NULL:
            raise MemoryError()
        e.hash = h
        e.stored_at = now
        e.expires_at = now + lifetime_s
        e.alloc_size = size + BUCKET_BYTES
        e.wire_len = wire_len
        e.key_len = key_len
        e.n_ttl = n_ttl
        memcpy(entry_offsets(e), offsets, 2 * n_ttl)
        memcpy(entry_key(e), key, key_len)
        memcpy(entry_wire(e), wire, wire_len)
        e.hnext = self.buckets[h & self.mask]
        self.buckets[h & self.mask] = e
        e.prev = NULL
        e.next = self.head
        if self.head != NULL:
            self.head.prev = e
        else:
            self.tail = e
        self.head = e
        self.entries += 1
        self.bytes_used += e.alloc_size
        self.inserts += 1
        while self.bytes_used > self.max_bytes and self.tail != NULL:
            self.unlink(self.tail)
            self.evictions += 1
        if self.entries > self.mask + 1:
            self.grow()
        return 1

    # -- Python API: the miss path, admin and tests ------------------------------------------

    def put(self, bytes key not None, bytes wire not None, bytes ttl_offsets not None,
            double now, double lifetime_s) -> bool:
        """Store a prepared reply (ttl_offsets: native uint16 array as bytes)."""
        return self.store(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                          <const unsigned char*>PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire),
                          <const uint16_t*>PyBytes_AS_STRING(ttl_offsets),
                          PyBytes_GET_SIZE(ttl_offsets) // 2, now, lifetime_s) == 1

    def get(self, bytes key not None, double now):
        """(wire, ttl_offsets, stored_at, expires_at) for a live key, or None. Counts a hit/miss."""
        cdef Entry* e = self.lookup(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), now)
        if e == NULL:
            return None
        return _entry_tuple(e)

    def peek(self, bytes key not None):
        """Like get, but without touching recency, counters or expiry (for inspection)."""
        cdef size_t h = hash_key(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        cdef Entry* e = self.buckets[h & self.mask]
        while e != NULL:
            if (e.hash == h and e.key_len == PyBytes_GET_SIZE(key)
                    and memcmp(entry_key(e), PyBytes_AS_STRING(key), e.key_len) == 0):
                return _entry_tuple(e)
            e = e.hnext
        return None

    def remove_where(self, predicate) -> int:
        """Remove every entry whose key satisfies predicate(key: bytes); returns how many."""
        cdef Entry* e = self.head
        cdef Entry* nxt
        cdef int removed = 0
        while e != NULL:
            nxt = e.next
            if predicate(PyBytes_FromStringAndSize(<char*>entry_key(e), e.key_len)):
                self.unlink(e)
                removed += 1
            e = nxt
        return removed

    def keys(self) -> list:
        """Every key, most recently used first."""
        cdef list out = []
        cdef Entry* e = self.head
        while e != NULL:
            out.append(PyBytes_FromStringAndSize(<char*>entry_key(e), e.key_len))
            e = e.next
        return out

    def clear(self) -> None:
        self._free_all()

    def __len__(self) -> int:
        return self.entries


cdef tuple _entry_tuple(Entry* e):
    return (PyBytes_FromStringAndSize(<char*>entry_wire(e), e.wire_len),
            PyBytes_FromStringAndSize(<char*>entry_offsets(e), 2 * e.n_ttl),
            e.stored_at, e.expires_at)
