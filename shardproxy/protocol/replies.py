"""Backend replies, sans-IO: boundaries found without decoding, and the few decoders.

:class:`ReplyScanner` finds the boundaries of complete replies, for every RESP2 and RESP3 type,
without decoding them: each reply is handed back as the raw bytes the server sent. The scan is
resumable, so a large reply arriving in many reads is scanned once. One value walk
(:func:`_walk`) serves the scanner and :func:`reply_end`.

Only merged replies (fan-out commands) and the proxy's own control-plane calls are looked into,
with :func:`split_strings`, :func:`split_aggregate`, :func:`parse_integer`, :func:`parse_bulk`
and :func:`decode`.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from shardproxy.protocol.framing import CRLF, STAR, Buffered, digits, length_at, string_end

_LINE_TYPES: Final = frozenset(b"+-:_,#(")
_BLOB_TYPES: Final = frozenset(b"$!=")  # bulk string, blob error, verbatim string
_AGG_TYPES: Final = frozenset(b"*~>")  # array, set, push
_MAP_TYPES: Final = frozenset(b"%|")  # map, attribute (pairs)
_ATTRIBUTE: Final = 124  # '|'
ERROR: Final = 45  # '-'


class ReplyError(ValueError):
    """A backend sent bytes that are not a RESP reply."""


class ReplyScanner(Buffered):
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
        if not remaining:
            # Fast path: top-level bulk strings and one-line replies, the usual traffic.
            while start < n:
                t = buf[start]
                if t == 36 or t == 95:  # a bulk string or a null
                    end = string_end(buf, start, n)
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
                elif t == STAR:  # an array of bulk strings and nulls (MGET, LRANGE ...)
                    end = strings_end(buf, start, n)
                    if end < 0:
                        break  # partial, nested, or unusual: the general scan decides
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
            pos, remaining, need = _walk(buf, pos, n, remaining)
            if need:
                self._need = need - start
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


def _walk(buf: bytes, pos: int, n: int, remaining: int) -> tuple[int, int, int]:
    """Scan ``remaining`` values of ``buf[:n]`` from ``pos``; aggregates add their elements.

    Returns ``(pos, remaining, need)``: where the scan stopped, the values still unscanned (0
    when the reply is complete), and, when it stopped inside a bulk string, the offset the
    buffer must reach first (else 0). Raises :class:`ReplyError` on bytes that are not RESP."""
    find = buf.find
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
                    return pos, remaining, end
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
                # an attribute is followed by the value it annotates: that value replaces
                # the attribute in the count
                remaining -= 1
        else:
            raise ReplyError(f"unexpected byte {bytes([t])!r} in reply")
    return pos, remaining, 0


def reply_end(buf: bytes, pos: int) -> int:
    """End offset of the complete reply starting at ``pos`` in ``buf``, or -1 if incomplete."""
    end, remaining, _ = _walk(buf, pos, len(buf), 1)
    return -1 if remaining else end


def strings_end(buf: bytes, pos: i64, n: i64) -> i64:
    """End of the array of bulk strings and nulls that starts at ``buf[pos]`` (a ``*``);
    -1 when it is not all there, or holds anything else (then the general scan decides)."""
    count = length_at(buf, pos + 1, n)
    if count < 0:
        return -1
    pos += 3 + digits(count)
    while count:
        if pos >= n:
            return -1
        pos = string_end(buf, pos, n)
        if pos < 0:
            return -1
        count -= 1
    return pos


def split_strings(raw: bytes) -> list[bytes] | None:
    """The raw elements of ``raw`` when it is exactly an array of bulk strings and nulls (an
    MGET reply, in either protocol); None for anything else (then use split_aggregate). A
    native-int scan when compiled, without decoding or re-encoding an element."""
    n: i64 = len(raw)
    if n < 4 or raw[0] != STAR:
        return None
    count = length_at(raw, 1, n)
    if count < 0:
        return None
    # (plain ints for the slice bounds: compiled, a slice on i64 bounds goes through a
    # slice object)
    pos: int = 3 + digits(count)
    items: list[bytes] = []
    while count:
        end: int = string_end(raw, pos, n) if pos < n else -1
        if end < 0:
            return None
        items.append(raw[pos:end])
        pos = end
        count -= 1
    return items if pos == n else None


def place_strings(raw: bytes, where: list[int], out: list[bytes]) -> bool:
    """Put the raw elements of ``raw``, an array of ``len(where)`` bulk strings and nulls (an
    MGET leg's reply), at ``out[where[i] + 1]``, without a list of them in between; False when
    ``raw`` is anything else (``out`` may then hold some of them: use split_aggregate)."""
    n: i64 = len(raw)
    if n < 4 or raw[0] != STAR:
        return False
    count = length_at(raw, 1, n)
    if count != len(where):
        return False
    pos: int = 3 + digits(count)  # (plain ints for the slice bounds, as in split_strings)
    for p in where:
        end: int = string_end(raw, pos, n) if pos < n else -1
        if end < 0:
            return False
        out[p + 1] = raw[pos:end]
        pos = end
    return pos == n


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


RespValue = bytes | int | float | bool | None | list["RespValue"] | dict[bytes, "RespValue"]


class RedisReplyError(Exception):
    """An error reply, decoded (control-plane calls raise it)."""


def decode(raw: bytes) -> RespValue:
    """One whole reply decoded into Python values, for the proxy's control-plane calls (health
    probes, Sentinel, the command-table generator), never on the data path: strings as bytes,
    integers, doubles, booleans, None, lists (arrays, sets, pushes), dicts (maps). Attributes
    are skipped; an error reply decodes to its text (:func:`value` raises it instead)."""
    item, end = _decode_at(raw, 0)
    if end != len(raw):
        raise ReplyError(f"trailing bytes after a reply: {raw[end : end + 40]!r}")
    return item


def value(raw: bytes) -> RespValue:
    """:func:`decode`, raising :class:`RedisReplyError` for an error reply."""
    if is_error(raw):
        raise RedisReplyError(error_text(raw))
    return decode(raw)


def error_text(raw: bytes) -> str:
    """The message of an error reply (simple or blob), without the type byte and CRLF."""
    if raw[:1] == b"!":
        nl = raw.find(CRLF)
        return raw[nl + 2 : -2].decode("utf-8", "replace")
    return raw[1:-2].decode("utf-8", "replace")


def _decode_at(raw: bytes, pos: int) -> tuple[RespValue, int]:
    nl = raw.find(CRLF, pos)
    if nl < 0:
        raise ReplyError("incomplete reply")
    t = raw[pos]
    head = raw[pos + 1 : nl]
    nxt = nl + 2
    if t == 43 or t == 45:  # '+' '-'
        return head, nxt
    if t == 58:  # ':'
        return int(head), nxt
    if t == 95:  # '_'
        return None, nxt
    if t == 44:  # ','
        return float(head), nxt
    if t == 35:  # '#'
        return head == b"t", nxt
    if t == 40:  # '('
        return int(head), nxt
    if t in _BLOB_TYPES:
        length = int(head)
        if length < 0:
            return None, nxt
        body = raw[nxt : nxt + length]
        return (body[4:] if t == 61 else body), nxt + length + 2
    if t in _AGG_TYPES or t in _MAP_TYPES:
        count = int(head)
        if count < 0:
            return None, nxt
        pos = nxt
        if t in _MAP_TYPES:
            pairs: dict[bytes, RespValue] = {}
            for _ in range(count):
                k, pos = _decode_at(raw, pos)
                v, pos = _decode_at(raw, pos)
                pairs[k if isinstance(k, bytes) else str(k).encode()] = v
            if t == _ATTRIBUTE:
                return _decode_at(raw, pos)  # the value the attribute annotates
            return pairs, pos
        items: list[RespValue] = []
        for _ in range(count):
            item, pos = _decode_at(raw, pos)
            items.append(item)
        return items, pos
    raise ReplyError(f"unexpected byte {bytes([t])!r} in reply")
