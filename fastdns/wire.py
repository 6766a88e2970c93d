"""Public face of the compiled wire-format module (`fastdns._wire`).

The rest of fastdns imports wire handling from here, never from `_wire` directly. If the
extension was not built, this import fails loudly: there is no pure-Python fallback. The few
helpers written here in Python serve the miss path only (e.g. Extended DNS Errors).
"""

import struct

from fastdns._wire import (
    ParsedQuery,
    PreparedReply,
    WireError,
    parse_query,
    prepare_reply,
    render_error,
    render_prepared,
)

# Parse outcomes (mirror the C enum in _wire.pxd).
PARSE_OK = 0
PARSE_DROP = 1
PARSE_FORMERR = 2
PARSE_NOTIMP = 3
PARSE_REFUSED = 4
PARSE_BADVERS = 5

QTYPE_A = 1
QTYPE_NS = 2
QTYPE_CNAME = 5
QTYPE_SOA = 6
QTYPE_PTR = 12
QTYPE_MX = 15
QTYPE_TXT = 16
QTYPE_AAAA = 28
QTYPE_SRV = 33
QTYPE_OPT = 41
QTYPE_ANY = 255

QCLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16

EDNS_OPTION_EDE = 15  # RFC 8914 §2
_OPT_TAIL = struct.Struct("!BHHIH")  # root owner, TYPE, CLASS, TTL, RDLENGTH (RFC 6891 §6.1.2)
_EDE_HEADER = struct.Struct("!HHH")  # OPTION-CODE, OPTION-LENGTH, INFO-CODE


def with_extended_error(reply: bytes, info_code: int, extra_text: str = "") -> bytes:
    """`reply` (as `render_error` makes it: an empty OPT last) with an Extended DNS Error
    option added to that OPT (RFC 8914). A reply without a trailing empty OPT is returned
    as it is: EDE needs EDNS, and we never edit records we did not write."""
    tail = len(reply) - _OPT_TAIL.size
    if tail < 12:
        return reply
    owner, rrtype, _, _, rdlength = _OPT_TAIL.unpack_from(reply, tail)
    if owner != 0 or rrtype != QTYPE_OPT or rdlength != 0:
        return reply
    text = extra_text.encode("utf-8", "replace")
    option = _EDE_HEADER.pack(EDNS_OPTION_EDE, 2 + len(text), info_code) + text
    return reply[:-2] + struct.pack("!H", len(option)) + option


__all__ = [
    "ParsedQuery",
    "PreparedReply",
    "WireError",
    "parse_query",
    "prepare_reply",
    "render_error",
    "render_prepared",
    "with_extended_error",
]
