"""Micro-benchmarks of the wire format: parse a query, derive its cache key, prepare (index)
a reply, render a hit.

Run: python -m benchmarks.bench_wire [--json]. dnspython is the comparator.
"""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.rrset

from benchmarks._micro import Case, report, wants_json
from fastdns._fastpath import HitPath, pack_sockaddr
from fastdns._lru import LruCache
from fastdns.wire import parse_query, prepare_reply, render_prepared


def _dnspython_key(query_wire: bytes) -> tuple[object, ...]:
    # What our key holds (DESIGN.md "Contracts"): lowercased name, type, class, DO, CD.
    message = dns.message.from_wire(query_wire)
    question = message.question[0]
    return (question.name.canonicalize(), question.rdtype, question.rdclass,
            bool(message.ednsflags & dns.flags.DO), bool(message.flags & dns.flags.CD))


def cases() -> list[Case]:
    """A query for www.Example.org A with EDNS, and its two-RRset reply, ready to time."""
    query = dns.message.make_query("www.Example.org", "A", use_edns=0, payload=1232)
    query_wire = query.to_wire()
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("www.example.org.", 300, "IN", "CNAME", "example.org."))
    reply.answer.append(
        dns.rrset.from_text("example.org.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
    reply_wire = reply.to_wire()
    policy = {"min_ttl": 1, "max_ttl": 86400, "negative_ttl": 300, "default_ttl": 300}
    pq = parse_query(query_wire)
    prepared = prepare_reply(reply_wire, **policy)

    lru = LruCache(64 << 20)
    lru.put(pq.key, prepared.wire, prepared.ttl_offsets, 0.0, 300.0)
    hitpath = HitPath(lru, allowed_networks=[(socket.inet_aton("0.0.0.0"), 0), (bytes(16), 0)],
                      rate_per_s=0.0, log_enabled=False)
    peer = pack_sockaddr(("127.0.0.1", 40000))

    return [
        Case("parse_query (Python face)", lambda: parse_query(query_wire),
             "dns.message.from_wire", lambda: dns.message.from_wire(query_wire)),
        Case("cache key from query wire", lambda: parse_query(query_wire).key,
             "from_wire + key tuple", lambda: _dnspython_key(query_wire)),
        Case("prepare_reply (index TTLs)", lambda: prepare_reply(reply_wire, **policy),
             "dns.message.from_wire", lambda: dns.message.from_wire(reply_wire)),
        Case("render_prepared", lambda: render_prepared(prepared, pq, 10),
             "dns Message.to_wire", lambda: reply.to_wire()),
        Case("HitPath.answer (parse+probe+render)",
             lambda: hitpath.answer(query_wire, peer, True, 1.0)),
    ]


def main() -> None:
    report([case.measure() for case in cases()], wants_json())


if __name__ == "__main__":
    main()
