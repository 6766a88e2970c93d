"""Trust anchors for DNSSEC validation: the built-in root KSKs, or the records in a file.

Owns reading an anchor file in the forms operators already have: zone-file DS or DNSKEY records
(`dnssec-dsfromkey` output, a `K*.key` file, Unbound's `root.key`), or BIND's
`trust-anchors { ... };` clause (also the older `managed-keys` and `trusted-keys`), as in
BIND's `bind.keys`. Every problem is a ValueError that names the file and the line.
Must not: validate anything, or fetch anchors from the network (RFC 5011 updates are not done).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import dns.exception
import dns.name
import dns.rdatatype
import dns.rrset
import dns.zonefile

# The IANA root zone KSK DS records (https://data.iana.org/root-anchors/root-anchors.xml):
# KSK-2017 (tag 20326) and KSK-2024 (tag 38696).
ROOT_ANCHORS_TEXT = """\
. 172800 IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. 172800 IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
"""

# TTL given to anchor records written without one; an anchor does not expire by its TTL.
ANCHOR_TTL_S = 86_400

# BIND's anchor clauses, and what each entry's keyword makes of it (trusted-keys has none).
_BIND_CLAUSE = re.compile(r"\b(trust-anchors|managed-keys|trusted-keys)\s*\{", re.IGNORECASE)
_BIND_KEYWORDS = {
    "initial-key": "DNSKEY",
    "static-key": "DNSKEY",
    "initial-ds": "DS",
    "static-ds": "DS",
}
_BIND_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*|#[^\n]*", re.DOTALL)


def load_trust_anchors(path: str | None) -> list[dns.rrset.RRset]:
    """Trust anchors: the built-in IANA root DS records, or the DS/DNSKEY records in `path`.

    The file is either zone-file text with absolute owner names (parentheses may continue a
    record, `;` starts a comment) or a BIND `trust-anchors`/`managed-keys`/`trusted-keys`
    clause. Raises ValueError naming the file and line on a bad or empty file.
    """
    if path is None:
        return _parse_anchors(_zone_records(ROOT_ANCHORS_TEXT), "<built-in root anchors>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read trust anchors: {exc}") from exc
    if _BIND_CLAUSE.search(_BIND_COMMENT.sub(_blank_keeping_lines, text)):
        return _parse_anchors(_bind_records(text, path), path)
    return _parse_anchors(_zone_records(text), path)


def _blank_keeping_lines(match: re.Match[str]) -> str:
    # A comment becomes blank space with its newlines, so line numbers stay right.
    return re.sub(r"[^\n]", " ", match.group(0))


def _zone_records(text: str) -> Iterable[tuple[int, str]]:
    # Joins lines inside parentheses (RFC 1035 §5.1) and drops comments; yields each record
    # with the line it started on.
    start, parts, depth = 0, [], 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0]
        if not line.strip() and depth == 0:
            continue
        if depth == 0:
            start = lineno
        depth += line.count("(") - line.count(")")
        parts.append(line.replace("(", " ").replace(")", " "))
        if depth <= 0:
            yield start, " ".join(parts)
            parts, depth = [], 0
    if parts:
        yield start, " ".join(parts)


def _bind_records(text: str, source: str) -> Iterable[tuple[int, str]]:
    """Zone-file records made from BIND's anchor clauses, with the line each entry starts on:
    `NAME [initial-key|static-key] FLAGS PROTOCOL ALGORITHM "KEY";` or
    `NAME (initial-ds|static-ds) KEYTAG ALGORITHM DIGESTTYPE "DIGEST";`."""
    text = _BIND_COMMENT.sub(_blank_keeping_lines, text)
    for clause in _BIND_CLAUSE.finditer(text):
        body_start = clause.end()
        body_end = text.find("}", body_start)
        if body_end < 0:
            line = text.count("\n", 0, clause.start()) + 1
            raise ValueError(f"{source}:{line}: '{clause.group(1)} {{' is never closed")
        offset = body_start
        for entry in text[body_start:body_end].split(";"):
            lineno = text.count("\n", 0, offset + len(entry) - len(entry.lstrip())) + 1
            offset += len(entry) + 1
            tokens = re.findall(r'"[^"]*"|\S+', entry)
            if not tokens:
                continue
            yield lineno, _bind_entry(tokens, f"{source}:{lineno}")


def _bind_entry(tokens: list[str], where: str) -> str:
    owner, rest = tokens[0].strip('"'), tokens[1:]
    rdtype = "DNSKEY"
    if rest and rest[0].lower() in _BIND_KEYWORDS:
        rdtype = _BIND_KEYWORDS[rest[0].lower()]
        rest = rest[1:]
    if len(rest) != 4 or not rest[3].startswith('"'):
        raise ValueError(f"{where}: expected '{owner} <keyword> N N N \"...\"' in a BIND "
                         "trust anchor clause")
    data = "".join(rest[3].strip('"').split())
    if not owner.endswith("."):
        owner += "."  # BIND's names are absolute with or without the final dot
    return f"{owner} {ANCHOR_TTL_S} IN {rdtype} {' '.join(rest[:3])} {data}"


def _parse_anchors(records: Iterable[tuple[int, str]], source: str) -> list[dns.rrset.RRset]:
    merged: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for lineno, record in records:
        where = f"{source}:{lineno}"
        if record.upper().startswith("$TTL"):
            continue  # an anchor's TTL does not matter: it is trusted until the file changes
        if record.startswith("$"):
            raise ValueError(f"{where}: only $TTL is allowed in a trust anchor file "
                             "($ORIGIN and $INCLUDE are not)")
        owner = record.split(None, 1)[0]
        if not owner.endswith("."):
            raise ValueError(f"{where}: owner name {owner!r} must be absolute (end with '.')")
        try:
            rrsets = dns.zonefile.read_rrsets(
                record,
                rdclass=None,
                origin=dns.name.root,
                relativize=False,
                default_ttl=ANCHOR_TTL_S,
            )
        except dns.exception.DNSException as exc:
            detail = str(exc).removeprefix("<input>:1: ")
            raise ValueError(f"{where}: bad trust anchor record: {detail}") from exc
        for rrset in rrsets:
            if rrset.rdtype not in (dns.rdatatype.DS, dns.rdatatype.DNSKEY):
                kind = dns.rdatatype.to_text(rrset.rdtype)
                raise ValueError(f"{where}: trust anchors must be DS or DNSKEY, not {kind}")
            key = (rrset.name, rrset.rdtype)
            if key in merged:
                merged[key].union_update(rrset)
            else:
                merged[key] = rrset
    if not merged:
        raise ValueError(f"{source}: no DS or DNSKEY records in the trust anchor file")
    return list(merged.values())
