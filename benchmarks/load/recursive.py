"""The ``recursive`` and ``recursive-dnssec`` workloads: resolvers recursing through a lab.

Owns the lab those workloads run against: NSD serving the root, ``example.`` and
``bench.example.`` (with ``* A 192.0.2.1``, so every name under it exists) on
127.53.N.x, port 53 when running as root (fastdns/_testing/nsd_lab.py); signed, with the
root's DS as the trust anchor, for ``recursive-dnssec``. Each resolver then gets a
``Recursion`` (servers.py) instead of the forwarding upstream. Its NSD processes are
started through the run's ProcessGroup, pinned to the upstream CPU, so the run's clean-up
stops them too. Must not: name anything outside loopback (the lab checks its own
addresses; the resolver configs are checked in servers.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from benchmarks.load.procs import BenchError, ProcessGroup
from benchmarks.load.servers import ZONE, Recursion
from fastdns._testing.nsd_lab import LabUnavailable, LabZone, NsdHierarchy

WORKLOADS = ("recursive", "recursive-dnssec")
TLD = "example."


def is_recursive(workload: str) -> bool:
    return workload in WORKLOADS


def query_names(workload: str, *, warm: bool) -> str:
    """Which query file a pass uses: recursive runs send the 'uncached' names (each once, so
    no final answer comes from a cache) after one pass over the 'cached' names, which leaves
    the delegations (and, signed, the DS and DNSKEY sets) in the resolver's cache."""
    if is_recursive(workload):
        return "cached" if warm else "uncached"
    return workload


def lab_zones(signed: bool) -> list[LabZone]:
    """Root, TLD and leaf, each on its own server; NSEC above, NSEC3 in the leaf (its
    wildcard answers then carry an NSEC3 proof the validator must check)."""
    def sign(kind: str) -> str | None:
        return kind if signed else None

    return [
        LabZone(".", {"a.root-servers.": "root"}, signing=sign("nsec")),
        LabZone(TLD, {f"ns1.{TLD}": "tld"}, signing=sign("nsec")),
        LabZone(ZONE, {f"ns1.{ZONE}": "leaf"}, signing=sign("nsec3"),
                records=["* A 192.0.2.1"]),
    ]


def start_lab(workdir: Path, procs: ProcessGroup, workload: str,
              cpu: int | None) -> tuple[NsdHierarchy, Recursion]:
    """Build and start the lab for ``workload``; its NSDs belong to ``procs``."""
    signed = workload == "recursive-dnssec"

    def spawn(name: str, argv: Sequence[str], _log_dir: Path) -> subprocess.Popen[bytes]:
        return procs.start(f"{workload}-{name}", list(argv), cpu=cpu).proc

    lab = NsdHierarchy(lab_zones(signed), workdir / workload, spawn=spawn)
    try:
        lab.start()
    except LabUnavailable as exc:
        raise BenchError(f"{workload}: {exc}") from exc
    return lab, Recursion(lab.root_hints_path, lab.port, lab.trust_anchor_path)
