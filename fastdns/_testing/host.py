"""Facts about the test host that several test modules check: open descriptors, IPv6 loopback."""

from __future__ import annotations

import os
import socket


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
