"""What the miss path hands a resolve stage, and what it gets back.

Owns the `Question` value object handed from the miss path to the stages (wire-format data
the caller has already parsed and lowercased) and the `Answer` every stage returns. Does no
parsing, no I/O and no validation beyond what the tuples give.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import dns.message

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


class Answer(NamedTuple):
    """A stage's reply to one question (a NamedTuple: one per miss)."""

    reply_wire: bytes  # a whole DNS response to the question, as `Cache.prepare` takes it
    upstream: str  # who gave it: "host:port", "[v6]:port" for IPv6
    authentic: bool = False  # DNSSEC-validated as secure: AD for clients that ask (RFC 4035)
    max_ttl_s: int | None = None  # how long the validation verdict holds, if shorter
    # The same reply already parsed, when the stage built it from a dnspython message: the
    # validator takes it instead of parsing `reply_wire` again. The stage keeps no reference.
    message: dns.message.Message | None = None
