"""Key hash functions compatible with twemproxy (nutcracker) 0.5, and hash-tag extraction.

Every function in :data:`HASH_FUNCTIONS` takes the bytes nutcracker would hash (the hash-tag part
of a key, see :func:`hash_tag`) and returns the unsigned 32-bit value nutcracker 0.5 feeds to its
distribution for them, bug for bug:

* ``char`` is signed on the platforms nutcracker ships for (x86-64, and the code casts ``char``
  straight to ``uint32_t``/``uint64_t``), so in ``one_at_a_time``, the four ``fnv`` variants and
  the 3-byte tail of ``hsieh`` a byte >= 0x80 enters the arithmetic as ``0xFFFFFFxx``.
* ``fnv1_64`` and ``fnv1a_64`` are truncated to 32 bits; ``fnv1a_64`` even runs in 32-bit
  arithmetic with the truncated 64-bit offset basis and prime. Only the low 32 bits of a 64-bit
  product depend on the low 32 bits of its factors, so both are computed here in 32 bits.
* ``crc32`` is the libmemcached variant: bits 16..30 of the standard CRC-32 (a 15-bit value);
  ``crc32a`` is the standard CRC-32 (zlib's). ``crc16`` is CRC-16/XMODEM computed in an unmasked
  32-bit register, so its upper 16 bits keep bytes of earlier CRC states (a 32-bit value).
* ``md5`` is the first four digest bytes read little-endian.
* ``murmur`` is MurmurHash2 with seed ``0xdeadbeef * len``; ``jenkins`` is lookup3 ``hashlittle``
  with ``initval`` 13; ``hsieh`` is Paul Hsieh's SuperFastHash (seed 0).
* An empty key hashes to 0 with every function: nutcracker's pool-level hash returns 0 for a
  zero-length key before calling the function, and that is the value that places the key.

The functions are on the per-request path (compiled, the ring calls them for every key;
interpreted, behind the ring's key cache), so C-backed stdlib is used
where it is exactly equivalent (``hashlib.md5``, ``zlib.crc32``, ``struct``) and the byte loops are
kept tight. This module is pure and imports nothing from the package.
"""

from __future__ import annotations

import struct
import zlib
from binascii import crc_hqx as _crc_hqx
from collections.abc import Callable
from hashlib import md5 as _md5
from typing import Final

from mypy_extensions import i64

__all__ = [
    "HASH_BITS",
    "HASH_CODES",
    "HASH_FUNCTIONS",
    "crc16",
    "crc32",
    "crc32a",
    "fnv1_32",
    "fnv1_64",
    "fnv1a_32",
    "fnv1a_64",
    "hash_by_code",
    "hash_tag",
    "hsieh",
    "jenkins",
    "md5",
    "murmur",
    "one_at_a_time",
]


# A byte as nutcracker's arithmetic sees it after `(uint32_t)(char)b` on a signed-char platform.
_SIGNED: tuple[int, ...] = tuple(b | 0xFFFFFF00 if b >= 0x80 else b for b in range(256))

# FNV constants. The *_64 variants only ever matter modulo 2**32 (see the module docstring):
# low 32 bits of the 64-bit offset basis 0xcbf29ce484222325 and of the prime 0x100000001b3.
_FNV64_BASIS_LO: Final = 0x84222325
_FNV64_PRIME_LO: Final = 0x000001B3
_FNV32_BASIS: Final = 0x811C9DC5
_FNV32_PRIME: Final = 0x01000193


_unpack_u32 = struct.Struct("<I").unpack_from
_unpack_3u32 = struct.Struct("<3I").unpack_from
_iter_u16_pairs = struct.Struct("<HH").iter_unpack


def md5(key: bytes) -> int:
    """First 4 bytes of the MD5 digest, little-endian."""
    if not key:
        return 0
    return _unpack_u32(_md5(key).digest())[0]


def crc32a(key: bytes) -> int:
    """Standard CRC-32 (IEEE, reflected, as zlib)."""
    return zlib.crc32(key)


