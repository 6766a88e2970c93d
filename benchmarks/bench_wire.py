"""Micro-benchmarks of the wire format: parse a query, prepare (index) a reply, render a hit.

Run: python -m benchmarks.bench_wire [--json]. dnspython is the comparator.
"""

from __future__ import annotations

import socket

import dns.message
import dns.rrset

from benchmarks._micro import Result, report, time_call, wants_json
from fastdns._fastpath import HitPath, pack_sockaddr
from fastdns._lru import LruCache
from fastdns.wire import parse_query, prepare_reply, render_prepared


def main() -> None:
    query = dns.message.make_query("www.Example.org", "A", use_edns=0, payload=1232)
    query_wire = query.to_wire()
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("www.example.org.", 300, "IN", "CNAME", "example.org."))
    reply.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
    reply_wire = reply.to_wire()
    policy = {"min_ttl": 1, "max_ttl": 86400, "negative_ttl": 300, "default_ttl": 300}
    pq = parse_query(query_wire)
    prepared = prepare_reply(reply_wire, **policy)

    lru = LruCache(64 << 20)
    lru.put(pq.key, prepared.wire, prepared.ttl_offsets, 0.0, 300.0)
    hitpath = HitPath(lru, allowed_networks=[(socket.inet_aton("0.0.0.0"), 0), (bytes(16), 0)],
                      rate_per_s=0.0, log_enabled=False)
    peer = pack_sockaddr(("127.0.0.1", 40000))

    results = [
        Result("parse_query (Python face)", time_call(lambda: parse_query(query_wire)),
               "dns.message.from_wire", time_call(lambda: dns.message.from_wire(query_wire))),
        Result("prepare_reply (index TTLs)", time_call(lambda: prepare_reply(reply_wire, **policy)),
               "dns.message.from_wire", time_call(lambda: dns.message.from_wire(reply_wire))),
        Result("render_prepared", time_call(lambda: render_prepared(prepared, pq, 10)),
               "dns Message.to_wire", time_call(lambda: reply.to_wire())),
        Result("HitPath.answer (parse+probe+render)", time_call(lambda: hitpath.answer(query_wire, peer, True, 1.0))),
    ]
    report(results, wants_json())


if __name__ == "__main__":
    main()
