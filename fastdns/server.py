"""The server process: sockets, the event loop, workers, signals and graceful shutdown.

Owns: binding UDP/TCP, wiring the compiled hit path to the event loop, composing the miss
path and the query log at start-up (a disabled feature is simply not wired in), the
SO_REUSEPORT worker processes, SIGTERM/SIGINT draining.
Must not: parse DNS or make resolution decisions.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fastdns._fastpath import HAVE_MMSG, HitPath
from fastdns.cache import Cache
from fastdns.config import Settings
from fastdns.querylog import QueryLog
from fastdns.resolve.anchors import load_trust_anchors
from fastdns.resolve.dnssec import Fetch, Validator
from fastdns.resolve.forward import Forwarder
from fastdns.resolve.hints import load_root_hints
from fastdns.resolve.pipeline import MissPath, Stage
from fastdns.resolve.recurse import Recursor
from fastdns.resolve.secure import ValidatingStage, forwarding_fetch
from fastdns.reuseport import attach_name_steering
from fastdns.transport import TcpConnection, TcpServerState, UdpProtocol

log = logging.getLogger("fastdns")

LOG_PUMP_INTERVAL_S = 0.05
LOG_PUMP_CHUNK_BYTES = 32 * 1024  # query-log records encoded per pump step (~250)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Allocations (less frees) between first-generation collections; CPython's default is 700.
GC_GEN0_THRESHOLD = 10_000
CONTROL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Runtime:
    """Everything one worker process runs, for shutdown and for later observers."""

    cache: Cache
    hitpath: HitPath
    misspath: MissPath
    resolver: Stage
    tcp_state: TcpServerState
    querylog: QueryLog | None


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT. Returns the process exit code."""
    _configure_logging(settings)
    # Stop and reload signals are held until a handler is in place (serve()'s, or the
    # supervisor's): one arriving during start-up is then handled like any other, with a
    # clean drain, instead of killing the process by its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
    workers = settings.server.workers
    if workers <= 1:
        return _run_worker(settings)
    try:
        # Bind every worker's sockets here, in order, before any worker starts: the port
        # error (if any) is reported once, and the SO_REUSEPORT group is complete before the
        # first question arrives, so name steering never falls back to the kernel's hash.
        groups = [(_udp_socket(settings, reuse_port=True), _tcp_socket(settings, reuse_port=True))
                  for _ in range(workers)]
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    try:
        attach_name_steering(groups[0][0], workers)
    except OSError as exc:
        log.warning("cannot steer questions to workers by name (%s): each worker caches "
                    "what the kernel's address hash sends it", exc)
    return _run_workers(settings, groups)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.logging.level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _run_worker(settings: Settings, sockets: tuple[socket.socket, socket.socket] | None = None) -> int:
    """Serve on the given (udp, tcp) sockets, or on new ones bound from the settings."""
    loop_name = _install_uvloop()
    try:
        if sockets is None:
            sockets = (_udp_socket(settings, reuse_port=False), _tcp_socket(settings, reuse_port=False))
        asyncio.run(serve(settings, *sockets, loop_name=loop_name))
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


def _run_workers(settings: Settings, groups: list[tuple[socket.socket, socket.socket]]) -> int:
    """One process per worker, all bound to the same port with SO_REUSEPORT; UDP questions
    are steered to a worker by name (fastdns.reuseport), so the caches do not overlap.
    The parent only supervises and forwards signals."""
    children: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for sig in CONTROL_SIGNALS:
        signal.signal(sig, forward)
    parent = os.getpid()
    for index, own in enumerate(groups):
        pid = os.fork()
        if pid == 0:
            _exit_with_parent(parent)
            for other, pair in enumerate(groups):
                if other != index:
                    for sock in pair:
                        sock.close()
            code = 1
            try:
                code = _run_worker(settings, own)
            finally:
                os._exit(code)
        children.append(pid)
    for pair in groups:  # each socket now belongs to its worker alone
        for sock in pair:
            sock.close()
    # Every worker exists: signals held since start-up now reach them all.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)

    code = 0
    for child in children:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        child_code = os.waitstatus_to_exitcode(status)
        if child_code not in (0, -signal.SIGTERM, -signal.SIGINT):
            code = 1
            forward(signal.SIGTERM, None)  # one worker failed: take the others down too
    return code


