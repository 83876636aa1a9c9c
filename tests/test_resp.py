"""The sans-IO RESP codec: request parser, reply scanner, reply helpers and encoders.

Everything here is pure: bytes in, values out. Streams are fed whole, one byte at a time and
at random split points (hypothesis) and must always give the same result. hiredis serves as an
independent decoder for the encoders' output.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardproxy.protocol import encode, framing, replies, requests
from shardproxy.protocol.encode import (
    OK,
    PONG,
    array,
    bulk,
    encode_command,
    integer,
    map_reply,
    null,
    null_array,
    simple,
    verbatim,
)
from shardproxy.protocol.replies import (
    ReplyError,
    ReplyScanner,
    is_error,
    parse_bulk,
    parse_integer,
    place_strings,
    reply_end,
    split_aggregate,
    split_strings,
)
from shardproxy.protocol.requests import MAX_MULTIBULK, RequestParser

# Bounded so that the whole file runs in a few seconds; no example database on disk.
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Request = tuple[list[bytes], bytes]


# ---------------------------------------------------------------------------------------------
# helpers


def pieces_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (duplicates and out-of-range offsets are harmless)."""
    points = sorted({0, len(data), *(c for c in cuts if 0 <= c <= len(data))})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def parse_pieces(parser: RequestParser, pieces: Iterable[bytes]) -> list[Request]:
    out: list[Request] = []
    for p in pieces:
        out.extend(parser.feed(p))
    return out


def scan_pieces(scanner: ReplyScanner, pieces: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for p in pieces:
        out.extend(scanner.feed(p))
    return out


def mb(*argv: bytes) -> Request:
    """A multibulk request and what the parser must return for it."""
    return list(argv), encode_command(argv)


def hiredis_decode(data: bytes) -> Any:
    reader = hiredis.Reader()
    reader.feed(data)
    value = reader.gets()
    assert reader.gets() is False, "hiredis found more than one reply"
    return value


# ---------------------------------------------------------------------------------------------
# RequestParser: multibulk


def test_multibulk_single_request_whole() -> None:
    frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"
    p = RequestParser()
    assert p.feed(frame) == [([b"SET", b"k", b"value"], frame)]
    assert p.error is None
    assert p.buffered == 0


def test_multibulk_frame_is_exact_input_slice() -> None:
    a = b"*1\r\n$4\r\nPING\r\n"
    b = b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"
    c = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
    out = RequestParser().feed(a + b + c)
    assert out == [([b"PING"], a), ([b"ECHO", b""], b), ([b"GET", b"key"], c)]
    # the frames are slices of the input, forwarded untouched
    assert b"".join(frame for _, frame in out) == a + b + c


def test_multibulk_one_byte_at_a_time() -> None:
    reqs = [mb(b"SET", b"k", b"v"), mb(b"GET", b"k"), mb(b"MSET", b"a", b"1", b"b", b"22")]
    stream = b"".join(f for _, f in reqs)
    p = RequestParser()
    got: list[Request] = []
    for i, piece in enumerate(bytewise(stream)):
        got.extend(p.feed(piece))
        assert p.buffered == i + 1 - sum(len(f) for _, f in got)
    assert got == reqs
    assert p.error is None
    assert p.buffered == 0


def test_partial_request_stays_buffered() -> None:
    p = RequestParser()
    assert p.feed(b"*2\r\n$3\r\nGET\r\n$3\r\nke") == []
    assert p.buffered == len(b"*2\r\n$3\r\nGET\r\n$3\r\nke")
    assert p.feed(b"y\r\n*1\r\n$4\r\nPI") == [mb(b"GET", b"key")]
    assert p.buffered == len(b"*1\r\n$4\r\nPI")
    assert p.feed(b"NG\r\n") == [mb(b"PING")]
    assert p.buffered == 0


@pytest.mark.parametrize("empty", [b"*0\r\n", b"*-1\r\n", b"*-5\r\n"])
def test_empty_and_null_multibulk_ignored(empty: bytes) -> None:
    stream = empty + b"*1\r\n$4\r\nPING\r\n" + empty + empty + b"*1\r\n$4\r\nQUIT\r\n" + empty
    for pieces in ([stream], bytewise(stream)):
        p = RequestParser()
        assert parse_pieces(p, pieces) == [mb(b"PING"), mb(b"QUIT")]
        assert p.error is None
        assert p.buffered == 0


def test_binary_safe_arguments() -> None:
    weird = [b"a\r\nb", b"\r\n", b"*1\r\n$4\r\nPING\r\n", b"$-1\r\n", b"\x00\xff\n\r", b""]
    req = mb(b"SET", *weird)
    for pieces in ([req[1]], bytewise(req[1]), pieces_at(req[1], range(0, len(req[1]), 3))):
        p = RequestParser()
        assert parse_pieces(p, pieces) == [req]
        assert p.error is None


def test_large_bulk_in_many_chunks() -> None:
    big = (os.urandom(4096) + b"\r\n") * 256  # ~1 MB with CRLFs inside
    req = mb(b"SET", b"big", big)
    after = mb(b"GET", b"big")
    stream = req[1] + after[1]
    p = RequestParser()
    got: list[Request] = []
    pieces = chunked(stream, 1000)
    for i, piece in enumerate(pieces):
        out = p.feed(piece)
        if i < len(pieces) - 1:
            assert out == [] or out == [req]
        got.extend(out)
    assert got == [req, after]
    assert got[0][0][2] == big
    assert p.buffered == 0
    assert p.error is None


def test_large_bulk_buffered_counts_held_back_chunks() -> None:
    p = RequestParser()
    head = b"*2\r\n$3\r\nGET\r\n$100\r\n"
    assert p.feed(head + b"x" * 10) == []
    assert p.buffered == len(head) + 10
    for i in range(1, 9):
        assert p.feed(b"x" * 10) == []
        assert p.buffered == len(head) + 10 + 10 * i
    assert p.feed(b"x" * 10 + b"\r\n") == [mb(b"GET", b"x" * 100)]
    assert p.buffered == 0


def test_bulk_exactly_max_bulk_is_accepted() -> None:
    p = RequestParser(max_bulk=10)
    assert p.feed(b"*1\r\n$10\r\n0123456789\r\n") == [mb(b"0123456789")]
    assert p.error is None


def test_max_multibulk_count_is_accepted() -> None:
    p = RequestParser()
    assert p.feed(b"*%d\r\n" % MAX_MULTIBULK) == []
    assert p.error is None


# ---------------------------------------------------------------------------------------------
# RequestParser: inline


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        (b"PING\r\n", [b"PING"]),
        (b"set a b\n", [b"set", b"a", b"b"]),
        (b"  get \t key  \r\n", [b"get", b"key"]),
        (b'set k "a\\x41"\r\n', [b"set", b"k", b"aA"]),
        (b"set k 'it\\'s'\r\n", [b"set", b"k", b"it's"]),
        (b'echo "a\\n\\r\\t\\b\\a\\\\\\"z"\r\n', [b"echo", b'a\n\r\t\b\a\\"z']),
        (b'echo "\\xZZ" "\\x4"\r\n', [b"echo", b"xZZ", b"x4"]),
        (b'echo "\\xff\\x00"\r\n', [b"echo", b"\xff\x00"]),
        (b"echo 'a\\nb' 'x\"y'\r\n", [b"echo", b"a\\nb", b'x"y']),
        (b"echo \"\" ''\r\n", [b"echo", b"", b""]),
        (b'echo a"b c"\r\n', [b"echo", b"ab c"]),
        (b'echo "a b"  "c"\r\n', [b"echo", b"a b", b"c"]),
    ],
)
def test_inline_commands(line: bytes, argv: list[bytes]) -> None:
    for pieces in ([line], bytewise(line)):
        p = RequestParser()
        assert parse_pieces(p, pieces) == [(argv, encode_command(argv))]
        assert p.error is None
        assert p.buffered == 0


