"""ServerProcess: run `fastdns serve --config FILE` as users do, in a child process, for tests.

It owns the child, its config file and its output files under the test's directory, and the
`query()` convenience. It must only ever signal the process it started (by PID), and it must
never point the server, or a query, at anything outside loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rdatatype
import yaml

import fastdns
from fastdns._testing.fake_upstream import free_port
from fastdns.resolve.hints import load_root_hints
from fastdns.resolve.upstream import format_address

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PROBE_QNAME", "ServerProcess", "ServerStartError", "query", "terminate"]

DEFAULT_QUERY_TIMEOUT_S = 5.0
DEFAULT_START_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 10.0
# RFC 6761 §6.4: names under .invalid never resolve, so the probe can never leave the box.
PROBE_QNAME = "fastdns-probe.invalid."
_PROBE_INTERVAL_S = 0.05
# After this long without a reply to the STATUS probe, also send a bare header (FORMERR).
_HEADER_PROBE_AFTER_S = 2.0
_STDERR_TAIL_LINES = 40


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
    """SIGTERM a child this process started (by its PID), wait up to `timeout_s`, then
    SIGKILL it; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerStartError(RuntimeError):
    """The server process exited, or never answered, before start() timed out."""

    def __init__(self, message: str, returncode: int | None, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def _endpoint(server: Any) -> tuple[str, int]:
    """(host, port) of a ServerProcess/FakeUpstream, a "host:port" string, or a tuple."""
    if isinstance(server, tuple):
        host, port = server[0], int(server[1])
    elif isinstance(server, str):
        host, port = _split_host_port(server, default_port=53)
    else:
        host, port = str(server.host), int(server.port)
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"tests only query loopback, got {host!r}")
    return host, port


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 literal."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


