"""`resolver.mode: recursive` against a fake tree of authoritative servers on 127.0.0.x.

Most tests ask a `fastdns serve` process; the few that need what only the resolver's counters
show drive a `Recursor` in this process, against the same tree.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from fastdns._testing import Hierarchy, ServerProcess
from fastdns.resolve.hints import load_root_hints
from fastdns.resolve.question import Question
from fastdns.resolve.recurse import Recursor, name_wire

from . import recursive_config

ROOT, ORG, EXAMPLE, NET, SECOND = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
EXAMPLE_NET = "127.0.0.7"
SERVERS = (ROOT, ORG, EXAMPLE, NET, EXAMPLE_NET)  # the tree's, before a test adds any


@pytest.fixture
def tree() -> Iterator[Hierarchy]:
    """. → org. → example.org. (glue), and . → net. → example.net. (glueless NS in org.)."""
    h = Hierarchy()
    h.zone(".", ROOT)
    h.delegate(ROOT, "org.", {"ns1.org.": ORG})
    h.delegate(ROOT, "net.", {"ns1.net.": NET})
    h.zone("org.", ORG, "ns1 300 IN A 127.0.0.3")
    h.delegate(ORG, "example.org.", {"ns1.example.org.": EXAMPLE})
    h.zone(
        "example.org.", EXAMPLE,
        "ns1 300 IN A 127.0.0.4",
        "www 300 IN A 192.0.2.1",
        "mail 300 IN MX 10 www.example.org.",
        "alias 300 IN CNAME www.example.org.",
        "cross 300 IN CNAME web.example.net.",
        "dangling 300 IN CNAME nothing.example.net.",
        "loop 300 IN CNAME loop.example.net.",
        "deep.sub 300 IN A 192.0.2.9",
        "nsaddr 300 IN A 127.0.0.7",
        "averyveryverylongname 300 IN A 192.0.2.7",  # 29 letters: for DNS 0x20
    )
    h.zone("net.", NET, "ns1 300 IN A 127.0.0.5")
    # Glueless: example.net's server is named in example.org, so net. can give no glue.
    h.delegate(NET, "example.net.", {"nsaddr.example.org.": None})
    h.zone(
        "example.net.", EXAMPLE_NET,
        "web 300 IN A 192.0.2.2",
        "loop 300 IN CNAME loop.example.org.",
    )
    try:
        yield h
    finally:
        h.stop()


Make = Callable[..., ServerProcess]


def _start(server_factory: Make, tree: Hierarchy, tmp_path: Path, **resolver: Any) -> ServerProcess:
    return server_factory(recursive_config(tree, tmp_path, **resolver))


def _ask(server: ServerProcess, name: str, qtype: str = "A", **kw: Any) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0, **kw)
    return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=6)


def _answers(reply: dns.message.Message) -> list[str]:
    return sorted(rr.to_text() for rrset in reply.answer for rr in rrset)


def test_follows_referrals_from_the_root_with_glue(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path)
    reply = _ask(server, "www.example.org")
    assert reply.rcode() == dns.rcode.NOERROR
    assert _answers(reply) == ["192.0.2.1"]
    assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    mx = _ask(server, "mail.example.org", "MX")
    assert _answers(mx) == ["10 www.example.org."]


def test_a_warm_resolver_goes_straight_to_the_closest_zone_cut(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path)
    _ask(server, "www.example.org")
    root_calls, org_calls = tree.server(ROOT).calls, tree.server(ORG).calls
    reply = _ask(server, "mail.example.org", "MX")
    assert reply.rcode() == dns.rcode.NOERROR
    # The delegation to example.org was cached: neither the root nor org. is asked again.
    assert (tree.server(ROOT).calls, tree.server(ORG).calls) == (root_calls, org_calls)


def test_qname_minimisation_reveals_one_label_per_zone(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path)
    assert _answers(_ask(server, "deep.sub.example.org")) == ["192.0.2.9"]
    # RFC 9156: the root learns only "org.", org. only "example.org.".
    assert {q.qname.lower() for q in tree.server(ROOT).queries} == {"org."}
    assert {q.qname.lower() for q in tree.server(ORG).queries} == {"example.org."}


def test_qname_minimisation_can_be_turned_off(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path, qname_minimisation=False)
    assert _answers(_ask(server, "www.example.org")) == ["192.0.2.1"]
    assert [q.qname.lower() for q in tree.server(ROOT).queries] == ["www.example.org."]


def test_queries_to_authoritative_servers_do_not_ask_for_recursion(server_factory, tree,
                                                                   tmp_path):
    server = _start(server_factory, tree, tmp_path)
    _ask(server, "www.example.org")
    queries = tree.server(ROOT).queries + tree.server(EXAMPLE).queries
    assert queries and not any(q.rd_bit for q in queries)


def test_nxdomain_with_the_zone_soa(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path)
    reply = _ask(server, "missing.example.org")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
    nodata = _ask(server, "www.example.org", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].name.to_text() == "example.org."


def test_cname_inside_a_zone_and_across_zones_with_a_glueless_delegation(server_factory, tree,
                                                                         tmp_path):
    server = _start(server_factory, tree, tmp_path)
    assert _answers(_ask(server, "alias.example.org")) == ["192.0.2.1", "www.example.org."]
    # example.net's only server is named in example.org: its address is resolved first.
    reply = _ask(server, "cross.example.org")
    assert reply.rcode() == dns.rcode.NOERROR
    assert _answers(reply) == ["192.0.2.2", "web.example.net."]
    assert any(q.qname.lower() == "nsaddr.example.org." for q in tree.server(EXAMPLE).queries)


def test_dangling_cname_keeps_the_chain_and_says_nxdomain(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path)
    reply = _ask(server, "dangling.example.org")
    # RFC 6604 §2.1: the rcode is that of the last name in the chain.
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert _answers(reply) == ["nothing.example.net."]


def test_cname_loop_across_zones_is_servfail(server_factory, tree, tmp_path):
    server = _start(server_factory, tree, tmp_path)
    reply = _ask(server, "loop.example.org")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert _answers(_ask(server, "www.example.org")) == ["192.0.2.1"]


def test_a_silent_server_among_two_costs_at_most_about_one_retry_interval(
    server_factory, tree, tmp_path
):
    tree.zone("example.org.", SECOND)  # a second server for the zone, with no data
    tree.delegate(ORG, "example.org.", {"ns0.example.org.": SECOND, "ns1.example.org.": EXAMPLE})
    tree.server(SECOND).mode = "silent"
    server = _start(server_factory, tree, tmp_path, qname_minimisation=False)
    # Whichever server is asked first, the answer comes (the client waits up to 6 s; the
    # server's budget is 3 s, the retry interval 0.3 s).
    assert _answers(_ask(server, "www.example.org")) == ["192.0.2.1"]
    assert _answers(_ask(server, "mail.example.org", "MX")) == ["10 www.example.org."]


def test_a_lame_server_is_skipped(server_factory, tree, tmp_path):
    tree.zone("example.org.", SECOND)
    tree.delegate(ORG, "example.org.", {"ns0.example.org.": SECOND, "ns1.example.org.": EXAMPLE})
    tree.server(SECOND).mode = "refused"
    server = _start(server_factory, tree, tmp_path)
    for name in ("www.example.org", "alias.example.org"):
        assert "192.0.2.1" in _answers(_ask(server, name))


def test_every_server_silent_is_servfail_within_the_timeout(server_factory, tree, tmp_path):
    tree.server(EXAMPLE).mode = "silent"
    server = _start(server_factory, tree, tmp_path, timeout_s=1.5)
    # The client waits 6 s; a SERVFAIL (not a client timeout) means the budget held.
    reply = _ask(server, "www.example.org")
    assert reply.rcode() == dns.rcode.SERVFAIL
    # RFC 8914: the reply says why (22: No Reachable Authority).
    ede = [o for o in reply.options if o.otype == dns.edns.EDE]
    assert ede and ede[0].code == 22


def test_check_config_names_a_bad_root_hints_file(tmp_path):
    bad = tmp_path / "hints"
    bad.write_text(". 3600 NS a.root.\n")  # a root server without an address
    config = tmp_path / "c.yaml"
    config.write_text(f"resolver: {{mode: recursive, root_hints: {bad}}}\n")
    done = subprocess.run([sys.executable, "-m", "fastdns", "check-config", str(config)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "resolver.root_hints" in done.stderr and "no A or AAAA" in done.stderr


# -- DNS 0x20 -------------------------------------------------------------------------------

# Questions in the client's own letter case, over every path a reply takes: a direct answer,
# a CNAME inside a zone, one across zones through a glueless delegation, NXDOMAIN, NODATA.
CLIENT_QUESTIONS = [("WwW.ExAmPlE.oRg", "A"), ("mAiL.example.ORG", "MX"),
                    ("aLiAs.Example.Org", "A"), ("CROSS.example.org", "A"),
                    ("Missing.EXAMPLE.org", "A"), ("www.exAMPLE.org", "AAAA")]
# Spelt in random case, 29 letters are never all lowercase by chance (2**-29).
LONG_NAME = "averyveryverylongname.example.org"


def _spelling(reply: dns.message.Message) -> list[str]:
    """Every name and record of a reply as text, letter case included, without TTLs."""
    return [reply.question[0].to_text(), dns.rcode.to_text(reply.rcode())] + [
        f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {sorted(rd.to_text() for rd in r)}"
        for section in (reply.answer, reply.authority) for r in section
    ]


def _tree_queries(tree: Hierarchy) -> list[str]:
    return [q.qname for address in SERVERS for q in tree.server(address).queries]


def _asked_in_random_case_then_lowercase(spellings: list[str]) -> bool:
    """Whether LONG_NAME was asked twice, first in random case, then again in lowercase."""
    mine = [name for name in spellings if name.lower() == LONG_NAME + "."]
    return len(mine) == 2 and mine[0] != mine[0].lower() and mine[1] == mine[1].lower()


def _respelt(reply: dns.message.Message, qname: str) -> dns.message.Message:
    """`reply` with the name in its question spelt `qname` (another letter case)."""
    question = reply.question[0]
    reply.question = [dns.rrset.RRset(dns.name.from_text(qname), question.rdclass,
                                      question.rdtype)]
    return reply


def test_0x20_queries_are_in_random_case_and_clients_get_what_they_get_without(
    server_factory, tree, tmp_path
):
    plain = _start(server_factory, tree, tmp_path)
    without = [_spelling(_ask(plain, name, qtype)) for name, qtype in CLIENT_QUESTIONS]
    assert all(q == q.lower() for q in _tree_queries(tree))  # off: queries in lowercase
    for address in SERVERS:
        tree.server(address).reset_counts()

    mixed = _start(server_factory, tree, tmp_path, use_0x20=True)
    replies = [_ask(mixed, name, qtype) for name, qtype in CLIENT_QUESTIONS]
    # The reply echoes the client's case, and no name in it carries the random case the
    # servers were asked in: it is spelt as the same server gives it without 0x20.
    assert [_spelling(r) for r in replies] == without
    assert replies[0].answer[0].name.to_text() == "WwW.ExAmPlE.oRg."
    letters = "".join(c for q in _tree_queries(tree) for c in q if c.isalpha())
    assert 0.25 < sum(c.isupper() for c in letters) / len(letters) < 0.75, letters
    calls = tree.calls()
    # The same from the cache.
    assert [_spelling(_ask(mixed, name, qtype)) for name, qtype in CLIENT_QUESTIONS] == without
    assert tree.calls() == calls


def test_0x20_rejects_a_reply_in_another_case_and_asks_again_in_lowercase(
    server_factory, tree, tmp_path
):
    asked: list[str] = []

    def forging(query: dns.message.Message) -> dns.message.Message:
        reply = tree.reply(EXAMPLE, query)
        name = query.question[0].name.to_text()
        asked.append(name)
        if name == name.lower():
            return reply
        # The question in another case, with other data: a forgery the case gives away.
        reply.answer = [dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.66")]
        return _respelt(reply, name.swapcase())

    tree.server(EXAMPLE).answer_fn(forging)
    server = _start(server_factory, tree, tmp_path, use_0x20=True)
    assert _answers(_ask(server, LONG_NAME)) == ["192.0.2.7"]
    assert _answers(_ask(server, LONG_NAME)) == ["192.0.2.7"]  # cached
    assert _asked_in_random_case_then_lowercase(asked)


def _spelt_out(reply: dns.message.Message, owner: dns.name.Name) -> bytes:
    """`reply` as a server that compresses no name would send it, the answer's owner spelt
    as `owner` (the question's name in the case it was asked in): header, question, answer."""
    count = sum(len(rrset) for rrset in reply.answer)
    question = reply.question[0]
    wire = struct.pack("!HHHHHH", reply.id, reply.flags, 1, count, 0, 0)
    wire += question.name.to_wire() + struct.pack("!HH", question.rdtype, question.rdclass)
    for rrset in reply.answer:
        for rd in rrset:
            rdata = rd.to_wire()
            wire += owner.to_wire() + struct.pack("!HHIH", rrset.rdtype, rrset.rdclass,
                                                  rrset.ttl, len(rdata)) + rdata
    return wire


def test_0x20_case_echoed_in_a_spelt_out_owner_does_not_reach_clients(
    server_factory, tree, tmp_path
):
    tree.server(EXAMPLE).answer_fn(
        lambda query: _spelt_out(tree.reply(EXAMPLE, query), query.question[0].name)
    )
    server = _start(server_factory, tree, tmp_path, use_0x20=True)
    client_case = "aVeRyVeRyVeRyLoNgNaMe.ExAmPlE.OrG."
    for _ in ("resolved", "cached"):
        reply = _ask(server, client_case)
        assert _answers(reply) == ["192.0.2.7"]
        assert reply.answer[0].name.to_text() == client_case


def _recursor(tree: Hierarchy, directory: Path, **options: Any) -> Recursor:
    """A Recursor in this process, for what only its counters show."""
    return Recursor(load_root_hints(tree.root_hints_path(directory)), timeout_s=5.0,
                    retry_interval_s=0.3, query_loopback=True, nameserver_port=tree.port,
                    **options)


def _question(name: str, qtype: str = "A") -> Question:
    return Question(name_wire(dns.name.from_text(name)), dns.rdatatype.from_text(qtype),
                    dns.rdataclass.IN)


def test_0x20_falls_back_to_lowercase_for_servers_that_do_not_keep_case(tree, tmp_path):
    tree.server(EXAMPLE).answer_fn(
        lambda query: _respelt(tree.reply(EXAMPLE, query),
                               query.question[0].name.to_text().lower())
    )
    recursor = _recursor(tree, tmp_path, use_0x20=True)
    answer = asyncio.run(recursor.resolve(_question(LONG_NAME)))
    reply = dns.message.from_wire(answer.reply_wire)
    assert _answers(reply) == ["192.0.2.7"]
    assert recursor.case_fallbacks == 1
    assert _asked_in_random_case_then_lowercase([q.qname for q in tree.server(EXAMPLE).queries])


# -- the recursor's own lookups, shared while in flight --------------------------------------


def test_questions_under_a_cold_glueless_delegation_share_its_ns_address_lookup(
    server_factory, tree, tmp_path
):
    # Slow enough that every question reaches the glueless delegation of example.net while
    # the address of its server, nsaddr.example.org, is still being looked up.
    tree.server(EXAMPLE).delay_s = 0.2
    server = _start(server_factory, tree, tmp_path)
    names = [f"n{i}.example.net" for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda name: _ask(server, name), names))
    assert [r.rcode() for r in replies] == [dns.rcode.NXDOMAIN] * len(names)
    asked = Counter(q.qtype for q in tree.server(EXAMPLE).queries
                    if q.qname.lower() == "nsaddr.example.org.")
    assert asked == {"A": 1}


