"""Summaries of load-benchmark runs: medians, spreads, the table and the JSON lines.

Owns turning per-run measurements into one result per (server, workload). It must not
start or measure anything.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class Run:
    sent: int
    completed: int
    lost: int
    run_time_s: float
    qps: float
    avg_latency_ms: float
    max_latency_ms: float
    cpu_us_per_query: float
    server_cpu_pct: float
    dnsperf_cpu_pct: float
    other_on_server_cpu_pct: float
    peak_rss_kib: int
    rcodes: dict[str, int] = field(default_factory=dict)
    # 'mixed' only: % of queries naming a name already sent to this server (warm-up
    # included), i.e. the hit ratio of a cache that never evicts. The servers do not
    # expose their own hit ratio, so this is the client-side upper bound.
    repeat_pct: float = math.nan
    # fastdns+log only: answers the generators got that have no line in the query log.
    query_log_missing: int | None = None

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        clean = [v for v in values if not math.isnan(v)]
        if not clean:
            return cls(math.nan, math.nan, math.nan)
        return cls(_round(statistics.median(clean)), _round(min(clean)), _round(max(clean)))


def _round(value: float) -> float:
    """Four significant figures are more than these measurements can carry."""
    return float(f"{value:.4g}") if math.isfinite(value) else value


@dataclass(slots=True)
class Result:
    server: str
    workload: str
    runs: list[Run]
    vs_unbound: float | None = None

    @property
    def qps(self) -> Spread:
        return Spread.of([r.qps for r in self.runs])

    @property
    def avg_latency_ms(self) -> Spread:
        return Spread.of([r.avg_latency_ms for r in self.runs])

    @property
    def max_latency_ms(self) -> Spread:
        return Spread.of([r.max_latency_ms for r in self.runs])

    @property
    def lost_pct(self) -> Spread:
        return Spread.of([r.lost_pct for r in self.runs])

    @property
    def cpu_us_per_query(self) -> Spread:
        return Spread.of([r.cpu_us_per_query for r in self.runs])

    @property
    def server_cpu_pct(self) -> Spread:
        return Spread.of([r.server_cpu_pct for r in self.runs])

    @property
    def dnsperf_cpu_pct(self) -> Spread:
        return Spread.of([r.dnsperf_cpu_pct for r in self.runs])

    @property
    def repeat_pct(self) -> Spread:
        return Spread.of([r.repeat_pct for r in self.runs])

    @property
    def peak_rss_kib(self) -> int:
        return max(r.peak_rss_kib for r in self.runs)

    def as_json(self, meta: dict[str, object]) -> dict[str, object]:
        return {
            "benchmark": "load",
            "server": self.server,
            "workload": self.workload,
            "qps": asdict(self.qps),
            "avg_latency_ms": asdict(self.avg_latency_ms),
            "max_latency_ms": asdict(self.max_latency_ms),
            "lost_pct": asdict(self.lost_pct),
            "cpu_us_per_query": asdict(self.cpu_us_per_query),
            "server_cpu_pct": asdict(self.server_cpu_pct),
            "dnsperf_cpu_pct": asdict(self.dnsperf_cpu_pct),
            "other_on_server_cpu_pct": asdict(
                Spread.of([r.other_on_server_cpu_pct for r in self.runs])),
            "peak_rss_kib": self.peak_rss_kib,
            "ideal_hit_pct": asdict(self.repeat_pct),
            "vs_unbound": self.vs_unbound,
            "runs": [{k: _round(v) if isinstance(v, float) else v
                      for k, v in (asdict(r) | {"lost_pct": r.lost_pct}).items()}
                     for r in self.runs],
            **meta,
        }


def add_ratios(results: list[Result]) -> None:
    """QPS of each result divided by Unbound's on the same workload (median over median)."""
    baseline = {r.workload: r.qps.median for r in results if r.server == "unbound"}
    for result in results:
        base = baseline.get(result.workload)
        if base and not math.isnan(base) and base > 0:
            result.vs_unbound = result.qps.median / base


def _fmt(spread: Spread, digits: int) -> str:
    if math.isnan(spread.median):
        return "-"
    if spread.min == spread.max:
        return f"{spread.median:.{digits}f}"
    return f"{spread.median:.{digits}f} ({spread.min:.{digits}f}-{spread.max:.{digits}f})"


def table(results: list[Result], generator: str = "dnsperf") -> str:
    header = ["server", "workload", "qps", "avg lat ms", "max lat ms", "lost %",
              "cpu us/q", "srv cpu %", f"{generator} cpu %", "peak RSS MiB", "vs unbound"]
    mixed = any(r.workload == "mixed" for r in results)
    if mixed:
        header.insert(6, "ideal hit %")
    rows = [header]
    for r in results:
        rows.append([
            r.server, r.workload, _fmt(r.qps, 0), _fmt(r.avg_latency_ms, 3),
            _fmt(r.max_latency_ms, 2), _fmt(r.lost_pct, 2), _fmt(r.cpu_us_per_query, 1),
            _fmt(r.server_cpu_pct, 0), _fmt(r.dnsperf_cpu_pct, 0),
            f"{r.peak_rss_kib / 1024:.1f}",
            "-" if r.vs_unbound is None else f"{r.vs_unbound:.2f}x",
        ])
        if mixed:
            rows[-1].insert(6, _fmt(r.repeat_pct, 1))
    return columns(rows)


def columns(rows: list[list[str]], left: int = 2) -> str:
    """Rows of cells (the header first) as aligned text: the first ``left`` columns flush
    left, the others flush right, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
