"""The JSON query log (SPEC §4) written by a real server: one line per query, the fixed keys in
their fixed order, the right values for misses, hits, negative and error replies, the flush on
graceful stop, `logging.query_log: false`, and size rotation."""

from __future__ import annotations

import json
import re
import struct
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode
import pytest

from fastdns._testing import ServerProcess
from fastdns._testing.server_process import PROBE_QNAME

from . import (
    ask,
    checked_servers,
    config,
    make_wire,
    populate,
    tcp_exchange,
    udp_exchange,
)


@pytest.fixture
def server_factory(server_factory, udp_path):
    """conftest's factory, plus: no server may log a traceback; each UDP path in turn (both
    must write the same records)."""
    yield from checked_servers(server_factory, udp_path)


SPEC_KEYS = [
    "timestamp",
    "request_id",
    "client_ip",
    "query_type",
    "domain",
    "response_code",
    "response_time_ms",
    "cache_hit",
    "upstream_server",
    "response_data",
]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def stop_and_read(server: ServerProcess) -> list[dict]:
    """SIGTERM the server (graceful: flushes the log) and return its query-log lines."""
    assert server.stop() == 0
    return server.query_log_lines()


def check_shape(record: dict, started: float, ended: float) -> None:
    assert list(record)[: len(SPEC_KEYS)] == SPEC_KEYS, list(record)
    assert TIMESTAMP.match(record["timestamp"]), record["timestamp"]
    stamp = datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    stamp = stamp.replace(tzinfo=timezone.utc).timestamp()
    assert started - 1.0 <= stamp <= ended + 1.0, "timestamp is UTC wall time of the query"
    assert uuid.UUID(record["request_id"]).version == 4
    assert record["client_ip"] == "127.0.0.1"
    elapsed = record["response_time_ms"]
    assert isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool)
    assert elapsed >= 0
    assert isinstance(record["cache_hit"], bool)
    assert isinstance(record["response_data"], list)


def test_one_line_per_query_with_spec_keys_and_values(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream))
    started = time.time()
    ask(server, "example.org", "A")  # miss
    ask(server, "example.org", "A")  # hit
    ask(server, "nope.example.org", "A")  # NXDOMAIN
    ask(server, "example.org", "MX")  # miss, MX data
    ended = time.time()
    records = stop_and_read(server)
    assert len(records) == 4, records
    for record in records:
        check_shape(record, started, ended)
    assert len({r["request_id"] for r in records}) == 4
    miss, hit, nxdomain, mx = records
    upstream = f"127.0.0.1:{fake_upstream.port}"
    assert (miss["domain"], miss["query_type"], miss["response_code"]) == (
        "example.org",
        "A",
        "NOERROR",
    )
    assert miss["cache_hit"] is False
    assert miss["upstream_server"] == upstream
    assert miss["response_data"] == ["192.0.2.1"]
    assert (hit["domain"], hit["query_type"], hit["response_code"]) == (
        "example.org",
        "A",
        "NOERROR",
    )
    assert hit["cache_hit"] is True
    assert hit["upstream_server"] is None
    assert hit["response_data"] == ["192.0.2.1"]
    assert (nxdomain["domain"], nxdomain["response_code"]) == ("nope.example.org", "NXDOMAIN")
    assert nxdomain["cache_hit"] is False
    assert nxdomain["upstream_server"] == upstream
    assert nxdomain["response_data"] == []
    assert (mx["domain"], mx["query_type"], mx["response_code"]) == ("example.org", "MX", "NOERROR")
    assert sorted(mx["response_data"]) == ["10 mail.example.org.", "20 mail2.example.org."]
    assert mx["cache_hit"] is False and mx["upstream_server"] == upstream


def test_response_data_of_each_first_class_type(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream))
    asked = [
        ("example.org", "AAAA"),
        ("www.example.org", "A"),
        ("example.org", "NS"),
        ("1.2.0.192.in-addr.arpa", "PTR"),
        ("multi.example.org", "TXT"),
        ("example.org", "SOA"),
    ]
    for name, rdtype in asked:
        ask(server, name, rdtype, use_edns=0)
    records = stop_and_read(server)
    data = {(r["domain"], r["query_type"]): r["response_data"] for r in records}
    assert data[("example.org", "AAAA")] == ["2001:db8::1"]
    assert data[("www.example.org", "A")] == [
        "alias.example.net.",
        "target.example.org.",
        "192.0.2.10",
    ]
    assert sorted(data[("example.org", "NS")]) == ["ns1.example.org.", "ns2.example.org."]
    assert data[("1.2.0.192.in-addr.arpa", "PTR")] == ["host1.example.org."]
    assert data[("multi.example.org", "TXT")] == ['"first string" "second string" "third"']
    assert data[("example.org", "SOA")] == [
        "ns1.example.org. hostmaster.example.org. 2024010101 7200 900 1209600 120"
    ]


