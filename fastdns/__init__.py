"""fastdns: a caching DNS forwarder whose per-packet hit path is compiled with Cython."""

__version__ = "0.1.0"

# The compiled modules are the server; there is deliberately no pure-Python fallback.
try:
    from fastdns import _fastpath, _lru, _wire  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"fastdns's compiled modules are missing or broken ({exc}). Install with "
        "'pip install .' or, in a source checkout, build them with "
        "'python setup.py build_ext --inplace'."
    ) from exc
