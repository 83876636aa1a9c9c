"""Client requests, sans-IO: bytes in, ``(argv, frame)`` pairs out.

:class:`RequestParser` turns a byte stream into ``(argv, frame)`` pairs: ``argv`` is the list of
arguments, ``frame`` the exact bytes of that request, forwarded to a backend untouched. Both
RESP multibulk arrays and inline commands (``PING\\r\\n`` from telnet) are accepted, with
the same strictness as Redis. Malformed input sets :attr:`RequestParser.error`; the requests
before it are still returned. Nothing here does I/O, so the tests feed it one byte at a time
and across arbitrary splits.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from shardproxy.protocol.encode import encode_command
from shardproxy.protocol.framing import CRLF, DOLLAR, STAR, Buffered, digits, length_at

#: A request with more arguments than this is refused (Redis allows 1024*1024 too).
MAX_MULTIBULK: Final = 1024 * 1024
#: ... and, from a client that has not authenticated yet (when authentication is required),
#: more arguments or a longer one than these (Redis's limits for strangers)
UNAUTH_MULTIBULK: Final = 10
UNAUTH_BULK: Final = 16384


def _canonical_prefix(
    data: bytes, out: list[tuple[list[bytes], bytes]], max_bulk: i64, max_count: i64
) -> i64:
    """Parse the whole requests at the start of ``data`` that are in canonical form (``*N``
    then N ``$len`` bulks, decimal lengths without leading zeros, within the limits) into
    ``out``; return where the first request that is partial or not canonical starts (the
    strict parser then reads from there and reports any error exactly as Redis would).

    Written for mypyc: compiled, every byte test and length is a native integer operation."""
    n: i64 = len(data)
    pos: i64 = 0
    while pos < n:
        if data[pos] != STAR:
            return pos
        p = pos + 1
        count = length_at(data, p, n)
        if count <= 0 or count > max_count:
            return pos  # partial, malformed, *0, *-1, too many: the strict parser decides
        p += digits(count) + 2
        argv: list[bytes] = []
        while count:
            if p >= n or data[p] != DOLLAR:
                return pos
            size = length_at(data, p + 1, n)
            if size < 0 or size > max_bulk:
                return pos
            start = p + 3 + digits(size)
            p = start + size + 2
            if p > n or data[p - 2] != 13 or data[p - 1] != 10:
                return pos
            argv.append(data[start : start + size])
            count -= 1
        # (a slice copies, even of the whole buffer: one request per read is the -P 1 case)
        out.append((argv, data if pos == 0 and p == n else data[pos:p]))
        pos = p
    return pos


class RequestParser(Buffered):
    """Incremental parser of client requests.

    ``feed(data)`` returns the complete requests found so far as ``(argv, frame)`` tuples.
    A partial request stays buffered. After a protocol error, :attr:`error` holds the message
    (``Protocol error: <error>`` is what the client sees) and the parser refuses further input.
    """

    __slots__ = ("error", "limit_bulk", "max_bulk", "max_count", "max_inline", "unauthenticated")

    def __init__(self, max_bulk: int = 512 * 1024 * 1024, max_inline: int = 64 * 1024) -> None:
        super().__init__()
        self.error: str | None = None
        self.limit_bulk = max_bulk  # the configured limit
        self.max_bulk = max_bulk  # the limit now (smaller for a client not authenticated)
        self.max_count = MAX_MULTIBULK
        self.max_inline = max_inline
        self.unauthenticated = False

    def require_auth(self, unauthenticated: bool) -> None:
        """Apply (or lift) the limits for a client that has not authenticated."""
        self.unauthenticated = unauthenticated
        self.max_count = UNAUTH_MULTIBULK if unauthenticated else MAX_MULTIBULK
        self.max_bulk = min(self.limit_bulk, UNAUTH_BULK) if unauthenticated else self.limit_bulk

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete request."""
        return self._have

    def feed(self, data: bytes) -> list[tuple[list[bytes], bytes]]:
        if self.error is not None:
            return []
        out: list[tuple[list[bytes], bytes]] = []
        if not self._buf and not self._need and data and data[0] == STAR:
            # the usual traffic: whole canonical requests, parsed on native ints when compiled
            done = _canonical_prefix(data, out, self.max_bulk, self.max_count)
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
            if buf[pos] != STAR:
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
            if len(head) > 20:  # (more digits than any 64-bit count: never int() them)
                self.error = "invalid multibulk length"
                return pos
            if head.isdigit() and (head[0] != 48 or len(head) == 1):  # no leading zero, as Redis
                count = int(head)
                if count > MAX_MULTIBULK:
                    self.error = "invalid multibulk length"
                    return pos
                if count > self.max_count:
                    self.error = "unauthenticated multibulk length"
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
                if buf[p] != DOLLAR:
                    self.error = f"expected '$', got '{chr(buf[p])}'"
                    return pos
                nl = find(CRLF, p)
                if nl < 0:
                    if n - p > 32:
                        self.error = "invalid bulk length"
                    return pos
                head = buf[p + 1 : nl]
                if len(head) > 20 or not head.isdigit() or (head[0] == 48 and len(head) > 1):
                    self.error = "invalid bulk length"
                    return pos
                length = int(head)
                if length > max_bulk:
                    too_big = self.unauthenticated and length <= self.limit_bulk
                    self.error = "unauthenticated bulk length" if too_big else "invalid bulk length"
                    return pos
                start = nl + 2
                end = start + length
                if end + 2 > n:
                    # Wait for the whole argument before parsing again (no more: a
                    # malformed next item is one byte, and Redis answers it at once).
                    self._need = end + 2 - pos
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
