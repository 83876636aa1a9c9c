"""A seeded fuzz of the client protocol: malformed and mutated RESP over many connections.

Every connection sends a *known* part first (frames whose replies are known exactly: ECHO of
random bytes, inline commands with odd quoting, empty lines, ``*0``, unknown commands, SET/GET
of its own keys, SET/MSET of keys checked on the shards afterwards), then one of:

- ``clean``: nothing more; then an ECHO of a nonce, whose reply ends the conversation;
- ``fatal``: one frame that is a protocol error in Redis (bad or huge lengths, ``$-5`` in an
  array, nested arrays, unbalanced quotes, an inline line over the limit, ...), or a bulk over
  this proxy's ``limits.max_request_bytes`` (1 MB): the reply is exactly ``-ERR Protocol
  error: <what Redis says>`` and the proxy closes the connection;
- ``tail``: mutated frames (random byte flips, insertions, deletions), binary garbage, odd
  inline lines, giant lines around the inline limit, then a filler line long enough to finish
  any frame the tail left open, then the nonce ECHO: whatever the tail did, the connection
  either answers the nonce or closes after a ``-ERR Protocol error``;
- ``midclose``: a frame cut short, then the client closes (after reading its known replies, or
  at once with a reset).

Bytes go out in one write, frame by frame, in random chunks, or one byte at a time. Each
connection must get its known replies exactly, in order, and reach its end (nonce or close)
within 5 s of its last byte: a connection the proxy neither answers nor closes is a hang.
Meanwhile a well-behaved client writes and reads keys; afterwards every known key whose write
was acknowledged is on the primary of its shard (``Ring.build`` of the shard names) and on no
other, the proxy is alive, its log has no traceback, and its RSS grew by less than 100 MB.

The seed is printed; ``SHARDPROXY_FUZZ_SEED=N`` replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis
import pytest

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy

SEED = int(os.environ.get("SHARDPROXY_FUZZ_SEED", "0") or 0) or 20240611
CONNECTIONS = 2400  # in all
CONCURRENT = 200  # open at once
REPLY_TIMEOUT = 5.0  # after its last byte, a connection must be answered or closed within this
MAX_INLINE = 64 * 1024  # limits.max_inline_bytes (the default)
MAX_REQUEST = 1024 * 1024  # limits.max_request_bytes of the fuzzed proxy
FILLER = 8192  # bytes that finish any frame a tail left open (its bulks are shorter)
RSS_GROWTH_MB = 100
KNOWN_IN_FUZZ = 12000  # keys the fuzzed connections may SET/MSET (those used are checked)
KNOWN_BY_CLEAN = 400  # keys a well-behaved client writes and reads back during the fuzz

NOT_YET = object()  # hiredis.Reader: no complete reply yet

# An expectation: ("eq", value) for an exact reply, ("err", prefix) for an error reply.
Expect = tuple[str, Any]


def cmd(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# -- the known part: frames and their exact replies -------------------------------------------

# inline lines and what ECHO answers for them (checked against redis-server 7.0)
INLINE_ECHO: list[tuple[bytes, bytes]] = [
    (b'ECHO "a b"', b"a b"),
    (b"ECHO 'x\\''", b"x'"),
    (b'ECHO "\\x41\\x42"', b"AB"),
    (b'ECHO "t\\tq"', b"t\tq"),
    (b'ECHO "q\\"q"', b'q"q'),
    (b"ECHO ''", b""),
    (b'ECHO ""', b""),
    (b"ECHO 'a\\nb'", b"a\\nb"),
    (b'ECHO "a\\nb"', b"a\nb"),
    (b'ECHO "\\xZZ"', b"xZZ"),
    (b'ECHO "\\x4"', b"x4"),
    (b"  ECHO   spaced   ", b"spaced"),
    (b'ECHO "a"  ', b"a"),
    (b'ECHO "it\'s"', b"it's"),
    (b"ECHO 'say \"hi\"'", b'say "hi"'),
    (b'ECHO a"b"', b"ab"),
    (b"ECHO a'b c'", b"ab c"),
    (b'ECHO "\\\\"', b"\\"),
    (b"\tECHO\ttabs\t", b"tabs"),
]
INLINE_PING = [b"PING", b"ping", b"PiNg  ", b"\tPING\t", b"  PING"]
EMPTY = [
    b"\r\n",
    b"\n",
    b"   \r\n",
    b"\t\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"*-7\r\n",
    b"*-99999999999\r\n",
]
# not '*': an inline command named like a RESP header, which Redis does not know
TOP_LEVEL_JUNK = [b"$-5", b"$10", b"$99999999999", b":1", b"+OK", b"-ERR x", b"_", b"%2"]

# frames that are a protocol error in Redis, and what Redis says (checked against 7.0)
# (lengths of thousands of digits: more than Python's int() takes from a string by default)
BAD_MULTIBULK = [
    *(b"99999999999", b"4294967296", b"9" * 20, b"1" * 5000, b"7" * 60000),
    *(b"abc", b"1x", b"01", b"-0", b"+1", b" 1", b"", b"-"),
]
BAD_BULK = [
    *(b"-5", b"-1", b"-0", b"abc", b"01", b"+3", b"1x", b"", b" 1"),
    *(b"99999999999", b"9" * 20, b"2" * 5000),
]
BAD_ITEM = [(b":1\r\n", ":"), (b"X\r\n", "X"), (b"+OK\r\n", "+"), (b"\r\n", " "), (b"*1\r\n", "*")]
UNBALANCED = [
    b'SET "a b',
    b"SET 'x\\'",
    b'ECHO "abc"def',
    b"ECHO 'a'b",
    b'"',
    b"'",
    b'ECHO "\\"',
    b"ECHO '\\\\'",
    b'SET k "v',
]


@dataclass
class Conn:
    """One scripted connection."""

    index: int
    kind: str  # clean | fatal | tail | midclose
    send: str  # whole | frames | chunks | bytewise
    frames: list[bytes] = field(default_factory=list)
    expect: list[Expect] = field(default_factory=list)  # replies of the known part
    fatal: str | None = None  # the protocol error detail the fatal frame must get
    nonce: bytes | None = None
    abrupt: bool = False  # midclose: reset at once instead of reading the known replies
    known_writes: list[tuple[int, list[str]]] = field(default_factory=list)  # (reply, keys)
    known_frames: int = 0

    def data(self) -> bytes:
        return b"".join(self.frames)


@dataclass
class Outcome:
    replies: list[Any] = field(default_factory=list)
    closed: str | None = None  # "eof" | "reset" when the proxy ended the connection
    bad_resp: str | None = None
    hang: bool = False
    sent: int = 0  # frames written before the proxy closed
    write_error: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    last_byte_at: float = 0.0  # monotonic time of the last write
    closed_at: float = 0.0  # ... of the proxy's close


class Generator:
    """Every frame of a run, from one random.Random(seed)."""

    def __init__(self, seed: int, known_keys: list[str]) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.known_keys = known_keys  # handed out in order, each written once
        self.next_known = 0

    # the known part ---------------------------------------------------------------------

    def known_part(self, c: Conn, with_keys: bool) -> None:
        rng = self.rng
        mine: dict[bytes, bytes] = {}  # this connection's fz keys and values
        counter = 0
        for i in range(rng.randint(3, 18)):
            r = rng.random()
            if r < 0.16:
                payload = rng.randbytes(rng.randint(0, 64))
                c.frames.append(cmd(b"ECHO", payload))
                c.expect.append(("eq", payload))
            elif r < 0.22:
                c.frames.append(rng.choice([cmd(b"PING"), cmd(b"ping")]))
                c.expect.append(("eq", b"PONG"))
            elif r < 0.28:
                c.frames.append(rng.choice(INLINE_PING) + rng.choice([b"\r\n", b"\n"]))
                c.expect.append(("eq", b"PONG"))
            elif r < 0.38:
                line, value = rng.choice(INLINE_ECHO)
                c.frames.append(line + rng.choice([b"\r\n", b"\n"]))
                c.expect.append(("eq", value))
            elif r < 0.44:
                c.frames.append(rng.choice(EMPTY))
            elif r < 0.49:
                c.frames.append(rng.choice(TOP_LEVEL_JUNK) + b"\r\n")
                c.expect.append(("err", "ERR unknown command '"))
            elif r < 0.53:
                name = bytes(rng.choice(b"QWXZJK") for _ in range(rng.randint(4, 9)))
                c.frames.append(cmd(name, b"arg"))
                c.expect.append(("err", "ERR unknown command '"))
            elif r < 0.56:
                c.frames.append(rng.choice([cmd(b"GET"), cmd(b"SET", b"k"), cmd(b"INCR")]))
                c.expect.append(("err", "ERR wrong number of arguments for '"))
            elif r < 0.68:
                key = f"fz:{self.seed}:{c.index}:{i}".encode()
                value = rng.randbytes(rng.randint(0, 48))
                mine[key] = value
                c.frames.append(cmd(b"SET", key, value))
                c.expect.append(("eq", b"OK"))
            elif r < 0.74 and mine:
                key = rng.choice(list(mine))
                c.frames.append(cmd(b"GET", key))
                c.expect.append(("eq", mine[key]))
            elif r < 0.78 and mine:
                keys = rng.sample(list(mine), min(len(mine), rng.randint(1, 4)))
                missing = f"fz:{self.seed}:{c.index}:missing".encode()
                c.frames.append(cmd(b"MGET", *keys, missing))
                c.expect.append(("eq", [mine[k] for k in keys] + [None]))
            elif r < 0.82:
                counter += 1
                c.frames.append(cmd(b"INCR", f"fz:{self.seed}:{c.index}:ctr".encode()))
                c.expect.append(("eq", counter))
            elif r < 0.86:
                # the two bytes after a bulk are skipped, not checked (as Redis does)
                payload = rng.randbytes(rng.randint(1, 20))
                frame = cmd(b"ECHO", payload)
                skip = bytes(rng.choice(b"abXY:$*") for _ in range(2))
                c.frames.append(frame[:-2] + skip)
                c.expect.append(("eq", payload))
            elif with_keys and self.next_known < len(self.known_keys):
                n = rng.choice([1, 1, 2, 3, 5])
                names = self.known_keys[self.next_known : self.next_known + n]
                self.next_known += len(names)
                if len(names) == 1 and rng.random() < 0.5:
                    c.frames.append(cmd(b"SET", names[0].encode(), known_value(names[0])))
                else:
                    argv = [b"MSET"]
                    for known in names:
                        argv += [known.encode(), known_value(known)]
                    c.frames.append(cmd(*argv))
                c.known_writes.append((len(c.expect), names))
                c.expect.append(("eq", b"OK"))
            else:
                c.frames.append(b"PING\r\n")
                c.expect.append(("eq", b"PONG"))
        c.known_frames = len(c.frames)

    # frames for everything else ---------------------------------------------------------

    def fatal_frame(self) -> tuple[bytes, str]:
        """A frame Redis refuses with a protocol error, and its detail."""
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            return b"*" + rng.choice(BAD_MULTIBULK) + b"\r\n", "invalid multibulk length"
        if r < 0.4:
            head = cmd(b"SET", b"k", b"v")[: rng.choice([4, 13, 20])]  # after 0, 1 or 2 args
            head = b"*3" + head[2:]
            bad = rng.choice([*BAD_BULK, str(MAX_REQUEST + rng.randint(1, 10**6)).encode()])
            return head + b"$" + bad + b"\r\n", "invalid bulk length"
        if r < 0.55:
            # an item that is not a bulk where one is due (nested arrays, integers, ...)
            args = [b"SET", b"key", rng.randbytes(rng.randint(0, 30))]
            k = rng.randint(1, 2)
            item, got = rng.choice(BAD_ITEM)
            return b"*3\r\n" + cmd(*args[:k])[4:] + item, f"expected '$', got '{got}'"
        if r < 0.65:
            inner = cmd(b"PING")
            return b"*2\r\n" + inner + cmd(b"x")[4:], "expected '$', got '*'"
        if r < 0.85:
            return rng.choice(UNBALANCED) + rng.choice([b"\r\n", b"\n"]), (
                "unbalanced quotes in request"
            )
        if r < 0.93:
            # a line longer than the inline limit, and no newline in sight
            line = b"SET big " + b"a" * (MAX_INLINE + rng.randint(1, 4000))
            return line, "too big inline request"
        return b"*" + b"1" * (MAX_INLINE + rng.randint(1, 4000)), "too big mbulk count string"

    def valid_frame(self) -> bytes:
        rng = self.rng
        k = f"fz:{self.seed}:m{rng.randint(0, 999)}".encode()
        return rng.choice(
            [
                cmd(b"SET", k, rng.randbytes(rng.randint(0, 40))),
                cmd(b"GET", k),
                cmd(b"ECHO", rng.randbytes(rng.randint(0, 40))),
                cmd(b"MGET", k, k + b"x"),
                cmd(b"MSET", k, b"1", k + b"y", b"2"),
                cmd(b"INCR", k + b"c"),
                cmd(b"EXISTS", k),
                cmd(b"PING"),
                b"ECHO hello world\r\n",
                b"SET " + k + b" 'quoted \\' value'\r\n",
            ]
        )

    def mutate(self, frame: bytes) -> bytes:
        rng = self.rng
        b = bytearray(frame)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            i = rng.randrange(len(b)) if b else 0
            if op < 0.5 and b:
                b[i] = rng.randrange(256)  # a random byte flip
            elif op < 0.65 and b:
                b[i] ^= 1 << rng.randrange(8)  # a bit flip
            elif op < 0.8:
                b.insert(i, rng.randrange(256))
            elif op < 0.92 and b:
                del b[i]
            else:
                del b[i:]  # truncated, the next frame follows
        return bytes(b)

    def tail_frame(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            return self.mutate(self.valid_frame())
        if r < 0.55:
            return rng.randbytes(rng.randint(1, 300)) + rng.choice([b"", b"\r\n", b"\n"])
        if r < 0.65:
            alphabet = b"ab \"'\\x41\t"
            line = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
            return b"ECHO " + line + b"\r\n"
        if r < 0.7:
            # a line around the inline limit, with its newline: accepted or refused by how
            # much of it one read brings, like Redis
            return b"ECHO " + b"g" * rng.randint(MAX_INLINE - 2000, MAX_INLINE + 2000) + b"\r\n"
        if r < 0.78:
            return rng.choice(
                [
                    b"*99999999999\r\n",
                    b"$-5\r\n",
                    b"*1\r\n$-5\r\n",
                    b"*2\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n",
                    b"*1\r\n*1\r\n*1\r\n*1\r\n",
                    b"*3\r\n$3\r\nSET\r\n$-1\r\n",
                    b"*-5\r\n",
                    b"\r\n\r\n\n",
                ]
            )
        if r < 0.85:
            return self.fatal_frame()[0]
        if r < 0.92:
            f = self.valid_frame()
            return f[: rng.randint(1, len(f))]  # cut short, the next frame runs into it
        return self.valid_frame()

    def partial_frame(self) -> bytes:
        """A frame cut short (the connection is closed with it unfinished)."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            f = self.valid_frame()
            return f[: rng.randint(1, len(f) - 1)]
        if r < 0.8:
            size = rng.randint(1000, MAX_REQUEST)  # a big bulk, within the limit
            return b"*2\r\n$4\r\nECHO\r\n$%d\r\n" % size + rng.randbytes(rng.randint(0, 900))
        return rng.choice(
            [b"*5\r\n", b"*2\r\n$3\r\nGET\r\n", b"ECHO unfinished", b"*1\r\n$4\r\nPI"]
        )

    def connection(self, index: int) -> Conn:
        rng = self.rng
        kind = rng.choices(["clean", "fatal", "tail", "midclose"], [15, 35, 35, 15])[0]
        send = rng.choices(["whole", "frames", "chunks", "bytewise"], [25, 20, 40, 15])[0]
        c = Conn(index, kind, send)
        abrupt = kind == "midclose" and rng.random() < 0.5
        self.known_part(c, with_keys=not abrupt)
        if kind == "clean":
            c.nonce = b"nonce-%d-%d" % (self.seed, index)
            c.frames.append(cmd(b"ECHO", c.nonce))
        elif kind == "fatal":
            frame, c.fatal = self.fatal_frame()
            c.frames.append(frame)
        elif kind == "tail":
            for _ in range(rng.randint(2, 12)):
                c.frames.append(self.tail_frame())
            c.nonce = b"nonce-%d-%d" % (self.seed, index)
            c.frames.append(b"x" * FILLER + b"\r\n" + cmd(b"ECHO", c.nonce))
        else:
            c.abrupt = abrupt
            c.frames.append(self.partial_frame())
        if c.send == "bytewise" and len(c.data()) > 1500:
            c.send = "chunks"
        return c

    def writes(self, c: Conn) -> list[tuple[bytes, int]]:
        """The writes of a connection: (bytes, frames that end in them)."""
        data = c.data()
        if c.send == "whole":
            return [(data, len(c.frames))]
        if c.send == "frames":
            return [(f, 1) for f in c.frames]
        ends = []
        pos = 0
        for f in c.frames:
            pos += len(f)
            ends.append(pos)
        if c.send == "bytewise":
            cuts = list(range(1, len(data)))
        else:
            cuts = sorted(set(self.rng.sample(range(1, len(data)), min(len(data) - 1, 12))))
        out = []
        prev = 0
        for cut in [*cuts, len(data)]:
            done = sum(1 for e in ends if prev < e <= cut)
            out.append((data[prev:cut], done))
            prev = cut
        return out


