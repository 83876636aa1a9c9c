"""Where a client's requests go: the reply slot in the client's queue, and the node by key,
read policy, read-your-writes, migration and the near-cache.

:class:`Sending` is the part of a client session (``session/client.py`` derives from it) that
the routers of requests call: normal dispatch, fan-out (``LegSender``), scripts, modes. It
holds what routing needs of the session (its host, protocol, id, reply queue, the request
being dispatched, its recent writes) and nothing of the connection's life.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from shardproxy.backend.node import Node
from shardproxy.backend.slots import IGNORE, Recipient, ReplySlot
from shardproxy.commands.table import SPEC_COUNT, CommandSpec, get_keys, is_blocking
from shardproxy.protocol import encode, errors
from shardproxy.protocol.fifo import Fifo
from shardproxy.routing.router import Router, ShardNodes
from shardproxy.session.cache import CACHING_YES, NearCache
from shardproxy.session.fanout import (
    MERGES,
    Element,
    Gather,
    Leg,
    add_position,
    leg_frame,
    merge_array,
)
from shardproxy.session.host import SessionHost
from shardproxy.session.queue import QueuedReply
from shardproxy.session.replyslots import ReplicaRetry

UNKNOWN: Final = SPEC_COUNT  # metrics index of commands not in the table (and protocol errors)


class Sending(Recipient):
    """A client session as the routers of its requests see it.

    ``request_cmd`` and ``request_time`` describe the request being dispatched: every queued
    reply made while dispatching it is counted as that command, read at that time."""

    __slots__ = (
        "host",
        "id",
        "live",
        "proto",
        "queue",
        "request_cmd",
        "request_time",
        "transport",
        "writes",
        "wrote",
    )

    def __init__(self, host: SessionHost) -> None:
        super().__init__()
        self.host = host
        self.live = host.live  # (the host's per-request fields, read natively)
        self.id = host.next_client_id()
        self.proto = 2  # RESP version the client speaks (HELLO switches it)
        self.queue: Fifo[QueuedReply] = Fifo()  # outstanding replies, in request order
        self.transport: asyncio.Transport | None = None  # the client's socket, once connected
        self.writes: dict[str, float] | None = None  # shard -> clock() of this client's last write
        self.wrote = 0  # bit i: wrote to shard i since the last WAIT (-1: renumbered, all)
        self.request_cmd = UNKNOWN
        self.request_time = 0.0  # perf_counter() of the read being dispatched

    def block(self, spec: CommandSpec, argv: list[bytes], frame: bytes) -> None:
        """A blocking command (the session runs it in blocked mode)."""
        raise NotImplementedError

    @property
    def router(self) -> Router[Node]:
        """The live router (a reload swaps it between reads)."""
        return self.live.router

    def forward_keyed(self, spec: CommandSpec, argv: list[bytes], frame: bytes) -> None:
        if is_blocking(spec, argv):
            self.block(spec, argv, frame)  # XREAD / XREADGROUP with BLOCK
            return
        positions = get_keys(spec, argv)
        router = self.live.router
        if not positions:
            # no key in this form of the command (e.g. a wrong numkeys): let a node answer
            self.send_to_shard(0, spec.write, frame)
            return
        keys = [argv[i] for i in positions]
        shard = router.shard_of_keys(keys)
        if shard < 0:
            self.reply_now(errors.reply("crossslot"))
            return
        self.send_to_shard(shard, spec.write, frame, keys)

    def forward_any(self, spec: CommandSpec, frame: bytes) -> None:
        router = self.live.router
        for i, s in enumerate(router.shards):
            if s.primary.usable:
                self.send_to_shard(i, spec.write, frame)
                return
        self.send_to_shard(0, spec.write, frame)

    def cached_get(self, shard: int, key: bytes, frame: bytes) -> None:
        """GET of a cacheable key (session/cache.py): from the cache, or sent with CLIENT
        CACHING yes and followed by PTTL so that the reply can be kept."""
        cache = self.live.cache
        assert cache is not None
        hit = cache.lookup(key, self.request_time)
        if hit is not None:
            self.reply_now(hit)
            return
        slot = self.new_slot()
        if not self.fill(shard, key, frame, slot):
            self.send_leg(shard, False, frame, slot, (key,))

    def fill(self, shard: int, key: bytes, frame: bytes, slot: ReplySlot) -> bool:
        """Send the GET ``frame`` of ``key`` as a cache fill whose reply goes to ``slot``:
        tracked (CLIENT CACHING yes first) and followed by PTTL, which stores the entry. False
        when the node cannot fill now (none to read from, tracking not on yet, a reload
        under way): then nothing was sent."""
        cache = self.live.cache
        assert cache is not None
        s, node = self.pick(shard, False)
        if node is None or self.live.router.migration is not None or not node.tracking_id:
            return False
        pipe = node.connection(self.proto, self.id)
        if not pipe.tracks():
            return False
        reply, ttl = cache.fill(key, s.name, slot)
        if node is not s.primary:
            reply = ReplicaRetry(reply, frame, s.primary, self)
        pipe.send(CACHING_YES, IGNORE)
        pipe.send(frame, reply)
        pipe.send(encode.encode_command([b"PTTL", key]), ttl)
        return True

    def split(self, spec: CommandSpec, argv: list[bytes], frame: bytes) -> None:
        """MGET / MSET / DEL ...: one sub-command per shard with that shard's keys, merged
        by leg index (session/fanout.py). MGET's cacheable keys are looked up in the
        near-cache first."""
        step = 2 if spec.name == "mset" else 1
        if step == 2 and len(argv) % 2 == 0:
            self.reply_now(errors.reply("arity", name=spec.name))
            return
        count = (len(argv) - 1) // step  # keys
        cache = self.live.cache
        if cache is not None and spec.merge == "array":
            self.cached_mget(spec, argv, frame, cache)
            return
        router = self.live.router
        ring = router.ring
        groups: dict[int, list[int]] = {}  # shard -> positions of its keys, first-seen order
        for k in range(count):
            add_position(groups, ring.shard_index(argv[1 + k * step]), k)
        moving = router.migration is not None  # (a reload: the legs' keys are checked)
        if len(groups) == 1:
            # all keys on one shard: forward as is, no merge needed
            (shard,) = groups
            self.send_to_shard(shard, spec.write, frame, argv[1::step] if moving else ())
            return
        positions = list(groups.values())
        merge = merge_array if spec.merge == "array" else MERGES[spec.merge or "sum"]
        g = Gather(self, len(groups), merge, self.proto, positions)
        self.add_slot(g)
        self._send_legs(g, groups, argv, step, spec.write)

    def _send_legs(
        self, g: Gather, groups: dict[int, list[int]], argv: list[bytes], step: int, write: bool
    ) -> None:
        """One leg per shard of ``groups``, legs 0, 1, ... of ``g`` in the dict's order."""
        router = self.live.router
        moving = router.migration is not None  # (a reload: the legs' keys are checked)
        direct = router.direct
        proto, cid = self.proto, self.id
        index = 0
        for shard, where in groups.items():
            sub = leg_frame(argv, where, step)
            if direct:  # every leg to its primary (as the inline fast path)
                if write:
                    self.wrote |= 1 << shard
                router.shards[shard].primary.connection(proto, cid).send(sub, Leg(g, index))
            else:
                leg_keys = [argv[1 + p * step] for p in where] if moving else ()
                self.send_leg(shard, write, sub, Leg(g, index), leg_keys)
            index += 1

    def cached_mget(
        self, spec: CommandSpec, argv: list[bytes], frame: bytes, cache: NearCache
    ) -> None:
        """MGET with the near-cache on: a cacheable key is answered from the cache, or
        fetched as a fill (a tracked GET, as :meth:`cached_get`) once it has been asked for
        before; the other keys go in one MGET per shard. Each such part is a leg."""
        router = self.live.router
        ring = router.ring
        now = self.request_time
        hits: list[bytes] = []
        hit_at: list[int] = []
        fills: list[tuple[int, int]] = []  # (shard, position) of keys fetched as fills
        groups: dict[int, list[int]] = {}  # shard -> positions of the keys left to MGET
        for k in range(len(argv) - 1):
            key = argv[1 + k]
            shard = ring.shard_index(key)
            if cache.cacheable(key):
                hit = cache.lookup(key, now)
                if hit is not None:
                    hits.append(hit)
                    hit_at.append(k)
                    continue
                if cache.warm(key):
                    fills.append((shard, k))
                    continue
            add_position(groups, shard, k)
        if not fills and not groups:
            self.reply_now(encode.array(hits))  # every key from the cache
            return
        moving = router.migration is not None
        if not hits and not fills and len(groups) == 1:
            (shard,) = groups
            self.send_to_shard(shard, False, frame, argv[1:] if moving else ())
            return
        positions = list(groups.values())
        positions.extend([k] for _, k in fills)
        legs = len(positions)
        if hits:
            positions.append(hit_at)
        g = Gather(self, len(positions), merge_array, self.proto, positions)
        if hits:
            g.results[legs] = encode.array(hits)
            g.left -= 1
        self.add_slot(g)
        self._send_legs(g, groups, argv, 1, False)
        index = len(groups)
        for shard, k in fills:
            key = argv[1 + k]
            get = encode.encode_command([b"GET", key])
            slot = Element(g, index)
            if not self.fill(shard, key, get, slot):
                self.send_leg(shard, False, get, slot, (key,))
            index += 1

    def send_to_shard(
        self, shard: int, write: bool, frame: bytes, keys: Sequence[bytes] = ()
    ) -> None:
        """Send ``frame`` to the node serving ``shard`` for a new reply in the queue."""
        self.send_leg(shard, write, frame, self.new_slot(), keys)

    def send_leg(
        self, shard: int, write: bool, frame: bytes, slot: ReplySlot, keys: Sequence[bytes] = ()
    ) -> None:
        """Send ``frame`` to ``shard``; ``slot`` (any reply slot) completes with the reply.
        A read sent to a replica is wrapped in :class:`ReplicaRetry`: retried once on the
        primary if the replica fails before answering."""
        s, node = self.pick(shard, write)
        if node is None:
            slot.complete(self._no_replica(shard))
        elif node is s.primary:
            self._send(s, node, frame, slot, keys)
        else:
            self._send(s, node, frame, ReplicaRetry(slot, frame, s.primary, self), keys)

    def _send(
        self, s: ShardNodes[Node], node: Node, frame: bytes, slot: ReplySlot, keys: Sequence[bytes]
    ) -> None:
        migration = self.live.router.migration
        if migration is not None and keys:
            # keys that changed shard in a reload move to it first (then the primary answers,
            # since a replica may not have the moved key yet)
            proto, cid = self.proto, self.id

            def send() -> None:
                s.primary.connection(proto, cid).send(frame, slot)

            if migration.forward(keys, s, send):
                return
        node.connection(self.proto, self.id).send(frame, slot)

    def pick(self, shard: int, write: bool) -> tuple[ShardNodes[Node], Node | None]:
        """The shard and the node for a request, with read-your-writes: after this client
        writes to a shard, its reads of that shard go to the primary for a while."""
        router = self.live.router
        s = router.shards[shard]
        if write:
            self.wrote |= 1 << shard  # (for WAIT)
        if not router.replica_reads:
            return s, s.primary
        ryw = self.live.read_your_writes
        now = self.request_time
        if write:
            if ryw:
                if self.writes is None:
                    self.writes = {}
                self.writes[s.name] = now
            return s, s.primary
        recent = bool(ryw and self.writes and now - self.writes.get(s.name, -1e18) < ryw)
        return s, router.node(shard, False, recent)

    def _no_replica(self, shard: int) -> bytes:
        return errors.reply("no_replica", shard=self.live.router.shards[shard].name)

    def new_slot(self) -> QueuedReply:
        """A reply slot for the request being dispatched, at the tail of the queue."""
        slot = QueuedReply(self, self.request_cmd, self.request_time)
        self.queue.append(slot)
        return slot

    def add_slot(self, slot: QueuedReply) -> None:
        slot.session = self
        slot.cmd = self.request_cmd
        slot.t0 = self.request_time
        self.queue.append(slot)

    def shard_count(self) -> int:
        return len(self.live.router.shards)

    def reply_now(self, reply: bytes) -> None:
        """Queue a reply the proxy has already made (it still waits for earlier ones)."""
        self.queue.append(QueuedReply(self, self.request_cmd, self.request_time, reply))