def query(
    server: Any,
    name: str,
    rdtype: str | int = "A",
    tcp: bool = False,
    *,
    timeout: float = DEFAULT_QUERY_TIMEOUT_S,
    **kw: Any,
) -> dns.message.Message:
    """Ask `server` (ServerProcess, FakeUpstream, "host:port" or (host, port)) one question.

    Extra keywords go to dns.message.make_query (use_edns, want_dnssec, payload, flags, id).
    The reply must match the query (dnspython checks ID and question) and carry no trailing
    bytes.
    """
    host, port = _endpoint(server)
    message = dns.message.make_query(name, dns.rdatatype.RdataType.make(rdtype), **kw)
    if tcp:
        return dns.query.tcp(message, host, timeout=timeout, port=port, ignore_trailing=False)
    return dns.query.udp(message, host, timeout=timeout, port=port, ignore_trailing=False)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    """Make a config value YAML-safe: Paths, tuples, FakeUpstreams and the like become plain."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "address") and not isinstance(value, (str, bytes)):
        return str(value.address)
    return value


def _loopback_for(bind_address: str) -> str:
    # A server bound to the unspecified address is reached through loopback of its family.
    address = ipaddress.ip_address(bind_address)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return bind_address


def _check_stays_local(config: Mapping[str, Any]) -> None:
    # The test network rule: a server started by a test may only ever talk to loopback.
    resolver = config.get("resolver")
    if isinstance(resolver, Mapping) and resolver.get("mode") == "recursive":
        hints = resolver.get("root_hints")
        if not hints:
            raise ValueError("resolver.mode 'recursive' without root_hints queries the real roots")
        for server in load_root_hints(hints):
            if not all(ipaddress.ip_address(a).is_loopback for a in server.addresses):
                raise ValueError(f"root hints {hints} name a non-loopback server")
    upstreams = config.get("upstream_servers", [])
    if isinstance(upstreams, str):
        upstreams = upstreams.split(",")
    for upstream in upstreams:
        host, _ = _split_host_port(str(upstream).strip(), default_port=53)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue  # not an IP literal: the server rejects it, nothing is sent
        if not address.is_loopback:
            raise ValueError(f"upstream {upstream!r} is not loopback; tests must stay local")


class ServerProcess:
    """A `fastdns serve` child process with a config written under `tmp_path`.

    `config` is merged over test defaults: server.bind_address 127.0.0.1, server.dns_port and
    server.web_port free ports, server.workers 1, logging.file `tmp_path/query.log`,
    security.rate_limit_per_ip 0, and (if the caller gives none) one upstream on a loopback
    port where nothing listens. Upstreams may be given as FakeUpstream objects. `argv` replaces
    the `[python, "-m", "fastdns"]` prefix of the command (for testing this harness); the
    command always ends with `serve --config FILE`. `FASTDNS_*` variables of the test
    process are not inherited; `env` is added on top.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None,
        tmp_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        argv: Sequence[str] | None = None,
        wait_tcp: bool = True,
        name: str = "fastdns",
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.wait_tcp = wait_tcp
        given = _plain(dict(config or {}))
        server = given.get("server", {})
        bind_address = str(server.get("bind_address", "127.0.0.1"))
        local = _loopback_for(bind_address)
        defaults: dict[str, Any] = {
            "server": {
                "bind_address": bind_address,
                "dns_port": server.get("dns_port") or free_port(local),
                "web_port": server.get("web_port") or free_port(local),
                "workers": 1,
            },
            "logging": {"file": str(self.tmp_path / "query.log")},
            "security": {"rate_limit_per_ip": 0},
        }
        if "upstream_servers" not in given:
            # Never the public defaults: a loopback port with nothing behind it.
            defaults["upstream_servers"] = [f"127.0.0.1:{free_port()}"]
        self.config: dict[str, Any] = _deep_merge(defaults, given)
        _check_stays_local(self.config)
        self.host = local
        self.port = int(self.config["server"]["dns_port"])
        self.config_path = self.tmp_path / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.stdout_path = self.tmp_path / f"{name}.stdout"
        self.stderr_path = self.tmp_path / f"{name}.stderr"
        prefix = list(argv) if argv is not None else [sys.executable, "-m", "fastdns"]
        self.argv = [*prefix, "serve", "--config", str(self.config_path)]
        self._env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    # ----------------------------------------------------------------- facts

    @property
    def address(self) -> str:
        """The "host:port" string ("[v6]:port" for IPv6) clients use."""
        return format_address(self.host, self.port)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def query_log_path(self) -> Path | None:
        """The configured logging.file (relative to tmp_path, the child's cwd), or None."""
        file = self.config.get("logging", {}).get("file")
        if file in (None, "", "-"):
            return None
        return self.tmp_path / str(file)

    def stderr_text(self) -> str:
        return self._read(self.stderr_path)

    def stdout_text(self) -> str:
        return self._read(self.stdout_path)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def query_log_lines(self, include_probes: bool = False) -> list[dict[str, Any]]:
        """The JSON lines of the query log written so far (a partial last line is skipped).

        Lines for start()'s readiness probe are left out unless `include_probes`.
        """
        path = self.query_log_path
        if path is None:
            raise RuntimeError("logging.file is not set: the query log goes to stdout")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # the writer may be mid-line; only whole lines count
        records: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            if not include_probes and record.get("domain") in (PROBE_QNAME, PROBE_QNAME[:-1]):
                continue
            records.append(record)
        return records

    def wait_for_query_log(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Poll until the query log has at least `count` lines (the writer batches)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.query_log_lines()
            if len(records) >= count:
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"query log has {len(records)} lines, wanted {count}")
            time.sleep(_PROBE_INTERVAL_S)

    def query(
        self, name: str, rdtype: str | int = "A", tcp: bool = False, **kw: Any
    ) -> dns.message.Message:
        """query(self, ...): ask this server one question."""
        return query(self, name, rdtype, tcp, **kw)

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Launch the server and wait until it answers on UDP (and accepts TCP).

        A no-op while it runs; after stop() it starts again with the same config and port.
        Raises ServerStartError, with the tail of stderr, if the process exits first or does
        not answer within `timeout` seconds (the process is then stopped).
        """
        if self.running:
            return self
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FASTDNS_")}
        # The child imports the same fastdns the tests import (source tree or installed).
        package_root = str(Path(fastdns.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self._env)
        stdout = self.stdout_path.open("ab")
        stderr = self.stderr_path.open("ab")
        self._files = [stdout, stderr]
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=self.tmp_path,
                env=env,
            )
        except OSError:
            self._close_files()
            raise
        self._wait_ready(time.monotonic() + timeout, timeout)
        return self

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        probe = dns.message.make_query(PROBE_QNAME, "A")
        # Opcode STATUS (RFC 1035 §4.1.1): the server answers NOTIMP and asks nobody.
        probe.set_opcode(dns.opcode.STATUS)
        probe.flags &= ~dns.flags.RD
        probe_wire = probe.to_wire()
        # A bare header claiming one question: a fallback FORMERR probe.
        header_wire = secrets.token_bytes(2) + b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        ids = {probe_wire[:2], header_wire[:2]}
        began = time.monotonic()
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((self.host, self.port))
            sock.settimeout(_PROBE_INTERVAL_S)
            while True:
                self._check_alive(deadline, timeout)
                try:
                    sock.send(probe_wire)
                    if time.monotonic() - began > _HEADER_PROBE_AFTER_S:
                        sock.send(header_wire)
                    reply = sock.recv(65535)
                except TimeoutError:
                    continue
                except OSError:
                    time.sleep(_PROBE_INTERVAL_S)  # ICMP port unreachable: not bound yet
                    continue
                if reply[:2] in ids:
                    break
        while self.wait_tcp:
            self._check_alive(deadline, timeout)
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(_PROBE_INTERVAL_S)

    def _check_alive(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            self._fail(f"exited with code {code} before answering on {self.address}")
        if time.monotonic() > deadline:
            self._fail(f"did not answer on {self.address} within {timeout:g} s")

    def _fail(self, what: str) -> None:
        self.stop()
        stderr = self.stderr_text()
        tail = "\n".join(stderr.splitlines()[-_STDERR_TAIL_LINES:]) or "(empty)"
        message = (
            f"fastdns server {what}\n"
            f"command: {' '.join(self.argv)}\n"
            f"--- stderr ({self.stderr_path}, last {_STDERR_TAIL_LINES} lines) ---\n{tail}"
        )
        raise ServerStartError(message, self.returncode, stderr)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the process, wait up to `timeout` s, then SIGKILL it; return its status."""
        proc = self._proc
        if proc is None:
            return None
        terminate(proc, timeout)
        self._close_files()
        return proc.returncode

    def _close_files(self) -> None:
        for file in self._files:
            file.close()
        self._files = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"stopped (rc={self.returncode})"
        return f"<ServerProcess {self.address} {state}>"
