"""RESP framing helpers shared by the request parser and the reply scanner (sans-IO).

Native-int scans of decimal lengths and bulk strings, and the input buffering both parsers
use while a frame of known size is still arriving.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

CRLF: Final = b"\r\n"
STAR: Final = 42  # '*'
DOLLAR: Final = 36  # '$'
_LLONG_MIN: Final = -(2**63)
_LLONG_MAX: Final = 2**63 - 1


def is_long(arg: bytes) -> bool:
    """Whether Redis reads ``arg`` as a 64-bit integer (its string2ll: optional ``-``,
    digits, no leading zero, no ``+``, no ``-0``, in range)."""
    n = len(arg)
    if n == 0 or n > 20:
        return False
    body = arg[1:] if arg[0] == 45 else arg  # '-'
    if not body or not body.isdigit():
        return False
    if body[0] == 48:  # '0'
        return arg == b"0"
    return _LLONG_MIN <= int(arg) <= _LLONG_MAX


def length_at(data: bytes, p: i64, n: i64) -> i64:
    """The canonical decimal length at ``data[p:]`` followed by CRLF; -1 if it is not one
    (no digit, a leading zero, a sign, too long, or the CRLF not there yet)."""
    first = p
    value: i64 = 0
    while p < n:
        c: i64 = data[p]
        if c < 48 or c > 57:
            break
        if p - first >= 15:
            return -1
        value = value * 10 + (c - 48)
        p += 1
    if p == first or p + 1 >= n or data[p] != 13 or data[p + 1] != 10:
        return -1
    if data[first] == 48 and p - first > 1:
        return -1  # leading zero
    return value


def digits(n: i64) -> i64:
    """Decimal digits of ``n >= 0``."""
    d: i64 = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


def string_end(buf: bytes, pos: i64, n: i64) -> i64:
    """End of the bulk string or null (``$-1``, RESP3 ``_``) that starts at ``buf[pos]``
    (``pos < n``); -1 when there is none there: another type, an unusual length, or not all
    of it yet."""
    t = buf[pos]
    if t == 95:  # '_\r\n'
        return pos + 3 if pos + 2 < n and buf[pos + 1] == 13 and buf[pos + 2] == 10 else -1
    if t != DOLLAR or pos + 1 >= n:
        return -1
    if buf[pos + 1] == 45:  # '$-1\r\n'
        if pos + 4 < n and buf[pos + 2] == 49 and buf[pos + 3] == 13 and buf[pos + 4] == 10:
            return pos + 5
        return -1
    size = length_at(buf, pos + 1, n)
    if size < 0:
        return -1
    end = pos + 5 + digits(size) + size
    if end > n or buf[end - 2] != 13 or buf[end - 1] != 10:
        return -1
    return end


class Buffered:
    """Input buffering shared by the request parser and the reply scanner: while a frame of
    known size is incomplete (``_need`` bytes), chunks are only collected, then joined once."""

    __slots__ = ("_buf", "_chunks", "_have", "_need")

    def __init__(self) -> None:
        self._buf = b""  # unparsed bytes (the start of an incomplete frame)
        self._chunks: list[bytes] = []  # data held back while a known-size frame is incomplete
        self._have = 0  # bytes in _buf + _chunks
        self._need = 0  # do not parse before _have reaches this

    def _take(self, data: bytes) -> bytes | None:
        """``data`` appended to what is buffered; None while the frame cannot be complete."""
        if self._need:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return None
            self._chunks.insert(0, self._buf)
            buf = b"".join(self._chunks)
            self._chunks.clear()
            self._need = 0
            return buf
        if self._buf:
            return self._buf + data
        return data
