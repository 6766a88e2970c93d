"""Latency at half of fastdns's peak rate, every server at that same rate.

The issue's target: at half of fastdns's peak rate, average and max latency no worse than
2x Unbound's. Run as ``python -m benchmarks.load --latency-at-half-peak [--servers ...]
[--duration 10] [--repeat 3] [--peak-qps N] [--json]``.

Owns: finding fastdns's peak cached qps with ``blast`` (the median of ``--repeat`` runs,
unless ``--peak-qps`` gives it); then driving each server on the ``cached`` workload with
dnsperf at a fixed rate of half that (``-Q``, and ``-v`` for each query's latency), repeat
by repeat so that each repeat visits every server and a change in the machine's load hits
them alike; and reporting the median (min-max) of average, p50/p99/p99.9, max and standard
deviation of latency, the rate reached and the loss, with each server's average, p99 and
max over Unbound's. Same pinning and cleanup as the rest of ``benchmarks.load``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.load import blast, dnsperf
from benchmarks.load.procs import BenchError, ProcessGroup
from benchmarks.load.report import Spread, _fmt, _round, columns
from benchmarks.load.runner import Bench, _git, _log
from benchmarks.load.servers import RESOLVERS, Resolver

PEAK_SERVER = RESOLVERS["fastdns"]
WORKLOAD = "cached"
LATENCIES = ("avg_ms", "p50_ms", "p99_ms", "p999_ms", "max_ms", "stddev_ms")
VS_UNBOUND = ("avg_ms", "p99_ms", "max_ms")
REACHED_PCT = 97  # below this share of the target rate, say so: the figures are not at it


@dataclass(frozen=True, slots=True)
class LatencyRun:
    target_qps: int
    qps: float
    lost_pct: float
    avg_ms: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    stddev_ms: float
    server_cpu_pct: float
    dnsperf_cpu_pct: float
    other_on_server_cpu_pct: float


class LatencyBench(Bench):
    def __init__(self, args: argparse.Namespace, workdir: Path, procs: ProcessGroup) -> None:
        super().__init__(args, workdir, procs)
        self.last_load: dnsperf.DnsperfReport | None = None

    def generate(self, name: str, port: int, workload: str, *, warm: bool,
                 seen: Path | None = None, seed: int = 0) -> dnsperf.DnsperfReport:
        report = super().generate(name, port, workload, warm=warm, seen=seen, seed=seed)
        if not warm:
            self.last_load = report
            # Parsed; with -v it holds a line per query (tens of MB per run).
            (self.workdir / f"{name}.stdout").unlink(missing_ok=True)
        return report

    def peak_qps(self) -> list[float]:
        """fastdns's qps on the cached workload with blast and no rate limit, per repeat."""
        self.blast_binary = self.blast_binary or blast.build(self.workdir)
        self.dnsperf_verbose, self.args.max_qps = False, None
        peaks = []
        for index in range(self.args.repeat):
            run = self.run_once(PEAK_SERVER, WORKLOAD, index)
            _log(f"fastdns peak run {index + 1}/{self.args.repeat}: {run.qps:,.0f} qps, "
                 f"server {run.server_cpu_pct:.0f}% / blast {run.dnsperf_cpu_pct:.0f}% cpu")
            peaks.append(run.qps)
        return peaks

    def at_rate(self, resolver: Resolver, rate: int, index: int) -> LatencyRun:
        """One dnsperf run at ``rate`` qps against a fresh, warmed ``resolver``."""
        self.blast_binary, self.dnsperf_verbose, self.args.max_qps = None, True, rate
        run = self.run_once(resolver, WORKLOAD, index)
        load = self.last_load
        assert load is not None
        return LatencyRun(
            target_qps=rate, qps=run.qps, lost_pct=run.lost_pct, avg_ms=run.avg_latency_ms,
            p50_ms=load.p50_latency_s * 1e3, p99_ms=load.p99_latency_s * 1e3,
            p999_ms=load.p999_latency_s * 1e3, max_ms=run.max_latency_ms,
            stddev_ms=load.stddev_latency_s * 1e3, server_cpu_pct=run.server_cpu_pct,
            dnsperf_cpu_pct=run.dnsperf_cpu_pct,
            other_on_server_cpu_pct=run.other_on_server_cpu_pct)


def _spread(runs: list[LatencyRun], field: str) -> Spread:
    return Spread.of([getattr(run, field) for run in runs])


def _ratios(results: dict[str, list[LatencyRun]]) -> dict[str, dict[str, float]]:
    """Each server's median average, p99 and max latency over Unbound's."""
    if not results.get("unbound"):
        return {}
    base = {field: _spread(results["unbound"], field).median for field in VS_UNBOUND}
    return {server: {field: round(_spread(runs, field).median / base[field], 3)
                     for field in VS_UNBOUND if base[field] > 0}
            for server, runs in results.items() if runs}


