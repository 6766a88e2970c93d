"""Public face of the compiled wire-format module (`fastdns._wire`).

The rest of fastdns imports wire handling from here, never from `_wire` directly. If the
extension was not built, this import fails loudly: there is no pure-Python fallback.
"""

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

__all__ = [
    "ParsedQuery",
    "PreparedReply",
    "WireError",
    "parse_query",
    "prepare_reply",
    "render_error",
    "render_prepared",
]
