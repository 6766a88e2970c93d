"""Query log: the SPEC §4 line (dnspython as the oracle for rdata text), the ring, the batch
writer, rotation and shutdown flushing."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import struct
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from fastdns.querylog import QueryLog, QueryRecord, encode, encode_batch, summarize

KEYS = [
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
T0 = 1704110400.0  # 2024-01-01T12:00:00Z
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def exchange(
    qname: str, rdtype: str, *answers: str, rcode: int = 0, authority: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """(query_wire, reply_wire); answers/authority are presentation lines 'name ttl IN T rdata'."""
    query = dns.message.make_query(qname, rdtype)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.Rcode.make(rcode))
    for line in answers:
        reply.answer.append(dns.rrset.from_text(*_split(line)))
    for line in authority:
        reply.authority.append(dns.rrset.from_text(*_split(line)))
    return query.to_wire(), reply.to_wire()


def _split(line: str) -> tuple[str, int, str, str, str]:
    name, ttl, rdclass, rdtype, rdata = line.split(None, 4)
    return name, int(ttl), rdclass, rdtype, rdata


def record(
    query_wire: bytes,
    reply_wire: bytes,
    *,
    wall_time: float = T0,
    cache_hit: bool = False,
    upstream: str | None = "127.0.0.1:5301",
    elapsed_us: int = 45_000,
) -> QueryRecord:
    return (wall_time, "192.0.2.100", query_wire, reply_wire, cache_hit, upstream, elapsed_us)


def line(rec: QueryRecord) -> dict[str, Any]:
    raw = encode(rec)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    return json.loads(raw)


def oracle_data(reply_wire: bytes) -> list[str]:
    """ANSWER rdata as dnspython prints it."""
    reply = dns.message.from_wire(reply_wire)
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


# ----------------------------------------------------------------------------- line shape


def test_keys_exact_and_in_order() -> None:
    raw = encode(record(*exchange("example.org", "A", "example.org. 300 IN A 192.0.2.1")))
    assert list(json.loads(raw)) == KEYS
    # The order is on the wire too, not just in the parsed dict.
    positions = [raw.index(f'"{k}":'.encode()) for k in KEYS]
    assert positions == sorted(positions)


def test_a_reply_on_a_miss() -> None:
    q, r = exchange(
        "example.org", "A", "example.org. 300 IN A 192.0.2.1", "example.org. 300 IN A 192.0.2.2"
    )
    out = line(record(q, r, elapsed_us=45_000))
    assert out["timestamp"] == "2024-01-01T12:00:00.000Z"
    assert out["client_ip"] == "192.0.2.100"
    assert out["query_type"] == "A"
    assert out["domain"] == "example.org"
    assert out["response_code"] == "NOERROR"
    assert out["response_time_ms"] == 45
    assert out["cache_hit"] is False
    assert out["upstream_server"] == "127.0.0.1:5301"
    assert out["response_data"] == ["192.0.2.1", "192.0.2.2"]


def test_cache_hit_has_null_upstream() -> None:
    q, r = exchange("example.org", "A", "example.org. 300 IN A 192.0.2.1")
    out = line(record(q, r, cache_hit=True, upstream=None))
    assert out["cache_hit"] is True
    assert out["upstream_server"] is None


@pytest.mark.parametrize(
    ("rdtype", "answers", "expected"),
    [
        ("MX", ["example.org. 300 IN MX 10 mail.example.org."], ["10 mail.example.org."]),
        ("TXT", ['example.org. 300 IN TXT "txt"'], ['"txt"']),
        (
            "TXT",
            ['example.org. 300 IN TXT "a \\"quoted\\" \\\\ b" "\\255\\009" ""'],
            ['"a \\"quoted\\" \\\\ b" "\\255\\009" ""'],
        ),
        (
            "CNAME",
            ["example.org. 300 IN CNAME www.example.net.", "www.example.net. 60 IN A 192.0.2.7"],
            ["www.example.net.", "192.0.2.7"],
        ),
        (
            "SOA",
            ["example.org. 3600 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 120"],
            ["ns.example.org. host.example.org. 1 3600 600 86400 120"],
        ),
        ("NS", ["example.org. 300 IN NS ns1.example.org."], ["ns1.example.org."]),
        ("PTR", ["1.2.0.192.in-addr.arpa. 300 IN PTR host.example.org."], ["host.example.org."]),
        ("AAAA", ["example.org. 300 IN AAAA 2001:db8::1"], ["2001:db8::1"]),
        (
            "SRV",
            ["example.org. 300 IN SRV 0 5 5060 sip.example.org."],
            ["0 5 5060 sip.example.org."],
        ),
        ("CNAME", ["example.org. 300 IN CNAME ."], ["."]),
    ],
)
def test_rdata_text_matches_dnspython(rdtype: str, answers: list[str], expected: list[str]) -> None:
    qname = answers[0].split()[0]
    q, r = exchange(qname, rdtype, *answers)
    out = line(record(q, r))
    assert out["query_type"] == rdtype
    assert out["response_data"] == expected
    assert out["response_data"] == oracle_data(r)


def test_compressed_names_in_rdata_are_followed() -> None:
    # dnspython compresses MX/SOA/CNAME targets against the owner names: pointers are exercised.
    q, r = exchange(
        "example.org",
        "MX",
        "example.org. 300 IN MX 10 example.org.",
        "example.org. 300 IN MX 20 mx.example.org.",
    )
    assert b"\xc0\x0c" in r[len(q) :]
    assert line(record(q, r))["response_data"] == ["10 example.org.", "20 mx.example.org."]


def test_nxdomain_with_soa_in_authority() -> None:
    q, r = exchange(
        "nope.example.org",
        "A",
        rcode=dns.rcode.NXDOMAIN,
        authority=(
            "example.org. 3600 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 120",
        ),
    )
    out = line(record(q, r))
    assert out["response_code"] == "NXDOMAIN"
    assert out["domain"] == "nope.example.org"
    assert out["response_data"] == []


@pytest.mark.parametrize(
    ("rcode", "text"),
    [(1, "FORMERR"), (2, "SERVFAIL"), (4, "NOTIMP"), (5, "REFUSED"), (9, "NOTAUTH")],
)
def test_response_code_mnemonics(rcode: int, text: str) -> None:
    q, r = exchange("example.org", "A", rcode=rcode)
    assert line(record(q, r))["response_code"] == text


def test_extended_rcode_from_opt() -> None:
    # RFC 6891 §6.1.3: BADVERS (16) needs the OPT TTL's upper bits.
    query = dns.message.make_query("example.org", "A", use_edns=1)
    reply = dns.message.make_response(query)
    reply.use_edns(0)
    reply.set_rcode(dns.rcode.BADVERS)
    out = line(record(query.to_wire(), reply.to_wire()))
    assert out["response_code"] == "BADVERS"


def test_domain_keeps_client_case_and_root_is_dot() -> None:
    q, r = exchange("WwW.ExAmPlE.oRg", "A", "WwW.ExAmPlE.oRg. 300 IN A 192.0.2.1")
    assert line(record(q, r))["domain"] == "WwW.ExAmPlE.oRg"
    q, r = exchange(".", "NS", ". 300 IN NS a.root-servers.net.")
    out = line(record(q, r))
    assert out["domain"] == "."
    assert out["query_type"] == "NS"


def test_domain_escapes_like_dnspython() -> None:
    name = dns.name.Name([b"a.b", b"sp ace", b"\xff\x00", b'q"@$', b"org", b""])
    query = dns.message.make_query(name, "A")
    out = line(record(query.to_wire(), b""))
    assert out["domain"] == name.to_text(omit_final_dot=True)
    assert out["domain"] == 'a\\.b.sp\\032ace.\\255\\000.q\\"\\@\\$.org'


def test_unknown_type_is_rfc3597() -> None:
    q, r = exchange("example.org", "TYPE65534", "example.org. 300 IN TYPE65534 \\# 3 010203")
    out = line(record(q, r))
    assert out["query_type"] == "TYPE65534"
    assert out["response_data"] == ["\\# 3 010203"]
    assert out["response_data"] == oracle_data(r)


def test_other_known_types_use_dnspython() -> None:
    q, r = exchange(
        "example.org",
        "CAA",
        'example.org. 300 IN CAA 0 issue "ca.example.net"',
    )
    out = line(record(q, r))
    assert out["query_type"] == "CAA"
    assert out["response_data"] == ['0 issue "ca.example.net"']


def test_aaaa_text_matches_dnspython() -> None:
    rng = random.Random(4)
    addresses = [
        "::",
        "::1",
        "2001:db8::",
        "2001:db8:0:1:0:0:0:1",
        "2001:db8:0:0:1:0:0:1",
        "::ffff:192.0.2.1",
        "::192.0.2.1",
        "2001:0:0:1::1",
        "fe80::1:0:0:0",
    ]
    for _ in range(200):
        groups = [rng.choice([0, 0, 1, 0xFFFF, rng.randrange(0x10000)]) for _ in range(8)]
        addresses.append(":".join(f"{g:x}" for g in groups))
    answers = [f"example.org. 300 IN AAAA {a}" for a in addresses]
    query = dns.message.make_query("example.org", "AAAA")
    reply = dns.message.make_response(query)
    for text in answers:
        reply.answer.append(dns.rrset.from_text(*_split(text)))
    wire = reply.to_wire()
    assert line(record(query.to_wire(), wire))["response_data"] == oracle_data(wire)


def test_non_in_class_uses_dnspython() -> None:
    query = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("version.bind.", 0, "CH", "TXT", '"fastdns"'))
    wire = reply.to_wire()
    assert line(record(query.to_wire(), wire))["response_data"] == ['"fastdns"']


def test_response_time_ms_has_microsecond_precision() -> None:
    q, r = exchange("example.org", "A")
    assert line(record(q, r, elapsed_us=1234))["response_time_ms"] == 1.234
    assert line(record(q, r, elapsed_us=1))["response_time_ms"] == 0.001
    assert line(record(q, r, elapsed_us=0))["response_time_ms"] == 0


def test_timestamp_utc_milliseconds_z() -> None:
    q, r = exchange("example.org", "A")
    assert line(record(q, r, wall_time=T0 + 0.123))["timestamp"] == "2024-01-01T12:00:00.123Z"
    assert line(record(q, r, wall_time=T0 + 59.9996))["timestamp"] == "2024-01-01T12:01:00.000Z"
    assert line(record(q, r, wall_time=T0 - 0.001))["timestamp"] == "2024-01-01T11:59:59.999Z"
    assert TIMESTAMP.match(line(record(q, r, wall_time=time.time()))["timestamp"])


def test_request_ids_are_uuid4_and_distinct() -> None:
    q, r = exchange("example.org", "A")
    lines, failed = encode_batch([record(q, r)] * 100)
    assert failed == 0
    ids = [json.loads(raw)["request_id"] for raw in lines]
    assert len(set(ids)) == 100
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_summarize_takes_a_given_request_id() -> None:
    q, r = exchange("example.org", "A")
    fields = summarize(record(q, r), "fixed-id")
    assert list(fields) == KEYS
    assert fields["request_id"] == "fixed-id"


# ----------------------------------------------------------------------------- malformed bytes


def test_empty_and_short_bytes() -> None:
    out = line(record(b"", b""))
    assert list(out) == KEYS
    assert out["domain"] is None and out["query_type"] is None
    assert out["response_code"] is None
    assert out["response_data"] == []
    # Four octets are enough for the RCODE.
    assert line(record(b"\x00" * 5, b"\x12\x34\x81\x83"))["response_code"] == "NXDOMAIN"


def test_question_from_reply_when_query_is_unreadable() -> None:
    _, r = exchange("Example.org", "MX", "Example.org. 300 IN MX 10 mail.example.org.")
    out = line(record(b"\xff" * 7, r))
    assert out["domain"] == "Example.org"
    assert out["query_type"] == "MX"


def test_every_truncation_of_a_reply_encodes() -> None:
    q, r = exchange(
        "www.example.org",
        "A",
        "www.example.org. 300 IN CNAME example.org.",
        "example.org. 300 IN A 192.0.2.1",
        authority=(
            "example.org. 3600 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 120",
        ),
    )
    full = line(record(q, r))["response_data"]
    for cut in range(len(r) + 1):
        out = line(record(q[:cut], r[:cut]))
        assert list(out) == KEYS
        # Whatever is reported is a prefix of the truth (a cut RDATA is never shown as valid).
        data = out["response_data"]
        assert data == full[: len(data)] or data[-1].startswith("\\#")


def test_random_bytes_never_raise() -> None:
    rng = random.Random(1035)
    q, r = exchange("example.org", "MX", "example.org. 300 IN MX 10 mail.example.org.")
    for _ in range(3000):
        size = rng.randrange(0, 80)
        junk = bytes(rng.randrange(256) for _ in range(size))
        mutated = bytearray(r)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        for query_wire, reply_wire in ((junk, junk), (q, bytes(mutated)), (bytes(mutated), junk)):
            out = line(record(query_wire, reply_wire))
            assert list(out) == KEYS


def _reply_with_cname_rdata(rdata: bytes) -> bytes:
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    question = b"\x07example\x03org\x00" + struct.pack("!HH", 5, 1)
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(rdata)) + rdata
    return header + question + rr


@pytest.mark.parametrize(
    ("rdata", "why"),
    [
        (b"\xc0\x29", "pointer to itself"),
        (b"\xc0\x40", "pointer forward, past the end"),
        (b"\x03www\xc0\x29", "pointer to the start of its own name"),
        (b"\x03www", "no terminating label"),
        (b"\x03www\x00\x00", "name shorter than RDLENGTH"),
        (b"\x80abc\x00", "reserved label type"),
        (
            b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"b" * 63
            + b"\x3f"
            + b"c" * 63
            + b"\x3f"
            + b"d" * 63
            + b"\x00",
            "over 255 octets",
        ),
    ],
)
def test_bad_names_in_rdata_fall_back_to_generic(rdata: bytes, why: str) -> None:
    reply = _reply_with_cname_rdata(rdata)
    q = dns.message.make_query("example.org", "CNAME").to_wire()
    out = line(record(q, reply))
    assert out["response_data"] == [f"\\# {len(rdata)} {rdata.hex()}"], why
    assert out["response_code"] == "NOERROR"


def test_backward_pointer_chain_is_followed() -> None:
    # rdata "\x03www" + pointer to the qname at offset 12: valid, strictly backwards.
    reply = _reply_with_cname_rdata(b"\x03www\xc0\x0c")
    q = dns.message.make_query("example.org", "CNAME").to_wire()
    assert line(record(q, reply))["response_data"] == ["www.example.org."]
    assert oracle_data(reply) == ["www.example.org."]


def test_pointer_loop_in_the_question_does_not_hang() -> None:
    header = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    query_wire = header + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    out = line(record(query_wire, query_wire))
    assert out["domain"] is None


def test_records_of_the_wrong_shape_are_skipped_in_batches() -> None:
    q, r = exchange("example.org", "A")
    good = record(q, r)
    lines, failed = encode_batch([good, ("nope",), good])  # type: ignore[list-item]
    assert failed == 1
    assert len(lines) == 2


# ----------------------------------------------------------------------------- ring and writer


def _records(n: int) -> list[QueryRecord]:
    """n records whose lines all have the same length; client_ip 192.0.2.100+i says which."""
    q, r = exchange("example.org", "A", "example.org. 300 IN A 192.0.2.1")
    return [(T0, f"192.0.2.{100 + i}", q, r, False, None, 45_000) for i in range(n)]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _order(path: Path) -> list[int]:
    return [int(x["client_ip"].rsplit(".", 1)[1]) - 100 for x in _lines(path)]


def test_append_drops_and_counts_when_full(tmp_path: Path) -> None:
    log = QueryLog(str(tmp_path / "q.log"), capacity=3)
    for rec in _records(5):
        log.append(rec)
    assert log.pending == 3
    assert log.dropped == 2
    log.flush_now()
    assert log.written == 3
    # The first three were kept; the newest were dropped.
    assert _order(tmp_path / "q.log") == [0, 1, 2]
    asyncio.run(log.close())


def test_writer_task_writes_batches_in_order(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "nested" / "q.log"  # parent directories are created

    async def scenario() -> QueryLog:
        log = QueryLog(str(path), capacity=10_000, batch_size=16, flush_interval_s=0.01)
        writer = asyncio.ensure_future(log.run())
        for rec in _records(100):
            log.append(rec)
        for rec in _records(37):  # second burst after the writer had a chance to run
            await asyncio.sleep(0)
            log.append(rec)
        while log.pending:
            await asyncio.sleep(0.01)
        await log.close()
        await asyncio.wait_for(writer, 1)
        return log

    log = asyncio.run(scenario())
    assert _order(path) == list(range(100)) + list(range(37))
    assert log.written == 137
    assert log.dropped == 0


def test_full_batch_wakes_the_writer_before_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "q.log"

    async def scenario() -> int:
        log = QueryLog(str(path), batch_size=8, flush_interval_s=3600)
        writer = asyncio.ensure_future(log.run())
        await asyncio.sleep(0)
        for rec in _records(8):
            log.append(rec)
        for _ in range(10):
            await asyncio.sleep(0)
        written = log.written
        await log.close()
        await asyncio.wait_for(writer, 1)
        return written

    assert asyncio.run(scenario()) == 8


def test_close_flushes_pending_and_stops_run(tmp_path: Path) -> None:
    path = tmp_path / "q.log"

    async def scenario() -> QueryLog:
        log = QueryLog(str(path), flush_interval_s=3600)
        writer = asyncio.ensure_future(log.run())
        await asyncio.sleep(0)
        for rec in _records(5):
            log.append(rec)
        await log.close()
        await asyncio.wait_for(writer, 1)
        log.append(_records(1)[0])  # after close: counted, not written
        return log

    log = asyncio.run(scenario())
    assert len(_lines(path)) == 5
    assert log.written == 5
    assert log.dropped == 1


def test_cancelled_writer_flushes_pending(tmp_path: Path) -> None:
    path = tmp_path / "q.log"

    async def scenario() -> None:
        log = QueryLog(str(path), flush_interval_s=3600)
        writer = asyncio.ensure_future(log.run())
        await asyncio.sleep(0)
        for rec in _records(4):
            log.append(rec)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await log.close()

    asyncio.run(scenario())
    assert len(_lines(path)) == 4


def test_flush_now_without_a_loop(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    log = QueryLog(str(path), batch_size=2)
    for rec in _records(5):
        log.append(rec)
    log.flush_now()
    assert log.pending == 0
    assert len(_lines(path)) == 5
    asyncio.run(log.close())


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    path.write_bytes(b'{"old":true}\n')
    log = QueryLog(str(path))
    log.append(_records(1)[0])
    asyncio.run(log.close())
    assert len(path.read_text().splitlines()) == 2


def test_stdout_sink_when_no_file() -> None:
    stream = io.StringIO()
    log = QueryLog("-", stream=stream)
    for rec in _records(2):
        log.append(rec)
    asyncio.run(log.close())
    assert [json.loads(x)["domain"] for x in stream.getvalue().splitlines()] == ["example.org"] * 2
    assert not stream.closed


def test_from_settings_reads_logging_settings(tmp_path: Path) -> None:
    settings = SimpleNamespace(file=str(tmp_path / "q.log"), max_size_mb=0.5, backup_count=2)
    log = QueryLog.from_settings(settings, capacity=7)
    log.append(_records(1)[0])
    asyncio.run(log.close())
    assert len(_lines(tmp_path / "q.log")) == 1


# ----------------------------------------------------------------------------- rotation


def _line_size() -> int:
    return len(encode(_records(1)[0]))


def test_rotation_keeps_backup_count_files(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    size = _line_size()
    log = QueryLog(str(path), max_size_bytes=size * 3, backup_count=2, batch_size=2)
    for rec in _records(14):
        log.append(rec)
    log.flush_now()
    asyncio.run(log.close())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["q.log", "q.log.1", "q.log.2"]  # q.log.3 would exceed backup_count
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= size * 3
    # 14 lines, 3 per file: [0-2][3-5][6-8][9-11][12-13]; the two oldest files are gone.
    order = {name: _order(tmp_path / name) for name in names}
    assert order == {"q.log.2": [6, 7, 8], "q.log.1": [9, 10, 11], "q.log": [12, 13]}
    assert log.written == 14


def test_rotation_with_one_big_batch_splits_at_lines(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    size = _line_size()
    log = QueryLog(str(path), max_size_bytes=size * 2, backup_count=5, batch_size=1024)
    for rec in _records(7):
        log.append(rec)
    asyncio.run(log.close())
    counts = {p.name: len(_lines(p)) for p in tmp_path.iterdir()}
    assert counts == {"q.log.3": 2, "q.log.2": 2, "q.log.1": 2, "q.log": 1}


def test_backup_count_zero_truncates(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    size = _line_size()
    log = QueryLog(str(path), max_size_bytes=size * 2, backup_count=0)
    for rec in _records(5):
        log.append(rec)
    asyncio.run(log.close())
    assert [p.name for p in tmp_path.iterdir()] == ["q.log"]
    assert _order(path) == [4]


def test_rotation_counts_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    size = _line_size()
    path.write_bytes(b"x" * (size * 2) + b"\n")
    log = QueryLog(str(path), max_size_bytes=size * 2, backup_count=1)
    log.append(_records(1)[0])
    asyncio.run(log.close())
    assert (tmp_path / "q.log.1").read_bytes().startswith(b"xxx")
    assert len(_lines(path)) == 1


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "dir"
    log = QueryLog(str(blocker / "q.log"))
    blocker.rmdir()
    blocker.write_text("a file where the directory was")
    log.append(_records(1)[0])
    log.flush_now()
    assert log.write_errors == 1
    assert log.dropped == 1
    assert log.written == 0
    asyncio.run(log.close())


def test_rejects_empty_ring() -> None:
    with pytest.raises(ValueError):
        QueryLog("-", capacity=0)


def test_two_workers_share_one_file_and_its_rotation(tmp_path: Path) -> None:
    """workers: N processes each hold a sink on the same path; every line survives, no file
    passes the limit, and backup_count still bounds the set of files."""
    from fastdns.querylog import _RotatingFileSink

    path = str(tmp_path / "q.log")
    worker_a = _RotatingFileSink(path, max_size_bytes=400, backup_count=50)
    worker_b = _RotatingFileSink(path, max_size_bytes=400, backup_count=50)
    written = []
    for i in range(60):
        line = f'{{"n": {i:03d}, "pad": "{"x" * 20}"}}\n'.encode()
        (worker_a if i % 2 else worker_b).write_lines([line])
        written.append(line)
    worker_a.close()
    worker_b.close()
    files = sorted(tmp_path.iterdir())
    assert all(f.stat().st_size <= 400 for f in files)
    lines = [line for f in files for line in f.read_bytes().splitlines(keepends=True)]
    assert sorted(lines) == sorted(written)


def test_file_moved_away_by_logrotate_is_recreated(tmp_path: Path) -> None:
    from fastdns.querylog import _RotatingFileSink

    path = tmp_path / "q.log"
    sink = _RotatingFileSink(str(path), max_size_bytes=1 << 20, backup_count=2)
    sink.write_lines([b"first\n"])
    path.rename(tmp_path / "q.log.old")
    sink.write_lines([b"second\n"])
    sink.close()
    assert path.read_bytes() == b"second\n"
    assert (tmp_path / "q.log.old").read_bytes() == b"first\n"
