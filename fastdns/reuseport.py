"""Steer each UDP question to one worker by its name, so N workers' caches act as one.

With `workers: N`, every worker binds the same port with SO_REUSEPORT and the kernel picks a
socket per datagram, by default by the client's address and port. A client that asks the same
name from a new source port (as most stub resolvers do) would then land on a worker whose
cache has never seen it. We attach a classic BPF program to the group
(SO_ATTACH_REUSEPORT_CBPF, Linux ≥ 4.5) that hashes the first bytes of the question name,
case-folded (DNS names compare case-insensitively, RFC 4343), and returns the socket index.
The kernel runs it with the UDP payload at offset 0, so offset 12 is the QNAME (RFC 1035 §4.1).
Returning an index past the group size (a worker not bound yet) makes the kernel fall back
to its own hash. TCP connections cannot be steered this way (a SYN carries no question).

Owns: building and attaching that program. Must not: know anything else about DNS.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51

# Classic BPF opcodes (linux/filter.h).
_LD_W_LEN = 0x80  # A = skb->len
_LD_IMM = 0x00  # A = k
_LDX_MEM = 0x61  # X = M[k]
_LD_MEM = 0x60  # A = M[k]
_ST = 0x02  # M[k] = A
_LD_B_ABS = 0x30  # A = byte at k
_JGE_X = 0x3D  # pc += (A >= X) ? jt : jf
_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
_JA = 0x05  # pc += k
_OR_K = 0x44  # A |= k
_TAX = 0x07  # X = A
_MUL_K = 0x24  # A *= k
_ADD_X = 0x0C  # A += X
_MOD_K = 0x94  # A %= k
_RET_A = 0x16  # return A

QNAME_OFFSET = 12
HASHED_BYTES = 48  # name bytes that decide the worker; a longer name shares by its prefix
_HASH = 0  # scratch M[0]: running hash
_LEFT = 1  # scratch M[1]: bytes available (set to 0 at the end of the name)


def _ins(code: int, jt: int = 0, jf: int = 0, k: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def name_hash_program(workers: int) -> list[tuple[int, int, int, int]]:
    """The cBPF program: h = h*31 + (byte | 0x20) over the name, return h % workers."""
    if not 1 <= workers <= 0xFFFF:
        raise ValueError("workers out of range")
    prog = [_ins(_LD_W_LEN), _ins(_ST, k=_LEFT), _ins(_LD_IMM, k=0), _ins(_ST, k=_HASH)]
    for i in range(HASHED_BYTES):
        offset = QNAME_OFFSET + i
        step = [
            _ins(_LDX_MEM, k=_LEFT),
            _ins(_LD_IMM, k=offset),
            None,  # past the packet (or the name ended): skip this step
            _ins(_LD_B_ABS, k=offset),
            None,  # the root label ends the name: stop hashing
            _ins(_OR_K, k=0x20),  # fold ASCII case; other bytes change consistently
            _ins(_TAX),
            _ins(_LD_MEM, k=_HASH),
            _ins(_MUL_K, k=31),
            _ins(_ADD_X),
            _ins(_ST, k=_HASH),
            _ins(_JA, k=2),
            _ins(_LD_IMM, k=0),
            _ins(_ST, k=_LEFT),
        ]
        step[2] = _ins(_JGE_X, jt=len(step) - 3, jf=0)
        step[4] = _ins(_JEQ_K, jt=len(step) - 5 - 2, jf=0, k=0)
        prog.extend(step)  # type: ignore[arg-type]
    prog += [_ins(_LD_MEM, k=_HASH), _ins(_MOD_K, k=workers), _ins(_RET_A)]
    return prog


def attach_name_steering(sock: socket.socket, workers: int) -> None:
    """Attach the program to sock's SO_REUSEPORT group. Raises OSError where unsupported."""
    prog = name_hash_program(workers)
    filters = (ctypes.c_uint8 * (8 * len(prog)))()
    for i, (code, jt, jf, k) in enumerate(prog):
        struct.pack_into("=HBBI", filters, 8 * i, code, jt, jf, k)
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
