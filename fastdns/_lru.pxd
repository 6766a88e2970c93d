# Byte-bounded LRU of stored replies, keyed by the wire cache key. All memory is C memory.
from libc.stdint cimport uint16_t, uint32_t, uint64_t

# One malloc per entry. Layout:
#
#   +---------------------------+  <- Entry*
#   | hnext, prev, next, hash,  |     chain in its hash bucket; doubly linked LRU list
#   | stored_at, expires_at,    |     monotonic seconds (caller's clock)
#   | sizes                     |
#   +---------------------------+  <- entry_offsets(e): uint16 ttl_offsets[n_ttl]
#   | key bytes [key_len]       |  <- entry_key(e)
#   | wire bytes [wire_len]     |  <- entry_wire(e): OPT stripped, TTLs at original values
#   +---------------------------+
cdef struct Entry:
    Entry* hnext
    Entry* prev
    Entry* next
    size_t hash
    double stored_at
    double expires_at
    uint32_t alloc_size
    uint32_t wire_len
    uint16_t key_len
    uint16_t n_ttl


cdef inline uint16_t* entry_offsets(Entry* e) noexcept nogil:
    return <uint16_t*>(e + 1)


cdef inline unsigned char* entry_key(Entry* e) noexcept nogil:
    return <unsigned char*>(e + 1) + 2 * e.n_ttl


cdef inline unsigned char* entry_wire(Entry* e) noexcept nogil:
    return <unsigned char*>(e + 1) + 2 * e.n_ttl + e.key_len


cdef class LruCache:
    cdef Entry** buckets
    cdef size_t mask
    cdef Entry* head                 # most recently used
    cdef Entry* tail                 # least recently used: evicted first
    cdef readonly size_t entries
    cdef readonly size_t bytes_used
    cdef readonly size_t max_bytes
    cdef readonly uint64_t hits
    cdef readonly uint64_t misses
    cdef readonly uint64_t inserts
    cdef readonly uint64_t evictions
    cdef readonly uint64_t expirations

    cdef Entry* lookup(self, const unsigned char* key, Py_ssize_t key_len, double now) noexcept
    cdef int store(self, const unsigned char* key, Py_ssize_t key_len,
                   const unsigned char* wire, Py_ssize_t wire_len,
                   const uint16_t* offsets, Py_ssize_t n_ttl,
                   double now, double lifetime_s) except -1
    cdef void unlink(self, Entry* e) noexcept
    cdef int grow(self) except -1
    cdef void _free_all(self) noexcept
