"""A real DNS tree for recursive-mode tests and benchmarks: NSD servers on 127.53.N.x.

Owns `NsdHierarchy`: from a list of `LabZone`s it writes zone files, signs them with BIND's
`dnssec-keygen` and `dnssec-signzone` (a KSK and a ZSK per zone; NSEC or NSEC3, with opt-out
if asked; children first, so each parent is signed with its children's DS records), breaks
the zones the description asks to break, writes a named.root-style root-hints file and a
trust-anchor file (the root's DS records), and runs one NSD per server address, all on the
same port (53 when running as root: referrals carry addresses only).

Layout of a description: each zone names its servers as `{NS name: host}`; a host is a
label (`"root"`, `"leaf"`) that gets its own loopback address. An NS name's address record
lives in the deepest lab zone containing the name, and the parent's delegation carries it
as glue when the name is inside the child (in bailiwick). A host that is named as a server
but loads no zone answers REFUSED, as a lame server does.

Must not: bind or name anything outside 127.0.0.0/8, or signal any process but the NSDs it
started (by PID, with the members of their process groups, also when start() fails).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.zonefile

from fastdns._testing.host import process_stats
from fastdns._testing.server_process import terminate

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "LabError",
    "LabUnavailable",
    "LabZone",
    "NsdHierarchy",
    "Spawn",
    "missing_tools",
    "spawn_in_own_session",
]

TTL_S = 3600
NEGATIVE_TTL_S = 300
# Third octets tried for the lab's 127.53.N.0/24; the first whose addresses are all free wins.
_SUBNETS = range(256)
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
_TOOLS = ("nsd", "dnssec-keygen", "dnssec-signzone")
# An algorithm and a digest type number IANA has not assigned: no validator supports them.
_UNASSIGNED = 200

# Starts one program; the benchmark passes its own, so its clean-up also covers the lab.
Spawn = Callable[[str, Sequence[str], Path], "subprocess.Popen[bytes]"]


class LabUnavailable(RuntimeError):
    """A program the lab needs is missing, or no addresses are free: tests skip on this."""


class LabError(RuntimeError):
    """The lab could not be built or started (bad description, signer or NSD failure)."""


@dataclass(frozen=True)
class LabZone:
    """One zone of the lab and how it is served, signed and (on purpose) broken.

    `records` are zone-file lines relative to the zone; `{host}` is replaced by that host's
    address. `signing`: None (unsigned), "nsec", "nsec3" or "nsec3-optout".
    `ds` in the parent: "match", "mismatch" (right key tag, wrong digest), "unknown-key"
    (a key tag no DNSKEY has), "unsupported-algorithm" or "unsupported-digest" (numbers
    nobody implements: RFC 4035 §5.2 makes the zone insecure) or "none" (a signed island).
    `signature_window`: dnssec-signzone `-s`/`-e` (YYYYMMDDHHMMSS) for expired or
    not-yet-valid signatures. `tamper`: owners whose A records are changed after signing.
    `serve_unsigned`: the parent gets DS records, the servers get the zone without signatures.
    `served_by`: hosts that load the zone (default: every host in `ns`).
    """

    name: str
    ns: Mapping[str, str]
    records: Sequence[str] = ()
    served_by: Sequence[str] | None = None
    signing: str | None = None
    algorithm: str = "ECDSAP256SHA256"
    nsec3_salt: str = "-"
    nsec3_iterations: int = 0
    ds: str = "match"
    signature_window: tuple[str, str] | None = None
    tamper: Sequence[str] = ()
    serve_unsigned: bool = False

    @property
    def origin(self) -> dns.name.Name:
        return dns.name.from_text(self.name)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts that load the zone, each once (several NS names may share a host)."""
        return tuple(dict.fromkeys(self.ns.values() if self.served_by is None
                                   else self.served_by))


@dataclass
class _Host:
    label: str
    address: str
    zones: list[LabZone] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    rundir: Path | None = None


def missing_tools(signed: bool = True) -> list[str]:
    """The programs the lab needs that are not on PATH."""
    needed = _TOOLS if signed else _TOOLS[:1]
    return [tool for tool in needed if shutil.which(tool) is None]