def crc32(key: bytes) -> int:
    """libmemcached's CRC-32: bits 16..30 of the standard CRC-32, so 0..0x7FFF."""
    return (zlib.crc32(key) >> 16) & 0x7FFF


def crc16(key: bytes) -> int:
    """nutcracker's crc16: CRC-16/XMODEM run in a 32-bit register that is never masked.

    The shift register keeps the bytes shifted out of the 16-bit CRC, so the result is: bits
    0..15 the XMODEM CRC of the whole key, bits 16..23 the high byte of the CRC of the key minus
    its last byte, bits 24..31 the high byte of the CRC of the key minus its last two bytes.
    """
    n = len(key)
    if n < 3:
        if n == 2:
            first = _crc_hqx(key[:1], 0)
            return (first & 0xFF00) << 8 | _crc_hqx(key[1:], first)
        return _crc_hqx(key, 0)
    two_short = _crc_hqx(key[:-2], 0)
    one_short = _crc_hqx(key[-2:-1], two_short)
    return (two_short & 0xFF00) << 16 | (one_short & 0xFF00) << 8 | _crc_hqx(key[-1:], one_short)


# The byte loops below are written for mypyc (see setup.py): ``i64`` locals compile to C
# 64-bit integers, so each step is a few machine instructions; interpreted, ``i64`` is plain
# ``int``. Every step masks to 32 bits, so no product exceeds 64 bits (FNV's largest prime
# times a 32-bit value is below 2**57).


def _signed(c: i64) -> i64:
    """A byte as nutcracker's arithmetic sees it (signed char cast to uint32)."""
    return c | 0xFFFFFF00 if c >= 0x80 else c


def _fnv1a(key: bytes, basis: i64, prime: i64) -> int:
    """FNV-1a (xor, then multiply) over sign-extended bytes, in 32 bits."""
    n: i64 = len(key)
    if n == 0:
        return 0
    h: i64 = basis
    i: i64 = 0
    while i < n:
        c: i64 = key[i]
        if c >= 0x80:  # (_signed, inline: this loop runs for every key of every request)
            c |= 0xFFFFFF00
        h = ((h ^ c) * prime) & 0xFFFFFFFF
        i += 1
    return h


def _fnv1(key: bytes, basis: i64, prime: i64) -> int:
    """FNV-1 (multiply, then xor) over sign-extended bytes, in 32 bits."""
    n: i64 = len(key)
    if n == 0:
        return 0
    h: i64 = basis
    i: i64 = 0
    while i < n:
        h = ((h * prime) & 0xFFFFFFFF) ^ _signed(key[i])
        i += 1
    return h


def fnv1a_64(key: bytes) -> int:
    """nutcracker's fnv1a_64: 32-bit FNV-1a with the 64-bit constants truncated."""
    return _fnv1a(key, _FNV64_BASIS_LO, _FNV64_PRIME_LO)


def fnv1_64(key: bytes) -> int:
    """64-bit FNV-1 truncated to 32 bits (computed in 32 bits, see the module docstring)."""
    return _fnv1(key, _FNV64_BASIS_LO, _FNV64_PRIME_LO)


def fnv1a_32(key: bytes) -> int:
    """32-bit FNV-1a over sign-extended bytes."""
    return _fnv1a(key, _FNV32_BASIS, _FNV32_PRIME)


def fnv1_32(key: bytes) -> int:
    """32-bit FNV-1 over sign-extended bytes."""
    return _fnv1(key, _FNV32_BASIS, _FNV32_PRIME)


def one_at_a_time(key: bytes) -> int:
    """Bob Jenkins' one-at-a-time hash over sign-extended bytes."""
    n: i64 = len(key)
    h: i64 = 0
    i: i64 = 0
    while i < n:
        h = (h + _signed(key[i])) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
        i += 1
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    return (h + (h << 15)) & 0xFFFFFFFF


