"""Exceptions fastdns raises, one class per failure. Each protocol error carries the rcode it maps to."""

from __future__ import annotations

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5


class FastdnsError(Exception):
    """Base class of every fastdns error."""


class ConfigError(FastdnsError):
    """The configuration is invalid; `messages` lists every problem, each naming its key."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = list(messages)


class ResolveError(FastdnsError):
    """A question could not be answered from upstream; the client gets SERVFAIL."""

    rcode = RCODE_SERVFAIL


class UpstreamTimeout(ResolveError):
    """No upstream answered within the resolution budget."""


class UpstreamFailed(ResolveError):
    """Every upstream that answered said SERVFAIL/REFUSED, or sent nothing usable."""


class QnameCaseMismatch(UpstreamFailed):
    """A reply echoed the question in another letter case than the query's (DNS 0x20): the
    server does not preserve case, or the reply is forged."""
