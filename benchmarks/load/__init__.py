"""End-to-end load benchmark: fastdns against Unbound and dnsmasq, same machine, same run.

Owns starting a local authoritative upstream (NSD) and each resolver under test on
127.0.0.1, driving them with dnsperf, sampling their CPU time and peak RSS from /proc,
and reporting medians. It must not send traffic off the loopback interface, and it
must stop every process it started, by PID, whatever happens.

Run it as ``python -m benchmarks.load --help``.
"""