def hsieh(key: bytes) -> int:
    """Paul Hsieh's SuperFastHash; the third byte of a 3-byte tail is sign-extended."""
    n = len(key)
    if not n:
        return 0
    rem = n & 3
    body = n - rem
    h = 0
    for lo, hi in _iter_u16_pairs(key[:body]):
        h = (h + lo) & 0xFFFFFFFF
        h = ((h << 16) ^ (hi << 11) ^ h) & 0xFFFFFFFF
        h = (h + (h >> 11)) & 0xFFFFFFFF
    if rem == 3:
        h = (h + (key[body] | key[body + 1] << 8)) & 0xFFFFFFFF
        h ^= (h << 16) & 0xFFFFFFFF
        h ^= (_SIGNED[key[body + 2]] << 18) & 0xFFFFFFFF
        h = (h + (h >> 11)) & 0xFFFFFFFF
    elif rem == 2:
        h = (h + (key[body] | key[body + 1] << 8)) & 0xFFFFFFFF
        h ^= (h << 11) & 0xFFFFFFFF
        h = (h + (h >> 17)) & 0xFFFFFFFF
    elif rem == 1:
        h = (h + key[body]) & 0xFFFFFFFF
        h ^= (h << 10) & 0xFFFFFFFF
        h = (h + (h >> 1)) & 0xFFFFFFFF
    h ^= (h << 3) & 0xFFFFFFFF
    h = (h + (h >> 5)) & 0xFFFFFFFF
    h ^= (h << 4) & 0xFFFFFFFF
    h = (h + (h >> 17)) & 0xFFFFFFFF
    h ^= (h << 25) & 0xFFFFFFFF
    return (h + (h >> 6)) & 0xFFFFFFFF


_MURMUR_M: Final = 0x5BD1E995


