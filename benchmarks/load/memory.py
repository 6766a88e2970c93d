"""Memory per cached entry: fill each server with N distinct names, then read its RSS.

Run as ``python -m benchmarks.load.memory [--names 1000000] [--servers fastdns,unbound]``.

Owns: starting the NSD upstream and each server (cache large enough for every name:
fastdns ``cache.max_size_mb``, Unbound msg/rrset caches of half/all of ``--cache-mb``),
sending each of N distinct names once (blast with retries, or dnsperf), refusing the run
unless every name got a NOERROR answer, reading VmRSS/VmHWM of the server's process tree
from /proc, and re-sending all names to check that none was evicted (NSD's CPU time during
that pass is ~0 when every answer comes from the cache). Same pinning and cleanup rules as
``python -m benchmarks.load``: everything on 127.0.0.1, every process stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.load import blast, dnsperf
from benchmarks.load.dnswire import wait_until_answering
from benchmarks.load.procs import (
    BenchError,
    free_port,
    tree_cpu_seconds,
    tree_memory_kib,
)
from benchmarks.load.report import columns
from benchmarks.load.runner import READY_NAME, Bench, _csv, _git, _log, bench_session
from benchmarks.load.servers import RESOLVERS, Resolver


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cpus = sorted(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load.memory",
        description="RSS per cached entry of fastdns and Unbound after N distinct names.")
    parser.add_argument("--servers", type=_csv(list(RESOLVERS)), default=["fastdns", "unbound"],
                        help="comma list of %(default)s")
    parser.add_argument("--names", type=int, default=1_000_000, help="distinct names to cache")
    parser.add_argument("--cache-mb", type=int, default=2048,
                        help="fastdns max_size_mb; Unbound msg-cache half, rrset-cache all of it")
    parser.add_argument("--generator", choices=("blast", "dnsperf"), default="blast",
                        help="blast (default; re-sends timed-out queries) or dnsperf")
    parser.add_argument("--outstanding", type=int, default=200,
                        help="queries in flight while filling (keeps the miss rate steady)")
    parser.add_argument("--repeat", type=int, default=1, help="fills per server")
    parser.add_argument("--server-cpu", type=int, default=cpus[0])
    parser.add_argument("--client-cpu", type=int, default=cpus[1] if len(cpus) > 1 else None)
    parser.add_argument("--upstream-cpu", type=int,
                        default=cpus[2] if len(cpus) > 2 else (cpus[1] if len(cpus) > 1 else None))
    parser.add_argument("--json", action="store_true", help="one JSON line per server on stdout")
    args = parser.parse_args(argv)
    if args.names < 1 or args.cache_mb < 1 or args.outstanding < 1 or args.repeat < 1:
        parser.error("--names, --cache-mb, --outstanding and --repeat must be positive")
    # Fields Bench reads; the memory run sets its own command lines.
    args.clients = 1
    args.uncached_names = args.names
    return args


@dataclass(frozen=True, slots=True)
class Fill:
    names: int
    answered: int
    fill_s: float
    fill_qps: float
    idle_rss_kib: int
    rss_kib: int
    hwm_kib: int
    bytes_per_entry: float          # (RSS after - RSS before filling) / names
    recheck_qps: float
    recheck_upstream_cpu_ms: float  # NSD CPU while re-sending every name: ~0 if all cached
    fill_upstream_cpu_ms: float


class MemoryBench(Bench):
    def send_all(self, name: str, port: int, queryfile: Path) -> dnsperf.DnsperfReport:
        args = self.args
        if self.blast_binary is not None:
            argv = blast.command(self.blast_binary, port=port, queryfile=queryfile, duration=None,
                                 window=args.outstanding, sockets=1, passes=1, timeout_s=2,
                                 retries=5)
        else:
            argv = dnsperf.command(port=port, queryfile=queryfile, duration=None, clients=1,
                                   outstanding=args.outstanding, max_qps=None, runs=1)
        child = self.procs.run(name, argv, timeout=3600, cpu=args.client_cpu)
        text = child.stdout_path.read_text(errors="replace")
        if child.proc.returncode != 0:
            raise BenchError(f"{args.generator} failed:\n{child.stderr_tail()}")
        return blast.parse(text) if self.blast_binary is not None else dnsperf.parse(text)

    def fill(self, resolver: Resolver, index: int, upstream_pid: int) -> Fill:
        args = self.args
        tag = f"mem-{resolver.name.replace('+', '-')}-{index}"
        port = free_port()
        cache_mb = args.cache_mb if resolver.binary != "unbound" else max(1, args.cache_mb // 2)
        launch = resolver.launch(self.workdir / tag, port, self.upstream_port, cache_mb=cache_mb)
        server = self.procs.start(tag, launch.argv, cpu=args.server_cpu, cwd=launch.cwd)
        queryfile = self.queryfile("uncached")
        try:
            if not wait_until_answering(port, READY_NAME, 30, lambda: server.proc.poll() is None):
                raise BenchError(f"{resolver.name} did not start answering:\n"
                                 f"{server.stderr_tail()}")
            time.sleep(0.5)
            idle_rss, _ = tree_memory_kib(server.pid)
            nsd_before = tree_cpu_seconds(upstream_pid)
            report = self.send_all(f"{tag}-fill", port, queryfile)
            nsd_fill = tree_cpu_seconds(upstream_pid) - nsd_before
            answered = report.rcodes.get("NOERROR", 0) - report.noerror_without_answer
            if report.lost or answered < args.names:
                raise BenchError(f"{resolver.name}: only {answered:,} of {args.names:,} names "
                                 f"answered ({report.lost:,} lost, rcodes {report.rcodes}); "
                                 "the cache would not hold them all")
            time.sleep(1.0)  # let allocator and GC settle before reading RSS
            rss, hwm = tree_memory_kib(server.pid)
            nsd_before = tree_cpu_seconds(upstream_pid)
            recheck = self.send_all(f"{tag}-recheck", port, queryfile)
            nsd_recheck = tree_cpu_seconds(upstream_pid) - nsd_before
            if server.proc.poll() is not None:
                raise BenchError(f"{resolver.name} exited:\n{server.stderr_tail()}")
        finally:
            self.procs.stop(server)
        return Fill(names=args.names, answered=answered, fill_s=report.run_time_s,
                    fill_qps=report.qps, idle_rss_kib=idle_rss, rss_kib=rss, hwm_kib=hwm,
                    bytes_per_entry=(rss - idle_rss) * 1024 / args.names,
                    recheck_qps=recheck.qps, recheck_upstream_cpu_ms=nsd_recheck * 1e3,
                    fill_upstream_cpu_ms=nsd_fill * 1e3)


def _median(values: list[float]) -> dict[str, float]:
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ["taskset"] + (["dnsperf"] if args.generator == "dnsperf" else [])
    for tool in needed:
        if shutil.which(tool) is None:
            _log(f"benchmarks.load.memory: {tool} is not installed")
            return 2
    resolvers = []
    versions: dict[str, str] = {}
    for name in args.servers:
        resolver = RESOLVERS[name]
        reason = resolver.missing_reason()
        if reason:
            _log(f"skipping {name}: {reason}")
            continue
        resolvers.append(resolver)
        versions[name] = resolver.version()
    if not resolvers:
        _log("benchmarks.load.memory: no server to measure")
        return 1
    results: dict[str, list[Fill]] = {}
    try:
        with bench_session("fastdns-mem-") as (workdir, procs):
            bench = MemoryBench(args, workdir, procs)
            bench.start_upstream()
            bench.queryfile("uncached")
            for resolver in resolvers:
                try:
                    for index in range(args.repeat):
                        _log(f"{resolver.name}: filling with {args.names:,} names "
                             f"({index + 1}/{args.repeat})")
                        fill = bench.fill(resolver, index, bench.upstream_pid)
                        _log(f"  {fill.fill_qps:,.0f} qps fill, RSS {fill.rss_kib / 1024:.1f} "
                             f"MiB (idle {fill.idle_rss_kib / 1024:.1f}), HWM "
                             f"{fill.hwm_kib / 1024:.1f} MiB, {fill.bytes_per_entry:.0f} "
                             f"B/entry; recheck {fill.recheck_qps:,.0f} qps, upstream CPU "
                             f"{fill.recheck_upstream_cpu_ms:.0f} ms "
                             f"(fill: {fill.fill_upstream_cpu_ms:.0f} ms)")
                        results.setdefault(resolver.name, []).append(fill)
                except BenchError as exc:
                    _log(f"skipping {resolver.name}: {exc}")
                    versions.pop(resolver.name, None)
    except BenchError as exc:
        _log(f"benchmarks.load.memory: {exc}")
        return 1
    except KeyboardInterrupt:
        _log("benchmarks.load.memory: interrupted; stopping everything it started")
        return 130

    rows = []
    for name, fills in results.items():
        row = {
            "benchmark": "load.memory", "server": name, "names": args.names,
            "cache_mb": args.cache_mb if RESOLVERS[name].binary != "unbound" else args.cache_mb // 2,
            **{key: _median([float(getattr(f, key)) for f in fills])
               for key in ("rss_kib", "hwm_kib", "idle_rss_kib", "bytes_per_entry", "fill_qps",
                           "recheck_qps", "recheck_upstream_cpu_ms")},
            "runs": [asdict(f) for f in fills],
        }
        rows.append(row)
    if args.json:
        status = _git("status", "--porcelain")
        meta = {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(status) if status is not None else None,
                "python": platform.python_version(), "versions": versions,
                "generator": args.generator, "repeat": args.repeat,
                "cpus": {"server": args.server_cpu, "generator": args.client_cpu,
                         "upstream": args.upstream_cpu}}
        for row in rows:
            print(json.dumps(row | meta), flush=True)
    else:
        header = ["server", "names", "RSS MiB", "HWM MiB", "idle MiB", "B/entry", "fill qps",
                  "recheck upstream ms"]
        lines = [header]
        for row in rows:
            lines.append([row["server"], f"{row['names']:,}",
                          f"{row['rss_kib']['median'] / 1024:.1f}",
                          f"{row['hwm_kib']['median'] / 1024:.1f}",
                          f"{row['idle_rss_kib']['median'] / 1024:.1f}",
                          f"{row['bytes_per_entry']['median']:.0f}",
                          f"{row['fill_qps']['median']:,.0f}",
                          f"{row['recheck_upstream_cpu_ms']['median']:.0f}"])
        print(columns(lines, left=1))
        print("\n" + ", ".join(f"{k}: {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
