"""RESP codec, sans-IO: the request parser, the reply scanner, and encoders.

Nothing here does I/O or imports asyncio; every class is fed bytes and returns values, so the
tests drive them one byte at a time and across arbitrary splits.

Requests (client -> proxy)
    :class:`RequestParser` turns a byte stream into ``(argv, frame)`` pairs: ``argv`` is the
    list of arguments, ``frame`` the exact bytes of that request, forwarded to a backend
    untouched. Both RESP multibulk arrays and inline commands (``PING\\r\\n`` from telnet)
    are accepted, with the same strictness as Redis. Malformed input sets
    :attr:`RequestParser.error`; the requests before it are still returned.

Replies (backend -> proxy)
    :class:`ReplyScanner` finds the boundaries of complete replies, for every RESP2 and RESP3
    type, without decoding them: each reply is handed back as the raw bytes the server sent.
    The scan is resumable, so a large reply arriving in many reads is scanned once.

    Only merged replies (fan-out commands) are looked into, with :func:`split_aggregate`,
    :func:`parse_integer` and :func:`parse_bulk`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from mypy_extensions import i64

CRLF: Final = b"\r\n"


def _canonical_prefix(data: bytes, out: list[tuple[list[bytes], bytes]], max_bulk: i64) -> i64:
    """Parse the whole requests at the start of ``data`` that are in canonical form (``*N``
    then N ``$len`` bulks, decimal lengths without leading zeros, within the limits) into
    ``out``; return where the first request that is partial or not canonical starts (the
    strict parser then reads from there and reports any error exactly as Redis would).

    Written for mypyc: compiled, every byte test and length is a native integer operation."""
    n: i64 = len(data)
    pos: i64 = 0
    while pos < n:
        if data[pos] != _STAR:
            return pos
        p = pos + 1
        count = _length_at(data, p, n)
        if count <= 0 or count > MAX_MULTIBULK:
            return pos  # partial, malformed, *0, *-1, too many: the strict parser decides
        p += _digits(count) + 2
        argv: list[bytes] = []
        while count:
            if p >= n or data[p] != _DOLLAR:
                return pos
            size = _length_at(data, p + 1, n)
            if size < 0 or size > max_bulk:
                return pos
            start = p + 3 + _digits(size)
            p = start + size + 2
            if p > n or data[p - 2] != 13 or data[p - 1] != 10:
                return pos
            argv.append(data[start : start + size])
            count -= 1
        # (a slice copies, even of the whole buffer: one request per read is the -P 1 case)
        out.append((argv, data if pos == 0 and p == n else data[pos:p]))
        pos = p
    return pos


def _length_at(data: bytes, p: i64, n: i64) -> i64:
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


def _digits(n: i64) -> i64:
    """Decimal digits of ``n >= 0``."""
    d: i64 = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


def _string_end(buf: bytes, pos: i64, n: i64) -> i64:
    """End of the bulk string or null (``$-1``, RESP3 ``_``) that starts at ``buf[pos]``
    (``pos < n``); -1 when there is none there: another type, an unusual length, or not all
    of it yet."""
    t = buf[pos]
    if t == 95:  # '_\r\n'
        return pos + 3 if pos + 2 < n and buf[pos + 1] == 13 and buf[pos + 2] == 10 else -1
    if t != _DOLLAR or pos + 1 >= n:
        return -1
    if buf[pos + 1] == 45:  # '$-1\r\n'
        if pos + 4 < n and buf[pos + 2] == 49 and buf[pos + 3] == 13 and buf[pos + 4] == 10:
            return pos + 5
        return -1
    size = _length_at(buf, pos + 1, n)
    if size < 0:
        return -1
    end = pos + 5 + _digits(size) + size
    if end > n or buf[end - 2] != 13 or buf[end - 1] != 10:
        return -1
    return end


_STAR: Final = 42  # '*'
_DOLLAR: Final = 36  # '$'

#: A request with more arguments than this is refused (Redis allows 1024*1024 too).
MAX_MULTIBULK: Final = 1024 * 1024


class _Buffered:
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


class RequestParser(_Buffered):
    """Incremental parser of client requests.

    ``feed(data)`` returns the complete requests found so far as ``(argv, frame)`` tuples.
    A partial request stays buffered. After a protocol error, :attr:`error` holds the message
    (``Protocol error: <error>`` is what the client sees) and the parser refuses further input.
    """

    __slots__ = ("error", "max_bulk", "max_inline")

    def __init__(self, max_bulk: int = 512 * 1024 * 1024, max_inline: int = 64 * 1024) -> None:
        super().__init__()
        self.error: str | None = None
        self.max_bulk = max_bulk
        self.max_inline = max_inline

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete request."""
        return self._have

    def feed(self, data: bytes) -> list[tuple[list[bytes], bytes]]:
        if self.error is not None:
            return []
        out: list[tuple[list[bytes], bytes]] = []
        if not self._buf and not self._need and data and data[0] == _STAR:
            # the usual traffic: whole canonical requests, parsed on native ints when compiled
            done = _canonical_prefix(data, out, self.max_bulk)
            if done == len(data):
                return out
            data = data[done:]  # a partial or unusual request: the strict parser takes over
        buf = self._take(data)
        if buf is None:
            return out
        pos = self._parse(buf, out)
        self._buf = buf[pos:] if pos < len(buf) else b""
        self._have = len(self._buf)
        return out

    def _parse(self, buf: bytes, out: list[tuple[list[bytes], bytes]]) -> int:
        """Parse complete requests of ``buf`` into ``out``; return where the rest starts."""
        n = len(buf)
        pos = 0
        find = buf.find
        max_bulk = self.max_bulk
        while pos < n:
            if buf[pos] != _STAR:
                nxt = self._inline(buf, pos, out)
                if nxt < 0:
                    return pos
                pos = nxt
                continue
            nl = find(CRLF, pos)
            if nl < 0:
                if n - pos > self.max_inline:
                    self.error = "too big mbulk count string"
                return pos
            head = buf[pos + 1 : nl]
            if head.isdigit() and (head[0] != 48 or len(head) == 1):  # no leading zero, as Redis
                count = int(head)
                if count > MAX_MULTIBULK:
                    self.error = "invalid multibulk length"
                    return pos
            elif head[:1] == b"-" and head[1:].isdigit() and head[1] != 48:
                pos = nl + 2  # "*-1": Redis ignores a null request
                continue
            else:
                self.error = "invalid multibulk length"
                return pos
            if count == 0:
                pos = nl + 2
                continue
            p = nl + 2
            argv: list[bytes] = []
            append = argv.append
            for _ in range(count):
                if p >= n:
                    return pos
                if buf[p] != _DOLLAR:
                    self.error = f"expected '$', got '{chr(buf[p])}'"
                    return pos
                nl = find(CRLF, p)
                if nl < 0:
                    if n - p > 32:
                        self.error = "invalid bulk length"
                    return pos
                head = buf[p + 1 : nl]
                if not head.isdigit() or (head[0] == 48 and len(head) > 1):
                    self.error = "invalid bulk length"
                    return pos
                length = int(head)
                if length > max_bulk:
                    self.error = "invalid bulk length"
                    return pos
                start = nl + 2
                end = start + length
                if end + 2 > n:
                    # Wait for the whole argument before parsing again; the rest of the
                    # frame has at least one more byte per argument left.
                    self._need = (end + 2 - pos) + (count - len(argv) - 1) * 4
                    return pos
                # Like Redis, the two bytes after the data are skipped, not checked (the
                # backend reads the forwarded frame the same way).
                append(buf[start:end])
                p = end + 2
            out.append((argv, buf[pos:p]))
            pos = p
        return pos

    def _inline(self, buf: bytes, pos: int, out: list[tuple[list[bytes], bytes]]) -> int:
        """An inline command (telnet style). Returns the next position, or -1 if incomplete."""
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > self.max_inline:
                self.error = "too big inline request"
            return -1
        line = buf[pos:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            argv = split_inline(line)
        except ValueError:
            self.error = "unbalanced quotes in request"
            return -1
        if argv:
            out.append((argv, encode_command(argv)))
        return nl + 1


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line into arguments, with Redis's quoting rules.

    Double quotes allow the escapes ``\\n \\r \\t \\b \\a \\\\ \\"`` and ``\\xHH``; single
    quotes allow only ``\\'``. A closing quote must be followed by a space or the end.
    Raises ValueError for unbalanced quotes.
    """
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
    while True:
        while i < n and line[i] in b" \t\n\r":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ValueError("unbalanced quotes")
                break
            c = line[i]
            if quote == 34:  # "..."
                hexpart = line[i + 2 : i + 4]
                if (
                    c == 92
                    and i + 3 < n
                    and line[i + 1] == ord("x")
                    and len(hexpart) == 2
                    and all(ch in b"0123456789abcdefABCDEF" for ch in hexpart)
                ):
                    cur.append(int(hexpart, 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur += escapes.get(line[i], bytes([line[i]]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r":
                        raise ValueError("closing quote must be followed by a space")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 39:  # '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r":
                        raise ValueError("closing quote must be followed by a space")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if c in b" \t\n\r":
                    break
                if c in (34, 39):
                    quote = c
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


# ---------------------------------------------------------------------------------------------
# Replies

# simple, error, integer, null, double, boolean, big number
_LINE_TYPES: Final = frozenset(b"+-:_,#(")
_BLOB_TYPES: Final = frozenset(b"$!=")  # bulk string, blob error, verbatim string
_AGG_TYPES: Final = frozenset(b"*~>")  # array, set, push
_MAP_TYPES: Final = frozenset(b"%|")  # map, attribute (pairs)
_ATTRIBUTE: Final = 124  # '|'
PUSH: Final = 62  # '>'
ERROR: Final = 45  # '-'


class ReplyError(ValueError):
    """A backend sent bytes that are not a RESP reply."""


class ReplyScanner(_Buffered):
    """Splits a backend byte stream into raw reply frames without decoding them.

    ``feed(data)`` returns the list of complete replies (bytes, exactly as received). State
    for a partial reply is kept so that it is scanned only once. Raises :class:`ReplyError`
    on bytes that cannot be RESP; the connection must then be dropped.
    """

    __slots__ = ("_pos", "_remaining")

    def __init__(self) -> None:
        super().__init__()  # _buf starts at the first byte of the incomplete reply
        self._pos = 0  # scan position inside _buf for the incomplete reply
        self._remaining = 0  # values still to scan for the incomplete reply (0: none started)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._take(data)
        if buf is None:
            return []
        out: list[bytes] = []
        n = len(buf)
        start = 0  # start of the current reply
        pos = self._pos
        remaining = self._remaining
        find = buf.find
        if not remaining:
            # Fast path: top-level bulk strings and one-line replies, the usual traffic.
            while start < n:
                t = buf[start]
                if t == 36 or t == 95:  # a bulk string or a null
                    end = _string_end(buf, start, n)
                    if end < 0:
                        break  # partial, or something the general scan decides on
                elif t == 43 or t == 58 or t == 45:  # '+' ':' '-'
                    # a short line (+OK, :1): a native scan to its CR, then the search
                    cr: i64 = start + 1
                    while cr < n and cr - start < 32 and buf[cr] != 13:
                        cr += 1
                    nl = cr if cr < n and buf[cr] == 13 else buf.find(CRLF, start)
                    if nl < 0 or nl + 1 >= n or buf[nl + 1] != 10:
                        break  # (the scan decides: partial, or a lone CR in the line)
                    end = nl + 2
                else:
                    break
                out.append(buf if start == 0 and end == n else buf[start:end])
                start = end
        while True:
            if remaining == 0:
                if start >= n:
                    break
                remaining = 1
                pos = start
            # Scan values until this reply is complete or the data runs out.
            while remaining:
                if pos >= n:
                    break
                t = buf[pos]
                nl = find(CRLF, pos)
                if nl < 0:
                    break
                if t in _LINE_TYPES:
                    pos = nl + 2
                    remaining -= 1
                elif t in _BLOB_TYPES:
                    try:
                        length = int(buf[pos + 1 : nl])
                    except ValueError:
                        raise ReplyError(f"bad length line {buf[pos:nl][:40]!r}") from None
                    if length < 0:
                        pos = nl + 2
                    else:
                        end = nl + 2 + length + 2
                        if end > n:
                            self._need = end - start
                            break
                        pos = end
                    remaining -= 1
                elif t in _AGG_TYPES or t in _MAP_TYPES:
                    try:
                        count = int(buf[pos + 1 : nl])
                    except ValueError:
                        raise ReplyError(f"bad length line {buf[pos:nl][:40]!r}") from None
                    pos = nl + 2
                    if count > 0:
                        remaining += count * 2 if t in _MAP_TYPES else count
                    if t != _ATTRIBUTE:
                        # an attribute is followed by the value it annotates: that value
                        # replaces the attribute in the count
                        remaining -= 1
                else:
                    raise ReplyError(f"unexpected byte {bytes([t])!r} in reply")
            if remaining:
                break
            out.append(buf[start:pos])
            start = pos
        if remaining:  # an incomplete reply starts at `start`
            self._buf = buf[start:] if start else buf
            self._pos = pos - start
        else:
            self._buf = b""
            self._pos = 0
        self._remaining = remaining
        self._have = len(self._buf)
        return out

    @property
    def buffered(self) -> int:
        return self._have


def reply_end(buf: bytes, pos: int) -> int:
    """End offset of the complete reply starting at ``pos`` in ``buf``, or -1 if incomplete."""
    n = len(buf)
    remaining = 1
    while remaining:
        if pos >= n:
            return -1
        t = buf[pos]
        nl = buf.find(CRLF, pos)
        if nl < 0:
            return -1
        if t in _LINE_TYPES:
            pos = nl + 2
        elif t in _BLOB_TYPES:
            length = int(buf[pos + 1 : nl])
            pos = nl + 2 if length < 0 else nl + 4 + length
            if pos > n:
                return -1
        elif t in _AGG_TYPES or t in _MAP_TYPES:
            count = int(buf[pos + 1 : nl])
            pos = nl + 2
            if count > 0:
                remaining += count * 2 if t in _MAP_TYPES else count
            if t == _ATTRIBUTE:
                continue
        else:
            raise ReplyError(f"unexpected byte {bytes([t])!r} in reply")
        remaining -= 1
    return pos


def split_strings(raw: bytes) -> list[bytes] | None:
    """The raw elements of ``raw`` when it is exactly an array of bulk strings and nulls (an
    MGET reply, in either protocol); None for anything else (then use split_aggregate). A
    native-int scan when compiled, without decoding or re-encoding an element."""
    n: i64 = len(raw)
    if n < 4 or raw[0] != _STAR:
        return None
    count = _length_at(raw, 1, n)
    if count < 0:
        return None
    pos = 3 + _digits(count)
    items: list[bytes] = []
    while count:
        end = _string_end(raw, pos, n) if pos < n else -1
        if end < 0:
            return None
        items.append(raw[pos:end])
        pos = end
        count -= 1
    return items if pos == n else None


def split_aggregate(raw: bytes) -> list[bytes] | None:
    """The raw elements of an array/set/push reply (None for a null array).

    Leading attributes are skipped. Raises ReplyError if ``raw`` is not an aggregate.
    """
    pos = 0
    while raw[pos] == _ATTRIBUTE:  # skip the attribute's pairs, keep the value after them
        nl = raw.find(CRLF, pos)
        pairs = int(raw[pos + 1 : nl])
        pos = nl + 2
        for _ in range(2 * pairs):
            pos = reply_end(raw, pos)
    nl = raw.find(CRLF, pos)
    if raw[pos] not in _AGG_TYPES:
        raise ReplyError(f"expected an array, got {raw[:40]!r}")
    count = int(raw[pos + 1 : nl])
    if count < 0:
        return None
    pos = nl + 2
    items = []
    for _ in range(count):
        end = reply_end(raw, pos)
        items.append(raw[pos:end])
        pos = end
    return items


def parse_integer(raw: bytes) -> int:
    """Value of an integer reply ``:N``; raises ReplyError otherwise."""
    if raw[:1] != b":":
        raise ReplyError(f"expected an integer, got {raw[:40]!r}")
    return int(raw[1:-2])


def parse_bulk(raw: bytes) -> bytes | None:
    """Value of a bulk/simple/verbatim string reply (None for null)."""
    t = raw[:1]
    if t == b"+":
        return raw[1:-2]
    if t in (b"$", b"="):
        nl = raw.find(CRLF)
        length = int(raw[1:nl])
        if length < 0:
            return None
        body = raw[nl + 2 : nl + 2 + length]
        return body[4:] if t == b"=" else body
    if raw == b"_\r\n":
        return None
    raise ReplyError(f"expected a string, got {raw[:40]!r}")


def is_error(raw: bytes) -> bool:
    return raw[0] == ERROR or raw[:1] == b"!"


# ---------------------------------------------------------------------------------------------
# Encoders (used for requests the proxy builds and replies it answers itself)


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
