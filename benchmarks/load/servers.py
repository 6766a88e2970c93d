"""The authoritative upstream (NSD) and the resolvers under test, with their configs.

Owns writing a config for each program so that it listens on 127.0.0.1 only and
forwards only to the local upstream (or, given a ``Recursion``, recurses only from the
lab's root hints), and reporting its version or why it is missing.
It must not produce a config that can send a packet off the loopback interface:
every config passes ``assert_loopback_only`` before it is used.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load.dnswire import LOOPBACK
from benchmarks.load.procs import BenchError
from fastdns._testing.nsd_lab import nsd_config

ZONE = "bench.example."
REPO_ROOT = Path(__file__).resolve().parents[2]
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


def assert_loopback_only(text: str, what: str) -> None:
    """Refuse a config that names any IPv4 address outside 127.0.0.0/8."""
    for match in _IPV4.findall(text):
        try:
            addr = ipaddress.IPv4Address(match)
        except ipaddress.AddressValueError:
            continue
        if not addr.is_loopback:
            raise BenchError(f"{what}: refusing non-loopback address {addr}")


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30,
                             cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.split("  ")[0].strip()  # dnsmasq appends its copyright notice
    return "unknown"


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    cwd: Path | None = None


@dataclass(frozen=True, slots=True)
class Recursion:
    """Recurse from the lab's root hints (name servers asked on ``port``) instead of
    forwarding; validate DNSSEC from ``trust_anchor`` when one is given."""

    root_hints: Path
    port: int
    trust_anchor: Path | None = None


# --- authoritative upstream -------------------------------------------------------------

def nsd_version() -> str:
    return _first_line(["nsd", "-v"])


def nsd_launch(workdir: Path, port: int) -> Launch:
    """NSD serving bench.example. with a wildcard A record (TTL 3600), one server process."""
    if shutil.which("nsd") is None:
        raise BenchError("nsd is not installed (apt-get install nsd); it is the local upstream")
    zonefile = workdir / "bench.example.zone"
    # The glue and the wildcard are data only; no resolver chases them in forward mode.
    zonefile.write_text(
        f"$ORIGIN {ZONE}\n$TTL 3600\n"
        f"@ IN SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 3600\n"
        f"@ IN NS ns.{ZONE}\n"
        "ns IN A 127.0.0.1\n"
        "* IN A 192.0.2.1\n"
    )
    conf = nsd_config(LOOPBACK, port, workdir, [(ZONE, zonefile)], verbosity=0,
                      extra="  refuse-any: yes\n")
    assert_loopback_only(conf, "nsd.conf")
    path = workdir / "nsd.conf"
    path.write_text(conf)
    return Launch(["nsd", "-d", "-c", str(path)])


# --- resolvers under test ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Resolver:
    name: str
    binary: str

    @property
    def query_log(self) -> bool:
        """Whether this configuration writes fastdns's JSON query log."""
        return self.name == "fastdns+log"

    def missing_reason(self) -> str | None:
        if self.binary == "fastdns":
            probe = subprocess.run([sys.executable, "-m", "fastdns", "version"],
                                   capture_output=True, text=True, check=False, cwd=REPO_ROOT,
                                   timeout=60)
            if probe.returncode != 0:
                tail = (probe.stderr or probe.stdout).strip().splitlines()[-1:]
                return "`python -m fastdns version` failed" + (f": {tail[0]}" if tail else "")
            return None
        if shutil.which(self.binary) is None:
            return f"{self.binary} is not installed"
        return None

    def version(self) -> str:
        if self.binary == "fastdns":
            return _first_line([sys.executable, "-m", "fastdns", "version"])
        if self.binary == "unbound":
            return "unbound " + _first_line(["unbound", "-V"]).removeprefix("Version ")
        return _first_line(["dnsmasq", "--version"])

    def recursion_unsupported(self, recursion: Recursion) -> str | None:
        """Why this server cannot run the recursive workloads, or None."""
        if self.binary == "dnsmasq":
            return "dnsmasq only forwards"
        if self.binary == "unbound" and recursion.port != 53:
            return f"Unbound asks name servers on port 53 only (the lab is on {recursion.port})"
        return None

    def launch(self, workdir: Path, port: int, upstream_port: int, *,
               cache_mb: int | None = None, recursion: Recursion | None = None) -> Launch:
        """``cache_mb``: a cache this large (fastdns ``max_size_mb``; Unbound msg cache,
        and twice that for the rrset cache) instead of the defaults below. ``recursion``:
        recurse through the lab instead of forwarding to ``upstream_port``."""
        workdir.mkdir(parents=True, exist_ok=True)
        if recursion is not None:
            if self.recursion_unsupported(recursion):
                raise BenchError(f"{self.name}: {self.recursion_unsupported(recursion)}")
            assert_loopback_only(recursion.root_hints.read_text(), "root hints")
        if self.binary == "unbound":
            return _unbound(workdir, port, upstream_port, cache_mb=cache_mb, recursion=recursion)
        if self.binary == "dnsmasq":
            return _dnsmasq(workdir, port, upstream_port)
        return _fastdns(workdir, port, upstream_port, query_log=self.query_log,
                        cache_mb=cache_mb, recursion=recursion)


