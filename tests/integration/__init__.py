"""Integration tests: a real `fastdns serve` process against FakeUpstreams, all on 127.0.0.1.

This package module holds the small helpers the test modules share: raw UDP/TCP exchanges
(for packets dnspython would refuse to build or to parse), DNS-over-TCP framing, the common
record set, and a config builder with small timeouts so that failure paths stay quick.
Nothing here ever addresses anything outside 127.0.0.0/8.
"""

from __future__ import annotations

import ipaddress
import secrets
import selectors
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import FakeUpstream, Hierarchy, ServerProcess, query

# A server must answer well inside this; failures only (never speed assertions).
CLIENT_TIMEOUT_S = 5.0
# Small budgets so that failure paths (silent upstreams) finish in about a second.
RESOLVER = {"timeout_s": 1.5, "retry_interval_s": 0.3}

SOA_ORG = (
    "example.org. 3600 IN SOA ns1.example.org. hostmaster.example.org. "
    "2024010101 7200 900 1209600 120"
)
# RFC 2308 §5: negative TTL = min(SOA TTL, SOA MINIMUM) = min(3600, 120), below the 300 default cap.
SOA_ORG_NEGATIVE_TTL = 120

LONG_TXT_STRINGS = ["a" * 255, "b" * 255, "c" * 200]

# The record set most tests use. Owners under example.org/example.net, addresses from the
# documentation ranges (RFC 5737, RFC 3849).
RECORDS = [
    "example.org. 300 IN A 192.0.2.1",
    "example.org. 300 IN AAAA 2001:db8::1",
    "example.org. 300 IN MX 10 mail.example.org.",
    "example.org. 300 IN MX 20 mail2.example.org.",
    "example.org. 300 IN NS ns1.example.org.",
    "example.org. 300 IN NS ns2.example.org.",
    'example.org. 300 IN CAA 0 issue "letsencrypt.org"',
    "mail.example.org. 300 IN A 192.0.2.25",
    # A CNAME chain that leaves the zone and comes back: www -> alias -> target.
    "www.example.org. 300 IN CNAME alias.example.net.",
    "alias.example.net. 300 IN CNAME target.example.org.",
    "target.example.org. 300 IN A 192.0.2.10",
    "1.2.0.192.in-addr.arpa. 300 IN PTR host1.example.org.",
    'txt.example.org. 300 IN TXT "v=spf1 -all"',
    'multi.example.org. 300 IN TXT "first string" "second string" "third"',
    'escaped.example.org. 300 IN TXT "say \\"hi\\"" "back\\\\slash" "\\000\\255\\010"',
    "long.example.org. 300 IN TXT " + " ".join(f'"{s}"' for s in LONG_TXT_STRINGS),
    "_sip._tcp.example.org. 300 IN SRV 10 60 5060 sip.example.org.",
    # RFC 3597 generic RDATA of a private-use type: must pass through byte for byte.
    "rare.example.org. 300 IN TYPE65534 \\# 6 0102030405ff",
]
RARE_RDATA = bytes.fromhex("0102030405ff")

# (qname, qtype) of every record-type case; each must come back exactly as upstream gave it.
RECORD_CASES = [
    ("example.org.", "A"),
    ("example.org.", "AAAA"),
    ("www.example.org.", "A"),  # CNAME chain
    ("www.example.org.", "CNAME"),
    ("example.org.", "MX"),
    ("example.org.", "NS"),
    ("1.2.0.192.in-addr.arpa.", "PTR"),
    ("txt.example.org.", "TXT"),
    ("multi.example.org.", "TXT"),
    ("escaped.example.org.", "TXT"),
    ("long.example.org.", "TXT"),
    ("example.org.", "SOA"),
    ("_sip._tcp.example.org.", "SRV"),
    ("example.org.", "CAA"),
    ("rare.example.org.", "TYPE65534"),
]


# The settings that select each UDP path (the `udp_path` fixture's values).
UDP_PATHS: dict[str, dict[str, Any]] = {
    "batch": {"server": {"udp_batching": True}},
    "plain": {"server": {"udp_batching": False}},
}


def populate(up: FakeUpstream) -> FakeUpstream:
    """Give a fake upstream the common records and the example.org SOA."""
    up.answer(*RECORDS)
    up.zone_soa(SOA_ORG)
    return up


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config(*upstreams: Any, **sections: Any) -> dict[str, Any]:
    """A server config: these upstreams, small resolver budgets, then `sections` merged over."""
    base: dict[str, Any] = {"upstream_servers": list(upstreams), "resolver": dict(RESOLVER)}
    return deep_merge(base, sections)


