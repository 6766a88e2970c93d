"""Helpers shared by the tests: a fake upstream DNS server and a real server process harness.

Nothing here is imported by the server itself; everything binds or talks to loopback only.
"""

from fastdns._testing.authority import Hierarchy
from fastdns._testing.fake_upstream import MODES, AnswerFn, FakeUpstream, QueryRecord, free_port
from fastdns._testing.server_process import ServerProcess, ServerStartError, query
from fastdns._testing.zonesign import Breakage, Signing

__all__ = [
    "MODES",
    "AnswerFn",
    "Breakage",
    "FakeUpstream",
    "Hierarchy",
    "QueryRecord",
    "ServerProcess",
    "ServerStartError",
    "Signing",
    "free_port",
    "query",
]