RESOLVERS: dict[str, Resolver] = {
    "fastdns": Resolver("fastdns", "fastdns"),
    "fastdns+log": Resolver("fastdns+log", "fastdns"),
    "unbound": Resolver("unbound", "unbound"),
    "dnsmasq": Resolver("dnsmasq", "dnsmasq"),
}


def _unbound_recursion(recursion: Recursion | None, upstream_port: int) -> tuple[str, str]:
    """(``server:`` lines, trailing sections) that make Unbound forward to the upstream, or
    recurse through the lab: its root hints only, QNAME minimisation as fastdns does it,
    validation from a static anchor (no RFC 5011 probing) if there is one, and no answers
    synthesised from cached NSEC records (RFC 8198), which fastdns does not do either."""
    if recursion is None:
        # forward-first: no means never fall back to recursion from the built-in root hints.
        return '  module-config: "iterator"\n  qname-minimisation: no\n', f"""forward-zone:
  name: "."
  forward-addr: {LOOPBACK}@{upstream_port}
  forward-first: no
"""
    anchor = recursion.trust_anchor
    lines = f"""  root-hints: "{recursion.root_hints}"
  module-config: "{'validator iterator' if anchor else 'iterator'}"
  trust-anchor-signaling: no
  root-key-sentinel: no
  qname-minimisation: yes
  aggressive-nsec: no
"""
    if anchor is not None:
        lines += f'  trust-anchor-file: "{anchor}"\n'
    return lines, ""


def _unbound(workdir: Path, port: int, upstream_port: int, *, cache_mb: int | None,
             recursion: Recursion | None = None) -> Launch:
    msg_mb = cache_mb or 128
    mode_lines, sections = _unbound_recursion(recursion, upstream_port)
    # do-not-query-localhost: no is needed for the forwarder (or the lab) on 127.0.0.0/8 to
    # be used at all.
    conf = f"""server:
  interface: {LOOPBACK}
  port: {port}
  outgoing-interface: {LOOPBACK}
  do-ip4: yes
  do-ip6: no
  do-udp: yes
  do-tcp: yes
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  num-threads: 1
  num-queries-per-thread: 4096
  outgoing-range: 8192
  msg-cache-size: {msg_mb}m
  rrset-cache-size: {2 * msg_mb}m
  # The 'tcp' workload holds 1000 connections; the default (10 per thread) would queue them.
  incoming-num-tcp: 1100
{mode_lines}  prefetch: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  log-queries: no
  log-replies: no
  statistics-interval: 0
remote-control:
  control-enable: no
{sections}"""
    assert_loopback_only(conf, "unbound.conf")
    path = workdir / "unbound.conf"
    path.write_text(conf)
    if shutil.which("unbound-checkconf"):
        check = subprocess.run(["unbound-checkconf", str(path)], capture_output=True, text=True,
                               check=False)
        if check.returncode != 0:
            raise BenchError(f"unbound-checkconf rejected the config: {check.stdout}{check.stderr}")
    return Launch(["unbound", "-d", "-c", str(path)])


def _dnsmasq(workdir: Path, port: int, upstream_port: int) -> Launch:
    argv = [
        "dnsmasq", "-k",
        "--conf-file=/dev/null",  # ignore /etc/dnsmasq.conf and its conf-dir
        "--no-resolv", "--no-poll", "--no-hosts",
        f"--server={LOOPBACK}#{upstream_port}",
        f"--port={port}",
        f"--listen-address={LOOPBACK}",
        "--bind-interfaces",
        "--cache-size=10000",
        "--dns-forward-max=1024",
        f"--pid-file={workdir}/dnsmasq.pid",
        f"--log-facility={workdir}/dnsmasq.log",
        "--user=root",
    ]
    assert_loopback_only(" ".join(argv), "dnsmasq command line")
    return Launch(argv)


def _fastdns(workdir: Path, port: int, upstream_port: int, *, query_log: bool,
             cache_mb: int | None, recursion: Recursion | None = None) -> Launch:
    from benchmarks.load.procs import free_port

    config: dict[str, object] = {
        "server": {"bind_address": LOOPBACK, "dns_port": port, "web_port": free_port(),
                   "workers": 1},
        # Recursing, the upstream is never asked: a loopback port, never the public defaults.
        "upstream_servers": [f"{LOOPBACK}:{upstream_port or free_port()}"],
        "cache": {"max_size_mb": cache_mb or 512},
        # Rotation at 4 GB: a run's every line stays on disk, to be counted.
        "logging": {"level": "WARNING", "query_log": query_log, "max_size_mb": 4096,
                    "file": str(workdir / ("query.log" if query_log else "fastdns.log"))},
        "security": {"rate_limit_per_ip": 0},
        "web": {"enabled": False},
    }
    if recursion is not None:
        config["resolver"] = {"mode": "recursive", "root_hints": str(recursion.root_hints),
                              "query_loopback": True, "nameserver_port": recursion.port,
                              "qname_minimisation": True}
        if recursion.trust_anchor is not None:
            config["dnssec"] = {"enabled": True, "trust_anchor": str(recursion.trust_anchor)}
    text = json.dumps(config, indent=2) + "\n"  # JSON is valid YAML
    assert_loopback_only(text, "fastdns config")
    path = workdir / "fastdns.yaml"
    path.write_text(text)
    return Launch([sys.executable, "-m", "fastdns", "serve", "--config", str(path)],
                  cwd=REPO_ROOT)
