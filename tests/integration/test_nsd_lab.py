"""The NSD lab itself: an unsigned tree on a high port (no root needed), and clean-up on failure."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from fastdns._testing import ServerProcess
from fastdns._testing.nsd_lab import (
    LabError,
    LabZone,
    NsdHierarchy,
    missing_tools,
    spawn_in_own_session,
)

pytestmark = pytest.mark.skipif(bool(missing_tools(signed=False)), reason="nsd is not installed")

UNSIGNED = [
    LabZone(".", {"a.root-servers.": "root"}),
    LabZone("org.", {"ns1.org.": "tld"}),
    # Two server names on one host: NSD loads the zone once.
    LabZone("example.org.", {"ns1.example.org.": "leaf", "ns2.example.org.": "leaf"},
            records=["* A 192.0.2.1"]),
]


def test_an_unsigned_lab_on_a_high_port_resolves_through_nameserver_port(tmp_path):
    with NsdHierarchy(UNSIGNED, tmp_path / "lab", port=0) as lab:
        assert lab.port != 53 and lab.trust_anchor_path is None
        server = ServerProcess({"resolver": {
            "mode": "recursive", "root_hints": lab.root_hints_path, "query_loopback": True,
            "nameserver_port": lab.port}}, tmp_path / "fastdns")
        with server:
            reply = server.query("anything.example.org", "A")
        assert reply.rcode() == dns.rcode.NOERROR
        assert [rd.address for rrset in reply.answer for rd in rrset] == ["192.0.2.1"]
    _assert_silent(lab.address("root"), lab.port)  # stopped on the way out of `with`


def _assert_silent(address: str, port: int) -> None:
    query = dns.message.make_query(".", "SOA")
    with pytest.raises((dns.exception.Timeout, OSError)):
        dns.query.udp(query, address, port=port, timeout=0.5)


def test_a_failed_start_stops_every_server_it_started(tmp_path):
    started: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, argv: Sequence[str], log_dir: Path) -> subprocess.Popen[bytes]:
        if started:
            raise OSError("the second server cannot start")
        started.append(spawn_in_own_session(name, argv, log_dir))
        return started[0]

    lab = NsdHierarchy(UNSIGNED, tmp_path / "lab", port=0, spawn=spawn)
    with pytest.raises(OSError, match="second server"):
        lab.start()
    assert started and started[0].poll() is not None
    _assert_silent(lab.address("root"), lab.port)


def test_a_description_naming_a_server_twice_is_refused(tmp_path):
    zones = [*UNSIGNED, LabZone("net.", {"ns1.org.": "leaf"})]
    with pytest.raises(LabError, match="two hosts"):
        NsdHierarchy(zones, tmp_path / "lab", port=0).start()
