"""Micro-benchmarks of the compiled LRU at 10k and 1M entries; OrderedDict as the baseline.

Run: python -m benchmarks.bench_lru [--json]
"""

from __future__ import annotations

import itertools
import struct
from collections import OrderedDict

from benchmarks._micro import Case, report, wants_json
from fastdns._lru import LruCache

WIRE = bytes(64)
OFFSETS = struct.pack("=H", 40)
SIZES = (10_000, 1_000_000)
OPERATIONS = ("get hit", "put replace", "put with eviction")


def key(i: int) -> bytes:
    # Fixed width, so every entry costs the same bytes and a full cache evicts one per insert.
    return b"\x0ename" + b"%010d" % i + b"\x07example\x03org\x00\x00\x01\x00\x01\x00"


def cases(n: int) -> dict[str, Case]:
    """OPERATIONS (the keys) on a cache holding n entries, each with its OrderedDict twin."""
    keys = [key(i) for i in range(n)]
    lru = LruCache(1 << 34)
    od: OrderedDict[bytes, bytes] = OrderedDict()
    for k in keys:
        lru.put(k, WIRE, OFFSETS, 0.0, 3600.0)
        od[k] = WIRE
    cycle = itertools.cycle(keys)
    # A second pair, exactly full at n entries: each new key evicts the least recently used.
    full = LruCache(lru.bytes_used)
    for k in keys:
        full.put(k, WIRE, OFFSETS, 0.0, 3600.0)
    full_od = od.copy()
    fresh = (key(i) for i in itertools.count(n))

    def od_get() -> None:
        k = next(cycle)
        od.move_to_end(k)
        od[k]

    def od_set() -> None:
        k = next(cycle)
        od[k] = WIRE
        od.move_to_end(k)

    def od_evict() -> None:
        full_od[next(fresh)] = WIRE
        full_od.popitem(last=False)

    operations = {
        "get hit": (lambda: lru.get(next(cycle), 1.0), od_get),
        "put replace": (lambda: lru.put(next(cycle), WIRE, OFFSETS, 1.0, 3600.0), od_set),
        "put with eviction": (lambda: full.put(next(fresh), WIRE, OFFSETS, 1.0, 3600.0), od_evict),
    }
    return {op: Case(f"{op} ({n:,} entries)", fn, "OrderedDict", od_fn)
            for op, (fn, od_fn) in operations.items()}


def main() -> None:
    report([case.measure() for n in SIZES for case in cases(n).values()], wants_json())


if __name__ == "__main__":
    main()
