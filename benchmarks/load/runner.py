"""Command line and orchestration of the load benchmark.

Owns the run order: start the NSD upstream, then for each server and workload start a
fresh server pinned to one CPU, warm it (cached, tcp, mixed), drive it with the load
generator (dnsperf, or the compiled ``blast``) pinned to another CPU, sample its CPU time and peak RSS, and stop it; then report. It must stop
every process it started (by PID, in ``finally``), also on Ctrl-C, SIGTERM or errors.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.load import blast, dnsperf, recursive
from benchmarks.load.dnswire import wait_until_answering
from benchmarks.load.procs import (
    BenchError,
    ProcessGroup,
    busy_pct,
    cpu_jiffies,
    free_port,
    tree_cpu_seconds,
    tree_peak_rss_kib,
)
from benchmarks.load.report import Result, Run, add_ratios, table
from benchmarks.load.servers import (
    REPO_ROOT,
    RESOLVERS,
    ZONE,
    Recursion,
    Resolver,
    nsd_launch,
    nsd_version,
)

WORKLOADS = ("cached", "uncached", "tcp", "mixed", *recursive.WORKLOADS)
DEFAULT_WORKLOADS = ("cached", "uncached")
GENERATORS = ("dnsperf", "blast")
READY_NAME = f"ready.{ZONE}"  # in neither query file, so probing never pre-warms the cache


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv(choices: tuple[str, ...] | list[str]):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(choices)} (got {', '.join(unknown) or 'nothing'})")
        return items
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cpus = sorted(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="End-to-end qps/latency of fastdns vs Unbound and dnsmasq on 127.0.0.1, "
                    "forwarding to a local NSD, driven by dnsperf.")
    parser.add_argument("--servers", type=_csv(list(RESOLVERS)),
                        default=["fastdns", "fastdns+log", "unbound", "dnsmasq"],
                        help="comma list of %(default)s")
    parser.add_argument("--workloads", type=_csv(WORKLOADS), default=list(DEFAULT_WORKLOADS),
                        help="comma list (default cached,uncached): cached (1000 names, warmed), "
                             "uncached (never repeated), tcp (the cached names over "
                             "--tcp-connections TCP connections), mixed (Zipf over "
                             "--mixed-names names, after a --mixed-warmup), recursive and "
                             "recursive-dnssec (the uncached names, recursed through a lab "
                             "of NSD servers: root, TLD, leaf)")
    parser.add_argument("--generator", choices=GENERATORS, default="dnsperf",
                        help="load generator: dnsperf (default; latency figures) or blast "
                             "(blast.c, built with gcc; far cheaper per query, for peak qps)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per (server, workload)")
    parser.add_argument("--clients", type=int, default=10,
                        help="dnsperf -c / blast UDP sockets")
    parser.add_argument("--outstanding", type=int, default=100,
                        help="queries in flight: dnsperf -q / blast window")
    parser.add_argument("--max-qps", type=int, default=None, help="dnsperf -Q (default: none)")
    parser.add_argument("--tcp-connections", type=int, default=1000,
                        help="'tcp': concurrent connections (one query in flight on each)")
    parser.add_argument("--mixed-names", type=int, default=100_000,
                        help="'mixed': distinct names the Zipf draws come from")
    parser.add_argument("--zipf", type=float, default=1.0, help="'mixed': Zipf exponent s")
    parser.add_argument("--mixed-warmup", type=float, default=2.0,
                        help="'mixed': seconds of the same Zipf load before measuring")
    parser.add_argument("--uncached-names", type=int, default=None,
                        help="distinct names for 'uncached' (default: max(2M, 250k x duration))")
    parser.add_argument("--server-cpu", type=int, default=cpus[0])
    parser.add_argument("--client-cpu", type=int, default=cpus[1] if len(cpus) > 1 else None)
    parser.add_argument("--upstream-cpu", type=int,
                        default=cpus[2] if len(cpus) > 2 else (cpus[1] if len(cpus) > 1 else None),
                        help="CPU for NSD (shares dnsperf's CPU on a 2-CPU machine)")
    parser.add_argument("--latency-at-half-peak", action="store_true",
                        help="instead of the workloads: find fastdns's peak cached qps with "
                             "blast, then measure each server's latency with dnsperf -Q at half "
                             "that rate (see benchmarks/load/latency.py)")
    parser.add_argument("--peak-qps", type=int, default=None,
                        help="with --latency-at-half-peak: use this peak instead of measuring it")
    parser.add_argument("--json", action="store_true", help="one JSON line per result on stdout")
    args = parser.parse_args(argv)
    if (args.duration <= 0 or args.repeat < 1 or args.clients < 1 or args.outstanding < 1
            or args.tcp_connections < 1 or args.mixed_names < 1 or args.zipf <= 0
            or args.mixed_warmup < 0):
        parser.error("--duration, --repeat, --clients, --outstanding, --tcp-connections, "
                     "--mixed-names and --zipf must be positive")
    if args.uncached_names is None:
        args.uncached_names = max(2_000_000, int(250_000 * args.duration))
    return args


def _git(*argv: str) -> str | None:
    try:
        out = subprocess.run(["git", *argv], capture_output=True, text=True, check=False,
                             cwd=REPO_ROOT)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def bench_session(prefix: str) -> Iterator[tuple[Path, ProcessGroup]]:
    """A temporary workdir and a process group. On the way out (errors, Ctrl-C, SIGTERM and
    SIGHUP included) every process started is stopped by PID, the workdir is removed and the
    previous signal handlers come back."""
    previous = {sig: signal.signal(sig, _interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    procs = ProcessGroup(workdir)
    try:
        yield workdir, procs
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, procs: ProcessGroup) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = procs
        self.upstream_port = 0
        self.upstream_pid = 0
        self.queryfiles: dict[str, Path] = {}
        self.last_dnsperf_cpu_s = 0.0
        self.blast_binary: Path | None = None
        self.recursions: dict[str, Recursion] = {}
        self.dnsperf_verbose = False  # -v on measured runs: a line per query, for percentiles
        if args.generator == "blast":
            self.blast_binary = blast.build(workdir)

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        updir = self.workdir / "nsd"
        updir.mkdir()
        launch = nsd_launch(updir, self.upstream_port)
        child = self.procs.start("nsd", launch.argv, cpu=self.args.upstream_cpu)
        self.upstream_pid = child.pid
        if not wait_until_answering(self.upstream_port, READY_NAME, 15,
                                    lambda: child.proc.poll() is None):
            raise BenchError(f"nsd did not start answering:\n{child.stderr_tail()}")
        _log(f"upstream: {nsd_version()} on 127.0.0.1:{self.upstream_port}")

    def recursion(self, workload: str) -> Recursion | None:
        """For a recursive workload, the lab it runs against (started on first use)."""
        if recursive.is_recursive(workload) and workload not in self.recursions:
            lab, self.recursions[workload] = recursive.start_lab(
                self.workdir, self.procs, workload, self.args.upstream_cpu)
            _log(f"{workload}: lab of {len(lab.hosts)} NSD servers on "
                 f"{', '.join(lab.addresses.values())} port {lab.port}")
        return self.recursions.get(workload)

    def queryfile(self, workload: str) -> Path:
        if workload not in self.queryfiles:
            path = self.workdir / f"queries-{workload}.txt"
            if workload in ("cached", "tcp"):
                dnsperf.write_cached_queries(path, ZONE)
            elif workload == "mixed":
                dnsperf.write_named_queries(path, ZONE, self.args.mixed_names)
            else:
                _log(f"writing {self.args.uncached_names:,} distinct names for 'uncached'")
                dnsperf.write_uncached_queries(path, ZONE, self.args.uncached_names)
            self.queryfiles[workload] = path
        return self.queryfiles[workload]

    def generate(self, name: str, port: int, workload: str, *, warm: bool,
                 seen: Path | None = None, seed: int = 0) -> dnsperf.DnsperfReport:
        """One run of the load generator; ``warm`` is the pass that fills the cache first
        (over UDP, whatever the workload). ``seen``/``seed``: state of a 'mixed' run."""
        args = self.args
        tcp = workload == "tcp" and not warm
        duration: float | None = None if warm else args.duration
        # Uncached: each name at most once, so no answer can come from the cache.
        runs = 1 if warm or workload == "uncached" or recursive.is_recursive(workload) else None
        clients = args.tcp_connections if tcp else args.clients
        outstanding = max(args.outstanding, args.tcp_connections) if tcp else args.outstanding
        zipf_ranks: list[int] | None = None
        queryfile = self.queryfile(recursive.query_names(workload, warm=warm))
        if workload == "mixed":
            duration = args.mixed_warmup if warm else args.duration
            runs = None
            if args.generator == "dnsperf":
                # dnsperf cannot draw names itself: give it a file of Zipf draws, sent once.
                queryfile = self.workdir / f"{name}.zipf.txt"
                zipf_ranks = dnsperf.write_zipf_queries(
                    queryfile, ZONE, args.mixed_names, int(300_000 * duration) + 1000,
                    args.zipf, seed)
                runs = 1
        max_qps = None if warm else args.max_qps
        if self.blast_binary is not None:
            argv = blast.command(self.blast_binary, port=port, queryfile=queryfile,
                                 duration=duration, window=outstanding, sockets=clients, tcp=tcp,
                                 passes=runs, max_qps=max_qps,
                                 zipf=args.zipf if workload == "mixed" else None,
                                 seen_file=seen if workload == "mixed" else None)
        else:
            argv = dnsperf.command(port=port, queryfile=queryfile, duration=duration,
                                   clients=clients, outstanding=outstanding, max_qps=max_qps,
                                   runs=runs, tcp=tcp, verbose=self.dnsperf_verbose and not warm)
        timeout = 120 if warm and duration is None else (duration or 0) + 30
        # The generator is the only child reaped in this window, so the delta is its CPU time.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = self.procs.run(name, argv, timeout=timeout, cpu=args.client_cpu)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = child.stdout_path.read_text(errors="replace")
        if child.proc.returncode != 0:
            raise BenchError(f"{args.generator} failed ({child.proc.returncode}):\n"
                             f"{child.stderr_tail()}")
        self.last_dnsperf_cpu_s = (after.ru_utime + after.ru_stime
                                   - before.ru_utime - before.ru_stime)
        report = blast.parse(text) if self.blast_binary is not None else dnsperf.parse(text)
        if zipf_ranks is not None and seen is not None:
            report = _count_repeats(report, zipf_ranks, seen)
        return report

    def run_once(self, resolver: Resolver, workload: str, index: int) -> Run:
        tag = f"{resolver.name.replace('+', '-')}-{workload}-{index}"
        port = free_port()
        launch = resolver.launch(self.workdir / tag, port, self.upstream_port,
                                 recursion=self.recursion(workload))
        server = self.procs.start(tag, launch.argv, cpu=self.args.server_cpu, cwd=launch.cwd)
        try:
            if not wait_until_answering(port, READY_NAME, 30, lambda: server.proc.poll() is None):
                raise BenchError(f"{resolver.name} did not start answering on 127.0.0.1:{port}:\n"
                                 f"{server.stderr_tail()}")
            seen = self.workdir / f"{tag}.seen" if workload == "mixed" else None
            answered = 0  # by the generators, for the query-log check below
            if workload != "uncached":
                warm = self.generate(f"{tag}-warm", port, workload, warm=True, seen=seen,
                                     seed=2 * index)
                if warm.completed < warm.sent:
                    _log(f"  warm-up: {warm.sent - warm.completed} of {warm.sent} lost")
                answered += warm.completed
            cpu_before, jiffies_before = tree_cpu_seconds(server.pid), cpu_jiffies()
            report = self.generate(f"{tag}-load", port, workload, warm=False, seen=seen,
                                   seed=2 * index + 1)
            cpu_after, jiffies_after = tree_cpu_seconds(server.pid), cpu_jiffies()
            rss = tree_peak_rss_kib(server.pid)
            if server.proc.poll() is not None:
                raise BenchError(f"{resolver.name} exited during the run:\n{server.stderr_tail()}")
        finally:
            self.procs.stop(server)
        answered += report.completed
        log_missing = None
        if resolver.query_log:
            # Every answer is a line (the readiness probes add a few): none may be missing.
            log_missing = max(0, answered - _count_lines(self.workdir / tag, "query.log*"))
        server_cpu_s = cpu_after - cpu_before
        cpu_us = server_cpu_s * 1e6 / report.completed if report.completed else math.nan
        wall = report.run_time_s or math.nan
        server_cpu_pct = 100 * server_cpu_s / wall
        # Anything else keeping the server's CPU busy (other programs, the kernel's share
        # of loopback delivery) shows up here; a large value means noisy numbers.
        other_pct = max(0.0, busy_pct(jiffies_before, jiffies_after, self.args.server_cpu)
                        - server_cpu_pct)
        if workload == "uncached" and report.run_time_s < 0.95 * self.args.duration:
            _log(f"  note: ran out of distinct names after {report.run_time_s:.1f} s; "
                 "raise --uncached-names")
        return Run(sent=report.sent, completed=report.completed, lost=report.lost,
                   run_time_s=report.run_time_s, qps=report.qps,
                   avg_latency_ms=report.avg_latency_s * 1e3,
                   max_latency_ms=report.max_latency_s * 1e3,
                   cpu_us_per_query=cpu_us, server_cpu_pct=server_cpu_pct,
                   other_on_server_cpu_pct=other_pct,
                   dnsperf_cpu_pct=100 * self.last_dnsperf_cpu_s / wall,
                   peak_rss_kib=rss, rcodes=report.rcodes, query_log_missing=log_missing,
                   repeat_pct=(100 * report.repeats / (report.repeats + report.distinct)
                               if workload == "mixed" and report.repeats + report.distinct
                               else math.nan))


def _count_lines(directory: Path, pattern: str) -> int:
    """Lines in the files matching `pattern` (the query log and its rotated files)."""
    total = 0
    for path in directory.glob(pattern):
        with path.open("rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return total


def _count_repeats(report: dnsperf.DnsperfReport, ranks: list[int],
                   seen_path: Path) -> dnsperf.DnsperfReport:
    """For dnsperf's 'mixed' runs: which of the draws it sent (the first ``sent``, in file
    order with one thread) named a name already sent to this server, warm-up included."""
    seen = set(json.loads(seen_path.read_text())) if seen_path.exists() else set()
    repeats = 0
    for rank in ranks[:report.sent]:
        if rank in seen:
            repeats += 1
        else:
            seen.add(rank)
    seen_path.write_text(json.dumps(sorted(seen)))
    return dataclasses.replace(report, repeats=repeats, distinct=report.sent - repeats)


def _warn_if_busy(args: argparse.Namespace) -> None:
    before = cpu_jiffies()
    time.sleep(1.0)
    after = cpu_jiffies()
    for role, cpu in (("server", args.server_cpu), ("dnsperf", args.client_cpu),
                      ("upstream", args.upstream_cpu)):
        if cpu is not None and busy_pct(before, after, cpu) > 10:
            _log(f"warning: CPU {cpu} ({role}) is {busy_pct(before, after, cpu):.0f}% busy "
                 "before the benchmark starts; results will be noisy")


def _measure(bench: Bench, resolver: Resolver) -> list[Result]:
    args = bench.args
    results = []
    for workload in args.workloads:
        recursion = bench.recursion(workload)
        reason = recursion and resolver.recursion_unsupported(recursion)
        if reason:
            _log(f"skipping {resolver.name} / {workload}: {reason}")
            continue
        runs = []
        for index in range(args.repeat):
            _log(f"{resolver.name} / {workload} run {index + 1}/{args.repeat} "
                 f"({args.duration:g} s)")
            run = bench.run_once(resolver, workload, index)
            _log(f"  {run.qps:,.0f} qps, avg {run.avg_latency_ms:.3f} ms, "
                 f"lost {run.lost}, {run.cpu_us_per_query:.1f} cpu us/q, "
                 + (f"ideal hit {run.repeat_pct:.1f}%, " if workload == "mixed" else "")
                 + (f"query log lines missing {run.query_log_missing}, "
                    if run.query_log_missing is not None else "")
                 + f"server {run.server_cpu_pct:.0f}% / {args.generator} "
                 f"{run.dnsperf_cpu_pct:.0f}% cpu, "
                 f"other load on the server's CPU {run.other_on_server_cpu_pct:.0f}%")
            runs.append(run)
        results.append(Result(resolver.name, workload, runs))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (("dnsperf", "taskset") if args.generator == "dnsperf" else ("taskset",)):
        if shutil.which(tool) is None:
            _log(f"benchmarks.load: {tool} is not installed")
            return 2
    if args.client_cpu is None:
        _log("note: only one CPU available; server and dnsperf share it")

    resolvers: list[Resolver] = []
    versions: dict[str, str] = {
        args.generator: (dnsperf.dnsperf_version() if args.generator == "dnsperf"
                         else blast.version()),
        "upstream": nsd_version()}
    for name in args.servers:
        resolver = RESOLVERS[name]
        reason = resolver.missing_reason()
        if reason:
            _log(f"skipping {name}: {reason}")
            continue
        resolvers.append(resolver)
        versions[name] = resolver.version()
    if not resolvers:
        _log("benchmarks.load: no server to benchmark")
        return 1

    _warn_if_busy(args)
    results: list[Result] = []
    try:
        with bench_session("fastdns-load-") as (workdir, procs):
            if args.latency_at_half_peak:
                from benchmarks.load import latency
                return latency.run(args, resolvers, versions, workdir, procs)
            bench = Bench(args, workdir, procs)
            bench.start_upstream()
            for resolver in resolvers:
                try:
                    results.extend(_measure(bench, resolver))
                except BenchError as exc:
                    # One broken server must not cost the comparison with the others.
                    _log(f"skipping {resolver.name}: {exc}")
                    versions.pop(resolver.name, None)
    except BenchError as exc:
        _log(f"benchmarks.load: {exc}")
        return 1
    except KeyboardInterrupt:
        _log("benchmarks.load: interrupted; stopping everything it started")
        return 130

    add_ratios(results)
    if args.json:
        status = _git("status", "--porcelain")
        meta = {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(status) if status is not None else None,
            "python": platform.python_version(),
            "versions": versions,
            "generator": args.generator,
            "duration_s": args.duration, "repeat": args.repeat, "clients": args.clients,
            "outstanding": args.outstanding, "max_qps": args.max_qps,
            "tcp_connections": args.tcp_connections, "mixed_names": args.mixed_names,
            "zipf": args.zipf, "mixed_warmup_s": args.mixed_warmup,
            "cpus": {"server": args.server_cpu, "dnsperf": args.client_cpu,
                     "upstream": args.upstream_cpu},
        }
        for result in results:
            print(json.dumps(result.as_json(meta)), flush=True)
    else:
        print(table(results, generator=args.generator))
        print("\n" + ", ".join(f"{k}: {v}" for k, v in versions.items()))
    return 0
