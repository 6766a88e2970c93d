"""The question a resolve stage answers: name, type, class and the client's DO/CD bits.

Owns the `Question` value object handed from the miss path to the stages. It holds wire-format
data the caller has already parsed and lowercased; it does no parsing, no I/O and no validation
beyond what the tuple gives.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_QTYPE_QCLASS = struct.Struct("!HH")


class Question(NamedTuple):
    """One question to resolve upstream; immutable, hashable, so it can key in-flight maps.

    A NamedTuple rather than a frozen dataclass: one is built per cache miss, and a tuple is
    built in one step where a frozen dataclass pays an `object.__setattr__` per field.
    """

    qname_wire: bytes  # uncompressed wire name, lowercased by the caller: b"\x07example\x03org\x00"
    qtype: int
    qclass: int
    do: bool = False  # client set EDNS DO -> ask upstream with DO (RFC 3225 §3)
    cd: bool = False  # client set CD -> forward CD (RFC 4035 §3.2.2)

    @property
    def question_bytes(self) -> bytes:
        """The question section entry as it goes on the wire: qname, qtype, qclass."""
        return self.qname_wire + _QTYPE_QCLASS.pack(self.qtype, self.qclass)
