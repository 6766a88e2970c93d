"""Cache policy (fastdns.cache.Cache): what is stored and for how long, flush, flush by name
(and type), inspect, statistics. Time comes from a fake clock; nothing sleeps."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from fastdns.cache import Cache, CacheStats, name_to_wire
from fastdns.config import CacheSettings
from fastdns.wire import PreparedReply, parse_query, render_prepared

# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


@dataclass
class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def query(
    name: str = "example.org", rdtype: str = "A", *, do: bool = False, cd: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=do, id=0x1234)
    if cd:
        q.flags |= dns.flags.CD
    return q


def key_of(q: dns.message.Message) -> bytes:
    return parse_query(q.to_wire()).key


def reply_wire(
    q: dns.message.Message,
    *records: str,
    authority: tuple[str, ...] = (),
    rcode: int = dns.rcode.NOERROR,
    tc: bool = False,
) -> bytes:
    """Upstream reply to q; records like 'example.org. 300 IN A 192.0.2.1'."""
    r = dns.message.make_response(q)
    for section, texts in ((r.answer, records), (r.authority, authority)):
        for text in texts:
            name, ttl, rdclass, rdtype, rdata = text.split(maxsplit=4)
            section.append(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata))
    r.set_rcode(dns.rcode.Rcode(rcode))
    if tc:
        r.flags |= dns.flags.TC
    return r.to_wire()


def make_cache(**overrides: object) -> Cache:
    values: dict[str, object] = {"min_ttl": 0, "max_ttl": 86400, "negative_ttl": 300}
    values.update(overrides)
    return Cache(CacheSettings(**values))  # type: ignore[arg-type]


def store(
    cache: Cache, q: dns.message.Message, *records: str, now: float, **kwargs: object
) -> tuple[PreparedReply, bool]:
    prepared = cache.prepare(reply_wire(q, *records, **kwargs))  # type: ignore[arg-type]
    return prepared, cache.store(key_of(q), prepared, now)


SOA = "example.org. 3600 IN SOA ns.example.org. hostmaster.example.org. 1 7200 900 1209600 60"
A_300 = "example.org. 300 IN A 192.0.2.1"


# ---------------------------------------------------------------------------------------------
# What is stored, and for how long
# ---------------------------------------------------------------------------------------------


def test_positive_reply_is_stored_for_its_ttl() -> None:
    clock = FakeClock()
    cache = make_cache()
    q = query()
    _, stored = store(cache, q, A_300, now=clock.now)
    assert stored
    assert cache.lru.get(key_of(q), clock.advance(299)) is not None
    assert cache.lru.get(key_of(q), clock.advance(1)) is None


def test_settings_reach_prepare() -> None:
    cache = make_cache(min_ttl=60, max_ttl=3600)
    assert cache.prepare(reply_wire(query(), "example.org. 10 IN A 192.0.2.1")).lifetime_s == 60
    assert (
        cache.prepare(reply_wire(query(), "example.org. 99999 IN A 192.0.2.1")).lifetime_s == 3600
    )
    nx = reply_wire(query("nope.example.org"), authority=(SOA,), rcode=dns.rcode.NXDOMAIN)
    assert make_cache(negative_ttl=30).prepare(nx).lifetime_s == 30


def test_min_ttl_keeps_the_entry_but_served_ttl_still_counts_down_to_zero() -> None:
    # SPEC §3: TTLs served from cache never exceed what the upstream gave.
    clock = FakeClock()
    cache = make_cache(min_ttl=60)
    q = query()
    prepared, stored = store(cache, q, "example.org. 10 IN A 192.0.2.1", now=clock.now)
    assert stored
    clock.advance(30)
    assert cache.lru.get(key_of(q), clock.now) is not None
    served = dns.message.from_wire(render_prepared(prepared, parse_query(q.to_wire()), 30))
    assert served.answer[0].ttl == 0


@pytest.mark.parametrize(
    ("label", "kwargs"),
    [
        ("SERVFAIL", {"rcode": dns.rcode.SERVFAIL}),
        ("REFUSED", {"rcode": dns.rcode.REFUSED}),
        ("truncated", {"tc": True}),
        ("NXDOMAIN without SOA", {"rcode": dns.rcode.NXDOMAIN}),
    ],
)
def test_uncacheable_reply_is_not_stored(label: str, kwargs: dict[str, object]) -> None:
    cache = make_cache()
    q = query()
    records = (A_300,) if label == "truncated" else ()
    prepared, stored = store(cache, q, *records, now=1000.0, **kwargs)
    assert not prepared.cacheable
    assert not stored
    assert len(cache.lru) == 0


def test_nodata_without_soa_is_not_stored() -> None:
    # RFC 2308 §5.
    cache = make_cache()
    _, stored = store(cache, query(), now=1000.0)
    assert not stored


def test_nxdomain_with_soa_is_stored_for_the_negative_ttl() -> None:
    # RFC 2308 §5: min(SOA TTL 3600, SOA MINIMUM 60, negative_ttl 300) = 60.
    clock = FakeClock()
    cache = make_cache()
    q = query("nope.example.org")
    _, stored = store(cache, q, authority=(SOA,), rcode=dns.rcode.NXDOMAIN, now=clock.now)
    assert stored
    assert cache.lru.get(key_of(q), clock.advance(59)) is not None
    assert cache.lru.get(key_of(q), clock.advance(1)) is None


# ---------------------------------------------------------------------------------------------
# Flush and inspect
# ---------------------------------------------------------------------------------------------


def filled_cache() -> Cache:
    cache = make_cache()
    for name, rdtype, record in [
        ("example.org", "A", A_300),
        ("example.org", "AAAA", "example.org. 300 IN AAAA 2001:db8::1"),
        ("www.example.org", "A", "www.example.org. 300 IN A 192.0.2.2"),
        ("example.net", "A", "example.net. 300 IN A 192.0.2.3"),
    ]:
        assert store(cache, query(name, rdtype), record, now=1000.0)[1]
    assert store(cache, query("example.org", "A", do=True), A_300, now=1000.0)[1]
    assert store(cache, query("example.org", "A", cd=True), A_300, now=1000.0)[1]
    return cache


def test_flush_drops_everything_and_returns_the_count() -> None:
    cache = filled_cache()
    assert cache.flush() == 6
    assert len(cache.lru) == 0
    assert cache.stats().bytes_used == 0


def test_flush_name_drops_every_type_and_do_cd_variant_of_that_name_only() -> None:
    cache = filled_cache()
    assert cache.flush_name("example.org") == 4  # A, AAAA, A+DO, A+CD
    remaining = set(cache.lru.keys())
    assert remaining == {key_of(query("www.example.org")), key_of(query("example.net"))}


def test_flush_name_with_a_qtype_drops_only_that_type() -> None:
    cache = filled_cache()
    assert cache.flush_name("example.org", 28) == 1
    assert cache.inspect("example.org", 28) is None
    assert cache.inspect("example.org", 1) is not None


@pytest.mark.parametrize("spelling", ["EXAMPLE.ORG", "Example.Org.", "  example.org  "])
def test_flush_name_is_case_insensitive_and_accepts_trailing_dot(spelling: str) -> None:
    cache = filled_cache()
    assert cache.flush_name(spelling, 1) == 3  # A, A+DO, A+CD


def test_entry_stored_from_a_mixed_case_query_is_flushed_by_lowercase_name() -> None:
    cache = make_cache()
    assert store(
        cache, query("WwW.Example.ORG"), "www.example.org. 300 IN A 192.0.2.2", now=1000.0
    )[1]
    assert cache.flush_name("www.example.org") == 1


def test_flush_name_does_not_touch_a_parent_or_child_name() -> None:
    cache = filled_cache()
    assert cache.flush_name("org") == 0
    assert cache.flush_name("a.www.example.org") == 0
    assert len(cache.lru) == 6


def test_name_to_wire_lowercases_and_rejects_bad_names() -> None:
    assert name_to_wire("WWW.Example.org.") == b"\x03www\x07example\x03org\x00"
    assert name_to_wire(".") == b"\x00"
    with pytest.raises(ValueError):
        name_to_wire("a" * 64 + ".example.org")
    with pytest.raises(ValueError):
        name_to_wire(".".join(["a" * 63] * 4))


def test_inspect_shows_the_stored_entry_without_counting_a_lookup() -> None:
    cache = make_cache()
    prepared, _ = store(cache, query(), A_300, now=1000.0)
    found = cache.inspect("Example.org", 1)
    assert found == {
        "wire": prepared.wire,
        "ttl_offsets": prepared.ttl_offsets,
        "stored_at": 1000.0,
        "expires_at": 1300.0,
    }
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (0, 0)


def test_inspect_distinguishes_do_and_cd() -> None:
    cache = make_cache()
    store(cache, query(do=True), A_300, now=1000.0)
    assert cache.inspect("example.org", 1) is None
    assert cache.inspect("example.org", 1, do=True) is not None
    assert cache.inspect("example.org", 1, do=True, cd=True) is None


def test_inspect_key_matches_the_query_key() -> None:
    cache = make_cache()
    q = query("example.org", "MX", do=True, cd=True)
    store(cache, q, "example.org. 300 IN MX 10 mail.example.org.", now=1000.0)
    assert cache.inspect("example.org", 15, do=True, cd=True) is not None
    assert key_of(q) == name_to_wire("example.org") + struct.pack("!HHB", 15, 1, 3)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_stats_count_hits_misses_inserts_and_expirations() -> None:
    clock = FakeClock()
    cache = make_cache()
    q = query()
    store(cache, q, A_300, now=clock.now)
    cache.lru.get(key_of(q), clock.advance(1))
    cache.lru.get(key_of(q), clock.advance(1))
    cache.lru.get(key_of(query("example.net")), clock.now)
    cache.lru.get(key_of(q), clock.advance(300))
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.inserts, stats.expirations) == (2, 2, 1, 1)
    assert stats.entries == 0
    assert stats.hit_ratio == pytest.approx(0.5)


def test_stats_report_size_and_bound() -> None:
    cache = make_cache(max_size_mb=1)
    store(cache, query(), A_300, now=1000.0)
    stats = cache.stats()
    assert stats.max_bytes == 1024 * 1024
    assert 0 < stats.bytes_used <= stats.max_bytes
    assert stats.entries == 1


def test_small_cache_evicts_and_counts_it() -> None:
    cache = make_cache(max_size_mb=0.001)  # 1048 bytes: a handful of entries
    for i in range(50):
        name = f"h{i}.example.org"
        store(cache, query(name), f"{name}. 300 IN A 192.0.2.{i}", now=1000.0)
    stats = cache.stats()
    assert stats.evictions > 0
    assert stats.bytes_used <= stats.max_bytes
    assert stats.entries == stats.inserts - stats.evictions


def test_hit_ratio_is_zero_without_lookups() -> None:
    assert make_cache().stats().hit_ratio == 0.0
    assert CacheStats(3, 1, 0, 0, 0, 0, 0, 0).hit_ratio == 0.75


# --- per-domain TTL overrides (SPEC §3) ----------------------------------------------------


def test_ttl_override_sets_the_lifetime_for_the_domain_and_below() -> None:
    cache = Cache(CacheSettings(ttl_overrides={"Example.ORG.": 30, "long.example.net": 7200}))
    assert cache.override_for(name_to_wire("example.org")) == 30
    assert cache.override_for(name_to_wire("a.b.example.org")) == 30
    assert cache.override_for(name_to_wire("notexample.org")) is None
    assert cache.override_for(name_to_wire("x.long.example.net")) == 7200
    assert cache.override_for(name_to_wire("example.net")) is None


def test_ttl_override_replaces_the_clamps_but_served_ttls_stay_at_most_upstreams() -> None:
    query = dns.message.make_query("www.example.org", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("www.example.org.", 300, "IN", "A", "192.0.2.1"))
    short = Cache(CacheSettings(ttl_overrides={"example.org": 30}))
    prepared = short.prepare(reply.to_wire(), name_to_wire("www.example.org"))
    assert prepared.lifetime_s == 30
    assert dns.message.from_wire(prepared.wire).answer[0].ttl == 30

    long = Cache(CacheSettings(max_ttl=600, ttl_overrides={"example.org": 3600}))
    prepared = long.prepare(reply.to_wire(), name_to_wire("www.example.org"))
    assert prepared.lifetime_s == 3600
    assert dns.message.from_wire(prepared.wire).answer[0].ttl == 300

    plain = long.prepare(reply.to_wire(), name_to_wire("www.example.net"))
    assert plain.lifetime_s == 300


def test_ttl_override_with_a_bad_domain_is_a_config_error() -> None:
    from fastdns.config import load_settings
    from fastdns.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"cache": {"ttl_overrides": {"bad..name": 5}}}, environ={})
    assert "cache.ttl_overrides" in str(info.value) and "bad..name" in str(info.value)
