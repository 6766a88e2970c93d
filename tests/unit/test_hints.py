"""Root hints files: IANA's named.root format, and the same records with the class written."""

from __future__ import annotations

import dns.name
import pytest

from fastdns.resolve.hints import load_root_hints


@pytest.mark.parametrize("klass", ["", "IN "])
def test_hints_load_with_or_without_the_class(tmp_path, klass):
    # IANA's file omits the class; `dig . NS` output and many lab tools write "IN".
    hints = tmp_path / "root.hints"
    hints.write_text(f".  3600000 {klass}NS a.root-servers.test.\n"
                     f"a.root-servers.test. 3600000 {klass}A 127.0.0.2\n")
    [server] = load_root_hints(hints)
    assert server.name == dns.name.from_text("a.root-servers.test.")
    assert server.addresses == ("127.0.0.2",)


def test_hints_of_another_class_are_refused(tmp_path):
    hints = tmp_path / "root.hints"
    hints.write_text(". 3600000 CH NS a.root-servers.test.\n")
    with pytest.raises(ValueError, match="root hints"):
        load_root_hints(hints)
