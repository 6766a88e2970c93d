"""Shared helpers of the micro-benchmarks: the Case a workload module builds, timing with
timeit.autorange, table and JSON output.

A `bench_*` module builds its workloads once, as a list of `Case`s; `python -m` runs them
here with timeit, and `benchmarks/test_micro.py` hands the same callables to pytest-benchmark.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    ns_per_call: float
    comparator: str | None = None
    comparator_ns: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.comparator_ns is None:
            return None
        return self.comparator_ns / self.ns_per_call


@dataclass(frozen=True, slots=True)
class Case:
    """One operation to time, and the same job done by a comparator library (if there is one)."""

    name: str
    fn: Callable[[], object]
    comparator: str | None = None
    comparator_fn: Callable[[], object] | None = None

    def measure(self) -> Result:
        comparator_ns = None if self.comparator_fn is None else time_call(self.comparator_fn)
        return Result(self.name, time_call(self.fn), self.comparator, comparator_ns)


def time_call(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median ns per call over `repeat` autoranged runs."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    runs = sorted(t / number * 1e9 for t in timer.repeat(repeat=repeat, number=number))
    return runs[len(runs) // 2]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(results: list[Result], as_json: bool) -> None:
    if as_json:
        import Cython
        meta = {"commit": _commit(), "python": platform.python_version(), "cython": Cython.__version__}
        for r in results:
            print(json.dumps({**meta, "name": r.name, "ns_per_call": round(r.ns_per_call, 1),
                              "comparator": r.comparator,
                              "comparator_ns": None if r.comparator_ns is None else round(r.comparator_ns, 1)}))
        return
    print(f"{'benchmark':<34}{'ns/call':>12}  {'vs.':<28}{'speedup':>9}")
    for r in results:
        vs = f"{r.comparator} {r.comparator_ns:,.0f} ns" if r.comparator_ns is not None else ""
        sp = f"{r.speedup:.1f}x" if r.speedup is not None else ""
        print(f"{r.name:<34}{r.ns_per_call:>12,.1f}  {vs:<28}{sp:>9}")


def wants_json() -> bool:
    return "--json" in sys.argv[1:]
