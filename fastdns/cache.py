"""Cache policy over the compiled LRU: which replies may be cached, for how long, and the
operator's controls (flush, inspect, statistics).

Owns: TTL clamps (min/max/default), negative-caching rules (RFC 2308) via `wire.prepare_reply`,
flushing by name/type. Must not: parse queries or touch sockets; the hit path probes the
`lru` directly from C.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fastdns._lru import LruCache
from fastdns.config import CacheSettings
from fastdns.wire import PreparedReply, prepare_reply


def name_to_wire(name: str) -> bytes:
    """Lowercased uncompressed wire form of a presentation name ("example.org" or "example.org.")."""
    labels = [label for label in name.strip().rstrip(".").lower().split(".") if label]
    out = bytearray()
    for label in labels:
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if len(raw) > 63:
            raise ValueError(f"label too long in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes_used: int
    max_bytes: int
    inserts: int
    evictions: int
    expirations: int

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class Cache:
    """The reply cache: policy here, storage in C (`lru`)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.lru = LruCache(int(settings.max_size_mb * 1024 * 1024))
        # Wire-format suffix -> TTL, so a miss finds its override with one dict probe per label.
        self._overrides = {name_to_wire(d): ttl for d, ttl in settings.ttl_overrides.items()}

    def prepare(self, reply_wire: bytes, qname_wire: bytes = b"", *,
                authentic: bool = False) -> PreparedReply:
        """Stored form of an upstream reply with its cache lifetime (0 = do not cache).
        A per-domain override covering qname_wire (lowercased) sets the lifetime outright.
        `authentic`: DNSSEC validated it as secure (served with AD to clients that ask).
        Raises WireError for a reply that cannot be re-served safely."""
        s = self.settings
        override = self.override_for(qname_wire) if self._overrides else None
        if override is not None:
            return prepare_reply(reply_wire, min_ttl=override, max_ttl=override,
                                 negative_ttl=override, default_ttl=s.default_ttl,
                                 authentic=authentic)
        return prepare_reply(
            reply_wire,
            min_ttl=s.min_ttl,
            max_ttl=s.max_ttl,
            negative_ttl=s.negative_ttl,
            default_ttl=s.default_ttl,
            authentic=authentic,
        )

    def override_for(self, qname_wire: bytes) -> int | None:
        """The TTL override of the closest enclosing configured domain, or None."""
        pos = 0
        while pos < len(qname_wire):
            ttl = self._overrides.get(qname_wire[pos:])
            if ttl is not None:
                return ttl
            if qname_wire[pos] == 0:
                break
            pos += 1 + qname_wire[pos]
        return None

    def store(self, key: bytes, prepared: PreparedReply, now: float,
              max_lifetime_s: int | None = None) -> bool:
        """Cache a prepared reply under key if its policy allows; True if stored.
        `max_lifetime_s` caps the lifetime (e.g. by how long a DNSSEC verdict holds)."""
        lifetime_s = prepared.lifetime_s
        if max_lifetime_s is not None and max_lifetime_s < lifetime_s:
            lifetime_s = max_lifetime_s
        if not prepared.cacheable or lifetime_s <= 0:
            return False
        return self.lru.put(key, prepared.wire, prepared.ttl_offsets, now, lifetime_s)

    def flush(self) -> int:
        """Drop everything; returns how many entries were dropped."""
        n = len(self.lru)
        self.lru.clear()
        return n

    def flush_name(self, name: str, qtype: int | None = None) -> int:
        """Drop every entry for name (all types, classes and DO/CD variants, or one qtype)."""
        qname = name_to_wire(name)
        qtype_bytes = struct.pack("!H", qtype) if qtype is not None else None

        def matches(key: bytes) -> bool:
            if key[: len(qname)] != qname or len(key) != len(qname) + 5:
                return False
            return qtype_bytes is None or key[len(qname) : len(qname) + 2] == qtype_bytes

        return self.lru.remove_where(matches)

    def inspect(self, name: str, qtype: int, qclass: int = 1, *, do: bool = False,
                cd: bool = False) -> dict[str, object] | None:
        """What is stored for one question (without touching recency or counters)."""
        key = name_to_wire(name) + struct.pack("!HHB", qtype, qclass, (2 if do else 0) | (1 if cd else 0))
        found = self.lru.peek(key)
        if found is None:
            return None
        wire, offsets, stored_at, expires_at = found
        return {"wire": wire, "ttl_offsets": offsets, "stored_at": stored_at, "expires_at": expires_at}

    def stats(self) -> CacheStats:
        lru = self.lru
        return CacheStats(
            hits=lru.hits,
            misses=lru.misses,
            entries=lru.entries,
            bytes_used=lru.bytes_used,
            max_bytes=lru.max_bytes,
            inserts=lru.inserts,
            evictions=lru.evictions,
            expirations=lru.expirations,
        )