def test_a_delegation_loop_across_two_questions_in_flight_is_servfail_not_a_wait(
    server_factory, tree, tmp_path
):
    # a.example.org's server is named in b.example.net and b.example.net's in a.example.org.
    # Asked together, each question looks up the other zone's server name: neither lookup
    # may wait on the other (the client gives up long before the resolver's 30 s).
    tree.delegate(EXAMPLE, "a.example.org.", {"ns.b.example.net.": None})
    tree.delegate(EXAMPLE_NET, "b.example.net.", {"ns.a.example.org.": None})
    for address in (EXAMPLE, EXAMPLE_NET):
        tree.server(address).delay_s = 0.1
    server = _start(server_factory, tree, tmp_path, timeout_s=30.0)
    names = ["www.a.example.org", "www.b.example.net"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda name: _ask(server, name), names))
    assert [r.rcode() for r in replies] == [dns.rcode.SERVFAIL] * 2
    for reply in replies:
        (ede,) = [o for o in reply.options if o.otype == dns.edns.EDE]
        assert "delegation loop" in str(ede.text)


def test_a_cancelled_lookup_does_not_fail_the_questions_that_joined_it(tree, tmp_path):
    tree.server(EXAMPLE).delay_s = 0.2  # keeps the lookup of nsaddr.example.org in flight
    recursor = _recursor(tree, tmp_path)

    async def until(condition: Callable[[], int]) -> None:
        while not condition():
            await asyncio.sleep(0.01)

    async def go() -> dns.message.Message:
        first = asyncio.ensure_future(recursor.resolve(_question("web.example.net")))
        await asyncio.wait_for(until(lambda: recursor.lookups.started), 10)
        second = asyncio.ensure_future(recursor.resolve(_question("web.example.net", "AAAA")))
        await asyncio.wait_for(until(lambda: recursor.lookups.joined), 10)
        first.cancel()
        answer = await second
        assert first.cancelled()
        return dns.message.from_wire(answer.reply_wire)

    reply = asyncio.run(go())
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer  # NODATA
    assert recursor.lookups.taken_over == 1


