"""The ``blast`` load generator: build it from ``blast.c``, command lines, output parsing.

Owns compiling ``blast.c`` with the machine's C compiler into the benchmark's temp
directory, building its command line and turning its one JSON line into a report with
the same fields as dnsperf's. It must only ever point blast at 127.0.0.1 (blast itself
has no address option: it always sends to 127.0.0.1).

blast exists because dnsperf saturates its own core at ~200-250k qps on small machines,
so cached runs measured dnsperf. blast keeps a fixed window of queries outstanding with
sendmmsg/recvmmsg batches (UDP) or epoll over many connections (TCP), random IDs, and
counts sent/answered/lost, latency and response codes.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

from benchmarks.load.dnsperf import DnsperfReport
from benchmarks.load.procs import BenchError

SOURCE = Path(__file__).with_name("blast.c")


def compiler() -> str | None:
    return shutil.which("gcc") or shutil.which("cc")


def build(workdir: Path) -> Path:
    """Compile blast.c into ``workdir``; raises BenchError with the compiler's message."""
    cc = compiler()
    if cc is None:
        raise BenchError("no C compiler (gcc or cc) to build the blast generator")
    binary = workdir / "blast"
    out = subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE), "-lm"],
                         capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"building blast failed:\n{out.stdout}{out.stderr}")
    return binary


def version() -> str:
    cc = compiler()
    return f"blast ({Path(cc).name})" if cc else "blast (no compiler)"


def command(binary: Path, *, port: int, queryfile: Path, duration: float | None, window: int,
            sockets: int, tcp: bool = False, passes: int | None = None, timeout_s: float = 5.0,
            retries: int = 0, max_qps: int | None = None, zipf: float | None = None,
            seen_file: Path | None = None) -> list[str]:
    """``sockets`` is the number of UDP sockets, or of TCP connections with ``tcp``."""
    argv = [str(binary), "-p", str(port), "-d", str(queryfile), "-w", str(window),
            "-c", str(sockets), "-m", "tcp" if tcp else "udp", "-t", f"{timeout_s:g}"]
    if duration is not None:
        argv += ["-l", f"{duration:g}"]
    if passes is not None:
        argv += ["-n", str(passes)]
    if retries:
        argv += ["-r", str(retries)]
    if max_qps:
        argv += ["-Q", str(max_qps)]
    if zipf:
        argv += ["-z", f"{zipf:g}"]
    if seen_file is not None:
        argv += ["-k", str(seen_file)]
    return argv


def parse(text: str) -> DnsperfReport:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"blast printed no result:\n{text[-2000:]}")
    data = json.loads(lines[-1])

    def latency(key: str) -> float:
        value = float(data[key])
        return math.nan if value < 0 else value  # -1: nothing was answered

    return DnsperfReport(
        sent=data["sent"], completed=data["completed"], lost=data["lost"],
        run_time_s=data["run_time_s"], qps=data["qps"],
        avg_latency_s=latency("avg_latency_s"), min_latency_s=latency("min_latency_s"),
        max_latency_s=latency("max_latency_s"), rcodes=data["rcodes"],
        distinct=data["distinct"], repeats=data["repeats"],
        noerror_without_answer=data["noerror_without_answer"], retried=data["retried"],
    )
