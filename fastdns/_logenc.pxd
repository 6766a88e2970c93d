# Query-log encoder: compact C log records in, SPEC §4 JSON lines out.
from libc.stdint cimport uint8_t, uint16_t

# One record in the hit path's log buffer, followed by query_len bytes of query and
# reply_len bytes of reply; records start 8-byte aligned (log_record_size rounds up):
#
#   +-------------------------------+  <- LogHead*
#   | wall_time, elapsed_s (double) |
#   | ip[16] (v4 mapped), port, v4, |
#   | cache_hit, upstream, lengths  |
#   +-------------------------------+  <- (LogHead*)h + 1
#   | query bytes [query_len]       |
#   | reply bytes [reply_len]       |
#   +-------------------------------+  padding to 8
cdef struct LogHead:
    double wall_time
    double elapsed_s
    unsigned char ip[16]
    uint16_t port
    uint8_t v4
    uint8_t cache_hit
    uint16_t upstream      # index into the upstream name table; 0xFFFF = none
    uint16_t query_len
    uint16_t reply_len


cdef inline size_t log_record_size(const LogHead* h) noexcept nogil:
    return (sizeof(LogHead) + h.query_len + h.reply_len + 7) & ~(<size_t>7)


cdef bytes encode_log(const unsigned char* buf, size_t length, list upstream_names,
                      object random_bytes)
