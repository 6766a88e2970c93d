"""A fake DNS tree for recursive-mode tests: authoritative servers on 127.0.0.x, one shared port.

Owns `Hierarchy`: each server is a `FakeUpstream` on its own loopback address (referrals carry
addresses only, so every server listens on the same port, the one the recursor is told to
use). A server answers authoritatively (AA=1) from its zones' records, refers (AA=0, NS in
authority, glue in additional) for names at or below a delegation it holds, and REFUSES
names outside its zones, as NSD does. It writes the root-hints file for `resolver.root_hints`.
Must not: bind or send anywhere but loopback (FakeUpstream enforces it).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from fastdns._testing.fake_upstream import FakeUpstream, free_port

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Hierarchy"]

REFERRAL_TTL_S = 3600


class _Server:
    """One authoritative server: its zones and the delegations it refers to."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.zones: list[dns.name.Name] = []
        # child zone -> [(NS name, glue address or None)]
        self.delegations: dict[dns.name.Name, list[tuple[dns.name.Name, str | None]]] = {}
        fake.answer_fn(self._reply)

    def _reply(self, query: dns.message.Message) -> dns.message.Message:
        qname = query.question[0].name
        zone = max((z for z in self.zones if qname.is_subdomain(z)), key=len, default=None)
        if zone is None:
            reply = dns.message.make_response(query)
            reply.flags &= ~dns.flags.RA
            reply.set_rcode(dns.rcode.REFUSED)
            return reply
        cut = max(
            (c for c in self.delegations if qname.is_subdomain(c) and c.is_subdomain(zone)
             and c != zone and not any(c.is_subdomain(z) and z != zone and z.is_subdomain(c)
                                       for z in self.zones)),
            key=len, default=None,
        )
        is_ds_at_cut = cut == qname and query.question[0].rdtype == dns.rdatatype.DS
        if cut is None or is_ds_at_cut:
            reply = self.fake.build_answer(query)
            reply.flags &= ~dns.flags.RA
            return reply
        # RFC 1034 §4.3.2 step 3b: a referral to the child's servers, glue in additional.
        reply = dns.message.make_response(query)
        reply.flags &= ~(dns.flags.RA | dns.flags.AA)
        ns = dns.rrset.RRset(cut, dns.rdataclass.IN, dns.rdatatype.NS)
        ns.update_ttl(REFERRAL_TTL_S)
        for ns_name, address in self.delegations[cut]:
            ns.add(dns.rdata.from_text("IN", "NS", ns_name.to_text()))
            if address is not None:
                glue = dns.rrset.from_text(ns_name, REFERRAL_TTL_S, "IN", "A", address)
                reply.additional.append(glue)
        reply.authority.append(ns)
        return reply


class Hierarchy:
    """Authoritative servers for a tree of zones, built by a test.

    ```
    h = Hierarchy()
    h.zone(".", "127.0.0.2").delegate(".", "org.", {"ns1.org.": "127.0.0.3"})
    h.zone("org.", "127.0.0.3", "example 300 IN A 192.0.2.1")
    h.root_hints_path(tmp_path)  # then resolver: {root_hints: ..., nameserver_port: h.port}
    ```
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self._servers: dict[str, _Server] = {}
        self._root: list[tuple[str, str]] = []  # (root server name, address)

    def server(self, address: str) -> FakeUpstream:
        """The fake at `address` (started on first use), e.g. to set `.mode = "silent"`."""
        server = self._servers.get(address)
        if server is None:
            server = self._servers[address] = _Server(
                FakeUpstream(host=address, port=self.port).start()
            )
        return server.fake

    def zone(self, origin: str, address: str, *records: str) -> Self:
        """Serve zone `origin` from `address` with `records` (zone-file lines, relative names
        allowed) and a SOA; the root zone's servers become the root hints."""
        apex = dns.name.from_text(origin)
        fake = self.server(address)
        server = self._servers[address]
        if apex not in server.zones:
            server.zones.append(apex)
        mname = dns.name.Name((b"ns",) + apex.labels)
        rname = dns.name.Name((b"hostmaster",) + apex.labels)
        fake.zone_soa(f"{apex} 300 IN SOA {mname} {rname} 1 3600 600 86400 60")
        if records:
            fake.answer(*(_absolute(r, apex) for r in records))
        if apex == dns.name.root:
            self._root.append((f"ns-{address}.root.", address))
        return self

    def delegate(self, parent_address: str, child: str,
                 servers: dict[str, str | None]) -> Self:
        """Make the server at `parent_address` refer `child` to `servers` (NS name → glue
        address, or None for no glue: the delegation is then glueless there)."""
        self.server(parent_address)
        self._servers[parent_address].delegations[dns.name.from_text(child)] = [
            (dns.name.from_text(n), a) for n, a in servers.items()
        ]
        return self

    def root_hints_path(self, directory: Path) -> Path:
        path = directory / "root.hints"
        lines = [f".  3600000  NS  {name}" for name, _ in self._root]
        lines += [f"{name}  3600000  A  {address}" for name, address in self._root]
        path.write_text("\n".join(lines) + "\n")
        return path

    def calls(self) -> int:
        return sum(s.fake.calls for s in self._servers.values())

    def stop(self) -> None:
        for server in self._servers.values():
            server.fake.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _absolute(record: str, origin: dns.name.Name) -> str:
    owner, _, rest = record.strip().partition(" ")
    if owner == "@":
        return f"{origin} {rest}"
    if owner.endswith("."):
        return record
    return f"{owner}.{origin} {rest}"