def _bindable(address: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def _free_subnet(count: int, port: int) -> str:
    for third in _SUBNETS:
        prefix = f"127.53.{third}."
        if all(_bindable(f"{prefix}{i}", port) for i in range(1, count + 1)):
            return prefix
    raise LabUnavailable(f"no 127.53.N.0/24 has {count} addresses with port {port} free")


def _free_port(addresses: Sequence[str]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        if all(_bindable(a, port) for a in addresses):
            return port
    raise LabUnavailable("no port is free on every lab address")


def _run(argv: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=120)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def _group_members(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid` (the NSD we started and the children it forked)."""
    return [pid for pid, fields in process_stats() if int(fields[2]) == pgid and fields[0] != "Z"]


def spawn_in_own_session(name: str, argv: Sequence[str], log_dir: Path) -> subprocess.Popen[bytes]:
    """The default `Spawn`: output to `log_dir/name.out`, in a session (and process group)
    of its own, so what it forks can be found and stopped by PID."""
    with open(log_dir / f"{name}.out", "wb") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def nsd_config(address: str, port: int, rundir: Path, zones: Sequence[tuple[str, Path]], *,
               verbosity: int = 1, extra: str = "") -> str:
    """nsd.conf for one NSD on address:port serving `zones` (name, zone file), every file of
    its own in `rundir`, no chroot, no user change, no remote control; `extra` lines go into
    the server clause."""
    zone_clauses = "".join(f'zone:\n  name: "{name}"\n  zonefile: "{path}"\n'
                           for name, path in zones)
    return f"""server:
  ip-address: {address}
  port: {port}
  do-ip4: yes
  do-ip6: no
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{rundir}"
  database: ""
  zonelistfile: "{rundir}/zone.list"
  xfrdfile: "{rundir}/xfrd.state"
  xfrdir: "{rundir}"
  pidfile: "{rundir}/nsd.pid"
  logfile: "{rundir}/nsd.log"
  verbosity: {verbosity}
  # Every query comes from one loopback address: rate limiting would starve the resolvers.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
{extra}remote-control:
  control-enable: no
{zone_clauses}"""


class NsdHierarchy:
    """Authoritative NSD servers for `zones`, signed and broken as described; see the module.

    `port`: None for 53 when running as root, else (and for 0) a port free on every lab
    address; a resolver must then be told to ask on that port. `argv_prefix` goes before
    each `nsd` command (`taskset -c N`); `spawn` starts it (default: a child in a session of
    its own).
    """

    def __init__(
        self,
        zones: Iterable[LabZone],
        workdir: Path | str | None = None,
        *,
        port: int | None = None,
        argv_prefix: Sequence[str] = (),
        spawn: Spawn | None = None,
    ) -> None:
        described = list(zones)
        # Children first: their DS records go into the parent, which is signed after them.
        self.zones = sorted(described, key=lambda z: len(z.origin), reverse=True)
        names = [z.origin for z in self.zones]
        if len(set(names)) != len(names):
            raise LabError("a zone is described twice")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fastdns-nsd-lab-"))
        self._wanted_port = port
        self._argv_prefix = list(argv_prefix)
        self._spawn = spawn or spawn_in_own_session
        labels: list[str] = []
        for zone in described:  # addresses in the order of the description
            for label in [*zone.ns.values(), *zone.hosts]:
                if label not in labels:
                    labels.append(label)
        self._labels = labels
        self.hosts: dict[str, _Host] = {}
        self.port = 0
        self.root_hints_path = self.workdir / "root.hints"
        self.trust_anchor_path: Path | None = None
        self._ds_lines: dict[dns.name.Name, list[str]] = {}

    # ---------------------------------------------------------------------- facts

    def address(self, host: str) -> str:
        """The loopback address of a host label."""
        return self.hosts[host].address

    @property
    def addresses(self) -> dict[str, str]:
        return {label: host.address for label, host in self.hosts.items()}

    # ---------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Build, sign and serve everything; on any failure stop what was started, then raise."""
        missing = missing_tools(signed=any(z.signing for z in self.zones))
        if missing:
            raise LabUnavailable(f"not installed: {', '.join(missing)} "
                                 "(apt-get install nsd bind9-utils)")
        try:
            self._assign_addresses()
            self._build()
            self._serve()
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_addresses(self) -> None:
        port = self._wanted_port
        if port is None:
            port = 53 if os.geteuid() == 0 else 0
        if port == 0:
            prefix = "127.53.0."
            port = _free_port([f"{prefix}{i}" for i in range(1, len(self._labels) + 1)])
        else:
            prefix = _free_subnet(len(self._labels), port)
        self.port = port
        self.hosts = {label: _Host(label, f"{prefix}{i}")
                      for i, label in enumerate(self._labels, 1)}

    def stop(self) -> None:
        """Stop every NSD this lab started (SIGTERM, then SIGKILL), each by PID."""
        for host in self.hosts.values():
            if host.proc is not None:
                _stop(host.proc)
                host.proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------------- zone files

    def _build(self) -> None:
        zonedir = self.workdir / "zones"
        keydir = self.workdir / "keys"
        zonedir.mkdir(parents=True, exist_ok=True)
        keydir.mkdir(parents=True, exist_ok=True)
        for zone in self.zones:
            for label in zone.hosts:
                self.hosts[label].zones.append(zone)
            text = self._zone_text(zone)
            if zone.signing and not zone.serve_unsigned:
                text = self._sign(zone, text, keydir)
            elif zone.signing:
                self._sign(zone, text, keydir)  # for the DS records only
            (zonedir / f"{_file_stem(zone)}.zone").write_text(text)
        self._write_hints()

    def _zone_text(self, zone: LabZone) -> str:
        origin = zone.origin
        soa = f"{next(iter(zone.ns))} hostmaster 1 3600 600 86400 {NEGATIVE_TTL_S}"
        lines = [
            f"$ORIGIN {origin}",
            f"$TTL {TTL_S}",
            f"@ IN SOA {soa}",
            *(f"@ IN NS {name}" for name in zone.ns),
        ]
        lines += [f"{name} IN A {self.address(host)}" for name, host in self._ns_addresses()
                  if self._deepest_zone(name) == origin]
        lines += [record.format_map(self.addresses) for record in zone.records]
        for child in self.zones:
            if self._parent(child) != origin:
                continue
            # RFC 1034 §4.2.1: the delegation, glue for servers inside the child, and DS.
            lines += [f"{child.name} IN NS {name}" for name in child.ns]
            lines += [f"{name} IN A {self.address(host)}" for name, host in child.ns.items()
                      if dns.name.from_text(name).is_subdomain(child.origin)]
            lines += self._ds_lines.get(child.origin, [])
        return "\n".join(lines) + "\n"

    def _ns_addresses(self) -> list[tuple[dns.name.Name, str]]:
        seen: dict[dns.name.Name, str] = {}
        for zone in self.zones:
            for text, host in zone.ns.items():
                name = dns.name.from_text(text)
                if seen.setdefault(name, host) != host:
                    raise LabError(f"{name} is given two hosts: {seen[name]} and {host}")
        return list(seen.items())

    def _deepest_zone(self, name: dns.name.Name) -> dns.name.Name | None:
        # self.zones is deepest first, so the first match is the closest enclosing zone.
        return next((z.origin for z in self.zones if name.is_subdomain(z.origin)), None)

    def _parent(self, zone: LabZone) -> dns.name.Name | None:
        if zone.origin == dns.name.root:
            return None
        return self._deepest_zone(zone.origin.parent())

    # ---------------------------------------------------------------------- signing

    def _sign(self, zone: LabZone, text: str, keydir: Path) -> str:
        """The signed zone text (dnssec-signzone -O full); records the parent's DS lines."""
        name = zone.name
        keygen = ["dnssec-keygen", "-q", "-K", str(keydir), "-a", zone.algorithm, "-n", "ZONE"]
        ksk = _run([*keygen, "-f", "KSK", name], keydir).strip()
        zsk = _run([*keygen, name], keydir).strip()
        keys = "".join(
            line + "\n"
            for base in (ksk, zsk)
            for line in (keydir / f"{base}.key").read_text().splitlines()
            if line and not line.startswith(";")
        )
        stem = _file_stem(zone)
        unsigned = keydir / f"{stem}.unsigned"
        unsigned.write_text(text + keys)
        signed = keydir / f"{stem}.signed"
        argv = ["dnssec-signzone", "-q", "-K", str(keydir), "-d", str(keydir), "-o", name,
                "-O", "full", "-N", "keep", "-f", str(signed)]
        if zone.signing in ("nsec3", "nsec3-optout"):
            argv += ["-3", zone.nsec3_salt, "-H", str(zone.nsec3_iterations)]
            if zone.signing == "nsec3-optout":
                argv.append("-A")
        elif zone.signing != "nsec":
            raise LabError(f"{name}: signing must be nsec, nsec3 or nsec3-optout")
        if zone.signature_window is not None:
            # Signatures outside their validity fail dnssec-signzone's own check: skip it (-P).
            argv += ["-P", "-s", zone.signature_window[0], "-e", zone.signature_window[1]]
        _run([*argv, "-k", ksk, str(unsigned), zsk], keydir)
        self._record_ds(zone, keydir / f"dsset-{zone.origin.to_text()}")
        signed_text = signed.read_text()
        if zone.tamper:
            signed_text = _tampered(signed_text, {dns.name.from_text(n) for n in zone.tamper})
        return signed_text

    def _record_ds(self, zone: LabZone, dsset: Path) -> None:
        rrsets = dns.zonefile.read_rrsets(dsset.read_text(), origin=dns.name.root, rdclass=None,
                                          relativize=False, default_ttl=TTL_S)
        records = [rd for rrset in rrsets for rd in rrset]
        if zone.ds == "mismatch":
            records = [rd.replace(digest=bytes([rd.digest[0] ^ 0xFF]) + rd.digest[1:])
                       for rd in records]
        elif zone.ds == "unknown-key":
            records = [rd.replace(key_tag=(rd.key_tag + 1) % 65536) for rd in records]
        elif zone.ds == "unsupported-algorithm":
            records = [rd.replace(algorithm=_UNASSIGNED) for rd in records]
        elif zone.ds == "unsupported-digest":
            records = [rd.replace(digest_type=_UNASSIGNED) for rd in records]
        elif zone.ds == "none":
            records = []
        elif zone.ds != "match":
            raise LabError(f"{zone.name}: unknown ds mode {zone.ds!r}")
        lines = [f"{zone.origin} {TTL_S} IN DS {rd.to_text()}" for rd in records]
        self._ds_lines[zone.origin] = lines
        if zone.origin == dns.name.root and lines:
            self.trust_anchor_path = self.workdir / "root.anchor"
            self.trust_anchor_path.write_text("\n".join(lines) + "\n")

    def _write_hints(self) -> None:
        root = next((z for z in self.zones if z.origin == dns.name.root), None)
        if root is None:
            raise LabError("the lab has no root zone '.'")
        lines = [f". {TTL_S * 1000} IN NS {name}" for name in root.ns]
        lines += [f"{name} {TTL_S * 1000} IN A {self.address(host)}"
                  for name, host in root.ns.items()]
        self.root_hints_path.write_text("\n".join(lines) + "\n")

    # ---------------------------------------------------------------------- serving

    def _serve(self) -> None:
        for host in self.hosts.values():
            conf = self._nsd_conf(host)
            host.rundir = conf.parent
            host.proc = self._spawn(f"nsd-{host.label}",
                                    [*self._argv_prefix, "nsd", "-d", "-c", str(conf)],
                                    conf.parent)
        deadline = time.monotonic() + _START_TIMEOUT_S
        for host in self.hosts.values():
            self._wait_answering(host, deadline)

    def _nsd_conf(self, host: _Host) -> Path:
        rundir = self.workdir / "nsd" / host.label
        rundir.mkdir(parents=True, exist_ok=True)
        conf = rundir / "nsd.conf"
        conf.write_text(nsd_config(
            host.address, self.port, rundir,
            [(z.name, self.workdir / "zones" / f"{_file_stem(z)}.zone") for z in host.zones],
        ))
        return conf

    def _wait_answering(self, host: _Host, deadline: float) -> None:
        assert host.proc is not None
        probe = dns.message.make_query(host.zones[0].name if host.zones else ".", "SOA")
        while True:
            if host.proc.poll() is not None:
                raise LabError(f"nsd for {host.label} ({host.address}:{self.port}) exited "
                               f"with {host.proc.returncode}:\n{self._log_tail(host)}")
            try:
                dns.query.udp(probe, host.address, port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise LabError(f"nsd for {host.label} did not answer on {host.address}:"
                               f"{self.port}:\n{self._log_tail(host)}")
            time.sleep(0.05)

    @staticmethod
    def _log_tail(host: _Host) -> str:
        assert host.rundir is not None
        text = "".join(p.read_text(errors="replace") for p in sorted(host.rundir.iterdir())
                       if p.suffix in (".log", ".out"))
        return "\n".join(text.strip().splitlines()[-15:]) or "(no output)"


def _tampered(signed_text: str, owners: set[dns.name.Name]) -> str:
    """The zone text with the A records of `owners` pointing elsewhere, signatures unchanged."""
    out = []
    for line in signed_text.splitlines():
        fields = line.split()
        if (len(fields) == 5 and fields[3] == "A" and not line.startswith(";")
                and dns.name.from_text(fields[0]) in owners):
            fields[4] = "192.0.2.254" if fields[4] != "192.0.2.254" else "192.0.2.253"
            line = " ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the NSD we started; SIGKILL it, and what it forked, if they linger."""
    if proc.poll() is not None:
        return
    # Its children (xfrd, the server) share its process group when it leads one (its own
    # session); note them now, by PID, as they are re-parented once it exits.
    children = [pid for pid in _group_members(proc.pid) if pid != proc.pid]
    terminate(proc, _STOP_TIMEOUT_S)
    for pid in set(children) & set(_group_members(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _file_stem(zone: LabZone) -> str:
    return "root" if zone.origin == dns.name.root else zone.name.rstrip(".")
