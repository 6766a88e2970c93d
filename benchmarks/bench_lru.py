"""Micro-benchmarks of the compiled LRU at 10k and 1M entries; OrderedDict as the baseline.

Run: python -m benchmarks.bench_lru [--json]
"""

from __future__ import annotations

import itertools
import struct
from collections import OrderedDict

from benchmarks._micro import Result, report, time_call, wants_json
from fastdns._lru import LruCache

WIRE = bytes(64)
OFFSETS = struct.pack("=H", 40)


def key(i: int) -> bytes:
    return b"\x04name" + str(i).encode() + b"\x07example\x03org\x00\x00\x01\x00\x01\x00"


def bench(n: int) -> list[Result]:
    keys = [key(i) for i in range(n)]
    lru = LruCache(1 << 34)
    od: OrderedDict[bytes, bytes] = OrderedDict()
    for k in keys:
        lru.put(k, WIRE, OFFSETS, 0.0, 3600.0)
        od[k] = WIRE
    cycle = itertools.cycle(keys)

    def od_get() -> None:
        k = next(cycle)
        od.move_to_end(k)
        od[k]

    def od_set() -> None:
        k = next(cycle)
        od[k] = WIRE
        od.move_to_end(k)

    small = LruCache(200 * 1024)  # forces an eviction on nearly every insert
    fresh = (key(i) for i in itertools.count(n))
    return [
        Result(f"get hit ({n:,} entries)", time_call(lambda: lru.get(next(cycle), 1.0)),
               "OrderedDict", time_call(od_get)),
        Result(f"put replace ({n:,} entries)",
               time_call(lambda: lru.put(next(cycle), WIRE, OFFSETS, 1.0, 3600.0)),
               "OrderedDict", time_call(od_set)),
        Result("put with eviction", time_call(lambda: small.put(next(fresh), WIRE, OFFSETS, 1.0, 60.0))),
    ]


def main() -> None:
    report(bench(10_000) + bench(1_000_000), wants_json())


if __name__ == "__main__":
    main()
