"""Facts about the test host that several test modules check: open descriptors, IPv6 loopback,
the processes running (to stop every child a test or benchmark started)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path


def open_fds() -> int:
    """Descriptors this process has open (Linux /proc), to prove nothing leaked."""
    return len(os.listdir("/proc/self/fd"))


def ipv6_loopback_available() -> bool:
    """True if ::1 can be bound here (some containers have no IPv6 at all)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def process_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) for every process now:
    fields[0] is the state, [1] the parent PID, [2] the process group (proc(5))."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone since the listing
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        yield int(entry), stat[stat.rfind(")") + 2:].split()
