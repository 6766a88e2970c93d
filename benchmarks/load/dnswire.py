"""Just enough DNS wire format to tell when a server under test is answering.

Owns building one A query and waiting for a NOERROR answer from a loopback server.
It must not be used for load generation (dnsperf does that) and only talks to 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def build_query(name: str, qtype: int = 1) -> tuple[int, bytes]:
    """(id, wire) for a recursive IN query (RFC 1035 §4.1)."""
    qid = int.from_bytes(os.urandom(2), "big")
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD=1, QDCOUNT=1
    qname = b"".join(bytes([len(label)]) + label.encode("ascii")
                     for label in name.rstrip(".").split(".")) + b"\x00"
    return qid, header + qname + struct.pack("!HH", qtype, 1)


def answers(port: int, name: str, timeout: float = 0.3) -> bool:
    """True if 127.0.0.1:port answers ``name A`` with NOERROR and at least one answer RR."""
    qid, wire = build_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((LOOPBACK, port))
        try:
            sock.send(wire)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reply = sock.recv(4096)
                if len(reply) < 12:
                    continue
                rid, flags, _qd, ancount = struct.unpack("!HHHH", reply[:8])
                if rid == qid and flags & 0x8000:
                    return flags & 0x000F == 0 and ancount > 0
        except OSError:  # timeout, or ICMP port unreachable while the server starts
            return False
    return False


def wait_until_answering(port: int, name: str, timeout: float,
                         still_running: Callable[[], bool]) -> bool:
    """Poll every 50 ms until the server answers, it exits, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not still_running():
            return False
        if answers(port, name):
            return True
        time.sleep(0.05)
    return False
