"""The compiled hit path (fastdns._fastpath.HitPath.answer): cache hits rendered in C, misses
handed back, drops, protocol errors, ACL, per-client rate limit, counters, the query-log
buffer, and no per-call allocation on a hit. `now` is passed in; nothing sleeps, nothing
touches the network (peers are packed sockaddrs, never sockets)."""

from __future__ import annotations

import ipaddress
import struct
import sys

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest

from fastdns._fastpath import HitPath, pack_sockaddr
from fastdns._lru import LruCache
from fastdns.wire import PreparedReply, parse_query, prepare_reply, render_prepared

# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

NOW = 5000.0  # monotonic seconds; any value > 0
ALLOW_ALL = [(bytes(4), 0), (bytes(16), 0)]
A_300 = "example.org. 300 IN A 192.0.2.1"
CLIENT = ("192.0.2.7", 53000)


def nets(*cidrs: str) -> list[tuple[bytes, int]]:
    """allowed_networks as HitPath takes them: (packed network address, prefix length)."""
    out = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        out.append((net.network_address.packed, net.prefixlen))
    return out


def peer(host: str = CLIENT[0], port: int = CLIENT[1]) -> bytes:
    return pack_sockaddr((host, port))


def make_hitpath(
    lru: LruCache | None = None,
    *,
    allowed: list[tuple[bytes, int]] | None = None,
    rate_per_s: float = 0.0,
    rate_exempt: list[tuple[bytes, int]] | None = None,
    log: bool = False,
) -> HitPath:
    return HitPath(
        lru if lru is not None else LruCache(1 << 20),
        allowed_networks=ALLOW_ALL if allowed is None else allowed,
        rate_per_s=rate_per_s,
        rate_exempt_networks=rate_exempt,
        log_enabled=log,
        seed=12345,
    )


def query_msg(
    name: str = "example.org",
    rdtype: str = "A",
    *,
    qid: int = 0x1234,
    edns: int | None = None,
    do: bool = False,
) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=do, id=qid)


def query(name: str = "example.org", rdtype: str = "A", **kwargs: object) -> bytes:
    return query_msg(name, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]


def put_reply(
    lru: LruCache,
    *records: str,
    name: str = "example.org",
    rdtype: str = "A",
    do: bool = False,
    now: float = NOW,
) -> PreparedReply:
    """Store the upstream reply for (name, rdtype) as the miss path would, at `now`."""
    q = query_msg(name, rdtype, do=do)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    for text in records:
        owner, ttl, rdclass, rrtype, rdata = text.split(maxsplit=4)
        r.answer.append(dns.rrset.from_text(owner, int(ttl), rdclass, rrtype, rdata))
    prepared = prepare_reply(
        r.to_wire(), min_ttl=0, max_ttl=86400, negative_ttl=300, default_ttl=300
    )
    assert lru.put(
        parse_query(q.to_wire()).key, prepared.wire, prepared.ttl_offsets, now, prepared.lifetime_s
    )
    return prepared


def hitpath_with_entry(**kwargs: object) -> tuple[HitPath, PreparedReply]:
    lru = LruCache(1 << 20)
    prepared = put_reply(lru, A_300)
    return make_hitpath(lru, **kwargs), prepared  # type: ignore[arg-type]


def parse(reply: bytes | None) -> dns.message.Message:
    assert reply, f"expected a reply, got {reply!r}"
    return dns.message.from_wire(reply)


def counters_besides_zero(hp: HitPath) -> dict[str, int]:
    return {name: value for name, value in hp.counters().items() if value}


# ---------------------------------------------------------------------------------------------
# Hits and misses
# ---------------------------------------------------------------------------------------------


def test_hit_returns_the_cached_reply_rendered_for_this_client() -> None:
    hp, prepared = hitpath_with_entry()
    data = query(qid=0x4321)
    reply = hp.answer(data, peer(), False, NOW)
    assert reply == render_prepared(prepared, parse_query(data), 0, True)
    msg = parse(reply)
    assert msg.id == 0x4321
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == [dns.rrset.from_text("example.org.", 300, "IN", "A", "192.0.2.1")]
    assert counters_besides_zero(hp) == {"tcp_queries": 1, "cache_hits": 1}
    assert hp.cache.hits == 1


def test_udp_hit_is_counted_as_a_udp_query() -> None:
    hp, _ = hitpath_with_entry()
    assert parse(hp.answer(query(), peer(), True, NOW)).answer
    assert counters_besides_zero(hp) == {"udp_queries": 1, "cache_hits": 1}


