"""Trust anchor files: zone-file DS/DNSKEY records and BIND's anchor clauses."""

from __future__ import annotations

import base64
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fastdns.resolve.anchors import load_trust_anchors

T = dns.rdatatype


@pytest.fixture(scope="module")
def ksk() -> dns.dnssec.DNSKEY:
    key = ec.generate_private_key(ec.SECP256R1())
    return dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                  flags=257)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "anchors"
    path.write_text(text)
    return str(path)


def test_built_in_root_anchors() -> None:
    anchors = load_trust_anchors(None)
    assert [(a.name, a.rdtype) for a in anchors] == [(dns.name.root, T.DS)]
    assert sorted(ds.key_tag for ds in anchors[0]) == [20326, 38696]


def test_zone_file_with_comments_and_parentheses(tmp_path: Path, ksk) -> None:
    ds = dns.dnssec.make_ds("org.", ksk, "SHA256")
    path = _write(tmp_path, f"; trust anchors\n\norg. IN DS {ds}  ; org\n"
                            f"example.org. 3600 IN DNSKEY ( {ksk} )\n")
    anchors = load_trust_anchors(path)
    assert {(a.name, a.rdtype) for a in anchors} == {
        (dns.name.from_text("org."), T.DS),
        (dns.name.from_text("example.org."), T.DNSKEY),
    }
    assert {rd for a in anchors for rd in a} == {ds, ksk}


def test_zone_file_ttl_directive_is_accepted(tmp_path: Path, ksk) -> None:
    ds = dns.dnssec.make_ds(".", ksk, "SHA256")
    anchors = load_trust_anchors(_write(tmp_path, f"$TTL 3600\n. IN DS {ds}\n"))
    assert [list(a) for a in anchors] == [[ds]]


def test_bind_trust_anchors_clause(tmp_path: Path, ksk) -> None:
    # The shape of BIND's bind.keys: keys split over lines, comments of all three kinds.
    ds = dns.dnssec.make_ds(".", ksk, "SHA256")
    b64 = base64.b64encode(ksk.key).decode()
    b64 = b64[:40] + "\n      " + b64[40:]
    text = (
        "/* root anchors\n   for the lab */\n"
        "trust-anchors {\n"
        "  # the KSK\n"
        f'  . initial-key {ksk.flags} 3 {ksk.algorithm} "{b64}";\n'
        f'  org static-ds {ds.key_tag} {ds.algorithm} {ds.digest_type} "{ds.digest.hex()}";\n'
        "};  // end\n"
    )
    anchors = {(a.name, a.rdtype): a for a in load_trust_anchors(_write(tmp_path, text))}
    assert list(anchors[(dns.name.root, T.DNSKEY)]) == [ksk]
    assert list(anchors[(dns.name.from_text("org."), T.DS)]) == [ds]


def test_bind_trusted_keys_without_keyword(tmp_path: Path, ksk) -> None:
    b64 = base64.b64encode(ksk.key).decode()
    text = f'trusted-keys {{ "example.org." 257 3 {ksk.algorithm} "{b64}"; }};'
    anchors = load_trust_anchors(_write(tmp_path, text))
    assert [(a.name, a.rdtype, list(a)) for a in anchors] == [
        (dns.name.from_text("example.org."), T.DNSKEY, [ksk])
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no DS or DNSKEY"),
        ("; only a comment\n", "no DS or DNSKEY"),
        ("example.org. 3600 IN DS 1 13 2 abcd\n", ":1:"),
        ("org. 3600 IN DS 1 13 2 " + "ab" * 32 + "\nexample 3600 IN DS 1 13 2 ab\n", ":2:"),
        ("example.org. 3600 IN A 192.0.2.1\n", ":1:"),
        ("trust-anchors {\n . initial-key 257 3 13 \"AAAA\";\n", ":1:"),
        ("trust-anchors {\n\n . initial-key 257 3;\n};\n", ":3:"),
        ("trust-anchors {\n . initial-ds 1 13 2 \"abcd\";\n};\n", ":2:"),
        ("managed-keys { };\n", "no DS or DNSKEY"),
        ("$ORIGIN org.\nexample 3600 IN DS 1 13 2 ab\n", ":1: only $TTL"),
    ],
)
def test_bad_anchor_file_names_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=path) as info:
        load_trust_anchors(path)
    assert needle in str(info.value)


def test_missing_anchor_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_trust_anchors(str(tmp_path / "absent"))
