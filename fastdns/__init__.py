"""fastdns: a caching DNS forwarder whose per-packet hit path is compiled with Cython."""

__version__ = "0.1.0"