def test_inline_empty_lines_ignored() -> None:
    stream = b"\r\n\n  \r\n\t\nPING\r\n\r\n\nECHO hi\n\r\n"
    for pieces in ([stream], bytewise(stream)):
        p = RequestParser()
        assert parse_pieces(p, pieces) == [mb(b"PING"), mb(b"ECHO", b"hi")]
        assert p.error is None
        assert p.buffered == 0


def test_inline_and_multibulk_mixed() -> None:
    stream = b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nset a 'b c'\n*0\r\nGET a\r\n"
    expected = [mb(b"PING"), mb(b"ECHO", b"hi"), mb(b"set", b"a", b"b c"), mb(b"GET", b"a")]
    for pieces in ([stream], bytewise(stream), pieces_at(stream, [5, 7, 20, 30])):
        assert parse_pieces(RequestParser(), pieces) == expected


def test_inline_incomplete_line_waits() -> None:
    p = RequestParser()
    assert p.feed(b"PIN") == []
    assert p.buffered == 3
    assert p.feed(b"G\r") == []
    assert p.feed(b"\n") == [mb(b"PING")]
    assert p.buffered == 0


def test_inline_line_up_to_max_inline_is_accepted() -> None:
    p = RequestParser(max_inline=16)
    assert p.feed(b"x" * 16) == []
    assert p.error is None
    assert p.feed(b"\n") == [mb(b"x" * 16)]


# ---------------------------------------------------------------------------------------------
# RequestParser: protocol errors

GOOD = b"*1\r\n$4\r\nPING\r\n"
AFTER = b"*1\r\n$4\r\nQUIT\r\nPING\r\n"

ERROR_CASES: list[tuple[str, dict[str, int], bytes, str]] = [
    ("mbulk-letter", {}, b"*x\r\n", "invalid multibulk length"),
    ("mbulk-underscore", {}, b"*1_0\r\n", "invalid multibulk length"),
    ("mbulk-space", {}, b"* 3\r\n", "invalid multibulk length"),
    ("mbulk-plus", {}, b"*+3\r\n", "invalid multibulk length"),
    ("mbulk-empty", {}, b"*\r\n", "invalid multibulk length"),
    ("mbulk-minus-only", {}, b"*-\r\n", "invalid multibulk length"),
    ("mbulk-too-many", {}, b"*%d\r\n" % (MAX_MULTIBULK + 1), "invalid multibulk length"),
    ("mbulk-count-too-long", {"max_inline": 16}, b"*" + b"1" * 20, "too big mbulk count string"),
    ("bulk-letter", {}, b"*1\r\n$x\r\n", "invalid bulk length"),
    ("bulk-negative", {}, b"*1\r\n$-1\r\n", "invalid bulk length"),
    ("bulk-plus", {}, b"*1\r\n$+3\r\nabc\r\n", "invalid bulk length"),
    ("bulk-space", {}, b"*1\r\n$ 3\r\nabc\r\n", "invalid bulk length"),
    ("bulk-underscore", {}, b"*1\r\n$1_0\r\n", "invalid bulk length"),
    ("bulk-empty", {}, b"*1\r\n$\r\n", "invalid bulk length"),
    ("bulk-over-max", {"max_bulk": 10}, b"*1\r\n$11\r\n", "invalid bulk length"),
    ("dollar-expected", {}, b"*1\r\nx\r\n", "expected '$', got 'x'"),
    ("dollar-expected-2nd", {}, b"*2\r\n$1\r\na\r\n:1\r\n", "expected '$', got ':'"),
    ("unbalanced-dquote", {}, b'set "a\r\n', "unbalanced quotes in request"),
    ("unbalanced-squote", {}, b"set 'a\r\n", "unbalanced quotes in request"),
    ("unbalanced-escaped-end", {}, b'set "a\\"\r\n', "unbalanced quotes in request"),
    ("dquote-then-char", {}, b'set "a"b\r\n', "unbalanced quotes in request"),
    ("squote-then-char", {}, b"set 'a'b\r\n", "unbalanced quotes in request"),
    ("inline-too-long", {"max_inline": 16}, b"x" * 17, "too big inline request"),
]


