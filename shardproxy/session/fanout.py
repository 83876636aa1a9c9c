"""Commands that touch several shards: split or broadcast, then merge the replies.

A fan-out request (split by the session, ``Sending.split``, or sent by :class:`Fanout`) gets
one :class:`Gather` slot in the client's queue and one :class:`Leg` per shard it touches (an
MGET served partly by the near-cache: per key fetched alone, see :class:`Element`). Each leg is an ordinary reply slot for a backend; it answers its parent *by
index*, never by arrival order, and the parent merges when the last leg is in. The merged reply
then leaves in the client's request order like any other.

Merge rules (named in the command table):

``array``   MGET: each shard's array is put back at the positions of its keys.
``ok``      MSET, FLUSHDB, FLUSHALL: ``+OK`` when every shard said OK.
``sum``     DEL, UNLINK, EXISTS, TOUCH, DBSIZE: integers added.
``concat``  KEYS: arrays concatenated.
``random``  RANDOMKEY: a key from a shard chosen at random among those that have one.
``scan``    SCAN: one shard per call; the cursor carries the shard (see :func:`scan_cursor`).

If any leg fails, the client gets the first leg's error (by shard order), which names the shard.
Only here are replies decoded; everything else is forwarded as raw bytes.

This module talks to backends only through :class:`LegSender` (the session), never directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from shardproxy.backend.node import Node
from shardproxy.backend.slots import Recipient, ReplySlot
from shardproxy.commands.table import CommandSpec
from shardproxy.protocol import encode, errors, replies
from shardproxy.protocol.framing import CRLF
from shardproxy.routing.router import Router
from shardproxy.session.queue import QueuedReply

Merge = Callable[["Gather"], bytes]


class LegSender(Protocol):
    """What a fan-out needs from the client session."""

    @property
    def proto(self) -> int: ...

    @property
    def id(self) -> int: ...

    @property
    def router(self) -> Router[Node]:
        """The live router (the host's)."""
        ...

    def send_leg(
        self, shard: int, write: bool, frame: bytes, slot: ReplySlot, keys: Sequence[bytes] = ()
    ) -> None: ...

    def reply_now(self, reply: bytes) -> None: ...

    def add_slot(self, slot: Gather) -> None: ...

    def shard_count(self) -> int: ...


class Gather(QueuedReply):
    """The client's slot for a fan-out request: complete when every leg has answered."""

    __slots__ = ("data", "left", "merge", "proto", "results")

    def __init__(
        self, session: Any, legs: int, merge: Merge, proto: int, data: object = None
    ) -> None:
        # the client (None once it has gone); command index and read time are set by the
        # session (add_slot)
        super().__init__(session, 0, 0.0)
        self.results: list[bytes] = [b""] * legs  # raw reply of each leg, by leg index
        self.left = legs  # legs still outstanding
        self.merge = merge
        self.proto = proto  # the client's protocol when the request was made
        self.data = data  # what the merge needs besides the replies (e.g. key positions)

    def leg_done(self, index: int, reply: bytes) -> Recipient | None:
        self.results[index] = reply
        self.left -= 1
        if self.left:
            return None
        try:
            self.reply = self.merge(self)
        except (replies.ReplyError, ValueError, IndexError) as exc:
            self.reply = (
                b"-ERR shardproxy could not merge the shard replies: "
                + str(exc).encode()[:200]
                + b"\r\n"
            )
        return self.session

    def first_error(self) -> bytes | None:
        for r in self.results:
            if replies.is_error(r):
                return r
        return None


class Leg(ReplySlot):
    """One shard's part of a fan-out: a reply slot that answers its parent by index."""

    __slots__ = ("index", "parent")

    def __init__(self, parent: Gather, index: int) -> None:
        self.parent = parent
        self.index = index

    def complete(self, reply: bytes) -> Recipient | None:
        return self.parent.leg_done(self.index, reply)

    def fail(self, reply: bytes) -> Recipient | None:
        return self.parent.leg_done(self.index, reply)


class Element(Leg):
    """A single value standing for one position of an MGET (a key fetched with GET): it
    answers its parent as a one-element array. A key holding another type is a null there, as
    MGET answers it."""

    __slots__ = ()

    def complete(self, reply: bytes) -> Recipient | None:
        if reply[:1] == b"-":
            if not reply.startswith(b"-WRONGTYPE"):
                return self.parent.leg_done(self.index, reply)
            reply = encode.null(self.parent.proto)
        return self.parent.leg_done(self.index, b"*1\r\n" + reply)


def add_position(groups: dict[int, list[int]], shard: int, position: int) -> None:
    """Record that the key at ``position`` goes to ``shard`` (positions in first-seen order)."""
    group = groups.get(shard)
    if group is None:
        groups[shard] = [position]
    else:
        group.append(position)


def leg_frame(argv: list[bytes], where: list[int], step: int) -> bytes:
    """The request for one shard's part of a split command: the command and the keys (or
    key-value pairs, ``step`` 2) at positions ``where``."""
    name = argv[0]
    count = len(where) * step
    # header, then (length line, argument, CRLF) for the name and each argument: the list is
    # made at its size with every CRLF in place
    parts = [CRLF] * (4 + 3 * count)
    parts[0] = encode.array_header(count + 1)
    parts[1] = encode.bulk_header(len(name))
    parts[2] = name
    i = 4
    for p in where:
        a = argv[1 + p * step]
        parts[i] = encode.bulk_header(len(a))
        parts[i + 1] = a
        i += 3
        if step == 2:
            a = argv[2 + p * step]
            parts[i] = encode.bulk_header(len(a))
            parts[i + 1] = a
            i += 3
    return b"".join(parts)


# -- merge rules ---------------------------------------------------------------------------


def merge_array(g: Gather) -> bytes:
    """MGET: each leg's values go back to the positions of its keys. The legs were answered
    on connections of the client's protocol, so their elements are copied as they are."""
    err = g.first_error()
    if err is not None:
        return err
    positions: list[list[int]] = g.data  # type: ignore[assignment]
    total = 0
    for p in positions:
        total += len(p)
    out: list[bytes] = [b""] * (total + 1)  # the array's header, then its elements
    out[0] = encode.array_header(total)
    for leg, raw in enumerate(g.results):
        where = positions[leg]
        if replies.place_strings(raw, where, out):
            continue  # (the usual reply: bulk strings and nulls)
        items = replies.split_aggregate(raw)
        if items is None or len(items) != len(where):
            raise replies.ReplyError("a shard returned the wrong number of values")
        for pos, item in zip(where, items, strict=True):
            out[pos + 1] = item
    return b"".join(out)


def merge_ok(g: Gather) -> bytes:
    err = g.first_error()
    return err if err is not None else encode.OK


def merge_sum(g: Gather) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    return encode.integer(sum(replies.parse_integer(r) for r in g.results))


def merge_concat(g: Gather) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    items: list[bytes] = []
    for r in g.results:
        items.extend(replies.split_aggregate(r) or ())
    return encode.array(items)


def merge_random(g: Gather) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    found = [r for r in g.results if replies.parse_bulk(r) is not None]
    return random.choice(found) if found else encode.null(g.proto)


def merge_same(g: Gather) -> bytes:
    """SCRIPT LOAD, FUNCTION LOAD ...: every node gave the same reply (an SHA, a library name,
    +OK); an error from any node is the reply."""
    err = g.first_error()
    if err is not None:
        return err
    first = g.results[0]
    for r in g.results[1:]:
        if r != first:
            raise replies.ReplyError("the nodes answered differently")
    return first


def merge_and(g: Gather) -> bytes:
    """SCRIPT EXISTS: a script exists only where every node has it."""
    err = g.first_error()
    if err is not None:
        return err
    acc: list[int] | None = None
    for r in g.results:
        items = replies.split_aggregate(r)
        if items is None:
            raise replies.ReplyError("SCRIPT EXISTS did not answer an array")
        values = [replies.parse_integer(x) for x in items]
        if acc is None:
            acc = values
        elif len(values) != len(acc):
            raise replies.ReplyError("the nodes answered arrays of different lengths")
        else:
            acc = [a & v for a, v in zip(acc, values, strict=True)]
    return encode.array([encode.integer(v) for v in acc or []])


def merge_killed(g: Gather) -> bytes:
    """SCRIPT KILL, FUNCTION KILL: +OK if some node stopped a script; else the most telling
    error (UNKILLABLE over NOTBUSY, which every idle node answers)."""
    for r in g.results:
        if r == encode.OK:
            return r
    for r in g.results:
        if not r.startswith(b"-NOTBUSY"):
            return r
    return g.results[0]


MERGES: dict[str, Merge] = {
    "array": merge_array,
    "ok": merge_ok,
    "sum": merge_sum,
    "concat": merge_concat,
    "random": merge_random,
    "same": merge_same,
    "and": merge_and,
    "killed": merge_killed,
}


# -- SCAN cursors --------------------------------------------------------------------------


def _shard_bits(shards: int) -> int:
    return max(1, (shards - 1).bit_length())


def scan_cursor(cursor: int, shards: int) -> tuple[int, int] | None:
    """Split a proxy cursor into (shard index, that shard's own cursor); None if invalid.

    The low bits carry the shard index; cursor 0 starts at shard 0. A full SCAN therefore walks
    shard 0 to the end, then shard 1, ..., and returns 0 after the last shard: every shard once.
    """
    bits = _shard_bits(shards)
    shard = cursor & ((1 << bits) - 1)
    if shard >= shards or cursor < 0:
        return None
    return shard, cursor >> bits


def next_scan_cursor(shard: int, backend_cursor: int, shards: int) -> int:
    """The proxy cursor to hand back after ``shard`` answered with ``backend_cursor``."""
    if backend_cursor == 0:
        return 0 if shard + 1 >= shards else shard + 1
    return (backend_cursor << _shard_bits(shards)) | shard


def merge_scan(g: Gather) -> bytes:
    raw = g.results[0]
    if replies.is_error(raw):
        return raw
    shard, shards = cast(tuple[int, int], g.data)
    items = replies.split_aggregate(raw)
    if items is None or len(items) != 2:
        raise replies.ReplyError("unexpected SCAN reply")
    value = replies.parse_bulk(items[0])
    nxt = next_scan_cursor(shard, int(value or b"0"), shards)
    return b"*2\r\n" + encode.bulk(b"%d" % nxt) + items[1]


# -- executing -----------------------------------------------------------------------------


class Fanout:
    """Plans and starts fan-out requests for a session (one instance per proxy)."""

    def all_shards(
        self, session: LegSender, spec: CommandSpec, argv: list[bytes], frame: bytes
    ) -> None:
        """DBSIZE, KEYS, FLUSHDB, RANDOMKEY ...: every shard's primary; SCAN: one shard."""
        n = session.shard_count()
        if spec.merge == "scan":
            try:
                cursor = int(argv[1])
            except ValueError:
                session.reply_now(errors.reply("invalid_cursor"))
                return
            where = scan_cursor(cursor, n)
            if where is None:
                session.reply_now(errors.reply("invalid_cursor"))
                return
            shard, backend_cursor = where
            sub = [argv[0], b"%d" % backend_cursor, *argv[2:]]
            g = Gather(session, 1, merge_scan, session.proto, (shard, n))
            session.add_slot(g)
            session.send_leg(shard, True, encode.encode_command(sub), Leg(g, 0))
            return
        self.broadcast(session, frame, MERGES[spec.merge or "ok"])

    def all_nodes(self, session: LegSender, spec: CommandSpec, frame: bytes) -> None:
        """SCRIPT LOAD / EXISTS / FLUSH / KILL, FUNCTION KILL: every shard's primary, and its
        replicas too when reads (EVALSHA_RO ...) may go to them; merged by the spec's rule."""
        router = session.router
        nodes: list[Node] = []
        for s in router.shards:
            nodes.append(s.primary)
            if router.replica_reads:
                nodes.extend(s.replicas)
        g = Gather(session, len(nodes), MERGES[spec.merge or "same"], session.proto)
        session.add_slot(g)
        proto, cid = session.proto, session.id
        for i, node in enumerate(nodes):
            node.connection(proto, cid).send(frame, Leg(g, i))

    def broadcast(
        self, session: LegSender, frame: bytes, merge: Merge, data: object = None
    ) -> None:
        """Send ``frame`` to every shard's primary and merge with ``merge``."""
        n = session.shard_count()
        g = Gather(session, n, merge, session.proto, data)
        session.add_slot(g)
        for shard in range(n):
            # write=True: the primary, the authoritative copy of the shard
            session.send_leg(shard, True, frame, Leg(g, shard))
