"""Validating stage: DNSSEC over whatever resolves (forwarder or recursor), RFC 4035 §4-5.

Owns what a verdict means for the client: the inner stage is asked with DO=1 and CD=1 so the
signatures and denial proofs come back unfiltered; a servable verdict is cached with the data
(AD when secure, its lifetime capped by the verdict's), a bogus one becomes SERVFAIL with an
Extended DNS Error (RFC 8914) saying why. CD=1 clients get the data unvalidated (RFC 4035
§3.2.2); clients without DO get no RRSIG/NSEC/NSEC3 they did not ask for (§3.2.1).
Must not: validate anything itself (`dnssec.Validator` does) or touch the cache.
"""

from __future__ import annotations

from typing import Protocol

import dns.exception
import dns.message
import dns.name
import dns.rdataclass

from fastdns.errors import ResolveError
from fastdns.resolve.dnssec import EDE_DNSSEC_BOGUS, Fetch, Security, Validator
from fastdns.resolve.question import Answer, Question
from fastdns.resolve.recurse import name_wire, without_dnssec_records


class DnssecBogus(ResolveError):
    """The answer failed validation; `ede` is the RFC 8914 code sent with the SERVFAIL."""

    def __init__(self, message: str, ede: int) -> None:
        super().__init__(message)
        self.ede = ede


class _Inner(Protocol):
    name: str

    async def resolve(self, q: Question, budget_s: float | None = None) -> Answer: ...


class ValidatingStage:
    """Validate the answers of `inner` with `validator` before they are cached and served."""

    name = "dnssec"

    def __init__(self, inner: _Inner, validator: Validator) -> None:
        self._inner = inner
        self._validator = validator

    async def resolve(self, q: Question, budget_s: float | None = None) -> Answer:
        answer = await self._inner.resolve(q._replace(do=True, cd=True), budget_s)
        message = answer.message
        if message is None:
            try:
                message = dns.message.from_wire(answer.reply_wire)
            except (dns.exception.DNSException, ValueError) as exc:
                raise ResolveError(f"unparsable reply from {answer.upstream}: {exc}") from exc
        if q.cd:
            return self._for_client(q, message, answer, authentic=False, ttl_s=None)
        verdict = await self._validator.validate(message)
        if not verdict.servable:
            raise DnssecBogus(verdict.reason, verdict.ede if verdict.ede is not None
                              else EDE_DNSSEC_BOGUS)
        return self._for_client(q, message, answer, verdict.security is Security.SECURE,
                                verdict.ttl_s)

    @staticmethod
    def _for_client(q: Question, message: dns.message.Message, answer: Answer, authentic: bool,
                    ttl_s: int | None) -> Answer:
        wire = answer.reply_wire
        if not q.do:
            without_dnssec_records(message, q.qtype)
            wire = message.to_wire()
        return Answer(wire, answer.upstream, authentic, ttl_s)


def forwarding_fetch(inner: _Inner, timeout_s: float) -> Fetch:
    """A validator `fetch` that asks the forwarder (DO=1, CD=1) for DS and DNSKEY."""

    async def fetch(name: dns.name.Name, rdtype: int) -> dns.message.Message:
        q = Question(name_wire(name), rdtype, dns.rdataclass.IN, True, True)
        answer = await inner.resolve(q, timeout_s)
        return dns.message.from_wire(answer.reply_wire)

    return fetch
