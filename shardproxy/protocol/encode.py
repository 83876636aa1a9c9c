"""RESP encoders: requests the proxy builds and replies it answers itself."""

from __future__ import annotations

from collections.abc import Iterable

from shardproxy.protocol.framing import CRLF


def encode_command(argv: Iterable[bytes]) -> bytes:
    """A request frame: an array of bulk strings."""
    args = list(argv)
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
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
    return b"*%d\r\n" % len(items) + b"".join(items)


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