def test_hit_echoes_the_clients_0x20_question() -> None:
    hp, _ = hitpath_with_entry()
    data = query("eXaMPle.oRG")
    reply = hp.answer(data, peer(), False, NOW)
    assert reply is not None
    qlen = len(b"\x07example\x03org\x00") + 4
    assert reply[12 : 12 + qlen] == data[12 : 12 + qlen]


def test_hit_adds_opt_only_for_an_edns_client() -> None:
    hp, _ = hitpath_with_entry()
    assert parse(hp.answer(query(), peer(), True, NOW)).edns == -1
    msg = parse(hp.answer(query(edns=0), peer(), True, NOW))
    assert (msg.edns, msg.payload) == (0, 1232)


def test_hit_ttl_counts_down_from_when_it_was_stored() -> None:
    hp, _ = hitpath_with_entry()
    assert parse(hp.answer(query(), peer(), False, NOW + 100)).answer[0].ttl == 200
    assert parse(hp.answer(query(), peer(), False, NOW + 299.5)).answer[0].ttl == 1


def test_miss_returns_none_and_is_counted() -> None:
    hp, _ = hitpath_with_entry()
    assert hp.answer(query("example.net"), peer(), True, NOW) is None
    assert counters_besides_zero(hp) == {"udp_queries": 1, "cache_misses": 1}


def test_expired_entry_is_a_miss() -> None:
    hp, _ = hitpath_with_entry()
    assert hp.answer(query(), peer(), False, NOW + 300) is None
    assert hp.counters()["cache_misses"] == 1
    assert hp.cache.expirations == 1


def test_do_query_does_not_hit_an_entry_stored_without_do() -> None:
    # The cache key carries DO (DESIGN.md "Cache key"): a DNSSEC client never gets a reply
    # stored for a client that did not ask for signatures.
    hp, _ = hitpath_with_entry()
    assert hp.answer(query(do=True), peer(), False, NOW) is None


def test_hit_larger_than_the_udp_limit_is_truncated_but_whole_over_tcp() -> None:
    lru = LruCache(1 << 20)
    rr = [f"example.org. 300 IN A 192.0.2.{i}" for i in range(1, 41)]  # > 512 octets
    put_reply(lru, *rr)
    hp = make_hitpath(lru)
    udp = parse(hp.answer(query(), peer(), True, NOW))
    assert udp.flags & dns.flags.TC
    assert udp.answer == []
    tcp = parse(hp.answer(query(), peer(), False, NOW))
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 40


# ---------------------------------------------------------------------------------------------
# Drops and protocol errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\x12\x34", query()[:11], bytes([0x12, 0x34, 0x81, 0x80]) + query()[4:]],
    ids=["empty", "two octets", "short header", "response"],
)
def test_packet_not_worth_an_answer_returns_empty_bytes(data: bytes) -> None:
    hp, _ = hitpath_with_entry()
    assert hp.answer(data, peer(), True, NOW) == b""
    assert counters_besides_zero(hp) == {"udp_queries": 1, "dropped": 1}


def notify_query() -> bytes:
    q = query_msg()
    q.set_opcode(dns.opcode.NOTIFY)
    return q.to_wire()


@pytest.mark.parametrize(
    ("data", "rcode", "counter"),
    [
        (query()[:4] + b"\x00\x00" + query()[6:12], dns.rcode.FORMERR, "formerr"),
        (query() + b"\x00", dns.rcode.FORMERR, "formerr"),
        (notify_query(), dns.rcode.NOTIMP, "notimp"),
        (query("example.org", "AXFR"), dns.rcode.REFUSED, "refused"),
        (query(edns=1), dns.rcode.BADVERS, "badvers"),
    ],
    ids=["no question", "trailing bytes", "notify", "axfr", "edns1"],
)
def test_protocol_error_gets_its_rcode_and_counter(data: bytes, rcode: int, counter: str) -> None:
    hp, _ = hitpath_with_entry()
    msg = parse(hp.answer(data, peer(), False, NOW))
    assert msg.id == 0x1234 or counter == "formerr"
    assert msg.rcode() == rcode
    assert counters_besides_zero(hp) == {"tcp_queries": 1, counter: 1}


