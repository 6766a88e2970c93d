"""Command line: check-config and version end to end, serve's configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fastdns
from fastdns.cli import build_parser, main, serve_overrides
from fastdns.config import Settings, dump_settings, load_settings

REPO_ROOT = Path(fastdns.__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m fastdns ARGS` in a clean environment (no FASTDNS_* from the caller)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FASTDNS_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fastdns", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FASTDNS_"):
            monkeypatch.delenv(name)


# --- check-config (as users run it) ---------------------------------------------------------


def test_check_config_prints_effective_yaml(tmp_path: Path) -> None:
    config = tmp_path / "fastdns.yaml"
    config.write_text("server: {dns_port: 5300}\nupstream_servers: ['[::1]:5301']\n")
    result = run_cli("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["server"]["dns_port"] == 5300
    assert printed["server"]["workers"] == 4  # defaults are filled in
    assert printed["upstream_servers"] == ["[::1]:5301"]
    assert printed == dump_settings(load_settings(config, environ={}))
    assert list(printed) == list(Settings.model_fields)  # declaration order, not sorted
    assert list(printed["server"])[:2] == ["bind_address", "dns_port"]


def test_check_config_includes_environment(tmp_path: Path) -> None:
    config = tmp_path / "fastdns.json"
    config.write_text('{"server": {"dns_port": 5300}}')
    result = run_cli(
        "check-config", str(config), cwd=tmp_path, env={"FASTDNS_SERVER__WORKERS": "2"}
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["server"]["workers"] == 2


def test_check_config_bad_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "fastdns.yaml"
    config.write_text("server:\n  dns_port: 99999\ncache:\n  mintll: 5\n")
    result = run_cli("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("fastdns: configuration error:\n")
    assert "  - server.dns_port: " in result.stderr
    assert "  - cache.mintll: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_syntax_error_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "fastdns.yaml"
    config.write_text("server:\n  dns_port: 5300\n  bind: a: b\n")
    result = run_cli("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "absent.yaml: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_subprocess(tmp_path: Path) -> None:
    result = run_cli("version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"fastdns {fastdns.__version__}"
    assert "cython-compiled: " in result.stdout


# --- in-process -----------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"fastdns {fastdns.__version__}"
    assert lines[1].startswith("python ")
    assert lines[2].split(": ")[1].split()[0] in ("yes", "no")


def test_check_config_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_environ: None
) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    assert main(["check-config", str(config)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == dump_settings(Settings())


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check-config"], ["serve", "--port", "x"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_serve_config_error_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_environ: None
) -> None:
    config = tmp_path / "fastdns.yaml"
    config.write_text("server: {workers: 0}\n")
    assert main(["serve", "--config", str(config), "--upstream", "dns.google"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "fastdns: configuration error:"
    assert any(line.startswith("  - server.workers: ") for line in err)
    assert any(line.startswith("  - upstream_servers[0]: ") for line in err)


def test_serve_bad_port_flag_exits_2(
    capsys: pytest.CaptureFixture[str], clean_environ: None
) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    assert "  - server.dns_port: " in capsys.readouterr().err


def test_serve_missing_config_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "absent.yaml: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_unknown_environment_name_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, env={"FASTDNS_SERVER__DNSPORT": "5300"})
    assert result.returncode == 2
    assert "FASTDNS_SERVER__DNSPORT: unknown setting server.dnsport" in result.stderr
    assert "Traceback" not in result.stderr


# --- flags become overrides -----------------------------------------------------------------


def test_serve_flags_become_overrides() -> None:
    argv = "serve --bind ::1 --port 5300 --upstream 127.0.0.1:5301 --upstream [::1]:5302"
    args = build_parser().parse_args(argv.split())
    assert serve_overrides(args) == {
        "server": {"bind_address": "::1", "dns_port": 5300},
        "upstream_servers": ["127.0.0.1:5301", "[::1]:5302"],
    }


def test_serve_without_flags_overrides_nothing() -> None:
    assert serve_overrides(build_parser().parse_args(["serve"])) == {}


def test_flags_beat_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "fastdns.yaml"
    config.write_text("server: {dns_port: 5300, workers: 2}\nupstream_servers: [192.0.2.1]\n")
    args = build_parser().parse_args(["serve", "--port", "5500", "--upstream", "127.0.0.1:5301"])
    settings = load_settings(
        config,
        environ={"FASTDNS_SERVER__DNS_PORT": "5400", "FASTDNS_UPSTREAM_SERVERS": "192.0.2.2"},
        overrides=serve_overrides(args),
    )
    assert settings.server.dns_port == 5500
    assert settings.server.workers == 2
    assert [str(u) for u in settings.upstream_servers] == ["127.0.0.1:5301"]
