"""Unbound as a reference resolver for the lab: same root hints, same trust anchor.

Owns one `unbound -d` child on 127.0.0.1 (a free port) that recurses from the given root
hints only (never its built-in ones) with `do-not-query-localhost: no`, validates with a
static trust-anchor file (no RFC 5011 updates, no sentinel or signalling queries), and stops
it by PID. Must not: be started with hints or anchors naming anything outside loopback.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.query

from fastdns._testing.fake_upstream import free_port
from fastdns._testing.server_process import terminate
from fastdns.resolve.hints import load_root_hints

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["UnboundProcess", "UnboundUnavailable"]

_START_TIMEOUT_S = 15.0
# RFC 6761 §6.4: Unbound answers .invalid itself, so the readiness probe asks nobody.
_PROBE_QNAME = "unbound-probe.invalid."


class UnboundUnavailable(RuntimeError):
    """unbound is not installed (tests skip the comparison on this)."""


class UnboundProcess:
    """A validating (if `trust_anchor` is given) recursive Unbound over the lab's root hints."""

    def __init__(self, workdir: Path, root_hints: Path, trust_anchor: Path | None) -> None:
        if shutil.which("unbound") is None:
            raise UnboundUnavailable("unbound is not installed (apt-get install unbound)")
        for server in load_root_hints(root_hints):
            if not all(ipaddress.ip_address(a).is_loopback for a in server.addresses):
                raise ValueError(f"root hints {root_hints} name a non-loopback server")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = self.workdir / "unbound.log"
        self.config_path = self.workdir / "unbound.conf"
        anchor = f'  trust-anchor-file: "{trust_anchor}"\n' if trust_anchor else ""
        modules = "validator iterator" if trust_anchor else "iterator"
        self.config_path.write_text(f"""server:
  interface: {self.host}
  port: {self.port}
  outgoing-interface: {self.host}
  do-ip4: yes
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  # The lab's servers are on 127.0.0.0/8; only they are ever asked (root hints below).
  do-not-query-localhost: no
  root-hints: "{root_hints}"
{anchor}  module-config: "{modules}"
  trust-anchor-signaling: no
  root-key-sentinel: no
  qname-minimisation: yes
  ede: yes
  val-log-level: 2
  # RFC 6761 §6.2: Unbound blocks .test by default; the lab serves it.
  local-zone: "test." nodefault
  num-threads: 1
  chroot: ""
  username: ""
  directory: "{self.workdir}"
  pidfile: "{self.workdir}/unbound.pid"
  use-syslog: no
  logfile: "{self.log_path}"
  verbosity: 1
remote-control:
  control-enable: no
""")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        out = (self.workdir / "unbound.out").open("wb")
        with out:
            self._proc = subprocess.Popen(["unbound", "-d", "-c", str(self.config_path)],
                                          stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)
        probe = dns.message.make_query(_PROBE_QNAME, "A")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"unbound did not start on {self.host}:{self.port}:\n"
                                   f"{self.output()}")
            try:
                dns.query.udp(probe, self.host, port=self.port, timeout=0.2)
                return self
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)

    def output(self) -> str:
        """The last lines Unbound wrote (its stdout/stderr, then its log file)."""
        lines: list[str] = []
        for path in (self.workdir / "unbound.out", self.log_path):
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-20:])

    def stop(self) -> None:
        """SIGTERM the Unbound this object started (by PID), SIGKILL it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