def recursive_config(tree: Hierarchy, directory: Path, **resolver: Any) -> dict[str, Any]:
    """A server config that recurses from `tree`'s root on loopback (budgets a client's 6 s
    wait covers), with `resolver` settings merged over."""
    return {
        "resolver": {
            "mode": "recursive",
            "root_hints": str(tree.root_hints_path(directory)),
            "query_loopback": True,
            "nameserver_port": tree.port,
            "timeout_s": 3.0,
            "retry_interval_s": 0.3,
            **resolver,
        }
    }


def ask(
    server: Any,
    name: str,
    rdtype: str | int = "A",
    *,
    tcp: bool = False,
    timeout: float = CLIENT_TIMEOUT_S,
    **kw: Any,
) -> dns.message.Message:
    """One question through dnspython (which checks ID and question match)."""
    return query(server, name, rdtype, tcp, timeout=timeout, **kw)


def send(
    server: Any, msg: dns.message.Message, *, tcp: bool = False, timeout: float = CLIENT_TIMEOUT_S
) -> dns.message.Message:
    """Send a prepared dnspython message; the reply must match it (ID, question)."""
    host, port = endpoint(server)
    if tcp:
        return dns.query.tcp(msg, host, timeout=timeout, port=port, ignore_trailing=False)
    return dns.query.udp(msg, host, timeout=timeout, port=port, ignore_trailing=False)


def endpoint(server: Any) -> tuple[str, int]:
    """(host, port) of a ServerProcess / FakeUpstream, or of a (host, port) tuple."""
    if isinstance(server, tuple):
        host, port = str(server[0]), int(server[1])
    else:
        host, port = str(server.host), int(server.port)
    assert ipaddress.ip_address(host).is_loopback
    return host, port


def make_wire(name: str, rdtype: str | int = "A", *, qid: int | None = None, **kw: Any) -> bytes:
    """Wire form of a query (dnspython keeps the letter case of `name`)."""
    msg = dns.message.make_query(name, dns.rdatatype.RdataType.make(rdtype), **kw)
    msg.id = secrets.randbits(16) if qid is None else qid
    return msg.to_wire()


def udp_exchange(server: Any, wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send one datagram; return the first datagram back, or None if none arrives in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(endpoint(server))
        sock.send(wire)
        try:
            return sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


def frame(wire: bytes) -> bytes:
    """RFC 1035 §4.2.2: a 2-byte big-endian length, then the message."""
    return len(wire).to_bytes(2, "big") + wire


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket) -> bytes:
    size = int.from_bytes(recv_exactly(sock, 2), "big")
    return recv_exactly(sock, size)


