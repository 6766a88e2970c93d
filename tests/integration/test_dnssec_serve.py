"""`dnssec.enabled` wired into `fastdns serve`: bogus data is refused with a reason, CD=1 skips it."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode


def _server(server_factory, fake_upstream):
    fake_upstream.answer("www.example.org. 300 IN A 192.0.2.1")
    return server_factory(
        {"upstream_servers": [fake_upstream.address], "dnssec": {"enabled": True}}
    )


def _ask(server, *, cd: bool = False, want_dnssec: bool = False) -> dns.message.Message:
    query = dns.message.make_query("www.example.org", "A", use_edns=0, want_dnssec=want_dnssec)
    if cd:
        query.flags |= dns.flags.CD
    return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=6)


def test_unsigned_data_under_the_root_anchor_is_servfail_with_a_reason(server_factory,
                                                                      fake_upstream):
    server = _server(server_factory, fake_upstream)
    reply = _ask(server)
    # The root is anchored (built-in KSKs) but the fake upstream serves no DNSKEY or RRSIG.
    assert reply.rcode() == dns.rcode.SERVFAIL
    ede = [o for o in reply.options if o.otype == dns.edns.EDE]
    assert ede and ede[0].code in (6, 9, 10)
    # The upstream was asked with DO=1 and CD=1: we validate, it must not filter.
    assert fake_upstream.queries and all(q.do_bit and q.cd_bit for q in fake_upstream.queries)


def test_checking_disabled_returns_the_data_unvalidated(server_factory, fake_upstream):
    server = _server(server_factory, fake_upstream)
    reply = _ask(server, cd=True)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in reply.answer[0]] == ["192.0.2.1"]
    assert not reply.flags & dns.flags.AD  # RFC 4035 §3.2.3: not validated, not authentic
