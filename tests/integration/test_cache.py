"""The answer cache seen from outside (SPEC §3): hits without upstream, the case-insensitive key
with the client's case echoed, TTL countdown and clamps, expiry, negative caching (RFC 2308),
and what must never be cached (SERVFAIL, TC); DO-bit queries are cached apart."""

from __future__ import annotations

import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from . import (
    SOA_ORG_NEGATIVE_TTL,
    UDP_PATHS,
    ask,
    checked_servers,
    config,
    make_wire,
    parse,
    populate,
    question_bytes,
    udp_exchange,
)


@pytest.fixture
def server_factory(server_factory):
    """conftest's factory, plus: no server may log a traceback."""
    yield from checked_servers(server_factory)


def answers(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


@pytest.fixture
def up(fake_upstream):
    return populate(fake_upstream)


@pytest.fixture
def server(up, server_factory, udp_path):
    """A server with the common records, on each UDP path in turn (the cache is probed by
    the same C code on both; tests that build their own server run on the default path)."""
    return server_factory(config(up, **UDP_PATHS[udp_path]))


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_second_identical_query_is_answered_from_cache(up, server, tcp):
    first = ask(server, "example.org", "A", tcp=tcp)
    second = ask(server, "example.org", "A", tcp=tcp)
    assert answers(first) == answers(second) == ["192.0.2.1"]
    assert up.calls == 1


def test_cache_is_shared_between_udp_and_tcp(up, server):
    ask(server, "example.org", "MX")
    reply = ask(server, "example.org", "MX", tcp=True)
    assert sorted(answers(reply)) == ["10 mail.example.org.", "20 mail2.example.org."]
    assert up.calls == 1


def test_key_is_case_insensitive_but_each_reply_echoes_its_clients_case(up, server):
    first_wire = make_wire("WWW.Example.ORG.", "A")
    second_wire = make_wire("www.example.org.", "A")
    third_wire = make_wire("wWw.eXaMpLe.OrG.", "A")
    replies = [udp_exchange(server, w) for w in (first_wire, second_wire, third_wire)]
    assert up.calls == 1
    for wire, reply in zip((first_wire, second_wire, third_wire), replies, strict=True):
        assert reply is not None
        assert question_bytes(reply) == question_bytes(wire)
        msg = parse(reply)
        assert msg.id == int.from_bytes(wire[:2], "big")
        # Names compressed against the question take the client's case too: equal as DNS
        # names (RFC 4343), so compare them case-insensitively.
        assert [a.lower() for a in answers(msg)] == [
            "alias.example.net.",
            "target.example.org.",
            "192.0.2.10",
        ]


def test_different_types_and_names_are_different_entries(up, server):
    ask(server, "example.org", "A")
    ask(server, "example.org", "AAAA")
    ask(server, "mail.example.org", "A")
    ask(server, "example.org", "A")
    assert up.calls == 3


def test_ttl_counts_down_and_never_exceeds_upstreams(up, server):
    first = ask(server, "example.org", "A")
    assert first.answer[0].ttl == 300, "a miss is served with the TTL upstream gave"
    time.sleep(2.1)
    later = ask(server, "example.org", "A")
    assert up.calls == 1
    assert 300 - 4 <= later.answer[0].ttl <= 300 - 2
    time.sleep(1.1)
    last = ask(server, "example.org", "A", tcp=True)
    assert last.answer[0].ttl < later.answer[0].ttl


def test_every_ttl_in_a_cname_chain_counts_down(up, server):
    up.answer("c1.example.org. 100 IN CNAME c2.example.org.", "c2.example.org. 200 IN A 192.0.2.3")
    first = ask(server, "c1.example.org", "A")
    assert [r.ttl for r in first.answer] == [100, 200]
    time.sleep(2.1)
    later = ask(server, "c1.example.org", "A")
    ttls = [r.ttl for r in later.answer]
    assert 100 - 4 <= ttls[0] <= 98 and 200 - 4 <= ttls[1] <= 198
    assert up.calls == 1


def test_max_ttl_caps_a_huge_ttl(fake_upstream, server_factory):
    fake_upstream.answer("huge.example.org. 2000000000 IN A 192.0.2.4")
    server = server_factory(config(fake_upstream, cache={"max_ttl": 3600}))
    for _ in range(2):
        reply = ask(server, "huge.example.org", "A")
        assert answers(reply) == ["192.0.2.4"]
        assert 3600 - 2 <= reply.answer[0].ttl <= 3600
    assert fake_upstream.calls == 1


def test_entry_expires_and_upstream_is_asked_again(fake_upstream, server_factory):
    fake_upstream.answer("short.example.org. 1 IN A 192.0.2.5")
    server = server_factory(config(fake_upstream))
    first = ask(server, "short.example.org", "A")
    assert first.answer[0].ttl == 1
    time.sleep(2.2)
    again = ask(server, "short.example.org", "A")
    assert answers(again) == ["192.0.2.5"]
    assert again.answer[0].ttl == 1, "a fresh answer, not a stale one at 0"
    assert fake_upstream.calls == 2


def test_per_domain_ttl_override_shortens_caching_for_that_domain_only(
    fake_upstream, server_factory
):
    fake_upstream.answer(
        "www.dynamic.example.org. 300 IN A 192.0.2.7", "www.example.net. 300 IN A 192.0.2.8"
    )
    server = server_factory(
        config(fake_upstream, cache={"ttl_overrides": {"dynamic.example.org": 1}})
    )
    first = ask(server, "www.dynamic.example.org", "A")
    assert first.answer[0].ttl == 1, "served TTL follows the override"
    ask(server, "www.example.net", "A")
    time.sleep(2.2)
    assert answers(ask(server, "www.dynamic.example.org", "A")) == ["192.0.2.7"]
    assert ask(server, "www.example.net", "A").answer[0].ttl <= 298
    assert fake_upstream.calls == 3, "only the overridden name went upstream again"


def test_servfail_is_not_cached(fake_upstream, server_factory):
    populate(fake_upstream).mode = "servfail"
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3})
    )
    assert ask(server, "example.org", "A").rcode() == dns.rcode.SERVFAIL
    calls = fake_upstream.calls
    fake_upstream.mode = "answer"
    reply = ask(server, "example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR and answers(reply) == ["192.0.2.1"]
    assert fake_upstream.calls == calls + 1


def test_servfail_after_timeout_is_not_cached(fake_upstream, server_factory):
    populate(fake_upstream).mode = "silent"
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3})
    )
    assert ask(server, "example.org", "A").rcode() == dns.rcode.SERVFAIL
    fake_upstream.mode = "answer"
    reply = ask(server, "example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR and answers(reply) == ["192.0.2.1"]


def test_truncated_upstream_reply_is_not_cached(fake_upstream, server_factory):
    # Upstream sets TC=1 on every reply, over TCP too: nothing complete ever arrives.
    populate(fake_upstream)

    def always_tc(q: dns.message.Message) -> dns.message.Message:
        reply = fake_upstream.build_answer(q)
        reply.flags |= dns.flags.TC
        return reply

    fake_upstream.answer_fn(always_tc)
    server = server_factory(
        config(fake_upstream, resolver={"timeout_s": 1.0, "retry_interval_s": 0.3})
    )
    ask(server, "example.org", "A", tcp=True)
    calls = fake_upstream.calls
    assert calls >= 1
    ask(server, "example.org", "A", tcp=True)
    assert fake_upstream.calls > calls, "a TC reply must not be served from cache"


def test_do_bit_queries_are_cached_apart(up, server):
    plain = ask(server, "example.org", "A", use_edns=0)
    dnssec = ask(server, "example.org", "A", use_edns=0, want_dnssec=True)
    assert answers(plain) == answers(dnssec) == ["192.0.2.1"]
    assert up.calls == 2
    assert [q.do_bit for q in up.queries] == [False, True], "DO is passed upstream as asked"
    ask(server, "example.org", "A", use_edns=0)
    ask(server, "example.org", "A", use_edns=0, want_dnssec=True)
    assert up.calls == 2


def test_cd_bit_queries_are_cached_apart(up, server):
    ask(server, "example.org", "A", use_edns=0)
    reply = ask(server, "example.org", "A", use_edns=0, flags=dns.flags.RD | dns.flags.CD)
    assert reply.flags & dns.flags.CD, "CD is echoed (RFC 4035 §3.2.2)"
    assert up.calls == 2
    assert [q.cd_bit for q in up.queries] == [False, True]


# ---------------------------------------------------------------------- negative caching


def soa_of(msg: dns.message.Message):
    (soa,) = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
    return soa


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [("nope.example.org", "A", dns.rcode.NXDOMAIN), ("example.org", "TXT", dns.rcode.NOERROR)],
    ids=["nxdomain", "nodata"],
)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_negative_answer_carries_soa_and_is_cached(up, server, name, rdtype, rcode, tcp):
    first = ask(server, name, rdtype, tcp=tcp)
    assert first.rcode() == rcode
    assert not first.answer
    soa = soa_of(first)
    assert soa.name.to_text() == "example.org."
    assert soa[0].minimum == 120
    # RFC 2308 §5: min(SOA TTL 3600, SOA MINIMUM 120), below the 300 s cap.
    assert soa.ttl == SOA_ORG_NEGATIVE_TTL
    time.sleep(1.1)
    second = ask(server, name, rdtype, tcp=tcp)
    assert second.rcode() == rcode and not second.answer
    assert SOA_ORG_NEGATIVE_TTL - 3 <= soa_of(second).ttl < SOA_ORG_NEGATIVE_TTL
    assert up.calls == 1