def tcp_connect(server: Any, timeout: float = CLIENT_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection(endpoint(server), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def tcp_exchange(server: Any, wire: bytes, timeout: float = CLIENT_TIMEOUT_S) -> bytes:
    with tcp_connect(server, timeout) as sock:
        sock.sendall(frame(wire))
        return read_frame(sock)


def parse(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire, ignore_trailing=False)


def question_bytes(wire: bytes) -> bytes:
    """The raw question section of a single-question message (name uncompressed + type/class)."""
    pos = 12
    while wire[pos]:
        pos += 1 + wire[pos]
    return wire[12 : pos + 5]


def rcode_of(msg: dns.message.Message) -> int:
    return int(msg.rcode())


def assert_reply_header(reply: dns.message.Message, query_msg: dns.message.Message) -> None:
    """What every reply to a recursive query must say: our ID, QR, RA, RD echoed, AA clear."""
    assert reply.id == query_msg.id
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.AA
    assert bool(reply.flags & dns.flags.RD) == bool(query_msg.flags & dns.flags.RD)
    assert reply.opcode() == query_msg.opcode()


def rrsets_as_wire(section: Iterable[dns.rrset.RRset]) -> list[tuple[str, int, int, list[bytes]]]:
    """Owner (lowercased), type, class and the exact RDATA bytes of each RRset (RRsets in
    order; RDATA sorted, since an RRset is unordered and the fake may shuffle it)."""
    out = []
    for rrset in section:
        out.append(
            (
                rrset.name.to_text().lower(),
                int(rrset.rdtype),
                int(rrset.rdclass),
                sorted(rd.to_wire() for rd in rrset),
            )
        )
    return out


@dataclass
class Started:
    """A fake upstream and a server pointed at it, for module-scoped fixtures."""

    up: FakeUpstream
    server: ServerProcess

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.up.stop()
        assert_clean_stderr(self.server)


def assert_clean_stderr(server: ServerProcess) -> None:
    """Whatever the tests threw at it, the server never logged an unhandled exception."""
    stderr = server.stderr_text()
    assert "Traceback" not in stderr, f"{server!r} logged a traceback:\n{stderr[-4000:]}"


def checked_servers(factory: Any, udp_path: str | None = None) -> Iterator[Any]:
    """Wrap conftest's server_factory: after the test, stop every server it made and check
    its stderr for tracebacks (use as `yield from checked_servers(server_factory)`). With
    `udp_path`, every server it makes serves UDP that way (see UDP_PATHS)."""
    made: list[ServerProcess] = []

    def make(config: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any) -> ServerProcess:
        if udp_path is not None:
            config = deep_merge(config or {}, UDP_PATHS[udp_path])
        server = factory(config, *args, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
    for server in made:
        assert_clean_stderr(server)


def start_pair(
    tmp_dir: Any, up: FakeUpstream, *, udp_path: str | None = None, **sections: Any
) -> Started:
    """Start a server forwarding to the running `up` (serving UDP the `udp_path` way, see
    UDP_PATHS); stop `up` too if the server fails."""
    cfg = config(up, **sections)
    if udp_path is not None:
        cfg = deep_merge(cfg, UDP_PATHS[udp_path])
    server = ServerProcess(cfg, tmp_dir)
    try:
        server.start()
    except BaseException:
        up.stop()
        raise
    return Started(up, server)


def dig(server: Any, *args: str, timeout: float = 15.0) -> str:
    """Run dig against the server (an independent client); skip when dig is not installed."""
    exe = shutil.which("dig")
    if exe is None:
        pytest.skip("dig is not installed")
    host, port = endpoint(server)
    cmd = [exe, f"@{host}", "-p", str(port), "+tries=1", "+time=3", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{cmd}: rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def raise_nofile(wanted: int) -> None:
    """Raise RLIMIT_NOFILE (soft) for this process if it is below `wanted`."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def collect_udp(
    socks: list[socket.socket], expected: dict[int, set[int]], deadline: float
) -> dict[tuple[int, int], bytes]:
    """Read replies on non-blocking `socks` until every expected (socket index, ID) arrived or
    `deadline` (monotonic) passes. Returns {(socket index, id): reply}."""
    got: dict[tuple[int, int], bytes] = {}
    missing = sum(len(ids) for ids in expected.values())
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sel.register(sock, selectors.EVENT_READ, i)
        while missing and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                while True:
                    try:
                        data = sock.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    qid = int.from_bytes(data[:2], "big")
                    k = (key.data, qid)
                    if qid in expected.get(key.data, ()) and k not in got:
                        got[k] = data
                        missing -= 1
    return got


def big_rcvbuf(sock: socket.socket, size: int = 4 * 1024 * 1024) -> None:
    """Make room for a burst of replies so the test client, not the server, never drops one."""
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue


def check_record_case(
    up: FakeUpstream, server: ServerProcess, name: str, rdtype: str, *, tcp: bool
) -> None:
    """Ask `server` twice (a miss, then a hit) and compare both answers, RDATA byte for byte,
    with what the fake upstream itself answers; the upstream must be asked over UDP once."""
    direct = query(up, name, rdtype, tcp=True, timeout=CLIENT_TIMEOUT_S)
    assert direct.rcode() == dns.rcode.NOERROR and direct.answer, "fake upstream data"
    expected = rrsets_as_wire(direct.answer)
    qtype = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    for attempt in ("miss", "hit"):
        msg = dns.message.make_query(
            name, dns.rdatatype.RdataType.make(rdtype), use_edns=0, payload=1232
        )
        reply = send(server, msg, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR, attempt
        assert not reply.flags & dns.flags.TC, attempt
        assert rrsets_as_wire(reply.answer) == expected, attempt
        for rrset, want in zip(reply.answer, direct.answer, strict=True):
            assert rrset.name == want.name
            assert want.ttl - 3 <= rrset.ttl <= want.ttl, attempt
        assert_reply_header(reply, msg)
    from_server = [
        q
        for q in up.queries
        if q.transport == "udp" and q.qname.lower() == name.lower() and q.qtype == qtype
    ]
    assert len(from_server) == 1, f"upstream asked {len(from_server)} times for {name} {qtype}"


def allow_large_replies(up: FakeUpstream) -> FakeUpstream:
    """Let the fake send replies above the query's EDNS size over TCP (UDP still truncates).

    FakeUpstream renders with dnspython, which caps a reply at the query's advertised payload
    (1232 from fastdns) even over TCP and raises TooBig; lifting `request_payload` to 65535
    keeps UDP truncation (the fake's own _fit_udp) and lets TCP carry the whole answer.
    """

    def build(q: dns.message.Message) -> dns.message.Message:
        reply = up.build_answer(q)
        reply.request_payload = 65535
        return reply

    return up.answer_fn(build)