# -- servers that do not know EDNS -----------------------------------------------------------


def _without_edns(tree: Hierarchy, address: str) -> Callable[[dns.message.Message], Any]:
    """The server at `address` as one that predates EDNS: FORMERR, with no OPT, to any query
    that carries one (RFC 6891 §7), and its usual answer to the rest."""
    def reply(query: dns.message.Message) -> dns.message.Message:
        if query.edns >= 0:
            formerr = dns.message.make_response(query)
            formerr.use_edns(False)
            formerr.set_rcode(dns.rcode.FORMERR)
            return formerr
        return tree.reply(address, query)
    return reply


def test_a_server_without_edns_is_asked_again_without_it(tree, tmp_path):
    tree.server(EXAMPLE).answer_fn(_without_edns(tree, EXAMPLE))
    recursor = _recursor(tree, tmp_path)
    answer = asyncio.run(recursor.resolve(_question("www.example.org.")))
    reply = dns.message.from_wire(answer.reply_wire)
    assert _answers(reply) == ["192.0.2.1"]
    assert recursor.edns_fallbacks == 1
    asked = [(q.qname, q.has_edns) for q in tree.server(EXAMPLE).queries]
    assert asked == [("www.example.org.", True), ("www.example.org.", False)]


def test_a_formerr_that_carries_an_opt_is_not_an_edns_problem(tree, tmp_path):
    def formerr_with_opt(query: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.set_rcode(dns.rcode.FORMERR)
        return reply  # make_response echoes EDNS: the server knows it
    tree.server(EXAMPLE).answer_fn(formerr_with_opt)
    recursor = _recursor(tree, tmp_path)
    with pytest.raises(Exception, match="example.org"):
        asyncio.run(recursor.resolve(_question("www.example.org.")))
    assert recursor.edns_fallbacks == 0
    assert all(q.has_edns for q in tree.server(EXAMPLE).queries)
