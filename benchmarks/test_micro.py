"""The micro-benchmarks under pytest-benchmark, each case and its comparator in one group.

Run: python -m pytest benchmarks/ --benchmark-only [-k wire|lru]. Not part of the test suite
(pytest's testpaths is tests/). The workloads are the ones `python -m benchmarks.bench_wire`
and `python -m benchmarks.bench_lru` time with timeit; the LRU ones are built on first use.
"""

from __future__ import annotations

import functools

import pytest

from benchmarks import bench_lru, bench_wire
from benchmarks._micro import Case

pytestmark = [
    pytest.mark.perf,
    # Calls take 0.2-5 us. Warm up before calibrating (a cold first call would otherwise set
    # one iteration per round, timing the timer), make rounds of >= 100 us, and keep the
    # collector out of the loop as timeit does.
    pytest.mark.benchmark(warmup=True, min_time=100e-6, disable_gc=True),
]


def _run(benchmark, case: Case, side: str) -> None:
    benchmark.group = case.name
    if side == "fastdns":
        benchmark(case.fn)
    else:
        benchmark.extra_info["comparator"] = case.comparator
        benchmark(case.comparator_fn)


def _sides(case: Case) -> list[str]:
    return ["fastdns"] + ([] if case.comparator_fn is None else ["comparator"])


@pytest.mark.parametrize(
    ("case", "side"),
    [pytest.param(case, side, id=f"{case.name}-{side}")
     for case in bench_wire.cases() for side in _sides(case)],
)
def test_wire(benchmark, case: Case, side: str) -> None:
    _run(benchmark, case, side)


@functools.cache
def _lru_cases(n: int) -> dict[str, Case]:
    return bench_lru.cases(n)


@pytest.mark.parametrize("side", ["fastdns", "comparator"])
@pytest.mark.parametrize("operation", bench_lru.OPERATIONS)
@pytest.mark.parametrize("n", bench_lru.SIZES)
def test_lru(benchmark, n: int, operation: str, side: str) -> None:
    _run(benchmark, _lru_cases(n)[operation], side)
