"""Root hints: the name servers iterative resolution starts from.

Owns reading a hints file in named.root format (the IANA file: `. NS a.root-servers.net.` and
the servers' A/AAAA records) and the built-in copy of IANA's hints. Must not: send queries
(priming the hints is the recursor's business) or decide which addresses may be asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import dns.exception
import dns.name
import dns.rdatatype
import dns.zonefile

# IANA named.root (https://www.internic.net/domain/named.root), last changed 2023-11 when
# b.root-servers.net was renumbered. Addresses only: the names come from the NS set.
_IANA_ROOT_SERVERS = (
    ("a", "198.41.0.4", "2001:503:ba3e::2:30"),
    ("b", "170.247.170.2", "2801:1b8:10::b"),
    ("c", "192.33.4.12", "2001:500:2::c"),
    ("d", "199.7.91.13", "2001:500:2d::d"),
    ("e", "192.203.230.10", "2001:500:a8::e"),
    ("f", "192.5.5.241", "2001:500:2f::f"),
    ("g", "192.112.36.4", "2001:500:12::d0d"),
    ("h", "198.97.190.53", "2001:500:1::53"),
    ("i", "192.36.148.17", "2001:7fe::53"),
    ("j", "192.58.128.30", "2001:503:c27::2:30"),
    ("k", "193.0.14.129", "2001:7fd::1"),
    ("l", "199.7.83.42", "2001:500:9f::42"),
    ("m", "202.12.27.33", "2001:dc3::35"),
)


class RootServer(NamedTuple):
    """One root name server: its name and every address the hints give for it."""

    name: dns.name.Name
    addresses: tuple[str, ...]


def builtin_root_hints() -> list[RootServer]:
    """IANA's thirteen root servers with their IPv4 and IPv6 addresses."""
    return [
        RootServer(dns.name.from_text(f"{letter}.root-servers.net."), (v4, v6))
        for letter, v4, v6 in _IANA_ROOT_SERVERS
    ]


def load_root_hints(path: str | Path | None) -> list[RootServer]:
    """The root servers from a named.root-format file, or the built-in IANA hints for None.

    Raises ValueError naming the file for anything unusable: unreadable, not zone-file
    syntax, no NS records for the root, or root servers without an address.
    """
    if path is None:
        return builtin_root_hints()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"root hints {path}: cannot read: {exc}") from exc
    try:
        # IANA's named.root leaves the class out; `dig . NS` output writes IN: read both.
        rrsets = dns.zonefile.read_rrsets(
            text, origin=dns.name.root, relativize=False, rdclass=None
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"root hints {path}: {exc}") from exc
    ns_names: list[dns.name.Name] = []
    addresses: dict[dns.name.Name, list[str]] = {}
    for rrset in rrsets:
        if rrset.rdtype == dns.rdatatype.NS and rrset.name == dns.name.root:
            ns_names += [rd.target for rd in rrset if rd.target not in ns_names]
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses.setdefault(rrset.name, []).extend(rd.address for rd in rrset)
    if not ns_names:
        raise ValueError(f"root hints {path}: no NS records for the root zone '.'")
    servers = [RootServer(n, tuple(addresses.get(n, ()))) for n in ns_names]
    if not any(s.addresses for s in servers):
        raise ValueError(f"root hints {path}: no A or AAAA record for any root server")
    return [s for s in servers if s.addresses]