# ---------------------------------------------------------------------------------------------
# ACL (first guard: a refused client learns nothing but REFUSED)
# ---------------------------------------------------------------------------------------------


def test_client_outside_allowed_networks_is_refused_even_for_a_cached_name() -> None:
    hp, _ = hitpath_with_entry(allowed=nets("10.0.0.0/8"))
    data = query("Example.org", qid=0x0909)
    reply = hp.answer(data, peer("127.0.0.1"), False, NOW)
    msg = parse(reply)
    assert msg.rcode() == dns.rcode.REFUSED
    assert msg.id == 0x0909
    assert msg.answer == []
    assert reply is not None and reply[12:29] == data[12:29]
    assert counters_besides_zero(hp) == {"tcp_queries": 1, "acl_refused": 1}
    assert hp.cache.hits == hp.cache.misses == 0  # the cache was never probed


def test_client_inside_allowed_networks_gets_the_hit() -> None:
    hp, _ = hitpath_with_entry(allowed=nets("10.0.0.0/8"))
    assert parse(hp.answer(query(), peer("10.20.30.40"), False, NOW)).answer
    assert hp.counters()["acl_refused"] == 0


def test_refused_client_gets_refused_even_for_a_malformed_query() -> None:
    hp, _ = hitpath_with_entry(allowed=nets("10.0.0.0/8"))
    msg = parse(hp.answer(query() + b"\x00", peer("127.0.0.1"), False, NOW))
    assert msg.rcode() == dns.rcode.REFUSED
    assert counters_besides_zero(hp) == {"tcp_queries": 1, "acl_refused": 1}


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("192.0.2.1", True),
        ("192.0.2.127", True),
        ("192.0.2.128", False),
        ("198.51.100.1", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::ffff:192.0.2.5", True),  # IPv4-mapped IPv6 is the IPv4 client (RFC 4291 §2.5.5.2)
    ],
)
def test_acl_matches_ipv4_and_ipv6_prefixes(host: str, allowed: bool) -> None:
    hp, _ = hitpath_with_entry(allowed=nets("192.0.2.0/25", "2001:db8::/32"))
    msg = parse(hp.answer(query(), peer(host), False, NOW))
    assert (msg.rcode() == dns.rcode.NOERROR) == allowed


def test_empty_allowed_networks_refuses_everyone() -> None:
    hp, _ = hitpath_with_entry(allowed=[])
    assert parse(hp.answer(query(), peer(), False, NOW)).rcode() == dns.rcode.REFUSED


# ---------------------------------------------------------------------------------------------
# Rate limit (UDP only, keyed on the transport source address)
# ---------------------------------------------------------------------------------------------


def is_slip(reply: bytes | None) -> bool:
    """The rate-limited answer: TC=1, NOERROR, no records (RRL "slip")."""
    msg = parse(reply)
    return bool(msg.flags & dns.flags.TC) and msg.rcode() == 0 and not msg.answer


def test_client_over_its_rate_gets_an_empty_truncated_reply() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=5)
    replies = [hp.answer(query(), peer(), True, NOW) for _ in range(6)]
    assert [is_slip(r) for r in replies] == [False] * 5 + [True]
    assert hp.counters()["rate_limited"] == 1
    assert hp.counters()["cache_hits"] == 5


def test_rate_limited_reply_is_no_larger_than_the_query() -> None:
    # No amplification: a spoofed flood cannot make us send more bytes than we receive.
    hp, _ = hitpath_with_entry(rate_per_s=1)
    for data in (query(), query(edns=0)):
        hp.answer(data, peer(), True, NOW)
        reply = hp.answer(data, peer(), True, NOW)
        assert is_slip(reply)
        assert reply is not None and len(reply) <= len(data)


def test_exempt_networks_are_never_rate_limited_but_others_still_are() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=2, rate_exempt=nets("127.0.0.0/8", "::1/128"))
    for client in ("127.0.0.1", "127.9.9.9", "::1"):
        replies = [hp.answer(query(), peer(client), True, NOW) for _ in range(20)]
        assert not any(is_slip(r) for r in replies), client
    replies = [hp.answer(query(), peer(), True, NOW) for _ in range(3)]
    assert [is_slip(r) for r in replies] == [False, False, True]
    assert hp.counters()["rate_limited"] == 1


def test_tcp_is_never_rate_limited() -> None:
    # TCP proves the source address, so it cannot be used for reflection.
    hp, _ = hitpath_with_entry(rate_per_s=2)
    replies = [hp.answer(query(), peer(), False, NOW) for _ in range(50)]
    assert all(parse(r).answer for r in replies)
    assert hp.counters()["rate_limited"] == 0