def known_value(key: str) -> bytes:
    return b"value-of-" + key.encode()


def matches(reply: Any, exp: Expect) -> bool:
    how, value = exp
    if how == "err":
        return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(value)
    return not isinstance(reply, hiredis.ReplyError) and reply == value


def is_protocol_error(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("ERR Protocol error: ")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def run_connection(
    port: int, c: Conn, writes: list[tuple[bytes, int]], done_when: Callable[[list[Any]], bool]
) -> Outcome:
    """Send ``writes``, read what comes back; stop at ``done_when(replies)``, at the proxy's
    close, or REPLY_TIMEOUT after the last byte (a hang).

    A raw socket, not asyncio streams: a stream transport whose write fails (the proxy closed
    after a protocol error while this side was still sending, so the kernel answered with a
    reset) closes itself and drops the replies still unread in the kernel; here reading goes
    on until the socket itself says EOF or reset."""
    loop = asyncio.get_running_loop()
    out = Outcome()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parser = hiredis.Reader(notEnoughData=NOT_YET)
    finished = asyncio.Event()

    async def read() -> None:
        try:
            if done_when(out.replies):
                return  # nothing to wait for
            while True:
                try:
                    data = await loop.sock_recv(sock, 1 << 16)
                except OSError:
                    out.closed = "reset"
                    out.closed_at = time.monotonic()
                    return
                if not data:
                    out.closed = "eof"
                    out.closed_at = time.monotonic()
                    return
                out.bytes_received += len(data)
                parser.feed(data)
                while True:
                    try:
                        r = parser.gets()
                    except hiredis.ProtocolError as exc:
                        out.bad_resp = f"{exc}: {data[:200]!r}"
                        return
                    if r is NOT_YET:
                        break
                    out.replies.append(r)
                if done_when(out.replies):
                    return
        finally:
            finished.set()

    reading: asyncio.Task[None] | None = None
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        reading = asyncio.create_task(read())
        pause = random.Random(c.index)
        for chunk, frames_done in writes:
            if finished.is_set():
                break
            try:
                await loop.sock_sendall(sock, chunk)
            except OSError as exc:
                out.write_error = str(exc)
                break
            out.sent += frames_done
            out.bytes_sent += len(chunk)
            out.last_byte_at = time.monotonic()
            if c.send == "bytewise":
                await asyncio.sleep(0.001 if len(writes) < 400 else 0)
            elif c.send == "chunks":
                await asyncio.sleep(pause.random() * 0.003)
        if c.kind == "midclose" and c.abrupt:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return out  # closed below: a reset with the frame unfinished
        try:
            await asyncio.wait_for(finished.wait(), REPLY_TIMEOUT)
        except TimeoutError:
            out.hang = True
        return out
    finally:
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        sock.close()


def judge(c: Conn, o: Outcome) -> list[str]:
    """What is wrong with a connection's outcome (nothing: [])."""
    problems: list[str] = []
    if o.bad_resp:
        return [f"invalid RESP from the proxy: {o.bad_resp}"]
    if c.kind == "midclose" and c.abrupt:
        return []
    n = len(c.expect)
    got = o.replies[:n]
    for i, (reply, exp) in enumerate(zip(got, c.expect, strict=False)):
        if not matches(reply, exp):
            problems.append(f"known reply {i}: got {reply!r:.200}, expected {exp!r:.200}")
            break
    if len(got) < n:
        problems.append(f"only {len(got)} of the {n} known replies (closed: {o.closed})")
    rest = o.replies[n:]
    if o.hang:
        problems.append(
            f"hang: neither answered nor closed {REPLY_TIMEOUT:.0f} s after the last byte "
            f"(replies after the known part: {rest!r:.300})"
        )
    for i, r in enumerate(o.replies[:-1]):
        if is_protocol_error(r):
            problems.append(
                f"reply {i} is {r!r} but more replies followed: {o.replies[i + 1 :]!r:.200}"
            )
    if problems:
        return problems
    if c.kind == "clean":
        if rest != [c.nonce]:
            problems.append(f"after the known replies: {rest!r:.300}, expected only the nonce")
    elif c.kind == "fatal":
        want = f"ERR Protocol error: {c.fatal}"
        if len(rest) != 1 or not isinstance(rest[0], hiredis.ReplyError) or str(rest[0]) != want:
            problems.append(f"after the known replies: {rest!r:.300}, expected -{want}")
        elif o.closed is None:
            problems.append("the protocol error was not followed by the connection closing")
    elif c.kind == "tail":
        # A reset may cut the last replies: the proxy closed after a protocol error with bytes
        # of this client still unread, so the kernel resets the connection and drops what it
        # had not sent yet (Redis closes the same way). A clean close must follow the error.
        if o.closed == "eof":
            if not rest or not is_protocol_error(rest[-1]):
                problems.append(
                    f"closed by the proxy ({o.closed}) without a protocol error: {rest[-3:]!r:.300}"
                )
        elif o.closed is None and (not rest or rest[-1] != c.nonce):
            problems.append(f"open, but the last reply is not the nonce: {rest[-3:]!r:.300}")
    elif c.kind == "midclose" and len(o.replies) > n:
        problems.append(f"a reply to a frame cut short: {o.replies[n:]!r:.300}")
    return problems


def done_condition(c: Conn) -> Callable[[list[Any]], bool]:
    n = len(c.expect)
    if c.nonce is not None:
        nonce = c.nonce
        return lambda replies: bool(replies) and replies[-1] == nonce
    if c.kind == "midclose":
        return lambda replies: len(replies) >= n
    return lambda replies: False  # fatal: until the proxy closes


async def clean_client(port: int, keys: list[str], stop: asyncio.Event) -> tuple[int, list[str]]:
    """A well-behaved client during the fuzz: MSET/SET of its known keys, GETs of them back;
    every reply checked. Returns (commands, problems)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader(notEnoughData=NOT_YET)
    problems: list[str] = []
    count = 0

    async def call(frames: list[bytes]) -> list[Any]:
        writer.write(b"".join(frames))
        got: list[Any] = []
        while len(got) < len(frames):
            data = await asyncio.wait_for(reader.read(1 << 16), REPLY_TIMEOUT)
            if not data:
                raise ConnectionError("closed")
            parser.feed(data)
            while (r := parser.gets()) is not NOT_YET:
                got.append(r)
        return got

    try:
        i = 0
        while not (stop.is_set() and i >= len(keys)):  # until the fuzz ends, and once over all
            batch = [keys[j % len(keys)] for j in range(i, i + 4)]
            i += len(batch)
            argv = [b"MSET"]
            for k in batch:
                argv += [k.encode(), known_value(k)]
            frames = (
                [cmd(*argv)]
                if len(batch) > 1
                else [cmd(b"SET", batch[0].encode(), known_value(batch[0]))]
            )
            frames += [cmd(b"GET", k.encode()) for k in batch]
            got = await call(frames)
            count += len(frames)
            want = [b"OK", *[known_value(k) for k in batch]]
            if got != want:
                problems.append(f"clean client: {got!r:.200} for {want!r:.200}")
            await asyncio.sleep(0.002)
    except (OSError, TimeoutError, ConnectionError) as exc:
        problems.append(f"clean client failed: {exc!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return count, problems


def check_placement(fleet: Fleet, keys: list[str], acked: set[str]) -> list[str]:
    """Each key on the primary of the shard the ring names, and on no other primary; a key
    whose write got no reply (its connection was lost) may also be on none."""
    ring = Ring.build([(s.name, 1) for s in fleet.shards])
    problems: list[str] = []
    clients = {s.name: s.primary.client() for s in fleet.shards}
    try:
        for i in range(0, len(keys), 500):
            batch = keys[i : i + 500]
            found = {name: c.mget(batch) for name, c in clients.items()}
            for j, k in enumerate(batch):
                owner = ring.shard_name(k.encode())
                if found[owner][j] != known_value(k) and (k in acked or found[owner][j]):
                    problems.append(f"{k}: {found[owner][j]!r} on its shard {owner}")
                for name, values in found.items():
                    if name != owner and values[j] is not None:
                        problems.append(f"{k} (shard {owner}) also on {name}")
    finally:
        for c in clients.values():
            c.close()
    return problems


@pytest.fixture
def own_proxy(fleet: Fleet, make_proxy: Any) -> Proxy:
    """A proxy of the test's own (default limits): what these tests provoke stays in its log."""
    p: Proxy = make_proxy(fleet.topology())
    return p


async def test_fuzzed_client_protocol(fleet: Fleet, make_proxy: Any) -> None:
    topo = fleet.topology(
        limits={"max_request_bytes": MAX_REQUEST, "max_inline_bytes": MAX_INLINE},
        deny_commands=["flushall", "flushdb", "shutdown"],
    )
    p: Proxy = make_proxy(topo)
    assert p.proc is not None
    pid = p.proc.pid
    known = [f"known:{SEED}:{i}" for i in range(KNOWN_IN_FUZZ + KNOWN_BY_CLEAN)]
    gen = Generator(SEED, known[:KNOWN_IN_FUZZ])
    conns = [gen.connection(i) for i in range(CONNECTIONS)]
    plans = [gen.writes(c) for c in conns]
    by_clean = known[KNOWN_IN_FUZZ:]
    frames_total = sum(len(c.frames) for c in conns)
    print(f"\nfuzz seed {SEED} (SHARDPROXY_FUZZ_SEED={SEED} replays it)")

    # warm up: every shard's pipeline open, then the baseline
    with p.client(protocol=2) as c:
        for i in range(50):
            c.set(f"warm:{i}", "x")
    time.sleep(0.3)
    rss_before = rss_mb(pid)

    sem = asyncio.Semaphore(CONCURRENT)
    outcomes: list[Outcome | BaseException] = [Outcome() for _ in conns]

    async def one(i: int) -> None:
        async with sem:
            try:
                outcomes[i] = await run_connection(
                    p.port, conns[i], plans[i], done_condition(conns[i])
                )
            except Exception as exc:  # the connection itself could not be made
                outcomes[i] = exc

    stop = asyncio.Event()
    t0 = time.monotonic()
    clean_task = asyncio.create_task(clean_client(p.port, by_clean, stop))
    await asyncio.gather(*(one(i) for i in range(len(conns))))
    stop.set()
    clean_commands, problems = await clean_task
    seconds = time.monotonic() - t0
    alive = p.proc.poll() is None

    failures: list[str] = []
    counts = {
        "replies": 0,
        "protocol_error_closes": 0,
        "hangs": 0,
        "frames_written": 0,
        "resets": 0,
    }
    problem_kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    for c, o in zip(conns, outcomes, strict=True):
        if isinstance(o, BaseException):
            failures.append(f"conn {c.index}: could not run: {o!r}")
            continue
        counts["replies"] += len(o.replies)
        counts["frames_written"] += o.sent
        counts["hangs"] += o.hang
        counts["resets"] += o.closed == "reset"
        if o.closed and o.replies and is_protocol_error(o.replies[-1]):
            counts["protocol_error_closes"] += 1
        for problem in judge(c, o):
            kind = f"{c.kind}: " + re.sub(r"\d+", "N", problem.split(":")[0])[:70]
            if kind not in problem_kinds:
                example = b"".join(c.frames[c.known_frames :])
                examples[kind] = f"conn {c.index}, sent {c.send}: {example[:70]!r}"
            problem_kinds[kind] = problem_kinds.get(kind, 0) + 1
            failures.append(
                f"conn {c.index} ({c.kind}, sent {c.send}, {c.known_frames} known frames): "
                f"{problem}\n    wrote {o.bytes_sent} of {len(c.data())} bytes "
                f"(write error: {o.write_error}), read {o.bytes_received} bytes, "
                f"closed: {o.closed} "
                f"{(o.closed_at - o.last_byte_at) * 1000 if o.closed else 0:.0f} ms after the "
                f"last write\n    bytes after the known part: "
                f"{b''.join(c.frames[c.known_frames :])[:300]!r}\n    writes: "
                f"{[w[0][:60] for w in plans[c.index][-6:]]!r}"
            )
    failures += problems
    if not alive:
        failures.append(f"the proxy died (exit {p.proc.returncode})")
    else:
        with p.client(protocol=2) as c:
            assert c.ping()
        time.sleep(1.0)  # connections closed by the clients are gone from the proxy too
    rss_after = rss_mb(pid) if alive else float("nan")
    log = p.output()
    for marker in ("internal error", "Traceback"):
        if marker in log:
            at = log.index(marker)
            last = log[at:].split("\n\n")[0].strip().splitlines()[-1]
            problem_kinds[f"the proxy log has {marker!r}"] = log.count(marker)
            examples[f"the proxy log has {marker!r}"] = last
            failures.append(f"the proxy log has {marker!r}:\n{log[max(0, at - 200) : at + 2000]}")
    written = known[: gen.next_known] + by_clean
    acked = set(by_clean)  # (the clean client checked its replies)
    for c, o in zip(conns, outcomes, strict=True):
        for reply, keys in c.known_writes:
            if isinstance(o, Outcome) and len(o.replies) > reply and o.replies[reply] == b"OK":
                acked.update(keys)
    placement = check_placement(fleet, written, acked)
    failures += placement[:20]
    if alive and rss_after > rss_before + RSS_GROWTH_MB:
        failures.append(f"RSS grew from {rss_before:.0f} MB to {rss_after:.0f} MB")

    kinds = {k: sum(c.kind == k for c in conns) for k in ("clean", "fatal", "tail", "midclose")}
    sends = {k: sum(c.send == k for c in conns) for k in ("whole", "frames", "chunks", "bytewise")}
    print(
        f"fuzz: {frames_total} frames generated, {counts['frames_written']} written before "
        f"the proxy closed, over {len(conns)} connections ({CONCURRENT} at a time; {kinds}; "
        f"sent {sends}) in {seconds:.1f} s; {counts['replies']} replies, "
        f"{counts['protocol_error_closes']} protocol-error closes ({counts['resets']} of them "
        f"by a reset), {counts['hangs']} hangs; "
        f"clean client: {clean_commands} commands; {len(written)} known keys checked on the "
        f"shards ({len(acked)} acknowledged; {len(placement)} misplaced or missing); proxy RSS {rss_before:.1f} MB before, "
        f"{rss_after:.1f} MB after"
    )
    for kind, n in sorted(problem_kinds.items(), key=lambda kv: -kv[1]):
        print(f"problem: {n} x {kind} (e.g. {examples[kind]})")
    for f in failures[:12]:
        print("FAIL", f)
    assert alive, f"the proxy died:\n{log[-3000:]}"
    assert not failures, f"{len(failures)} problems (seed {SEED}); first: " + "\n".join(
        failures[:8]
    )


async def test_malformed_item_after_a_split_bulk_is_answered(
    fleet: Fleet, own_proxy: Proxy
) -> None:
    """The fuzz's hang, pinned down: a bulk that arrives in two reads, then an item that is not
    a bulk (``X\\r\\n``, shorter than the parser assumes any remaining argument is). Redis
    answers ``-ERR Protocol error: expected '$', got 'X'`` and closes at once."""
    for first, second in [
        (b"*2\r\n$3\r\nab", b"c\r\nX\r\n"),
        (b"*3\r\n$3\r\nSE", b"T\r\n$1\r\nk\r\n\r\n"),
        (b"*4\r\n$4\r\nECHO\r\n$5\r\nhel", b"lo\r\n:1\r\n"),
    ]:
        for port, who in (
            (fleet.shards[0].primary.port, "redis-server"),
            (own_proxy.port, "proxy"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(first)
                await writer.drain()
                await asyncio.sleep(0.1)  # two reads on the other side
                writer.write(second)
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
                except TimeoutError:
                    data = None
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            assert data is not None and data.startswith(b"-ERR Protocol error: expected '$'"), (
                f"{who}: {first + second!r} sent in two writes: "
                f"{'no reply and not closed' if data is None else data!r} after {REPLY_TIMEOUT} s"
            )


async def read_reply(port: int, frame: bytes) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader(notEnoughData=NOT_YET)
    try:
        writer.write(frame)
        while (reply := parser.gets()) is NOT_YET:
            data = await asyncio.wait_for(reader.read(1 << 20), REPLY_TIMEOUT)
            assert data, f"closed without a reply to {frame[:60]!r}"
            parser.feed(data)
        return reply
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_unknown_command_error_is_the_one_redis_makes(fleet: Fleet, own_proxy: Proxy) -> None:
    """An unknown command's error quotes its name and arguments as Redis 7.0 does: at most 128
    bytes of the name, and arguments until 128 bytes of them are quoted. (The fuzz met the
    proxy echoing a 64 KB garbage line back whole: a reply that big is still unsent when the
    proxy resets the connection after a protocol error, and the client loses it.)"""
    frames = [
        cmd(b"A" * 70000),
        cmd(b"B" * 300, b"x"),
        cmd(b"C", b"x" * 100, b"y" * 100, b"z" * 100),
        b"D" * 1000 + b"\r\n",  # inline
        cmd(b"NOSUCHCMD", b"a", b"b"),
    ]
    wrong = []
    for frame in frames:
        want = await read_reply(fleet.shards[0].primary.port, frame)
        got = await read_reply(own_proxy.port, frame)
        assert isinstance(want, hiredis.ReplyError), want
        if str(got) != str(want):
            wrong.append(
                f"{frame[:40]!r}: the proxy says {str(got)[:90]!r}... ({len(str(got))} bytes), "
                f"redis-server {str(want)[:90]!r}... ({len(str(want))} bytes)"
            )
    assert not wrong, "\n".join(wrong)


async def test_overlong_lengths_are_protocol_errors(fleet: Fleet, own_proxy: Proxy) -> None:
    """A multibulk or bulk length of thousands of digits, its CRLF in the same read: Redis
    answers the requests before it, then ``-ERR Protocol error: invalid ... length``, and
    closes. (The fuzz met the proxy's parser raising ValueError from int(): Python refuses to
    convert more than 4300 digits; the connection was dropped with no reply at all.)"""
    cases = [
        b"PING\r\n*" + b"1" * 5000 + b"\r\n",
        b"PING\r\n*2\r\n$3\r\nGET\r\n$" + b"2" * 5000 + b"\r\n",
        b"PING\r\n*" + b"9" * 60000 + b"\r\n",
    ]
    wrong = []
    for data in cases:
        got = {}
        for port, who in (
            (fleet.shards[0].primary.port, "redis-server"),
            (own_proxy.port, "proxy"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(data)  # one write: the CRLF arrives with the digits
                await writer.drain()
                try:
                    got[who] = await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
                except TimeoutError:
                    got[who] = b"(no reply, not closed)"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        assert got["redis-server"].startswith(b"+PONG\r\n-ERR Protocol error: invalid")
        if got["proxy"] != got["redis-server"]:
            wrong.append(
                f"{data[:30]!r}...({len(data)} bytes): proxy {got['proxy']!r:.120}, "
                f"redis-server {got['redis-server']!r:.120}"
            )
    log = own_proxy.output()
    at = log.find("Traceback")
    trace = f"\nproxy log:\n{log[max(0, at - 300) : at + 1500]}" if at >= 0 else ""
    assert not wrong, "\n".join(wrong) + trace
    assert at < 0, trace
