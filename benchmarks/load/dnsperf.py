"""dnsperf query files, command lines and output parsing.

Owns the two workloads' query files (1000 repeated names for "cached"; millions of
distinct names, each sent at most once, for "uncached") and turning dnsperf's report
(and, with ``-v``, its line per query) into numbers. It must only ever point dnsperf at
127.0.0.1.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load.dnswire import LOOPBACK
from benchmarks.load.procs import BenchError

CACHED_NAMES = 1000
_MASK48 = (1 << 48) - 1
# An odd multiplier is a bijection modulo 2**48, so the labels look random yet never repeat.
_SPREAD = 0x9E3779B97F4B


def dnsperf_version() -> str:
    if shutil.which("dnsperf") is None:
        return "missing"
    out = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, check=False)
    match = re.search(r"Version\s+(\S+)", out.stdout + out.stderr)
    return f"dnsperf {match.group(1)}" if match else "dnsperf"


def write_cached_queries(path: Path, zone: str) -> Path:
    path.write_text("".join(f"host{i}.{zone} A\n" for i in range(CACHED_NAMES)))
    return path


def write_uncached_queries(path: Path, zone: str, count: int) -> Path:
    """``count`` distinct names under ``zone``; with ``-n 1`` dnsperf sends each once."""
    salt = int.from_bytes(os.urandom(6), "big")
    chunk = 100_000
    with open(path, "w") as out:
        out.writelines(
            "".join(f"u{((i * _SPREAD) & _MASK48) ^ salt:012x}.{zone} A\n"
                    for i in range(start, min(start + chunk, count)))
            for start in range(0, count, chunk))
    return path


def write_zipf_queries(path: Path, zone: str, names: int, count: int, s: float,
                       seed: int) -> list[int]:
    """``count`` queries drawn from ``names`` names with Zipf exponent ``s`` (rank 1 =
    ``z0``); returns the drawn ranks so the caller can tell first sends from repeats."""
    import random

    weights = itertools.accumulate((i + 1) ** -s for i in range(names))
    ranks = random.Random(seed).choices(range(names), cum_weights=list(weights), k=count)
    with open(path, "w") as out:
        out.writelines(f"z{rank}.{zone} A\n" for rank in ranks)
    return ranks


def write_named_queries(path: Path, zone: str, names: int) -> Path:
    """``z0`` .. ``z{names-1}``, the universe that ``write_zipf_queries`` draws from."""
    path.write_text("".join(f"z{i}.{zone} A\n" for i in range(names)))
    return path


def command(*, port: int, queryfile: Path, duration: float | None, clients: int,
            outstanding: int, max_qps: int | None, runs: int | None,
            tcp: bool = False, verbose: bool = False) -> list[str]:
    """``verbose``: ``-v``, a line per query with its latency, for percentiles."""
    argv = ["dnsperf", "-s", LOOPBACK, "-p", str(port), "-d", str(queryfile),
            "-c", str(clients), "-T", "1", "-q", str(outstanding), "-t", "5"]
    if tcp:
        argv += ["-m", "tcp"]
    if duration is not None:
        argv += ["-l", f"{duration:g}"]
    if runs is not None:
        argv += ["-n", str(runs)]
    if max_qps:
        argv += ["-Q", str(max_qps)]
    if verbose:
        argv.append("-v")
    return argv


@dataclass(frozen=True, slots=True)
class DnsperfReport:
    sent: int
    completed: int
    lost: int
    run_time_s: float
    qps: float
    avg_latency_s: float
    min_latency_s: float
    max_latency_s: float
    rcodes: dict[str, int]
    # Only blast fills these: names sent for the first time / again (a name's first query
    # can never be a cache hit), NOERROR replies with no answer RR, timed-out queries re-sent.
    distinct: int = 0
    repeats: int = 0
    noerror_without_answer: int = 0
    retried: int = 0
    # dnsperf only: its "Latency StdDev" line, and percentiles from the lines ``-v`` prints.
    stddev_latency_s: float = math.nan
    p50_latency_s: float = math.nan
    p99_latency_s: float = math.nan
    p999_latency_s: float = math.nan


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise BenchError(f"dnsperf output has no match for {pattern!r}:\n{text[-2000:]}")
    return float(match.group(1))


def latency_percentiles(text: str, percents: tuple[float, ...]) -> list[float]:
    """Nearest-rank percentiles (seconds) of the latencies in ``-v`` lines, which read
    ``> NOERROR host1.bench.example. A 0.000207``; a lost query's line (``> T ...``) has
    none. NaN for each when there are no such lines."""
    counts: dict[int, int] = {}  # microseconds (dnsperf prints six decimals) -> queries
    for line in text.splitlines():
        if line.startswith("> ") and not line.startswith("> T "):
            try:
                us = round(float(line.rsplit(None, 1)[1]) * 1e6)
            except (IndexError, ValueError):
                continue
            counts[us] = counts.get(us, 0) + 1
    if not counts:
        return [math.nan] * len(percents)
    latencies = sorted(counts)
    cumulative = list(itertools.accumulate(counts[us] for us in latencies))
    ranks = [max(1, math.ceil(p / 100 * cumulative[-1])) for p in percents]
    return [latencies[bisect.bisect_left(cumulative, rank)] / 1e6 for rank in ranks]


def parse(text: str) -> DnsperfReport:
    rcodes: dict[str, int] = {}
    match = re.search(r"Response codes:\s+(.*)", text)
    if match:
        for code, count in re.findall(r"([A-Z]+) (\d+)", match.group(1)):
            rcodes[code] = int(count)
    latency = re.search(
        r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", text)
    if latency is None:
        # dnsperf omits the latency line when nothing was answered.
        avg = low = high = float("nan")
    else:
        avg, low, high = (float(g) for g in latency.groups())
    stddev = re.search(r"Latency StdDev \(s\):\s+([\d.]+)", text)
    p50, p99, p999 = latency_percentiles(text, (50, 99, 99.9))
    return DnsperfReport(
        sent=int(_number(r"Queries sent:\s+(\d+)", text)),
        completed=int(_number(r"Queries completed:\s+(\d+)", text)),
        lost=int(_number(r"Queries lost:\s+(\d+)", text)),
        run_time_s=_number(r"Run time \(s\):\s+([\d.]+)", text),
        qps=_number(r"Queries per second:\s+([\d.]+)", text),
        avg_latency_s=avg, min_latency_s=low, max_latency_s=high, rcodes=rcodes,
        stddev_latency_s=float(stddev.group(1)) if stddev else math.nan,
        p50_latency_s=p50, p99_latency_s=p99, p999_latency_s=p999,
    )
