"""Child processes of the load benchmark and what /proc says about them.

Owns starting processes (optionally pinned to one CPU with taskset), tracking every
one of them, and stopping them by PID together with their descendants. Also reads
CPU time and peak RSS of a process tree from /proc. It must never signal a process
it did not start (or that is not a descendant of one it started), and never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fastdns._testing.host import process_stats

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (resolvers bind both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise BenchError("could not find a free UDP+TCP port on 127.0.0.1")


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, fields in process_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all of its live descendants."""
    children = _parent_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU time of ``pid`` and its descendants (plus children it has reaped)."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # proc(5): utime=14 stime=15 cutime=16 cstime=17 (1-based); fields[0] is field 3.
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / _CLK_TCK


def tree_memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) summed over ``pid`` and its descendants, in KiB."""
    rss = hwm = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


def tree_peak_rss_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident set) over ``pid`` and its descendants, in KiB."""
    return tree_memory_kib(pid)[1]


def cpu_jiffies() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat; idle and iowait count as not busy."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *fields = line.split()
            # proc(5): user nice system idle iowait irq softirq steal (guest time is in user).
            values = [int(v) for v in fields[:8]]
            total = sum(values)
            out[int(name[3:])] = (total - values[3] - values[4], total)
    return out


def busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
             cpu: int) -> float:
    """How busy ``cpu`` was between two ``cpu_jiffies`` samples, whoever kept it busy."""
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else float("nan")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, limit: int = 2000) -> str:
        text = ""
        for path in (self.stdout_path, self.stderr_path):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        lines = text[-limit:].strip().splitlines()
        return "\n".join(lines[-12:])


class ProcessGroup:
    """Every process the benchmark started; ``stop_all`` in a ``finally`` cleans up."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []

    def start(self, name: str, argv: list[str], *, cpu: int | None = None,
              cwd: Path | None = None) -> Child:
        if cpu is not None:
            # taskset execs the program, so the PID we hold is the program's own.
            argv = ["taskset", "-c", str(cpu), *argv]
        stdout_path = self.workdir / f"{name}.stdout"
        stderr_path = self.workdir / f"{name}.stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            # A new session keeps a terminal Ctrl-C away from the children: we stop them ourselves.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    cwd=cwd, start_new_session=True)
        child = Child(name, proc, stdout_path, stderr_path)
        self._children.append(child)
        return child

    def run(self, name: str, argv: list[str], *, timeout: float, cpu: int | None = None) -> Child:
        """Start, wait up to ``timeout`` seconds, and stop; the caller reads the output files."""
        child = self.start(name, argv, cpu=cpu)
        try:
            child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} did not finish within {timeout:.0f} s") from None
        finally:
            self.stop(child)
        return child

    def stop(self, child: Child, grace: float = 10.0) -> None:
        """SIGTERM the root and give it ``grace`` seconds to stop its own children; then
        SIGTERM and, after a short wait, SIGKILL whatever is left of the tree."""
        if child in self._children:
            self._children.remove(child)
        if child.proc.poll() is not None:
            return
        # Collect descendants first: once the root exits they are re-parented and lost.
        descendants = process_tree(child.pid)[1:]
        child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        left = [pid for pid in descendants if _alive(pid)]
        for pid in left:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = [pid for pid in left if _alive(pid)]
        for pid in left:
            _signal(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