def test_tcp_queries_are_logged_like_udp(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream))
    ask(server, "example.org", "AAAA", tcp=True)
    ask(server, "example.org", "AAAA", tcp=True)
    records = stop_and_read(server)
    assert [(r["cache_hit"], r["upstream_server"]) for r in records] == [
        (False, f"127.0.0.1:{fake_upstream.port}"),
        (True, None),
    ]
    assert all(r["response_data"] == ["2001:db8::1"] for r in records)


def test_servfail_is_logged_without_an_upstream(fake_upstream_factory, server_factory):
    silent = fake_upstream_factory(mode="silent")
    server = server_factory(config(silent, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3}))
    assert ask(server, "example.org", "A").rcode() == dns.rcode.SERVFAIL
    (record,) = stop_and_read(server)
    assert record["response_code"] == "SERVFAIL"
    assert record["cache_hit"] is False
    assert record["upstream_server"] is None
    assert record["response_data"] == []


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_protocol_error_replies_are_not_logged_as_cache_hits(fake_upstream, server_factory, tcp):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream))
    badvers = dns.message.make_query("badvers.example.org.", "A", use_edns=1)
    notify = dns.message.make_query("notify.example.org.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    axfr = dns.message.make_query("axfr.example.org.", "AXFR")
    formerr = struct.pack("!HHHHHH", 0x5151, 0x0100, 0, 0, 0, 0)  # QDCOUNT 0
    for wire in (badvers.to_wire(), notify.to_wire(), axfr.to_wire(), formerr):
        raw = tcp_exchange(server, wire) if tcp else udp_exchange(server, wire)
        assert raw is not None
    records = stop_and_read(server)
    got = [(r["response_code"], r["domain"], r["cache_hit"], r["upstream_server"]) for r in records]
    assert got == [
        ("BADVERS", "badvers.example.org", False, None),
        ("NOTIMP", "notify.example.org", False, None),
        ("REFUSED", "axfr.example.org", False, None),
        ("FORMERR", None, False, None),
    ]


def test_graceful_stop_flushes_every_pending_line(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream))
    ask(server, "example.org", "A")
    for i in range(60):
        raw = udp_exchange(server, make_wire("example.org.", "A", qid=i))
        assert raw is not None
    records = stop_and_read(server)  # SIGTERM at once: the last lines are still buffered
    assert len(records) == 61
    assert sum(r["cache_hit"] for r in records) == 60


def test_query_log_false_writes_no_file(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, logging={"query_log": False}))
    ask(server, "example.org", "A")
    ask(server, "example.org", "A", tcp=True)
    ask(server, "nope.example.org", "A")
    assert server.stop() == 0
    path = server.query_log_path
    assert path is not None
    assert not path.exists(), path.read_text()
    assert not list(path.parent.glob("query.log*"))


def test_size_rotation_keeps_backup_count_files(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(
        config(fake_upstream, logging={"max_size_mb": 0.001, "backup_count": 2})
    )
    limit = int(0.001 * 1024 * 1024)
    names = [f"rot{i:02d}.example.org" for i in range(40)]
    for name in names:
        ask(server, name, "A")
        time.sleep(0.01)
    assert server.stop() == 0
    path = server.query_log_path
    assert path is not None
    assert path.exists()
    assert Path(f"{path}.1").exists()
    assert Path(f"{path}.2").exists()
    assert not Path(f"{path}.3").exists(), "backup_count 2: never a third backup"
    order = []
    for suffix in (".2", ".1", ""):
        file = Path(f"{path}{suffix}")
        assert 0 < file.stat().st_size <= limit, (file, file.stat().st_size)
        lines = file.read_text().splitlines()
        assert lines, file
        for line in lines:
            record = json.loads(line)
            assert list(record)[: len(SPEC_KEYS)] == SPEC_KEYS
            if record["domain"] != PROBE_QNAME.rstrip("."):
                order.append(record["domain"])
    # The kept files hold the newest queries, oldest file first, none repeated or reordered.
    assert order == names[len(names) - len(order) :]
    assert order[-1] == names[-1]


def test_timestamp_is_when_the_query_arrived(fake_upstream_factory, server_factory):
    # fastdns.querylog documents `timestamp` as the time the query arrived; a miss that
    # needs the whole 1 s budget must not be stamped with the time of its reply.
    silent = fake_upstream_factory(mode="silent")
    server = server_factory(config(silent, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3}))
    sent = time.time()
    assert ask(server, "example.org", "A").rcode() == dns.rcode.SERVFAIL
    answered = time.time()
    assert answered - sent >= 0.9
    (record,) = stop_and_read(server)
    stamp = datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    stamp_s = stamp.replace(tzinfo=timezone.utc).timestamp()
    assert record["response_time_ms"] >= 900, "the logged duration covers the wait"
    assert sent - 0.01 <= stamp_s <= sent + 0.3, (
        f"stamped {stamp_s - sent:.3f} s after the query was sent"
    )
