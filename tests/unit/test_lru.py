"""LruCache (compiled, fastdns._lru): get/put/peek, byte bound and LRU eviction, expiry at
expires_at, remove_where, clear, recency order, counters. Time is passed in; nothing sleeps."""

from __future__ import annotations

import struct

import pytest

from fastdns._lru import LruCache

NOW = 1000.0
WIRE = b"\x12\x34\x81\x80" + b"\x00" * 8 + b"stored reply bytes"
OFFSETS = struct.pack("=HH", 30, 46)  # native uint16 TTL offsets, as prepare_reply makes them


def key(name: str, qtype: int = 1, flag: int = 0) -> bytes:
    """A cache key shaped like the real one: qname wire + qtype + qclass + flag byte."""
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    return wire + struct.pack("!HHB", qtype, 1, flag)


def entry_size(k: bytes, wire: bytes = WIRE, offsets: bytes = OFFSETS) -> int:
    """Bytes one entry costs, measured on an empty cache."""
    probe = LruCache(1 << 20)
    assert probe.put(k, wire, offsets, NOW, 60)
    return probe.bytes_used


def cache_holding(n: int) -> tuple[LruCache, int]:
    """A cache whose byte bound fits exactly n entries of the same size as key('a0.example.org')."""
    size = entry_size(key("a0.example.org"))
    return LruCache(size * n), size


# ---------------------------------------------------------------------------------------------
# get / put / peek
# ---------------------------------------------------------------------------------------------


def test_put_then_get_returns_wire_offsets_stored_at_and_expires_at() -> None:
    lru = LruCache(1 << 20)
    assert lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.get(key("example.org"), NOW + 1) == (WIRE, OFFSETS, NOW, NOW + 300)
    assert len(lru) == lru.entries == 1


def test_get_of_an_unknown_key_is_none_and_counts_a_miss() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.get(key("example.net"), NOW) is None
    assert lru.get(key("example.org", qtype=28), NOW) is None
    assert (lru.hits, lru.misses) == (0, 2)


def test_get_counts_hits() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    lru.get(key("example.org"), NOW)
    lru.get(key("example.org"), NOW + 1)
    assert (lru.hits, lru.misses, lru.inserts) == (2, 0, 1)


def test_keys_differing_only_in_the_flag_byte_are_distinct() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org", flag=0), b"plain", b"", NOW, 300)
    lru.put(key("example.org", flag=2), b"dnssec", b"", NOW, 300)
    assert lru.get(key("example.org", flag=0), NOW)[0] == b"plain"  # type: ignore[index]
    assert lru.get(key("example.org", flag=2), NOW)[0] == b"dnssec"  # type: ignore[index]


def test_peek_returns_the_entry_without_counting_or_touching_recency() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("a.example.org"), b"a", b"", NOW, 300)
    lru.put(key("b.example.org"), b"b", b"", NOW, 300)
    assert lru.peek(key("a.example.org")) == (b"a", b"", NOW, NOW + 300)
    assert lru.peek(key("c.example.org")) is None
    assert (lru.hits, lru.misses) == (0, 0)
    assert lru.keys() == [key("b.example.org"), key("a.example.org")]


def test_peek_does_not_expire_entries() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 10)
    lru.get(key("example.net"), NOW + 100)  # another key's lookup must not reap this one
    assert lru.peek(key("example.org")) == (WIRE, OFFSETS, NOW, NOW + 10)
    assert lru.expirations == 0


def test_put_of_the_same_key_replaces_the_entry() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), b"old reply", b"", NOW, 300)
    bytes_after_one = lru.bytes_used
    assert lru.put(key("example.org"), b"new reply", b"", NOW + 5, 60)
    assert len(lru) == 1
    assert lru.bytes_used == bytes_after_one
    assert lru.get(key("example.org"), NOW + 6) == (b"new reply", b"", NOW + 5, NOW + 65)
    assert lru.evictions == 0


