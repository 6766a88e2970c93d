"""Benchmarks for fastdns.

Owns the micro-benchmarks (``bench_*`` modules) and the end-to-end load benchmark
(``benchmarks.load``). Nothing here is imported by the server, and nothing here may
send a packet anywhere but the loopback interface.
"""