def test_negative_ttl_setting_caps_the_negative_ttl(fake_upstream, server_factory):
    populate(fake_upstream)
    server = server_factory(config(fake_upstream, cache={"negative_ttl": 60}))
    reply = ask(server, "nope.example.org", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert soa_of(reply).ttl == 60
    reply = ask(server, "example.org", "TXT")
    assert reply.rcode() == dns.rcode.NOERROR and soa_of(reply).ttl == 60
    ask(server, "nope.example.org", "A")
    assert fake_upstream.calls == 2


def test_soa_ttl_below_minimum_is_the_negative_ttl(fake_upstream, server_factory):
    fake_upstream.zone_soa(
        "example.net. 30 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 900 1209600 600"
    )
    server = server_factory(config(fake_upstream))
    reply = ask(server, "nope.example.net", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert soa_of(reply).ttl == 30
    assert soa_of(reply)[0].minimum == 600, "the SOA RDATA itself is passed on unchanged"


def test_negative_entry_expires(fake_upstream, server_factory):
    fake_upstream.zone_soa(
        "example.net. 1 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 900 1209600 1"
    )
    server = server_factory(config(fake_upstream))
    assert ask(server, "gone.example.net", "A").rcode() == dns.rcode.NXDOMAIN
    time.sleep(2.2)
    assert ask(server, "gone.example.net", "A").rcode() == dns.rcode.NXDOMAIN
    assert fake_upstream.calls == 2


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("nope.example.com", "A", dns.rcode.NXDOMAIN),
        ("soa-less.example.com", "TXT", dns.rcode.NOERROR),
    ],
    ids=["nxdomain", "nodata"],
)
def test_negative_answer_without_soa_is_not_cached(
    fake_upstream, server_factory, name, rdtype, rcode
):
    # RFC 2308 §5: without a SOA there is no negative TTL, so no negative caching.
    fake_upstream.answer("soa-less.example.com. 300 IN A 192.0.2.6")
    server = server_factory(config(fake_upstream))
    first = ask(server, name, rdtype)
    assert first.rcode() == rcode and not first.answer and not first.authority
    second = ask(server, name, rdtype)
    assert second.rcode() == rcode
    assert fake_upstream.calls == 2


