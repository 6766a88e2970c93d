"""What the recursor remembers between questions: name servers and the data that leads to them.

Owns three bounded, TTL-aware stores, like Unbound's infra and rrset caches:
  - `ServerInfo`: per name-server address, smoothed RTT and timeouts; per (zone, address),
    lameness (REFUSED, SERVFAIL, answers for the wrong zone), remembered for `LAME_TTL_S`;
  - `Delegations`: zone cuts (zone -> NS names) and name-server addresses (from glue or from
    authoritative answers), so a warm resolver goes straight to the closest known cut;
  - `MessageCache`: whole responses the recursor fetched for itself (name-server addresses,
    DS and DNSKEY for the validator), as wire bytes, served with their TTLs counted down.
Must not: send queries, judge responses or decide what is in bailiwick (the recursor does).

Time is `now`, monotonic seconds, passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, NamedTuple, TypeVar

import dns.message
import dns.name

# RFC 6298-style smoothing of RTT samples per server (the weight BIND and Unbound use too).
SRTT_SAMPLE_WEIGHT = 0.3
# How long a server that was lame for a zone is asked only after every other one (Unbound's
# infra-lame-ttl is 900 s).
LAME_TTL_S = 900.0
# How long a timed-out server keeps its pessimistic RTT before it is tried as if new again.
TIMEOUT_MEMORY_S = 900.0

K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """A dict with LRU eviction past `max_entries` (OrderedDict keeps the recency order)."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._max = max_entries

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class _Server:
    __slots__ = ("srtt_s", "timeouts", "updated_at")

    def __init__(self) -> None:
        self.srtt_s: float | None = None
        self.timeouts = 0
        self.updated_at = 0.0


class ServerInfo:
    """RTT and lameness of name servers by address ("host:port")."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._servers: _Bounded[str, _Server] = _Bounded(max_entries)
        self._lame: _Bounded[tuple[dns.name.Name, str], float] = _Bounded(max_entries)

    def record_rtt(self, address: str, rtt_s: float, now: float) -> None:
        server = self._server(address)
        if server.srtt_s is None or server.timeouts:
            server.srtt_s = rtt_s
        else:
            server.srtt_s += SRTT_SAMPLE_WEIGHT * (rtt_s - server.srtt_s)
        server.timeouts = 0
        server.updated_at = now

    def record_timeout(self, address: str, waited_s: float, now: float) -> None:
        server = self._server(address)
        server.timeouts += 1
        if server.srtt_s is None or waited_s > server.srtt_s:
            server.srtt_s = waited_s
        server.updated_at = now

    def record_lame(self, zone: dns.name.Name, address: str, now: float) -> None:
        self._lame.put((zone, address), now + LAME_TTL_S)

    def is_lame(self, zone: dns.name.Name, address: str, now: float) -> bool:
        until = self._lame.get((zone, address))
        if until is None:
            return False
        if now >= until:
            self._lame.pop((zone, address))
            return False
        return True

    def sort_key(self, address: str, now: float) -> float:
        """Smaller is better: the smoothed RTT; unknown (or long forgotten) servers first."""
        server = self._servers.get(address)
        if server is None or server.srtt_s is None:
            return 0.0
        if server.timeouts and now - server.updated_at > TIMEOUT_MEMORY_S:
            return 0.0
        return server.srtt_s

    def snapshot(self, address: str) -> tuple[float | None, int]:
        """(srtt_s, consecutive timeouts) of one server, for statistics and tests."""
        server = self._servers.get(address)
        return (None, 0) if server is None else (server.srtt_s, server.timeouts)

    def _server(self, address: str) -> _Server:
        server = self._servers.get(address)
        if server is None:
            server = _Server()
            self._servers.put(address, server)
        return server


class Delegation(NamedTuple):
    """A zone cut: the zone and the names of its servers, valid until `expires_at`."""

    zone: dns.name.Name
    ns_names: tuple[dns.name.Name, ...]
    expires_at: float


class Delegations:
    """Known zone cuts and name-server addresses, each kept for its TTL."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._zones: _Bounded[dns.name.Name, Delegation] = _Bounded(max_entries)
        self._addresses: _Bounded[dns.name.Name, tuple[tuple[str, ...], float]] = _Bounded(
            max_entries
        )

    def put_zone(
        self, zone: dns.name.Name, ns_names: tuple[dns.name.Name, ...], ttl_s: float, now: float
    ) -> None:
        self._zones.put(zone, Delegation(zone, ns_names, now + ttl_s))

    def zone(self, zone: dns.name.Name, now: float) -> Delegation | None:
        found = self._zones.get(zone)
        if found is None or now >= found.expires_at:
            return None
        return found

    def put_addresses(
        self, name: dns.name.Name, addresses: tuple[str, ...], ttl_s: float, now: float
    ) -> None:
        old = self.addresses(name, now)
        merged = tuple(dict.fromkeys(old + addresses)) if old else addresses
        self._addresses.put(name, (merged, now + ttl_s))

    def addresses(self, name: dns.name.Name, now: float) -> tuple[str, ...]:
        found = self._addresses.get(name)
        if found is None or now >= found[1]:
            return ()
        return found[0]

    def closest(self, name: dns.name.Name, now: float) -> Delegation | None:
        """The deepest known, unexpired zone cut at or above `name` (None: only the root hints)."""
        while True:
            found = self.zone(name, now)
            if found is not None:
                return found
            if name == dns.name.root:
                return None
            name = name.parent()


class MessageCache:
    """Responses fetched for the recursor's own use, by (name, type); TTLs count down."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: _Bounded[tuple[dns.name.Name, int], tuple[bytes, float, float]] = (
            _Bounded(max_entries)
        )

    def put(self, name: dns.name.Name, rdtype: int, wire: bytes, ttl_s: float,
            now: float) -> None:
        if ttl_s > 0:
            self._entries.put((name, rdtype), (wire, now, now + ttl_s))

    def get(self, name: dns.name.Name, rdtype: int, now: float) -> dns.message.Message | None:
        found = self._entries.get((name, rdtype))
        if found is None:
            return None
        wire, stored_at, expires_at = found
        if now >= expires_at:
            self._entries.pop((name, rdtype))
            return None
        message = dns.message.from_wire(wire)
        age = int(now - stored_at)
        if age:
            for section in (message.answer, message.authority, message.additional):
                for rrset in section:
                    rrset.ttl = max(0, rrset.ttl - age)
        return message