@pytest.mark.parametrize(
    ("kwargs", "bad", "message"),
    [pytest.param(k, b, m, id=i) for i, k, b, m in ERROR_CASES],
)
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_protocol_errors(kwargs: dict[str, int], bad: bytes, message: str, mode: str) -> None:
    p = RequestParser(**kwargs)
    stream = GOOD + bad
    pieces = [stream] if mode == "whole" else bytewise(stream)
    got = parse_pieces(p, pieces)
    assert got == [mb(b"PING")]  # the request before the error is still returned
    assert p.error == message
    # nothing after the error, and the error sticks
    assert p.feed(AFTER) == []
    assert p.feed(GOOD) == []
    assert p.error == message


def test_bulk_count_line_without_crlf_is_an_error() -> None:
    p = RequestParser()
    assert p.feed(GOOD + b"*1\r\n$" + b"1" * 40) == [mb(b"PING")]
    assert p.error in ("invalid bulk length", "too big bulk count string")
    assert p.feed(GOOD) == []


def test_error_in_later_feed_keeps_earlier_results() -> None:
    p = RequestParser()
    assert p.feed(GOOD + GOOD) == [mb(b"PING"), mb(b"PING")]
    assert p.feed(GOOD + b"*2\r\n$1\r\na\r\n$1\r\nb\r\n" + b"*z\r\n" + GOOD) == [
        mb(b"PING"),
        mb(b"a", b"b"),
    ]
    assert p.error == "invalid multibulk length"


# Redis 7 (string2ll) rejects leading zeros and "-0" in both length lines (checked against
# redis-server 7.0.15). Since the parser forwards the frame untouched, accepting such a frame
# makes the *backend* answer a protocol error and close the shared connection.
LEADING_ZERO_CASES = [
    ("mbulk-leading-zero", b"*01\r\n$4\r\nPING\r\n", "invalid multibulk length"),
    ("mbulk-double-zero", b"*00\r\n", "invalid multibulk length"),
    ("mbulk-minus-zero", b"*-0\r\n", "invalid multibulk length"),
    ("mbulk-minus-leading-zero", b"*-01\r\n", "invalid multibulk length"),
    ("bulk-leading-zero", b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
    ("bulk-double-zero", b"*1\r\n$00\r\n\r\n", "invalid bulk length"),
]


@pytest.mark.parametrize(
    ("bad", "message"), [pytest.param(b, m, id=i) for i, b, m in LEADING_ZERO_CASES]
)
def test_length_with_leading_zero_rejected_like_redis(bad: bytes, message: str) -> None:
    p = RequestParser()
    assert p.feed(GOOD + bad + GOOD) == [mb(b"PING")]
    assert p.error == message


# ---------------------------------------------------------------------------------------------
# RequestParser: random streams (hypothesis)

PLAIN = st.binary(min_size=1, max_size=8).map(
    lambda b: bytes(
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"[c % 65] for c in b
    )
)
BINARY_ARG = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"\r\n", b"a\r\nb", b"*1\r\n", b"$3\r\n", b""]),
    st.binary(min_size=200, max_size=600),
)


@st.composite
def multibulk_item(draw: st.DrawFn) -> tuple[bytes, list[Request]]:
    argv = draw(st.lists(BINARY_ARG, min_size=1, max_size=6))
    frame = encode_command(argv)
    return frame, [(argv, frame)]


@st.composite
def inline_item(draw: st.DrawFn) -> tuple[bytes, list[Request]]:
    argv = draw(st.lists(st.one_of(PLAIN, st.binary(max_size=6)), min_size=1, max_size=5))
    words = []
    for i, a in enumerate(argv):
        quoted = draw(st.sampled_from(["plain", "hex", "single"]))
        if quoted == "plain" and a and a == plain_safe(a):
            words.append(a)
        elif quoted == "single" and a == plain_safe(a) and i:
            words.append(b"'" + a + b"'")
        else:
            words.append(b'"' + b"".join(b"\\x%02x" % c for c in a) + b'"')
    sep = draw(st.sampled_from([b" ", b"  ", b"\t", b" \t "]))
    end = draw(st.sampled_from([b"\r\n", b"\n"]))
    return sep.join(words) + end, [(argv, encode_command(argv))]