def test_cached_nxdomain_is_per_name_not_per_zone(up, server):
    assert ask(server, "nope.example.org", "A").rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(server, "mail.example.org", "A")) == ["192.0.2.25"]
    assert up.calls == 2


def test_ttl_zero_is_served_as_zero(fake_upstream, server_factory):
    # SPEC §3: served TTLs never exceed what upstream gave, whatever min_ttl keeps it for.
    fake_upstream.answer("zero.example.org. 0 IN A 192.0.2.7")
    server = server_factory(config(fake_upstream))
    for _ in range(2):
        reply = ask(server, "zero.example.org", "A")
        assert answers(reply) == ["192.0.2.7"]
        assert reply.answer[0].ttl == 0


def test_min_ttl_keeps_an_entry_but_never_raises_the_served_ttl(fake_upstream, server_factory):
    fake_upstream.answer("brief.example.org. 1 IN A 192.0.2.8")
    server = server_factory(config(fake_upstream, cache={"min_ttl": 30}))
    assert ask(server, "brief.example.org", "A").answer[0].ttl == 1
    time.sleep(2.1)
    reply = ask(server, "brief.example.org", "A")
    assert answers(reply) == ["192.0.2.8"]
    assert reply.answer[0].ttl == 0, "counted down and clamped at 0, never raised to min_ttl"
    assert fake_upstream.calls == 1, "min_ttl 30 keeps the entry cached"


def test_size_limit_evicts_least_recently_used(fake_upstream, server_factory):
    names = [f"lru{i:02d}.example.org." for i in range(40)]
    fake_upstream.answer(
        "hot.example.org. 300 IN A 192.0.2.200",
        *[f"{name} 300 IN A 192.0.2.{i + 1}" for i, name in enumerate(names)],
    )
    server = server_factory(config(fake_upstream, cache={"max_size_mb": 0.002}))  # ~2 KB
    ask(server, "hot.example.org", "A")
    for name in names:
        ask(server, name, "A")
        ask(server, "hot.example.org", "A")  # keep it the most recently used
    asked = [q.qname.lower() for q in fake_upstream.queries]
    assert asked.count("hot.example.org.") == 1, "the hot entry was never evicted"
    calls = fake_upstream.calls
    assert answers(ask(server, names[-1], "A")) == ["192.0.2.40"]
    assert fake_upstream.calls == calls, "the newest entry is still cached"
    assert answers(ask(server, names[0], "A")) == ["192.0.2.1"]
    assert fake_upstream.calls == calls + 1, "the oldest entry was evicted"


def test_nxdomain_after_a_cname_keeps_the_chain_and_is_cached(up, server):
    up.answer("dangling.example.org. 300 IN CNAME missing.example.org.")
    for _ in range(2):
        reply = ask(server, "dangling.example.org", "A")
        assert reply.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: rcode of the last name
        assert answers(reply) == ["missing.example.org."]
        assert soa_of(reply).ttl <= SOA_ORG_NEGATIVE_TTL
    assert up.calls == 1


def test_class_is_part_of_the_cache_key(up, server):
    chaos = ask(server, "txt.example.org", "TXT", rdclass="CH")
    assert not chaos.answer
    reply = ask(server, "txt.example.org", "TXT")
    assert [rd.to_text() for rd in reply.answer[0]] == ['"v=spf1 -all"']
    assert [q.qclass for q in up.queries] == ["CH", "IN"]