def murmur(key: bytes) -> int:
    """MurmurHash2 (little-endian words) seeded with ``0xdeadbeef * len(key)``."""
    n: i64 = len(key)
    if n == 0:
        return 0
    m: i64 = _MURMUR_M
    h: i64 = ((0xDEADBEEF * n) ^ n) & 0xFFFFFFFF
    body: i64 = n & ~3
    i: i64 = 0
    while i < body:
        k: i64 = key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
        i += 4
    rem = n - body
    if rem:
        if rem == 3:
            h ^= key[body + 2] << 16
        if rem >= 2:
            h ^= key[body + 1] << 8
        h = ((h ^ key[body]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def jenkins(key: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` with initval 13 (little-endian words)."""
    n = len(key)
    if not n:
        return 0
    a = b = c = (0xDEADBEEF + n + 13) & 0xFFFFFFFF
    pos = 0
    # All blocks but the last (which may be a full 12 bytes) get mix().
    while n - pos > 12:
        x, y, z = _unpack_3u32(key, pos)
        a = (a + x) & 0xFFFFFFFF
        b = (b + y) & 0xFFFFFFFF
        c = (c + z) & 0xFFFFFFFF
        a = (a - c) & 0xFFFFFFFF
        a ^= ((c << 4) | (c >> 28)) & 0xFFFFFFFF
        c = (c + b) & 0xFFFFFFFF
        b = (b - a) & 0xFFFFFFFF
        b ^= ((a << 6) | (a >> 26)) & 0xFFFFFFFF
        a = (a + c) & 0xFFFFFFFF
        c = (c - b) & 0xFFFFFFFF
        c ^= ((b << 8) | (b >> 24)) & 0xFFFFFFFF
        b = (b + a) & 0xFFFFFFFF
        a = (a - c) & 0xFFFFFFFF
        a ^= ((c << 16) | (c >> 16)) & 0xFFFFFFFF
        c = (c + b) & 0xFFFFFFFF
        b = (b - a) & 0xFFFFFFFF
        b ^= ((a << 19) | (a >> 13)) & 0xFFFFFFFF
        a = (a + c) & 0xFFFFFFFF
        c = (c - b) & 0xFFFFFFFF
        c ^= ((b << 4) | (b >> 28)) & 0xFFFFFFFF
        b = (b + a) & 0xFFFFFFFF
        pos += 12
    # The last 1..12 bytes, zero padded, read as three little-endian words.
    x, y, z = _unpack_3u32(key[pos:].ljust(12, b"\0"))
    a = (a + x) & 0xFFFFFFFF
    b = (b + y) & 0xFFFFFFFF
    c = (c + z) & 0xFFFFFFFF
    c ^= b
    c = (c - ((b << 14) | (b >> 18))) & 0xFFFFFFFF
    a ^= c
    a = (a - ((c << 11) | (c >> 21))) & 0xFFFFFFFF
    b ^= a
    b = (b - ((a << 25) | (a >> 7))) & 0xFFFFFFFF
    c ^= b
    c = (c - ((b << 16) | (b >> 16))) & 0xFFFFFFFF
    a ^= c
    a = (a - ((c << 4) | (c >> 28))) & 0xFFFFFFFF
    b ^= a
    b = (b - ((a << 14) | (a >> 18))) & 0xFFFFFFFF
    c ^= b
    return (c - ((b << 24) | (b >> 8))) & 0xFFFFFFFF


HASH_FUNCTIONS: dict[str, Callable[[bytes], int]] = {
    "one_at_a_time": one_at_a_time,
    "md5": md5,
    "crc16": crc16,
    "crc32": crc32,
    "crc32a": crc32a,
    "fnv1_64": fnv1_64,
    "fnv1a_64": fnv1a_64,
    "fnv1_32": fnv1_32,
    "fnv1a_32": fnv1a_32,
    "hsieh": hsieh,
    "murmur": murmur,
    "jenkins": jenkins,
}
"""Hash functions by their nutcracker ``hash:`` name."""

_BY_CODE: list[Callable[[bytes], int]] = list(HASH_FUNCTIONS.values())

HASH_CODES: dict[str, int] = {name: code for code, name in enumerate(HASH_FUNCTIONS)}
"""A small number per function, for :func:`hash_by_code` (fnv1a_64 is 6, murmur 10, md5 1)."""

_FNV1A_64: Final = 6
_MURMUR: Final = 10
_MD5: Final = 1


def hash_by_code(code: int, key: bytes) -> int:
    """``HASH_FUNCTIONS[name](key)`` for ``code == HASH_CODES[name]``. Compiled, the common
    functions are called directly, without a Python-level call."""
    if code == _FNV1A_64:
        return fnv1a_64(key)
    if code == _MURMUR:
        return murmur(key)
    if code == _MD5:
        return md5(key)
    return _BY_CODE[code](key)


HASH_BITS: dict[str, int] = {name: 32 for name in HASH_FUNCTIONS} | {"crc32": 15}
"""Width of each function's output: values are in ``range(2 ** HASH_BITS[name])``.

``crc32`` never exceeds 15 bits, which matters for ketama: every key falls below the first few
continuum points, so one or two shards get all keys (nutcracker behaves the same way)."""


def hash_tag(key: bytes, tag: bytes) -> bytes:
    """The part of ``key`` that is hashed, with nutcracker's ``hash_tag`` semantics.

    ``tag`` is two delimiter bytes (they may be equal), or ``b""`` to disable tags. The first
    ``tag[0]`` in the key opens the tag, the first ``tag[1]`` after it closes it; if both exist
    and enclose at least one byte, that enclosed part is hashed, otherwise the whole key. Only the
    first opening delimiter is considered: ``b"{}{a}"`` hashes whole.
    """
    if len(tag) < 2:
        return key
    return tag_part(key, tag[0], tag[1])


def tag_part(key: bytes, open_byte: i64, close_byte: i64) -> bytes:
    """:func:`hash_tag` with the delimiters as byte values, scanning bytes as native ints when
    compiled (the ring calls it per request)."""
    n: i64 = len(key)
    start: i64 = 0
    while start < n and key[start] != open_byte:
        start += 1
    end: i64 = start + 1
    while end < n and key[end] != close_byte:
        end += 1
    if end >= n or end == start + 1:
        return key
    return key[start + 1 : end]