def plain_safe(a: bytes) -> bytes:
    """``a`` with every byte that is not safe unquoted removed (equal to ``a`` iff safe)."""
    return bytes(c for c in a if (chr(c).isalnum() and c < 128) or c in b"_.-")


IGNORED: st.SearchStrategy[tuple[bytes, list[Request]]] = st.sampled_from(
    [b"*0\r\n", b"*-1\r\n", b"\r\n", b"\n", b"  \r\n"]
).map(lambda b: (b, []))
STREAM_ITEMS = st.lists(
    st.one_of(multibulk_item(), multibulk_item(), inline_item(), IGNORED), max_size=8
)


@FAST
@given(items=STREAM_ITEMS, data=st.data())
def test_request_stream_random_splits(items: list[tuple[bytes, list[Request]]], data: Any) -> None:
    stream = b"".join(raw for raw, _ in items)
    expected = [r for _, reqs in items for r in reqs]
    whole = RequestParser()
    assert whole.feed(stream) == expected
    assert whole.error is None
    assert whole.buffered == 0
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    split = RequestParser()
    assert parse_pieces(split, pieces_at(stream, cuts)) == expected
    assert split.error is None
    assert split.buffered == 0


@settings(FAST, max_examples=40)
@given(items=STREAM_ITEMS)
def test_request_stream_bytewise(items: list[tuple[bytes, list[Request]]]) -> None:
    stream = b"".join(raw for raw, _ in items)
    expected = [r for _, reqs in items for r in reqs]
    p = RequestParser()
    assert parse_pieces(p, bytewise(stream)) == expected
    assert p.buffered == 0


@FAST
@given(argv=st.lists(st.binary(max_size=40), min_size=1, max_size=8))
def test_encode_command_round_trips_through_parser_and_hiredis(argv: list[bytes]) -> None:
    frame = encode_command(argv)
    assert RequestParser().feed(frame) == [(argv, frame)]
    assert hiredis_decode(frame) == argv


# ---------------------------------------------------------------------------------------------
# ReplyScanner: every type

SINGLE_REPLIES = {
    "simple": b"+OK\r\n",
    "simple-empty": b"+\r\n",
    "error": b"-ERR unknown command 'foo'\r\n",
    "integer": b":123\r\n",
    "integer-negative": b":-5\r\n",
    "bulk": b"$5\r\nhello\r\n",
    "bulk-empty": b"$0\r\n\r\n",
    "bulk-with-crlf": b"$6\r\n\r\n$1\r\n\r\n",
    "bulk-null": b"$-1\r\n",
    "array-null": b"*-1\r\n",
    "array-empty": b"*0\r\n",
    "array": b"*3\r\n$1\r\na\r\n:1\r\n+x\r\n",
    "array-nested": b"*2\r\n*2\r\n:1\r\n*0\r\n*1\r\n*-1\r\n",
    "array-of-nulls": b"*2\r\n$-1\r\n*-1\r\n",
    "null": b"_\r\n",
    "double": b",3.14\r\n",
    "double-inf": b",-inf\r\n",
    "boolean-true": b"#t\r\n",
    "boolean-false": b"#f\r\n",
    "big-number": b"(3492890328409238509324850943850943825024385\r\n",
    "blob-error": b"!21\r\nSYNTAX invalid syntax\r\n",
    "verbatim": b"=15\r\ntxt:Some string\r\n",
    "map": b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
    "map-empty": b"%0\r\n",
    "map-nested": b"%1\r\n*2\r\n:1\r\n:2\r\n%1\r\n+a\r\n~1\r\n_\r\n",
    "set": b"~3\r\n+a\r\n+b\r\n:1\r\n",
    "set-empty": b"~0\r\n",
    "push": b">3\r\n+message\r\n+channel\r\n$5\r\nhello\r\n",
    "push-empty": b">0\r\n",
    "attribute": b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.01\r\n"
    b"*2\r\n:2039123\r\n:9543892\r\n",
    "attribute-empty": b"|0\r\n+OK\r\n",
    "attribute-twice": b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n:1\r\n",
    "attribute-inside": b"*2\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n:7\r\n",
    "attribute-on-null": b"|1\r\n+a\r\n:1\r\n_\r\n",
}


@pytest.mark.parametrize("frame", list(SINGLE_REPLIES.values()), ids=list(SINGLE_REPLIES))
def test_scanner_single_reply(frame: bytes) -> None:
    assert ReplyScanner().feed(frame) == [frame]
    s = ReplyScanner()
    assert scan_pieces(s, bytewise(frame)) == [frame]
    assert s.buffered == 0
    for cut in range(1, len(frame)):
        s = ReplyScanner()
        assert s.feed(frame[:cut]) == []
        assert s.buffered == cut
        assert s.feed(frame[cut:]) == [frame]
        assert s.buffered == 0
    # reply_end agrees, and sees every proper prefix as incomplete
    assert reply_end(frame + b"+next\r\n", 0) == len(frame)
    assert reply_end(b"+x\r\n" + frame, 4) == 4 + len(frame)
    for cut in range(len(frame)):
        assert reply_end(frame[:cut], 0) == -1


def test_scanner_stream_of_all_types() -> None:
    frames = list(SINGLE_REPLIES.values())
    stream = b"".join(frames)
    assert ReplyScanner().feed(stream) == frames
    s = ReplyScanner()
    assert scan_pieces(s, bytewise(stream)) == frames
    assert s.buffered == 0
    pos = 0
    for f in frames:
        end = reply_end(stream, pos)
        assert stream[pos:end] == f
        pos = end


