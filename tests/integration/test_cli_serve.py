"""`fastdns serve` as users run it: flags over the config file, environment over the file,
configuration errors (exit 2, the key named, no traceback), signals (exit 0, in-flight queries
drained), and `fastdns version`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
import yaml

import fastdns
from fastdns._testing import free_port

from . import (
    ask,
    checked_servers,
    config,
    frame,
    make_wire,
    parse,
    populate,
    read_frame,
    tcp_connect,
    udp_exchange,
)


@pytest.fixture
def server_factory(server_factory):
    """conftest's factory, plus: no server may log a traceback."""
    yield from checked_servers(server_factory)


REPO_ROOT = Path(fastdns.__file__).resolve().parents[1]
# A loopback port where nothing listens (never the public defaults).
DEAD_UPSTREAM = f"127.0.0.1:{free_port()}"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FASTDNS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_fastdns(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion. One worker process only: should a `serve` that was meant
    to fail start after all, the timeout kills it whole (forked workers would outlive it)."""
    return subprocess.run(
        [sys.executable, "-m", "fastdns", *args],
        cwd=cwd,
        env=clean_env({"FASTDNS_SERVER__WORKERS": "1", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Serve:
    """`python -m fastdns serve ARGS` started by this test; stopped by its PID only."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.stderr_path = cwd / "serve.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastdns", "serve", *args],
            cwd=cwd,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def wait_answering(self, port: int, timeout: float = 15.0, probe_timeout: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        wire = make_wire("example.org.", "A")
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(probe_timeout)
                try:
                    sock.sendto(wire, ("127.0.0.1", port))
                    # SO_REUSEPORT lets another process of this user share a port picked as
                    # free: the answer counts only once this server says it is listening.
                    if sock.recv(65535)[:2] == wire[:2] and "listening on" in self.stderr():
                        return
                except OSError:
                    time.sleep(min(0.05, probe_timeout))
        raise AssertionError(f"fastdns did not answer on port {port}\n{self.stderr()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    started: list[Serve] = []

    def make(args: list[str]) -> Serve:
        serve = Serve(args, tmp_path)
        started.append(serve)
        return serve

    yield make
    for serve in started:
        serve.stop()


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_flags_override_the_config_file(fake_upstream, spawn, tmp_path):
    populate(fake_upstream)
    file_port, flag_port = free_port(), free_port()
    cfg = write_config(
        tmp_path / "fastdns.yaml",
        {
            "server": {"bind_address": "127.0.0.1", "dns_port": file_port, "workers": 1},
            "upstream_servers": [f"127.0.0.1:{free_port()}"],  # nothing there
            "cache": {"max_ttl": 100},  # not overridden: must still apply
            "logging": {"file": str(tmp_path / "query.log")},
            "security": {"rate_limit_per_ip": 0},
            "resolver": {"timeout_s": 1.5, "retry_interval_s": 0.3},
        },
    )
    serve = spawn(
        ["--port", str(flag_port), "--upstream", fake_upstream.address, "--config", str(cfg)]
    )
    serve.wait_answering(flag_port)
    reply = ask(("127.0.0.1", flag_port), "example.org", "MX")
    assert reply.rcode() == dns.rcode.NOERROR
    assert sorted(rd.to_text() for rd in reply.answer[0]) == [
        "10 mail.example.org.",
        "20 mail2.example.org.",
    ]
    assert reply.answer[0].ttl <= 100, "cache.max_ttl from the file still applies"
    assert fake_upstream.calls >= 1, "--upstream replaced the file's upstream_servers"
    assert (
        udp_exchange(("127.0.0.1", file_port), make_wire("example.org.", "A"), timeout=0.5) is None
    ), "--port replaced the file's dns_port"
    assert serve.stop() == 0


def test_repeated_upstream_flags_give_a_failover_list(fake_upstream_factory, spawn, tmp_path):
    silent = fake_upstream_factory(mode="silent")
    good = populate(fake_upstream_factory())
    port = free_port()
    cfg = write_config(
        tmp_path / "fastdns.yaml",
        {
            "server": {"workers": 1},
            "logging": {"file": str(tmp_path / "query.log")},
            "resolver": {"timeout_s": 2.0, "retry_interval_s": 0.3},
            "upstream_servers": [f"127.0.0.1:{free_port()}"],
        },
    )
    serve = spawn(
        [
            "--config",
            str(cfg),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--upstream",
            silent.address,
            "--upstream",
            good.address,
        ]
    )
    serve.wait_answering(port)
    assert silent.calls >= 1 and good.calls >= 1
    assert serve.stop() == 0


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"server": {"dns_port": 70000}}, ["server.dns_port"]),
        ({"cache": {"max_tll": 5}}, ["cache.max_tll", "max_ttl"]),
        ({"upstream_servers": ["dns.google"]}, ["upstream_servers[0]"]),
        ({"resolver": {"timeout_s": 1, "retry_interval_s": 2}}, ["resolver.retry_interval_s"]),
        ({"cache": {"min_ttl": 100, "max_ttl": 10}}, ["cache.max_ttl"]),
        ({"security": {"allowed_networks": ["10.0.0.0/33"]}}, ["security.allowed_networks"]),
        ({"logging": {"level": "LOUD"}}, ["logging.level"]),
    ],
    ids=["port", "typo", "hostname", "retry_order", "ttl_order", "cidr", "level"],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, data, needles):
    # A loopback upstream in every file: should the config wrongly pass, nothing leaves the box.
    cfg = write_config(tmp_path / "bad.yaml", {"upstream_servers": [DEAD_UPSTREAM], **data})
    done = run_fastdns("serve", "--config", str(cfg), cwd=tmp_path, timeout=15.0)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_yaml_syntax_error_exits_2_with_the_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("server:\n  dns_port: [5300\ncache: {}\n")
    done = run_fastdns(
        "serve", "--config", str(cfg), "--upstream", DEAD_UPSTREAM, cwd=tmp_path, timeout=15.0
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert str(cfg) in done.stderr and "line" in done.stderr


def test_bad_flag_value_exits_2(tmp_path):
    done = run_fastdns(
        "serve", "--upstream", "not-an-ip", "--port", str(free_port()), cwd=tmp_path, timeout=15.0
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "upstream_servers" in done.stderr


def test_bad_environment_value_exits_2_naming_key_and_variable(tmp_path):
    done = run_fastdns(
        "serve",
        "--port",
        str(free_port()),
        "--upstream",
        DEAD_UPSTREAM,
        cwd=tmp_path,
        env={"FASTDNS_CACHE__MAX_TTL": "forever"},
        timeout=15.0,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cache.max_ttl" in done.stderr and "FASTDNS_CACHE__MAX_TTL" in done.stderr


def test_missing_config_file_exits_2(tmp_path):
    done = run_fastdns(
        "serve",
        "--config",
        str(tmp_path / "nope.yaml"),
        "--upstream",
        DEAD_UPSTREAM,
        cwd=tmp_path,
        timeout=15.0,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "nope.yaml" in done.stderr


def test_environment_overrides_the_file(fake_upstream, server_factory):
    fake_upstream.answer("env.example.org. 3000 IN A 192.0.2.50")
    server = server_factory(
        config(fake_upstream, cache={"max_ttl": 86400}), env={"FASTDNS_CACHE__MAX_TTL": "50"}
    )
    reply = ask(server, "env.example.org", "A")
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.50"]
    assert reply.answer[0].ttl <= 50


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_with_exit_0(fake_upstream, server_factory, sig):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream))
    assert ask(server, "example.org", "A").answer
    os.kill(server.pid, sig)  # our own child, by PID
    deadline = time.monotonic() + 10
    while server.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.returncode == 0
    stderr = server.stderr_text()
    assert "stopped" in stderr
    assert "Traceback" not in stderr


def test_sigterm_drains_an_in_flight_udp_query(fake_upstream, server_factory):
    fake_upstream.answer("slow.example.org. 300 IN A 192.0.2.60").delay_s = 0.8
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 3.0, "retry_interval_s": 2.0})
    )
    wire = make_wire("slow.example.org.", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.sendto(wire, (server.host, server.port))
        fake_upstream.wait_for_calls(1)
        os.kill(server.pid, signal.SIGTERM)
        reply = parse(sock.recv(65535))
    assert reply.id == int.from_bytes(wire[:2], "big")
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.60"]
    assert server.stop() == 0


def test_sigterm_drains_an_in_flight_tcp_query(fake_upstream, server_factory):
    fake_upstream.answer("slow.example.org. 300 IN A 192.0.2.61").delay_s = 0.8
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 3.0, "retry_interval_s": 2.0})
    )
    wire = make_wire("slow.example.org.", "A")
    with tcp_connect(server) as sock:
        sock.sendall(frame(wire))
        fake_upstream.wait_for_calls(1)
        os.kill(server.pid, signal.SIGTERM)
        reply = parse(read_frame(sock))
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.61"]
    assert server.stop() == 0


