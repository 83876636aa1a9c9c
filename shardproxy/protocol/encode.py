"""RESP encoders: requests the proxy builds and replies it answers itself."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from shardproxy.protocol.framing import CRLF

_HEADERS: Final = 512
_BULK_HEADERS: Final = tuple(b"$%d\r\n" % n for n in range(_HEADERS))
_ARRAY_HEADERS: Final = tuple(b"*%d\r\n" % n for n in range(_HEADERS))


def bulk_header(length: int) -> bytes:
    """``$<length>\r\n`` (made once for the usual lengths)."""
    return _BULK_HEADERS[length] if length < _HEADERS else b"$%d\r\n" % length


def array_header(count: int) -> bytes:
    """``*<count>\r\n`` (made once for the usual counts)."""
    return _ARRAY_HEADERS[count] if count < _HEADERS else b"*%d\r\n" % count


def encode_command(argv: Iterable[bytes]) -> bytes:
    """A request frame: an array of bulk strings."""
    args = list(argv)
    parts = [array_header(len(args))]
    for a in args:
        parts.append(bulk_header(len(a)))
        parts.append(a)
        parts.append(CRLF)
    return b"".join(parts)


def bulk(value: bytes | None, proto: int = 2) -> bytes:
    if value is None:
        return null(proto)
    return b"$%d\r\n%s\r\n" % (len(value), value)


def simple(text: bytes) -> bytes:
    return b"+" + text + CRLF


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def null(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"$-1\r\n"


def null_array(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"*-1\r\n"


def array(items: list[bytes]) -> bytes:
    """An array whose elements are already-encoded replies."""
    return array_header(len(items)) + b"".join(items)


def map_reply(pairs: list[tuple[bytes, bytes]], proto: int) -> bytes:
    """A map of already-encoded keys and values (a flat array in RESP2)."""
    body = b"".join(k + v for k, v in pairs)
    if proto == 3:
        return b"%%%d\r\n" % len(pairs) + body
    return b"*%d\r\n" % (2 * len(pairs)) + body


def verbatim(text: bytes, proto: int, fmt: bytes = b"txt") -> bytes:
    """A verbatim string in RESP3 (INFO, CLIENT INFO), a bulk string in RESP2."""
    if proto == 3:
        return b"=%d\r\n%s:%s\r\n" % (len(text) + 4, fmt, text)
    return bulk(text)


OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