def test_stored_bytes_are_a_copy() -> None:
    lru = LruCache(1 << 20)
    wire = bytearray(b"reply")
    lru.put(key("example.org"), bytes(wire), b"", NOW, 300)
    wire[0] = 0
    assert lru.get(key("example.org"), NOW)[0] == b"reply"  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Byte bound and LRU eviction
# ---------------------------------------------------------------------------------------------


def test_bytes_used_grows_with_each_entry_and_counts_key_wire_and_offsets() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    one = lru.bytes_used
    assert one >= len(key("example.org")) + len(WIRE) + len(OFFSETS)
    lru.put(key("example.org", qtype=28), WIRE + b"x" * 100, OFFSETS, NOW, 300)
    assert lru.bytes_used == 2 * one + 100


def test_entry_larger_than_the_whole_cache_is_refused() -> None:
    size = entry_size(key("example.org"))
    lru = LruCache(size - 1)
    assert not lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    assert (len(lru), lru.bytes_used, lru.inserts) == (0, 0, 0)


def test_entry_exactly_the_cache_size_fits() -> None:
    size = entry_size(key("example.org"))
    lru = LruCache(size)
    assert lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.bytes_used == size


def test_least_recently_used_entry_is_evicted_first() -> None:
    lru, _ = cache_holding(3)
    for i in range(4):
        lru.put(key(f"a{i}.example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.peek(key("a0.example.org")) is None
    assert [lru.peek(key(f"a{i}.example.org")) is not None for i in (1, 2, 3)] == [True] * 3
    assert lru.evictions == 1


def test_recently_read_entry_survives_eviction() -> None:
    lru, _ = cache_holding(3)
    for i in range(3):
        lru.put(key(f"a{i}.example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.get(key("a0.example.org"), NOW) is not None  # a0 is now the most recent
    lru.put(key("a3.example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.peek(key("a0.example.org")) is not None
    assert lru.peek(key("a1.example.org")) is None


def test_one_large_insert_evicts_as_many_entries_as_needed() -> None:
    lru, size = cache_holding(4)
    for i in range(4):
        lru.put(key(f"a{i}.example.org"), WIRE, OFFSETS, NOW, 300)
    big = WIRE + b"x" * (2 * size)  # costs three entries' worth
    assert lru.put(key("a9.example.org"), big, OFFSETS, NOW, 300)
    assert lru.evictions == 3
    assert lru.keys() == [key("a9.example.org"), key("a3.example.org")]
    assert lru.bytes_used <= lru.max_bytes


def test_byte_bound_holds_under_many_inserts_of_varied_sizes() -> None:
    lru = LruCache(64 * 1024)
    for i in range(5000):
        k = key(f"host{i}.example.org", qtype=1 + i % 3)
        lru.put(k, WIRE + b"x" * (i * 37 % 700), OFFSETS, NOW + i * 0.001, 300)
        assert lru.bytes_used <= lru.max_bytes
        if i % 7 == 0:
            lru.get(key(f"host{i // 2}.example.org", qtype=1 + (i // 2) % 3), NOW + i * 0.001)
    assert lru.evictions > 0
    assert lru.inserts == 5000
    assert lru.inserts - lru.evictions == len(lru)


def test_cache_keeps_working_past_many_entries() -> None:
    # Enough entries to grow the hash table several times: every one is still found.
    lru = LruCache(64 * 1024 * 1024)
    keys = [key(f"h{i}.example.org") for i in range(10_000)]
    for i, k in enumerate(keys):
        lru.put(k, i.to_bytes(4, "big"), b"", NOW, 300)
    assert len(lru) == 10_000
    assert all(
        lru.get(k, NOW) == (i.to_bytes(4, "big"), b"", NOW, NOW + 300) for i, k in enumerate(keys)
    )


# ---------------------------------------------------------------------------------------------
# Expiry
# ---------------------------------------------------------------------------------------------


def test_entry_is_live_until_just_before_expires_at() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.get(key("example.org"), NOW + 299.999) is not None
    assert lru.expirations == 0


def test_entry_expires_at_expires_at_and_is_removed() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.get(key("example.org"), NOW + 300) is None
    assert (lru.expirations, lru.misses, len(lru), lru.bytes_used) == (1, 1, 0, 0)
    assert lru.peek(key("example.org")) is None


def test_expired_entry_is_not_counted_twice() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)
    lru.get(key("example.org"), NOW + 301)
    lru.get(key("example.org"), NOW + 302)
    assert (lru.expirations, lru.misses) == (1, 2)


def test_put_after_expiry_serves_the_new_entry() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), b"old", b"", NOW, 10)
    lru.put(key("example.org"), b"new", b"", NOW + 20, 10)
    assert lru.get(key("example.org"), NOW + 21) == (b"new", b"", NOW + 20, NOW + 30)


def test_zero_lifetime_entry_is_never_served() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 0)
    assert lru.get(key("example.org"), NOW) is None


# ---------------------------------------------------------------------------------------------
# remove_where, clear, keys
# ---------------------------------------------------------------------------------------------


def test_remove_where_removes_matching_keys_and_returns_the_count() -> None:
    lru = LruCache(1 << 20)
    for name in ("a.example.org", "b.example.org", "a.example.net"):
        lru.put(key(name), WIRE, OFFSETS, NOW, 300)
    org_suffix = key("example.org")[:-5]
    removed = lru.remove_where(lambda k: k[:-5].endswith(org_suffix) and k.startswith(b"\x01a"))
    assert removed == 1
    assert lru.keys() == [key("a.example.net"), key("b.example.org")]
    assert lru.bytes_used == 2 * entry_size(key("a.example.org"))


def test_remove_where_can_remove_everything_and_nothing() -> None:
    lru = LruCache(1 << 20)
    for i in range(10):
        lru.put(key(f"h{i}.example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.remove_where(lambda k: False) == 0
    assert len(lru) == 10
    assert lru.remove_where(lambda k: True) == 10
    assert (len(lru), lru.bytes_used, lru.keys()) == (0, 0, [])


def test_remove_where_propagates_the_predicates_exception() -> None:
    lru = LruCache(1 << 20)
    lru.put(key("example.org"), WIRE, OFFSETS, NOW, 300)

    def boom(k: bytes) -> bool:
        raise RuntimeError("predicate failed")

    with pytest.raises(RuntimeError):
        lru.remove_where(boom)
    assert len(lru) == 1


def test_clear_empties_the_cache_but_keeps_counters() -> None:
    lru = LruCache(1 << 20)
    for i in range(5):
        lru.put(key(f"h{i}.example.org"), WIRE, OFFSETS, NOW, 300)
    lru.get(key("h0.example.org"), NOW)
    lru.clear()
    assert (len(lru), lru.bytes_used, lru.keys()) == (0, 0, [])
    assert lru.get(key("h0.example.org"), NOW) is None
    assert (lru.inserts, lru.hits) == (5, 1)
    assert lru.put(key("h0.example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.get(key("h0.example.org"), NOW) is not None


def test_keys_are_most_recently_used_first() -> None:
    lru = LruCache(1 << 20)
    for name in ("a.example.org", "b.example.org", "c.example.org"):
        lru.put(key(name), WIRE, OFFSETS, NOW, 300)
    assert lru.keys() == [key("c.example.org"), key("b.example.org"), key("a.example.org")]
    lru.get(key("a.example.org"), NOW)
    assert lru.keys() == [key("a.example.org"), key("c.example.org"), key("b.example.org")]
    lru.put(key("b.example.org"), WIRE, OFFSETS, NOW, 300)
    assert lru.keys() == [key("b.example.org"), key("a.example.org"), key("c.example.org")]


def test_max_bytes_is_reported() -> None:
    assert LruCache(12345).max_bytes == 12345