def test_tokens_refill_with_time() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=2)
    for _ in range(2):
        hp.answer(query(), peer(), True, NOW)
    assert is_slip(hp.answer(query(), peer(), True, NOW))
    assert not is_slip(hp.answer(query(), peer(), True, NOW + 1))


def test_one_clients_flood_does_not_limit_another() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=2)
    for _ in range(10):
        hp.answer(query(), peer("192.0.2.7"), True, NOW)
    assert not is_slip(hp.answer(query(), peer("192.0.2.8"), True, NOW))


def test_source_port_does_not_pick_a_new_bucket() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=2)
    for port in (1000, 1001):
        hp.answer(query(), peer(port=port), True, NOW)
    assert is_slip(hp.answer(query(), peer(port=1002), True, NOW))


def test_ipv6_clients_in_one_slash_64_share_a_bucket() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=2)
    hp.answer(query(), peer("2001:db8:0:1::1"), True, NOW)
    hp.answer(query(), peer("2001:db8:0:1::2"), True, NOW)
    assert is_slip(hp.answer(query(), peer("2001:db8:0:1:ffff::3"), True, NOW))
    assert not is_slip(hp.answer(query(), peer("2001:db8:0:2::1"), True, NOW))


def test_misses_and_errors_also_spend_tokens() -> None:
    hp, _ = hitpath_with_entry(rate_per_s=2)
    assert hp.answer(query("example.net"), peer(), True, NOW) is None
    assert parse(hp.answer(query() + b"\x00", peer(), True, NOW)).rcode() == dns.rcode.FORMERR
    assert is_slip(hp.answer(query("example.net"), peer(), True, NOW))


# ---------------------------------------------------------------------------------------------
# Counters and query log
# ---------------------------------------------------------------------------------------------


def test_counters_reflect_each_outcome() -> None:
    hp, _ = hitpath_with_entry(allowed=nets("192.0.2.0/24"), rate_per_s=3)
    hp.answer(query(), peer(), True, NOW)  # hit
    hp.answer(query("example.net"), peer(), True, NOW)  # miss
    hp.answer(b"\x00", peer(), True, NOW)  # drop (before any guard)
    hp.answer(query(), peer(), True, NOW)  # hit, last token
    hp.answer(query(), peer(), True, NOW)  # rate limited
    hp.answer(query(), peer("198.51.100.1"), False, NOW)  # ACL
    hp.answer(query("example.org", "AXFR"), peer(), False, NOW)  # refused
    assert counters_besides_zero(hp) == {
        "udp_queries": 5,
        "tcp_queries": 2,
        "cache_hits": 2,
        "cache_misses": 1,
        "dropped": 1,
        "rate_limited": 1,
        "acl_refused": 1,
        "refused": 1,
    }


def test_log_records_client_ip_query_reply_and_cache_hit() -> None:
    hp, _ = hitpath_with_entry(log=True)
    data = query(qid=0x1111)
    reply = hp.answer(data, peer("192.0.2.7"), True, NOW)
    records = hp.drain_log()
    assert len(records) == 1
    wall, ip, q, r, cache_hit, upstream, elapsed_us = records[0]
    assert (ip, q, r, cache_hit, upstream) == ("192.0.2.7", data, reply, True, -1)
    # elapsed_us is measured on the real clock, so only its type is checked here.
    assert isinstance(wall, float) and isinstance(elapsed_us, int)


def test_log_records_ipv6_clients() -> None:
    hp, _ = hitpath_with_entry(log=True)
    hp.answer(query(), peer("2001:db8::53"), False, NOW)
    assert hp.drain_log()[0][1] == "2001:db8::53"


def test_drain_log_empties_the_buffer() -> None:
    hp, _ = hitpath_with_entry(log=True)
    hp.answer(query(), peer(), False, NOW)
    hp.answer(query(), peer(), False, NOW)
    assert len(hp.drain_log()) == 2
    assert hp.drain_log() == []