def test_attribute_and_value_are_one_reply() -> None:
    attr = b"|1\r\n+ttl\r\n:3\r\n"
    stream = attr + b"$1\r\nv\r\n" + b"+OK\r\n"
    assert ReplyScanner().feed(stream) == [attr + b"$1\r\nv\r\n", b"+OK\r\n"]
    s = ReplyScanner()
    assert s.feed(attr) == []  # the attribute alone is not a reply
    assert s.feed(b"$1\r\nv\r\n+OK\r\n") == [attr + b"$1\r\nv\r\n", b"+OK\r\n"]


def test_scanner_large_bulk_in_chunks() -> None:
    big = (os.urandom(1000) + b"\r\n") * 1000
    frame = b"$%d\r\n%s\r\n" % (len(big), big)
    agg = b"*3\r\n:1\r\n" + frame + b":2\r\n"
    stream = frame + agg + b"+OK\r\n"
    s = ReplyScanner()
    got: list[bytes] = []
    for piece in chunked(stream, 4096):
        got.extend(s.feed(piece))
        assert got == [frame, agg, b"+OK\r\n"][: len(got)]
    assert got == [frame, agg, b"+OK\r\n"]
    assert s.buffered == 0


def test_scanner_buffered_while_large_bulk_pending() -> None:
    s = ReplyScanner()
    assert s.feed(b"$100\r\n" + b"x" * 10) == []
    assert s.buffered == 16
    assert s.feed(b"x" * 10) == []
    assert s.buffered == 26  # bytes held back for the pending bulk are counted once
    assert s.feed(b"x" * 10) == []
    assert s.buffered == 36
    assert s.feed(b"x" * 70 + b"\r\n") == [b"$100\r\n" + b"x" * 100 + b"\r\n"]
    assert s.buffered == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello\r\n",
        b"HTTP/1.1 400 Bad Request\r\n",
        b"$abc\r\n",
        b"$\r\n",
        b"*x\r\n",
        b"%?\r\n",
        b"*2\r\n+a\r\n?oops\r\n",
        b"%1\r\n+a\r\n\x00\r\n",
        b"+OK\r\n@\r\n",
        b"\r\n",
    ],
)
def test_scanner_garbage_raises(garbage: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyScanner().feed(garbage)
    with pytest.raises(ReplyError):
        scan_pieces(ReplyScanner(), bytewise(garbage))


def test_reply_error_is_a_value_error() -> None:
    assert issubclass(ReplyError, ValueError)


# ---------------------------------------------------------------------------------------------
# ReplyScanner: random nested RESP3 values (hypothesis), encoded by the test itself

LINE = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

LEAVES = st.one_of(
    st.tuples(st.just("+"), LINE),
    st.tuples(st.just("-"), LINE.map(lambda b: b"ERR " + b)),
    st.tuples(st.just(":"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("$"), st.one_of(st.none(), st.binary(max_size=30))),
    st.tuples(st.just("$"), st.binary(min_size=300, max_size=3000)),
    st.tuples(st.just("_"), st.none()),
    st.tuples(st.just(","), st.floats()),
    st.tuples(st.just("#"), st.booleans()),
    st.tuples(st.just("("), st.integers(-(10**40), 10**40)),
    st.tuples(st.just("!"), st.binary(max_size=20)),
    st.tuples(st.just("="), st.tuples(st.sampled_from([b"txt", b"mkd"]), st.binary(max_size=20))),
    st.tuples(st.just("*"), st.none()),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    items = st.lists(children, max_size=4)
    pairs = st.lists(st.tuples(children, children), max_size=3)
    return st.one_of(
        st.tuples(st.sampled_from(["*", "~", ">"]), items),
        st.tuples(st.sampled_from(["%"]), pairs),
        st.tuples(st.just("|"), st.tuples(pairs, children)),
    )


VALUES = st.recursive(LEAVES, _extend, max_leaves=12)


def encode_value(v: tuple[str, Any]) -> bytes:
    """A RESP3 encoder independent of shardproxy.protocol."""
    kind, x = v
    t = kind.encode()
    if kind in "+-":
        return t + x + b"\r\n"
    if kind in ":(":
        return t + str(x).encode() + b"\r\n"
    if kind == "_":
        return b"_\r\n"
    if kind == ",":
        text = (
            "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)
        )
        return b"," + text.encode() + b"\r\n"
    if kind == "#":
        return b"#t\r\n" if x else b"#f\r\n"
    if kind in "$!":
        if x is None:
            return t + b"-1\r\n"
        return t + str(len(x)).encode() + b"\r\n" + x + b"\r\n"
    if kind == "=":
        fmt, text = x
        body = fmt + b":" + text
        return b"=" + str(len(body)).encode() + b"\r\n" + body + b"\r\n"
    if kind in "*~>":
        if x is None:
            return b"*-1\r\n"
        return t + str(len(x)).encode() + b"\r\n" + b"".join(encode_value(i) for i in x)
    if kind == "%":
        body = b"".join(encode_value(k) + encode_value(val) for k, val in x)
        return b"%" + str(len(x)).encode() + b"\r\n" + body
    if kind == "|":
        pairs, value = x
        body = b"".join(encode_value(k) + encode_value(val) for k, val in pairs)
        return b"|" + str(len(pairs)).encode() + b"\r\n" + body + encode_value(value)
    raise AssertionError(kind)


@FAST
@given(values=st.lists(VALUES, min_size=1, max_size=6), data=st.data())
def test_scanner_random_values_random_splits(values: list[Any], data: Any) -> None:
    frames = [encode_value(v) for v in values]
    stream = b"".join(frames)
    assert ReplyScanner().feed(stream) == frames
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    s = ReplyScanner()
    got: list[bytes] = []
    for piece in pieces_at(stream, cuts):
        got.extend(s.feed(piece))
        assert got == frames[: len(got)]
    assert got == frames
    assert s.buffered == 0
    pos = 0
    for f in frames:
        end = reply_end(stream, pos)
        assert stream[pos:end] == f
        pos = end


@settings(FAST, max_examples=40)
@given(values=st.lists(VALUES, min_size=1, max_size=3))
def test_scanner_random_values_bytewise(values: list[Any]) -> None:
    frames = [encode_value(v) for v in values]
    s = ReplyScanner()
    assert scan_pieces(s, bytewise(b"".join(frames))) == frames
    assert s.buffered == 0


# ---------------------------------------------------------------------------------------------
# reply helpers


def test_reply_end_positions() -> None:
    buf = b"+OK\r\n*2\r\n$1\r\na\r\n:1\r\n|1\r\n+k\r\n+v\r\n_\r\n$3\r\nab"
    assert reply_end(buf, 0) == 5
    assert reply_end(buf, 5) == 5 + len(b"*2\r\n$1\r\na\r\n:1\r\n")
    attr_at = 5 + len(b"*2\r\n$1\r\na\r\n:1\r\n")
    assert reply_end(buf, attr_at) == attr_at + len(b"|1\r\n+k\r\n+v\r\n_\r\n")
    assert reply_end(buf, buf.index(b"$3")) == -1
    assert reply_end(buf, len(buf)) == -1
    with pytest.raises(ReplyError):
        reply_end(b"?\r\n", 0)


@pytest.mark.parametrize(
    ("raw", "items"),
    [
        (b"*0\r\n", []),
        (b"*-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n:1\r\n", [b"$1\r\na\r\n", b":1\r\n"]),
        (b"~2\r\n+a\r\n+b\r\n", [b"+a\r\n", b"+b\r\n"]),
        (b">2\r\n+message\r\n$-1\r\n", [b"+message\r\n", b"$-1\r\n"]),
        (
            b"*3\r\n*2\r\n:1\r\n:2\r\n%1\r\n+k\r\n+v\r\n$4\r\na\r\nb\r\n",
            [b"*2\r\n:1\r\n:2\r\n", b"%1\r\n+k\r\n+v\r\n", b"$4\r\na\r\nb\r\n"],
        ),
        (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n", [b"|1\r\n+a\r\n+b\r\n:1\r\n", b":2\r\n"]),
    ],
)
def test_split_aggregate(raw: bytes, items: list[bytes] | None) -> None:
    assert split_aggregate(raw) == items


@pytest.mark.parametrize(
    ("raw", "items"),
    [
        (b"|1\r\n+ttl\r\n:3\r\n*2\r\n$1\r\na\r\n:1\r\n", [b"$1\r\na\r\n", b":1\r\n"]),
        (b"|0\r\n*1\r\n+x\r\n", [b"+x\r\n"]),
        (b"|1\r\n+a\r\n*1\r\n:1\r\n|1\r\n+b\r\n+c\r\n~1\r\n+y\r\n", [b"+y\r\n"]),
        (b"|1\r\n+ttl\r\n:3\r\n*-1\r\n", None),
    ],
    ids=["one-attribute", "empty-attribute", "two-attributes", "null-array"],
)
def test_split_aggregate_skips_attribute_prefix(raw: bytes, items: list[bytes] | None) -> None:
    assert split_aggregate(raw) == items


@pytest.mark.parametrize("raw", [b"+OK\r\n", b":1\r\n", b"$1\r\na\r\n", b"%1\r\n+a\r\n+b\r\n"])
def test_split_aggregate_rejects_non_aggregates(raw: bytes) -> None:
    with pytest.raises(ReplyError):
        split_aggregate(raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b":0\r\n", 0), (b":-12\r\n", -12), (b":9223372036854775807\r\n", 2**63 - 1)],
)
def test_parse_integer(raw: bytes, value: int) -> None:
    assert parse_integer(raw) == value


@pytest.mark.parametrize("raw", [b"+1\r\n", b"$1\r\n1\r\n", b"-ERR x\r\n", b"(1\r\n"])
def test_parse_integer_rejects_other_types(raw: bytes) -> None:
    with pytest.raises(ReplyError):
        parse_integer(raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"+OK\r\n", b"OK"),
        (b"+\r\n", b""),
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
        (b"=8\r\ntxt:abcd\r\n", b"abcd"),
        (b"=4\r\nmkd:\r\n", b""),
        (b"=8\r\ntxt:a\r\nb\r\n", b"a\r\nb"),
        (b"$-1\r\n", None),
        (b"_\r\n", None),
    ],
)
def test_parse_bulk(raw: bytes, value: bytes | None) -> None:
    assert parse_bulk(raw) == value