def _exit_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM this worker when the supervisor dies (Linux PR_SET_PDEATHSIG),
    so a killed parent never leaves workers serving on their own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("workers cannot follow their supervisor's death on this platform")
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _udp_socket(settings: Settings, reuse_port: bool) -> socket.socket:
    s = settings.server
    sock = socket.socket(_family(s.bind_address), socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Bursts must queue in the kernel, not be dropped: ask for a large receive buffer
    # (SO_RCVBUFFORCE passes net.core.rmem_max when we are privileged).
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, s.udp_recv_buffer_bytes)
            break
        except OSError:
            continue
    sock.setblocking(False)
    sock.bind((s.bind_address, s.dns_port))
    return sock


def _tcp_socket(settings: Settings, reuse_port: bool) -> socket.socket:
    s = settings.server
    sock = socket.socket(_family(s.bind_address), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setblocking(False)
    sock.bind((s.bind_address, s.dns_port))
    return sock


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _packed(networks: list[Network]) -> list[tuple[bytes, int]]:
    return [(net.network_address.packed, net.prefixlen) for net in networks]


def build_runtime(settings: Settings) -> Runtime:
    """Compose the paths once, at start-up: features that are off are not wired in."""
    cache = Cache(settings.cache)
    hitpath = HitPath(
        cache.lru,
        allowed_networks=_packed(settings.security.allowed_networks),
        rate_per_s=float(settings.security.rate_limit_per_ip),
        rate_exempt_networks=_packed(settings.security.rate_limit_exempt),
        log_enabled=settings.logging.query_log,
        seed=secrets.randbits(64),
    )
    resolver, names = _compose_resolver(settings)
    misspath = MissPath(
        cache=cache,
        hitpath=hitpath,
        resolver=resolver,
        timeout_s=settings.resolver.timeout_s,
        upstream_names=names,
        log_misses=settings.logging.query_log,
    )
    hitpath.on_miss = misspath.on_udp_miss
    tcp_state = TcpServerState(
        hitpath,
        misspath,
        idle_timeout_s=settings.server.tcp_idle_timeout_s,
        max_connections=settings.server.tcp_max_connections,
    )
    querylog = QueryLog.from_settings(settings.logging) if settings.logging.query_log else None
    return Runtime(cache, hitpath, misspath, resolver, tcp_state, querylog)


def _compose_resolver(settings: Settings) -> tuple[Stage, list[str]]:
    """The stage misses go through, and the upstream names known at start-up (for the log)."""
    r = settings.resolver
    resolver: Stage
    fetch: Fetch
    if r.mode == "recursive":
        recursor = Recursor(
            load_root_hints(r.root_hints),
            timeout_s=r.timeout_s,
            retry_interval_s=r.retry_interval_s,
            max_depth=r.max_depth,
            query_loopback=r.query_loopback,
            nameserver_port=r.nameserver_port,
            qname_minimisation=r.qname_minimisation,
            use_0x20=r.use_0x20,
        )
        resolver, names, fetch = recursor, [], recursor.lookup
    else:
        forwarder = Forwarder(
            settings.upstream_servers, timeout_s=r.timeout_s, retry_interval_s=r.retry_interval_s
        )
        resolver, names = forwarder, [u["address"] for u in forwarder.stats()]
        fetch = forwarding_fetch(forwarder, r.timeout_s)
    if settings.dnssec.enabled:
        validator = Validator(load_trust_anchors(settings.dnssec.trust_anchor), fetch)
        resolver = ValidatingStage(resolver, validator)
    return resolver, names


async def _pump_query_log(rt: Runtime) -> None:
    """Encode the C buffer's records as JSON lines (in C, one call per chunk) and write them.

    The loop runs between chunks, so a busy moment's backlog is written in slices of a
    fraction of a millisecond, not in one stall that every query waiting behind it would feel
    as latency. A chunk is LOG_PUMP_CHUNK_BYTES of records (about 250), or a 16th of the
    backlog when that is more: at full load the hit path logs more per loop turn than one
    small chunk holds, and the pump must still catch up rather than let the buffer fill."""
    assert rt.querylog is not None
    names = rt.misspath.upstream_names
    hitpath = rt.hitpath
    while True:
        await asyncio.sleep(LOG_PUMP_INTERVAL_S)
        while _drain_into(rt, names,
                          max(LOG_PUMP_CHUNK_BYTES, hitpath.log_pending_bytes // 16)):
            await asyncio.sleep(0)


def _drain_into(rt: Runtime, names: list[str], max_bytes: int = 0) -> bool:
    """Write buffered records (all, or the first `max_bytes` of them); True if some remain."""
    assert rt.querylog is not None
    data = rt.hitpath.drain_log_json(names, None, max_bytes)
    if data:
        rt.querylog.write_encoded(data, data.count(b"\n"))
    return rt.hitpath.log_pending_bytes > 0


def _use_udp_batching(settings: Settings, have_mmsg: bool = HAVE_MMSG) -> bool:
    """Whether UDP is served by the recvmmsg/sendmmsg batch loop (else one datagram per call)."""
    if not settings.server.udp_batching:
        return False
    if not have_mmsg:
        log.info("server.udp_batching: recvmmsg/sendmmsg are not available on this platform; "
                 "serving UDP one datagram at a time")
        return False
    return True


async def _serve_udp(loop: asyncio.AbstractEventLoop, settings: Settings, rt: Runtime,
                     udp: socket.socket) -> tuple[Callable[[], None], Callable[[], None]]:
    """Start answering on the UDP socket: the batch loop where the platform has it, else the
    plain protocol. Returns (stop reading new queries, close the socket); between the two the
    miss path still sends the replies it owes on the same socket."""
    rt.misspath.attach_udp(udp)
    if _use_udp_batching(settings):
        fd = udp.fileno()
        rt.hitpath.attach_udp(fd)
        loop.add_reader(fd, rt.hitpath.on_readable)

        def stop_reading() -> None:
            loop.remove_reader(fd)

        return stop_reading, udp.close
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: UdpProtocol(rt.hitpath), sock=udp
    )
    return protocol.stop_serving, transport.close  # the transport owns the socket now


def _settle_garbage_collector() -> None:
    """Keep the cyclic GC off the answering path as far as it can be.

    What exists after start-up (modules, config, compiled tables) lives as long as the
    process: `gc.freeze()` moves it out of every generation, so a full collection no longer
    walks it, and a pause no longer grows with it. The miss path makes short-lived objects
    (futures, handles, tuples) that die by reference count; a larger first-generation
    threshold lets fewer of them trigger a collection. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def serve(settings: Settings, udp: socket.socket, tcp: socket.socket, *,
                loop_name: str = "asyncio") -> None:
    """Run one worker on bound sockets until SIGTERM/SIGINT, then drain and stop."""
    loop = asyncio.get_running_loop()
    rt = build_runtime(settings)
    stop_udp, close_udp = await _serve_udp(loop, settings, rt, udp)
    tcp_server = await loop.create_server(lambda: TcpConnection(rt.tcp_state), sock=tcp, backlog=4096)

    background: list[asyncio.Task[None]] = []
    if rt.querylog is not None:
        # The pump encodes in C and writes through the QueryLog's sink itself; the
        # QueryLog's own ring and writer task serve per-record callers, of which the
        # server has none.
        background.append(asyncio.ensure_future(_pump_query_log(rt)))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP's default action would kill the server; reload is not implemented yet.
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.warning("SIGHUP: configuration reload is not supported yet")
    )
    _settle_garbage_collector()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
    bound = udp.getsockname()
    r = settings.resolver
    how = (
        f"recursive from {r.root_hints or 'the built-in root hints'}"
        if r.mode == "recursive"
        else "forwarding to " + ", ".join(str(u) for u in settings.upstream_servers)
    )
    if settings.dnssec.enabled:
        how += ", validating DNSSEC"
    log.info(
        "fastdns listening on udp+tcp %s port %d (%s, pid %d), %s",
        bound[0], bound[1], loop_name, os.getpid(), how,
    )
    try:
        await stop.wait()
    finally:
        # Graceful stop: no new queries, let in-flight ones finish, flush the log.
        stop_udp()
        tcp_server.close()
        rt.tcp_state.close_idle()  # idle connections now; busy ones once their answers are out
        await asyncio.gather(
            rt.misspath.drain(), rt.tcp_state.drain(settings.resolver.timeout_s + 1.0)
        )
        if rt.querylog is not None:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            _drain_into(rt, rt.misspath.upstream_names)
            await rt.querylog.close()
        close_udp()
        # Drained and flushed: a stop signal from here on (the loop is about to restore the
        # default handlers) must not turn a clean exit into death by signal.
        signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
        log.info("fastdns stopped")