def test_version_command(tmp_path):
    done = run_fastdns("version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"fastdns {fastdns.__version__}"
    assert any(line.startswith("python ") for line in lines)
    assert any(line.startswith("cython-compiled: yes") for line in lines), lines


def test_two_workers_answer_and_stop_cleanly(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, server={"workers": 2}))
    for i in range(20):
        reply = ask(server, "example.org", "A", tcp=bool(i % 2))
        assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]
    assert 1 <= fake_upstream.calls <= 2, "each worker has its own cache"
    assert server.stop() == 0
    assert server.stderr_text().count("stopped") >= 2, server.stderr_text()
    assert len(server.query_log_lines()) == 20


def wait_for_workers(server, workers: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.stderr_text().count("fastdns listening") < workers:
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_does_not_stop_the_server(fake_upstream, server_factory, workers):
    # SPEC §6: SIGHUP means "reload", never "die", and no query may be dropped around it.
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, server={"workers": workers}))
    wait_for_workers(server, workers)
    assert ask(server, "example.org", "A").answer
    os.kill(server.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert server.running, server.stderr_text()
    assert ask(server, "example.org", "A").answer
    assert ask(server, "example.org", "MX", tcp=True).answer
    assert server.stop() == 0


def test_sighup_as_soon_as_the_server_answers_kills_no_worker(fake_upstream, tmp_path):
    # Once `fastdns serve` answers, a SIGHUP (a reload, e.g. from logrotate or systemd's
    # ExecReload) must not kill it, even while its other workers are still starting.
    populate(fake_upstream)
    for round_ in range(4):
        port = free_port()
        cwd = tmp_path / f"round{round_}"
        cwd.mkdir()
        cfg = write_config(
            cwd / "fastdns.yaml",
            {
                "server": {"dns_port": port, "workers": 4},
                "upstream_servers": [fake_upstream.address],
                "logging": {"file": str(cwd / "query.log")},
                "security": {"rate_limit_per_ip": 0},
            },
        )
        serve = Serve(["--config", str(cfg)], cwd)
        try:
            serve.wait_answering(port, probe_timeout=0.002)
            for _ in range(200):  # 0.1 s of SIGHUPs, starting the moment it answers
                os.kill(serve.proc.pid, signal.SIGHUP)
                time.sleep(0.0005)
            time.sleep(0.3)
            assert serve.proc.poll() is None, f"round {round_}: died\n{serve.stderr()}"
            reply = ask(("127.0.0.1", port), "example.org", "A")
            assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]
        finally:
            code = serve.stop()
        assert code == 0, serve.stderr()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_exit_when_their_supervisor_is_killed(fake_upstream, server_factory):
    # A SIGKILLed parent cannot forward anything: the workers must notice on their own, or
    # they keep serving a stale configuration with nobody supervising them.
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, server={"workers": 2}))
    wait_for_workers(server, 2)
    workers = _children(server.pid)
    assert len(workers) == 2
    try:
        os.kill(server.pid, signal.SIGKILL)  # our own child, by PID
        deadline = time.monotonic() + 5.0
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [w for w in workers if _alive(w)]
        assert not orphans, f"workers {orphans} outlived their parent"
    finally:
        for worker in workers:  # the workers this test started, by PID
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)