@pytest.mark.parametrize("raw", [b":1\r\n", b"*1\r\n+a\r\n", b"-ERR x\r\n", b"*-1\r\n"])
def test_parse_bulk_rejects_other_types(raw: bytes) -> None:
    with pytest.raises(ReplyError):
        parse_bulk(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"-ERR x\r\n", True),
        (b"-MOVED 1 a:1\r\n", True),
        (b"!3\r\nERR\r\n", True),
        (b"+OK\r\n", False),
        (b"$3\r\n-no\r\n", False),
        (b"*1\r\n-ERR\r\n", False),
        (b":-1\r\n", False),
        (b"_\r\n", False),
    ],
)
def test_is_error(raw: bytes, expected: bool) -> None:
    assert is_error(raw) is expected


# ---------------------------------------------------------------------------------------------
# encoders: exact bytes, and hiredis as an independent decoder


ENCODED: list[tuple[str, bytes, bytes, Any]] = [
    # (id, produced, exact bytes, what hiredis decodes)
    ("cmd", encode_command([b"SET", b"k", b"v\r\n"]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n",
     [b"SET", b"k", b"v\r\n"]),
    ("cmd-empty-arg", encode_command((b"GET", b"")), b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", [b"GET", b""]),
    ("cmd-generator", encode_command(a for a in [b"PING"]), b"*1\r\n$4\r\nPING\r\n", [b"PING"]),
    ("cmd-none", encode_command([]), b"*0\r\n", []),
    ("bulk", bulk(b"abc"), b"$3\r\nabc\r\n", b"abc"),
    ("bulk-binary", bulk(b"\r\n\x00"), b"$3\r\n\r\n\x00\r\n", b"\r\n\x00"),
    ("bulk-empty", bulk(b""), b"$0\r\n\r\n", b""),
    ("bulk-none-2", bulk(None), b"$-1\r\n", None),
    ("bulk-none-3", bulk(None, 3), b"_\r\n", None),
    ("bulk-3", bulk(b"x", 3), b"$1\r\nx\r\n", b"x"),
    ("simple", simple(b"QUEUED"), b"+QUEUED\r\n", b"QUEUED"),
    ("ok", OK, b"+OK\r\n", b"OK"),
    ("pong", PONG, b"+PONG\r\n", b"PONG"),
    ("integer", integer(42), b":42\r\n", 42),
    ("integer-zero", integer(0), b":0\r\n", 0),
    ("integer-negative", integer(-7), b":-7\r\n", -7),
    ("integer-max", integer(2**63 - 1), b":9223372036854775807\r\n", 2**63 - 1),
    ("null-2", null(2), b"$-1\r\n", None),
    ("null-3", null(3), b"_\r\n", None),
    ("null-array-2", null_array(2), b"*-1\r\n", None),
    ("null-array-3", null_array(3), b"_\r\n", None),
    ("array", array([bulk(b"a"), integer(1), null(2)]), b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n",
     [b"a", 1, None]),
    ("array-empty", array([]), b"*0\r\n", []),
    ("array-nested", array([array([integer(1)]), array([])]), b"*2\r\n*1\r\n:1\r\n*0\r\n",
     [[1], []]),
    ("map-3", map_reply([(bulk(b"a"), integer(1)), (bulk(b"b"), integer(2))], 3),
     b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n", {b"a": 1, b"b": 2}),
    ("map-2", map_reply([(bulk(b"a"), integer(1)), (bulk(b"b"), integer(2))], 2),
     b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n", [b"a", 1, b"b", 2]),
    ("map-empty-3", map_reply([], 3), b"%0\r\n", {}),
    ("map-empty-2", map_reply([], 2), b"*0\r\n", []),
    ("verbatim-3", verbatim(b"a\r\nb", 3), b"=8\r\ntxt:a\r\nb\r\n", b"a\r\nb"),
    ("verbatim-3-mkd", verbatim(b"# x", 3, b"mkd"), b"=7\r\nmkd:# x\r\n", b"# x"),
    ("verbatim-3-empty", verbatim(b"", 3), b"=4\r\ntxt:\r\n", b""),
    ("verbatim-2", verbatim(b"a\r\nb", 2), b"$4\r\na\r\nb\r\n", b"a\r\nb"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("produced", "exact", "decoded"), [pytest.param(p, e, d, id=i) for i, p, e, d in ENCODED]
)
def test_encoders(produced: bytes, exact: bytes, decoded: Any) -> None:
    assert produced == exact
    assert hiredis_decode(produced) == decoded
    # and our own scanner sees exactly one reply
    assert ReplyScanner().feed(produced + b"+next\r\n") == [produced, b"+next\r\n"]


def test_verbatim_parse_bulk_round_trip() -> None:
    for proto in (2, 3):
        assert parse_bulk(verbatim(b"# Server\r\nredis_version:7\r\n", proto)) == (
            b"# Server\r\nredis_version:7\r\n"
        )


@FAST
@given(
    values=st.lists(st.one_of(st.binary(max_size=20), st.none()), max_size=6),
    proto=st.sampled_from([2, 3]),
)
def test_encoders_compose(values: Sequence[bytes | None], proto: int) -> None:
    encoded = [bulk(v, proto) for v in values]
    raw = array(encoded)
    assert hiredis_decode(raw) == list(values)
    assert split_aggregate(raw) == encoded
    assert [parse_bulk(e) for e in encoded] == list(values)
    pairs = [(bulk(b"%d" % i), e) for i, e in enumerate(encoded)]
    m = map_reply(pairs, proto)
    want: Any = {b"%d" % i: v for i, v in enumerate(values)}
    if proto == 2:
        want = [x for i, v in enumerate(values) for x in (b"%d" % i, v)]
    assert hiredis_decode(m) == want
    assert ReplyScanner().feed(m) == [m]


def test_module_does_no_io() -> None:
    for module in (encode, framing, replies, requests):
        source = Path(module.__file__ or "").parent / (module.__name__.rsplit(".", 1)[1] + ".py")
        src = source.read_text(encoding="utf-8")
        assert "import asyncio" not in src
        assert "import socket" not in src


def test_bytes_after_bulk_are_skipped_like_redis() -> None:
    """Redis skips the two bytes after a bulk argument without checking them; so does the
    parser (both the hiredis fast path and the Python parser), so the proxy's view of a request
    is the backend's."""
    for data in (b"*1\r\n$3\r\nabcXY", b"*2\r\n$1\r\na\r\n$1\r\nb\n\r"):
        whole = RequestParser().feed(data)
        p = RequestParser()
        split: list[tuple[list[bytes], bytes]] = []
        for i in range(len(data)):
            split += p.feed(data[i : i + 1])
        assert whole == split == [(whole[0][0], data)]
        assert p.error is None


def test_lengths_that_only_add_up_do_not_fool_the_fast_path() -> None:
    """hiredis accepts any RESP type inside a request. A simple string is 3 bytes shorter than
    the canonical bulk of the same value and a verbatim string 4 bytes longer, so four of one
    and three of the other add up to the canonical total: the fast path must still see that
    the bytes are not canonical bulks (or it would cut a frame that straddles two requests),
    and the parser refuses the first request as Redis does."""
    simple = b"*4\r\n" + b"+GET\r\n" * 4
    verbatim = b"*3\r\n" + b"=7\r\ntxt:abc\r\n" * 3
    canonical = encode_command([b"GET"] * 4) + encode_command([b"abc"] * 3)
    assert len(simple) + len(verbatim) == len(canonical)
    p = RequestParser()
    assert p.feed(simple + verbatim) == []
    assert p.error is not None


STRING_ARRAYS = [
    array([]),
    array([bulk(b"a"), bulk(None, 2), bulk(b""), bulk(b"x" * 300)]),
    array([bulk(b"v1"), null(3), bulk(b"0123456789")]),
    array([bulk(b"a\r\nb"), bulk(b"$-1\r\n")]),
]


@pytest.mark.parametrize("raw", STRING_ARRAYS)
def test_split_strings_agrees_with_split_aggregate(raw: bytes) -> None:
    items = split_strings(raw)
    assert items is not None
    assert items == split_aggregate(raw)
    assert array(items) == raw


@pytest.mark.parametrize(
    "raw",
    [
        array([bulk(b"a"), integer(1)]),  # not all strings
        array([array([bulk(b"a")])]),  # nested
        b"*2\r\n$1\r\na\r\n",  # fewer elements than announced
        array([bulk(b"a")]) + b"+extra\r\n",  # trailing bytes
        b"*1\r\n$3\r\nab\r\n",  # a length that does not match
        b"*-1\r\n",  # null array
        b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",  # a map
        b"*1\r\n$01\r\na\r\n",  # non-canonical length
    ],
)
def test_split_strings_refuses_anything_else(raw: bytes) -> None:
    assert split_strings(raw) is None
    for where in ([0], [0, 1]):
        assert not place_strings(raw, where, [b""] * 3)


@pytest.mark.parametrize("raw", STRING_ARRAYS)
def test_place_strings_puts_each_element_at_its_position(raw: bytes) -> None:
    items = split_aggregate(raw) or []
    where = list(reversed(range(len(items))))  # the last element first, as a merge may
    out = [b"header"] + [b""] * len(items)
    assert place_strings(raw, where, out)
    assert out == [b"header", *reversed(items)]
    assert not place_strings(raw, [*where, len(items)], out)  # one position too many


# -- limits for a client that has not authenticated, and lengths that are not numbers ----------


def test_unauthenticated_limits_are_redis_s() -> None:
    p = RequestParser()
    p.require_auth(True)
    assert p.feed(b"*10\r\n" + b"$1\r\na\r\n" * 10) != []  # 10 arguments: fine
    assert p.error is None
    assert p.feed(b"*11\r\n") == [] and p.error == "unauthenticated multibulk length"
    p = RequestParser()
    p.require_auth(True)
    ok = b"*2\r\n$3\r\nGET\r\n$16384\r\n" + b"x" * 16384 + b"\r\n"
    assert len(p.feed(ok)) == 1
    assert p.feed(b"*2\r\n$3\r\nGET\r\n$16385\r\n") == []
    assert p.error == "unauthenticated bulk length"
    p = RequestParser()
    p.require_auth(True)
    p.require_auth(False)  # authenticated: the configured limits again
    assert len(p.feed(b"*11\r\n" + b"$1\r\na\r\n" * 11)) == 1 and p.error is None


@pytest.mark.parametrize(
    "data",
    [b"PING\r\n*" + b"1" * 5000 + b"\r\n", b"*1\r\n$" + b"9" * 5000 + b"\r\n"],
    ids=["count", "bulk"],
)
def test_lengths_of_thousands_of_digits_are_protocol_errors(data: bytes) -> None:
    p = RequestParser()
    out = p.feed(data)
    assert p.error in ("invalid multibulk length", "invalid bulk length")
    assert [argv for argv, _ in out] == ([[b"PING"]] if data.startswith(b"PING") else [])


def test_a_short_malformed_item_after_a_split_bulk_is_seen_at_once() -> None:
    p = RequestParser()
    assert p.feed(b"*2\r\n$3\r\nab") == []
    assert p.feed(b"c\r\nX\r\n") == []
    assert p.error == "expected '$', got 'X'"
