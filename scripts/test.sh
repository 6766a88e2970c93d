#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, build the compiled modules in
# place, and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# dig/kdig are used by a few integration tests as a second, independent client. The
# recursive-mode lab (tests/integration/test_recurse_nsd.py) runs NSD, signs its zones with
# dnssec-keygen/dnssec-signzone (bind9-utils) and compares fastdns with Unbound.
missing=()
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
command -v nsd >/dev/null 2>&1 || missing+=(nsd)
command -v dnssec-signzone >/dev/null 2>&1 || missing+=(bind9-utils)
command -v unbound >/dev/null 2>&1 || missing+=(unbound)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check 'Cython>=3.0' setuptools wheel
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# The editable install builds the extensions; build them in the tree too so the
# tests import exactly this checkout's compiled code.
python3 setup.py -q build_ext --inplace >/dev/null
exec python3 -m pytest "$@"
