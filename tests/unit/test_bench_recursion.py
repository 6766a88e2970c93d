"""The load benchmark's recursive-mode configs: valid for each program, loopback only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The benchmarks live in the source tree only; a run against the installed wheel skips this.
servers = pytest.importorskip("benchmarks.load.servers")
BenchError, RESOLVERS, Recursion = servers.BenchError, servers.RESOLVERS, servers.Recursion


@pytest.fixture
def recursion(tmp_path):
    hints = tmp_path / "root.hints"
    hints.write_text(". 3600000 IN NS a.root-servers.\na.root-servers. 3600000 IN A 127.53.0.1\n")
    anchor = tmp_path / "root.anchor"
    anchor.write_text(". 3600 IN DS 12345 13 2 "
                      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n")
    return Recursion(hints, 53, anchor)


def test_fastdns_recurses_from_the_lab_hints_and_validates(tmp_path, recursion):
    launch = RESOLVERS["fastdns"].launch(tmp_path / "f", 5300, 0, recursion=recursion)
    config_path = launch.argv[-1]
    config = json.loads(Path(config_path).read_text())
    assert config["resolver"]["mode"] == "recursive"
    assert config["resolver"]["root_hints"] == str(recursion.root_hints)
    assert config["dnssec"] == {"enabled": True, "trust_anchor": str(recursion.trust_anchor)}
    assert all(u.startswith("127.0.0.1:") for u in config["upstream_servers"])
    done = subprocess.run([sys.executable, "-m", "fastdns", "check-config", config_path],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("unbound-checkconf") is None, reason="unbound is not installed")
def test_unbound_recurses_from_the_lab_hints_only(tmp_path, recursion):
    # launch() runs unbound-checkconf and raises BenchError if it rejects the config.
    launch = RESOLVERS["unbound"].launch(tmp_path / "u", 5300, 0, recursion=recursion)
    text = Path(launch.argv[-1]).read_text()
    assert f'root-hints: "{recursion.root_hints}"' in text
    assert f'trust-anchor-file: "{recursion.trust_anchor}"' in text
    assert "forward-zone" not in text and "auto-trust-anchor-file" not in text


def test_servers_that_cannot_recurse_through_the_lab_say_why(tmp_path, recursion):
    with pytest.raises(BenchError, match="only forwards"):
        RESOLVERS["dnsmasq"].launch(tmp_path / "d", 5300, 0, recursion=recursion)
    high_port = Recursion(recursion.root_hints, 5353)
    assert "port 53 only" in (RESOLVERS["unbound"].recursion_unsupported(high_port) or "")
    assert RESOLVERS["fastdns"].recursion_unsupported(high_port) is None