def _table(results: dict[str, list[LatencyRun]], ratios: dict[str, dict[str, float]]) -> str:
    rows = [["server", "qps", "lost %", "avg ms", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
             "stddev ms", "srv cpu %", "dnsperf cpu %"]
            + [f"{field.removesuffix('_ms')} vs unbound" for field in VS_UNBOUND]]
    for server, runs in results.items():
        if not runs:
            continue
        ratio = ratios.get(server, {})
        rows.append([
            server, _fmt(_spread(runs, "qps"), 0), _fmt(_spread(runs, "lost_pct"), 2),
            _fmt(_spread(runs, "avg_ms"), 3), f"{_spread(runs, 'p50_ms').median:.3f}",
            _fmt(_spread(runs, "p99_ms"), 3), f"{_spread(runs, 'p999_ms').median:.3f}",
            _fmt(_spread(runs, "max_ms"), 2), f"{_spread(runs, 'stddev_ms').median:.3f}",
            _fmt(_spread(runs, "server_cpu_pct"), 0), _fmt(_spread(runs, "dnsperf_cpu_pct"), 0),
        ] + [f"{ratio[field]:.2f}x" if field in ratio else "-" for field in VS_UNBOUND])
    return columns(rows, left=1)


def _measure(bench: LatencyBench, resolvers: list[Resolver], rate: int,
             versions: dict[str, str]) -> dict[str, list[LatencyRun]]:
    """Every resolver at ``rate``, ``--repeat`` times, one repeat over all of them at a time."""
    args = bench.args
    results: dict[str, list[LatencyRun]] = {resolver.name: [] for resolver in resolvers}
    for index in range(args.repeat):
        for resolver in resolvers:
            if resolver.name not in results:
                continue  # failed in an earlier repeat
            try:
                latency = bench.at_rate(resolver, rate, index)
            except BenchError as exc:
                # One broken server must not cost the comparison with the others.
                _log(f"skipping {resolver.name}: {exc}")
                del results[resolver.name]
                versions.pop(resolver.name, None)
                continue
            _log(f"{resolver.name} run {index + 1}/{args.repeat}: "
                 f"{latency.qps:,.0f} qps, avg {latency.avg_ms:.3f} ms, "
                 f"p99 {latency.p99_ms:.3f} ms, max {latency.max_ms:.2f} ms, "
                 f"lost {latency.lost_pct:.2f}%, server {latency.server_cpu_pct:.0f}% "
                 f"/ dnsperf {latency.dnsperf_cpu_pct:.0f}% cpu")
            if latency.qps < REACHED_PCT / 100 * rate:
                _log(f"  note: the rate reached is below {REACHED_PCT}% of {rate:,}: "
                     "the server (or dnsperf, see its cpu %) could not keep up")
            results[resolver.name].append(latency)
    return results


def run(args: argparse.Namespace, resolvers: list[Resolver], versions: dict[str, str],
        workdir: Path, procs: ProcessGroup) -> int:
    """The --latency-at-half-peak mode of ``python -m benchmarks.load``, inside its session
    (which stops every process it started, and reports a BenchError)."""
    if shutil.which("dnsperf") is None:
        raise BenchError("dnsperf is not installed")
    if args.peak_qps is not None and args.peak_qps < 2:
        raise BenchError("--peak-qps must be at least 2")
    if args.peak_qps is None:
        reason = PEAK_SERVER.missing_reason()
        if reason:
            raise BenchError(f"cannot measure fastdns's peak ({reason}); give --peak-qps")
        versions["blast"] = blast.version()
    versions["dnsperf"] = dnsperf.dnsperf_version()
    bench = LatencyBench(args, workdir, procs)
    bench.start_upstream()
    peaks = [] if args.peak_qps is not None else bench.peak_qps()
    peak = args.peak_qps if args.peak_qps is not None else statistics.median(peaks)
    rate = max(1, int(peak / 2))
    _log(f"fastdns peak {peak:,.0f} qps; every server now gets {rate:,} qps "
         f"({args.duration:g} s, dnsperf -c {args.clients} -q {args.outstanding})")
    results = _measure(bench, resolvers, rate, versions)
    ratios = _ratios(results)
    if args.json:
        status = _git("status", "--porcelain")
        meta = {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(status) if status is not None else None,
                "python": platform.python_version(), "versions": versions,
                "duration_s": args.duration, "repeat": args.repeat, "clients": args.clients,
                "outstanding": args.outstanding,
                "cpus": {"server": args.server_cpu, "dnsperf": args.client_cpu,
                         "upstream": args.upstream_cpu}}
        for server, runs in results.items():
            print(json.dumps({
                "benchmark": "load.latency", "server": server, "workload": WORKLOAD,
                "target_qps": rate, "peak_qps": asdict(Spread.of(peaks)) if peaks else peak,
                **{field: asdict(_spread(runs, field)) for field in LATENCIES},
                "qps": asdict(_spread(runs, "qps")), "lost_pct": asdict(_spread(runs, "lost_pct")),
                "vs_unbound": ratios.get(server),
                "runs": [{k: _round(v) if isinstance(v, float) else v
                          for k, v in asdict(run).items()} for run in runs],
                **meta}), flush=True)
    else:
        spread = Spread.of(peaks)
        peak_text = (f"median of {len(peaks)} blast runs {spread.median:,.0f} qps, "
                     f"{spread.min:,.0f}-{spread.max:,.0f}" if peaks else f"{peak:,} qps, given")
        print(f"latency at {rate:,} qps, half of fastdns's peak ({peak_text}); "
              f"{WORKLOAD} workload, {args.repeat} x {args.duration:g} s per server")
        print(_table(results, ratios))
        print("\n" + ", ".join(f"{k}: {v}" for k, v in versions.items()))
    return 0