def test_miss_is_not_logged_by_the_hit_path_but_log_miss_records_it() -> None:
    hp, _ = hitpath_with_entry(log=True)
    data = query("example.net")
    assert hp.answer(data, peer(), True, NOW) is None
    assert hp.drain_log() == []
    hp.log_miss(data, b"reply-bytes", peer("192.0.2.9"), 0.25, 2)
    [(_, ip, q, r, cache_hit, upstream, elapsed_us)] = hp.drain_log()
    assert (ip, q, r, cache_hit, upstream, elapsed_us) == (
        "192.0.2.9",
        data,
        b"reply-bytes",
        False,
        2,
        250_000,
    )


@pytest.mark.parametrize(
    "data",
    [query() + b"\x00", notify_query(), query("example.org", "AXFR"), query(edns=1)],
    ids=["formerr", "notimp", "refused", "badvers"],
)
def test_error_replies_are_logged_as_not_from_cache(data: bytes) -> None:
    hp, _ = hitpath_with_entry(log=True)
    hp.answer(data, peer(), False, NOW)
    [record] = hp.drain_log()
    assert record[4] is False


def test_acl_refusal_and_rate_limit_are_logged_as_not_from_cache() -> None:
    hp, _ = hitpath_with_entry(log=True, allowed=nets("192.0.2.0/24"), rate_per_s=1)
    hp.answer(query(), peer("198.51.100.1"), True, NOW)
    hp.answer(query(), peer(), True, NOW)
    hp.answer(query(), peer(), True, NOW)
    assert [record[4] for record in hp.drain_log()] == [False, True, False]


def test_hit_truncated_for_udp_is_logged_as_from_cache() -> None:
    # The cache answered (cache_hits counts it); only the size made it TC=1.
    lru = LruCache(1 << 20)
    put_reply(lru, *[f"example.org. 300 IN A 192.0.2.{i}" for i in range(1, 41)])
    hp = make_hitpath(lru, log=True)
    assert parse(hp.answer(query(), peer(), True, NOW)).flags & dns.flags.TC
    [record] = hp.drain_log()
    assert record[4] is True
    assert hp.counters()["cache_hits"] == 1


def test_log_disabled_records_nothing() -> None:
    hp, _ = hitpath_with_entry(log=False)
    hp.answer(query(), peer(), False, NOW)
    hp.log_miss(query(), b"x", peer(), 0.1, 0)
    assert hp.drain_log() == []


def test_full_log_buffer_drops_and_counts_instead_of_blocking() -> None:
    hp = HitPath(
        LruCache(1 << 20),
        allowed_networks=ALLOW_ALL,
        rate_per_s=0.0,
        log_enabled=True,
        log_buffer_bytes=256,
    )
    for _ in range(10):
        hp.answer(query() + b"\x00", peer(), False, NOW)  # FORMERR replies are always sent
    kept = len(hp.drain_log())
    assert 0 < kept < 10
    assert hp.counters()["log_dropped"] == 10 - kept


# ---------------------------------------------------------------------------------------------
# No per-call allocation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "udp"),
    [
        (query(), False),
        (query(edns=0), True),
        (query("example.net"), True),
        (query() + b"\x00", False),
    ],
    ids=["tcp hit", "udp hit", "miss", "formerr"],
)
def test_answer_does_not_leak_per_call(data: bytes, udp: bool) -> None:
    hp, _ = hitpath_with_entry()
    client = peer()
    for _ in range(1000):
        hp.answer(data, client, udp, NOW)
    start = sys.getallocatedblocks()
    for _ in range(20_000):
        hp.answer(data, client, udp, NOW)
    assert sys.getallocatedblocks() - start < 50


# ---------------------------------------------------------------------------------------------
# pack_sockaddr
# ---------------------------------------------------------------------------------------------


def test_pack_sockaddr_packs_ipv4_and_ipv6() -> None:
    v4 = pack_sockaddr(("192.0.2.1", 53))
    v6 = pack_sockaddr(("2001:db8::1", 53, 0, 0))
    assert len(v4) == 16 and v4[2:4] == struct.pack("!H", 53) and v4[4:8] == bytes([192, 0, 2, 1])
    assert len(v6) == 28 and v6[2:4] == struct.pack("!H", 53)
    assert v6[8:24] == ipaddress.ip_address("2001:db8::1").packed


def test_pack_sockaddr_ignores_an_ipv6_zone() -> None:
    assert pack_sockaddr(("fe80::1%eth0", 53)) == pack_sockaddr(("fe80::1", 53))


def test_pack_sockaddr_rejects_a_hostname() -> None:
    with pytest.raises(ValueError):
        pack_sockaddr(("example.org", 53))
