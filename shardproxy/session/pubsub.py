"""The proxy's pub/sub registry: which clients want which channels, the subscriber connections
that bring the messages in, and their delivery to the clients.

Redis delivers a message to the subscribers of the node it was published on. A message can be
published on any shard (through the proxy, inside a transaction or script pinned elsewhere,
directly on a node, or by Redis itself: keyspace notifications), so every channel and pattern
a client of the proxy wants is subscribed on every shard's primary, once: each message is
published on exactly one node, and reaches the proxy exactly once. Replicas are never
subscribed (a PUBLISH is replicated to them: that would be twice). Sharded channels
(SSUBSCRIBE) live on the shard their name hashes to, like keys, and are subscribed there only.

Interest is reference-counted: the first client of a channel (or pattern) subscribes it
upstream, the last one to leave unsubscribes it. Each primary has ``pubsub.connections``
subscriber connections; a name always travels on the same one (its hash), so 1,000 clients on
100 channels cost one connection per primary, not 1,000.

::

    client SUBSCRIBE a ──▶ first interest in a? ──yes──▶ SUBSCRIBE a on every primary
                             │                              then PING on each: the client's
                             └──no──────────────────────────▶ confirmation waits for the PONGs
    node ──▶ message a ──▶ every client subscribed to a ──▶ its reply queue, as a complete
                                                            reply (RESP3: a push frame)

Topology: every 50 ms while anything is subscribed (and at once after a reload), each shard's
subscriber connections are checked against the shard's primary now; after a failover or a
reload they are closed and opened on the new primary, which is then subscribed to the whole
set. Messages published in between are lost (pub/sub is at-most-once, as in Redis). A node
that restarts is subscribed again when its connection is back.

A subscriber that does not read: once the bytes waiting in its socket buffer pass
``pubsub.output_hard_limit``, or stay above ``output_soft_limit`` for ``output_soft_seconds``,
it is disconnected and counted (Redis's ``client-output-buffer-limit pubsub``); messages that
wait behind a request's reply are bounded by the command timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from shardproxy.backend.node import Node
from shardproxy.backend.slots import Recipient
from shardproxy.backend.subscriber import SubscriberConnection, SubscriberOwner
from shardproxy.observe.metrics import Stats
from shardproxy.protocol import encode, glob, push
from shardproxy.protocol.fifo import Fifo
from shardproxy.routing.router import Router
from shardproxy.session.queue import QueuedReply
from shardproxy.session.replyslots import PUSHED

log = logging.getLogger("shardproxy.pubsub")

CHANNEL: Final = push.MESSAGE  # the three namespaces, numbered as their messages' kinds
PATTERN: Final = push.PMESSAGE
SHARD: Final = push.SMESSAGE
SUBSCRIBE: Final = (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE")
UNSUBSCRIBE: Final = (b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE")
CHUNK: Final = 512  # names per upstream (un)subscribe command
TICK_S: Final = 0.05  # how often the subscriber connections are checked against the topology


class Listener(Protocol):
    """A client, as the registry delivers to it."""

    @property
    def proto(self) -> int: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def queue(self) -> Fifo[QueuedReply]: ...

    @property
    def peer(self) -> str: ...


class Subscriptions:
    """One client's channels, patterns and shard channels (in the order it subscribed)."""

    __slots__ = ("client", "names", "recipient", "soft_since")

    def __init__(self, recipient: Recipient, client: Listener) -> None:
        self.recipient = recipient  # the client, as whom its pushed messages are flushed for
        self.client = client  # the same client, as the owner of the queue and the socket
        self.names: list[dict[bytes, None]] = [{}, {}, {}]  # by CHANNEL, PATTERN, SHARD
        self.soft_since = -1.0  # loop time since when it has been above the soft limit

    def count(self, kind: int) -> int:
        """What Redis's confirmations count: channels + patterns, or shard channels."""
        if kind == SHARD:
            return len(self.names[SHARD])
        return len(self.names[CHANNEL]) + len(self.names[PATTERN])

    def total(self) -> int:
        return len(self.names[CHANNEL]) + len(self.names[PATTERN]) + len(self.names[SHARD])


class Upstream:
    """One shard's subscriber connections, on the node that is its primary."""

    __slots__ = ("conns", "node", "shard")

    def __init__(self, shard: str, node: Node, conns: list[SubscriberConnection]) -> None:
        self.shard = shard
        self.node = node
        self.conns = conns


class PubSub(SubscriberOwner):
    """Every client subscription of one worker process, and the upstream side of them."""

    __slots__ = (
        "_tick",
        "connections",
        "hard_limit",
        "interest",
        "loop",
        "router",
        "shard_of",
        "soft_limit",
        "soft_seconds",
        "stats",
        "subscribed",
        "upstreams",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: Stats,
        connections: int = 1,
        hard_limit: int = 32 * 1024**2,
        soft_limit: int = 8 * 1024**2,
        soft_seconds: float = 60.0,
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.connections = max(1, connections)  # subscriber connections per primary
        self.hard_limit = hard_limit  # 0: none
        self.soft_limit = soft_limit
        self.soft_seconds = soft_seconds
        # by CHANNEL, PATTERN, SHARD: name -> the clients subscribed to it
        self.interest: list[dict[bytes, dict[Subscriptions, None]]] = [{}, {}, {}]
        self.shard_of: dict[bytes, str] = {}  # shard channel -> the shard subscribed to it
        self.subscribed: dict[Subscriptions, None] = {}  # clients with a subscription
        self.upstreams: dict[str, Upstream] = {}  # shard name -> its subscriber connections
        self.router: Router[Node] | None = None
        self._tick: asyncio.TimerHandle | None = None

    # -- interest --------------------------------------------------------------------------

    def add(self, subs: Subscriptions, kind: int, names: list[bytes]) -> None:
        """``subs`` subscribes to ``names``; the first interest in a name goes upstream."""
        mine = subs.names[kind]
        table = self.interest[kind]
        fresh: list[bytes] = []
        for name in names:
            if name in mine:
                continue
            mine[name] = None
            clients = table.get(name)
            if clients is None:
                clients = {}
                table[name] = clients
                fresh.append(name)
            clients[subs] = None
        self.subscribed[subs] = None
        self.reconcile()
        if fresh:
            self._upstream(kind, fresh, True)

    def remove(self, subs: Subscriptions, kind: int, names: list[bytes]) -> None:
        """``subs`` unsubscribes from ``names``; the last interest in a name goes upstream."""
        mine = subs.names[kind]
        table = self.interest[kind]
        gone: list[bytes] = []
        for name in names:
            if name not in mine:
                continue
            del mine[name]
            clients = table.get(name)
            if clients is not None:
                clients.pop(subs, None)
                if not clients:
                    del table[name]
                    gone.append(name)
        if gone:
            self._upstream(kind, gone, False)
        if not subs.total():
            self.subscribed.pop(subs, None)

    def drop(self, subs: Subscriptions) -> None:
        """The client left, or RESET: every subscription of it ends."""
        for kind in (CHANNEL, PATTERN, SHARD):
            if subs.names[kind]:
                self.remove(subs, kind, list(subs.names[kind]))

    def receivers(self, kind: int, channel: bytes) -> tuple[int, int]:
        """For a PUBLISH (SPUBLISH) of ``channel``: how many of the node's receivers are this
        proxy's subscriber connections, and how many clients of the proxy receive it."""
        ours = local = 0
        if kind == SHARD:
            clients = self.interest[SHARD].get(channel)
            return (1, len(clients)) if clients else (0, 0)
        clients = self.interest[CHANNEL].get(channel)
        if clients:
            ours += 1
            local += len(clients)
        for pattern, clients in self.interest[PATTERN].items():
            if glob.match(pattern, channel):
                ours += 1
                local += len(clients)
        return ours, local

    # -- upstream --------------------------------------------------------------------------

    def _slot(self, name: bytes) -> int:
        return 0 if self.connections == 1 else hash(name) % self.connections

    def _shard_name(self, channel: bytes) -> str:
        router = self.router
        assert router is not None
        return router.shards[router.shard_index(channel)].name

    def _upstream(self, kind: int, names: list[bytes], subscribe: bool) -> None:
        verb = SUBSCRIBE[kind] if subscribe else UNSUBSCRIBE[kind]
        if kind != SHARD:
            for up in self.upstreams.values():
                self._send(up, verb, names)
            return
        if self.router is None:
            return
        by_shard: dict[str, list[bytes]] = {}
        for name in names:
            if subscribe:
                shard = self._shard_name(name)
                self.shard_of[name] = shard
            else:
                old = self.shard_of.pop(name, None)
                if old is None:
                    continue
                shard = old
            by_shard.setdefault(shard, []).append(name)
        for shard, group in by_shard.items():
            target = self.upstreams.get(shard)
            if target is not None:
                self._send(target, verb, group)

    def _send(self, up: Upstream, verb: bytes, names: list[bytes]) -> None:
        groups: dict[int, list[bytes]] = {}
        for name in names:
            groups.setdefault(self._slot(name), []).append(name)
        for i, group in groups.items():
            conn = up.conns[i]
            for frame in _commands(verb, group):
                conn.command(frame)

    def barrier_conns(self, kind: int, names: list[bytes]) -> list[SubscriberConnection]:
        """The connections whose PING answers say ``names`` are subscribed everywhere."""
        if kind == SHARD:
            shards = {self.shard_of[n] for n in names if n in self.shard_of}
            ups = [self.upstreams[s] for s in shards if s in self.upstreams]
        else:
            ups = list(self.upstreams.values())
        slots = {self._slot(n) for n in names}
        return [c for up in ups for c in up.conns if c.index in slots]

    def subscriptions(self, conn: SubscriberConnection) -> list[bytes]:
        """A fresh connection's whole set: its channels, patterns and shard channels."""
        frames: list[bytes] = []
        index = conn.index
        for kind in (CHANNEL, PATTERN):
            names = [n for n in self.interest[kind] if self._slot(n) == index]
            frames.extend(_commands(SUBSCRIBE[kind], names))
        shard = conn.node.shard
        names = [n for n, s in self.shard_of.items() if s == shard and self._slot(n) == index]
        frames.extend(_commands(SUBSCRIBE[SHARD], names))
        return frames

    def subscriber_down(self, conn: SubscriberConnection) -> None:
        log.info("subscriber connection to %s lost: %s", conn.node.address, conn.last_error)

    # -- topology --------------------------------------------------------------------------

    def router_changed(self, router: Router[Node]) -> None:
        """A reload or an ejection published a new router: follow it at once."""
        self.router = router
        self.reconcile()

    def reconcile(self) -> None:
        """Subscriber connections on every shard's primary now (none when nothing is
        subscribed); shard channels on the shard their name hashes to now."""
        router = self.router
        if router is None:
            return
        if not self.subscribed:
            for idle in self.upstreams.values():
                for c in idle.conns:
                    c.close()
            self.upstreams = {}
            if self._tick is not None:
                self._tick.cancel()
                self._tick = None
            return
        live: dict[str, Upstream] = {}
        for s in router.shards:
            up = self.upstreams.pop(s.name, None)
            node = s.primary
            if up is not None and up.node is not node:
                log.info(
                    "shard %s: subscriber connections move from %s to %s",
                    s.name,
                    up.node.address,
                    node.address,
                )
                for c in up.conns:
                    c.close()
                up = None
            if up is None:
                conns = [SubscriberConnection(node, self, i) for i in range(self.connections)]
                up = Upstream(s.name, node, conns)
                for c in conns:
                    c.start()
            live[s.name] = up
        for gone in self.upstreams.values():  # shards that left the ring
            for c in gone.conns:
                c.close()
        self.upstreams = live
        if self.shard_of:
            for name, old in list(self.shard_of.items()):
                new = self._shard_name(name)
                if new != old:  # a reload moved the shard channel
                    self.shard_of[name] = new
                    if old in live:
                        self._send(live[old], UNSUBSCRIBE[SHARD], [name])
                    self._send(live[new], SUBSCRIBE[SHARD], [name])
        if self._tick is None:
            self._tick = self.loop.call_later(TICK_S, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self.reconcile()

    def close(self) -> None:
        """The proxy stops: every subscriber connection closes, the tick ends."""
        self.subscribed.clear()
        self.reconcile()

    # -- delivery --------------------------------------------------------------------------

    def messages(self, conn: SubscriberConnection, frames: list[bytes]) -> None:
        """Messages read from a node: to every client subscribed, in its protocol. A client
        owed no reply gets its messages of the batch in one write at once; the others get
        them in their reply queue, behind the replies they are owed."""
        direct: dict[Subscriptions, list[bytes]] = {}
        queued: list[Subscriptions] = []
        delivered = 0
        interest = self.interest
        for f in frames:
            kind = push.subscriber_frame(f)
            targets = interest[kind].get(push.message_name(f))
            if not targets:
                continue
            f3 = b""
            for subs in targets:
                client = subs.client
                t = client.transport
                if t is None or t.is_closing():
                    continue
                if client.proto == 2:
                    out = f
                else:
                    if not f3:
                        f3 = push.to_push(f)
                    out = f3
                delivered += 1
                if not client.queue:
                    chunks = direct.get(subs)
                    if chunks is None:
                        direct[subs] = [out]
                    else:
                        chunks.append(out)
                    continue
                r = subs.recipient
                client.queue.append(QueuedReply(r, PUSHED, 0.0, out))
                if not r.dirty:
                    r.dirty = True
                    queued.append(subs)
        stats = self.stats
        stats.pubsub_messages += delivered
        for subs, chunks in direct.items():
            t = subs.client.transport
            if t is not None:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                stats.bytes_out += len(data)
                t.write(data)
                self._check_output(subs)
        for subs in queued:
            subs.recipient.flush()
            self._check_output(subs)

    def _check_output(self, subs: Subscriptions) -> None:
        t = subs.client.transport
        if t is None:
            return
        size = t.get_write_buffer_size()
        if self.hard_limit and size > self.hard_limit:
            self._disconnect(subs, size, "hard")
        elif self.soft_limit and size > self.soft_limit:
            now = self.loop.time()
            if subs.soft_since < 0:
                subs.soft_since = now
            elif now - subs.soft_since >= self.soft_seconds:
                self._disconnect(subs, size, "soft")
        else:
            subs.soft_since = -1.0

    def _disconnect(self, subs: Subscriptions, size: int, which: str) -> None:
        self.stats.pubsub_slow_disconnects += 1
        log.warning(
            "client %s disconnected: %d bytes of pub/sub messages unread (%s limit)",
            subs.client.peer,
            size,
            which,
        )
        self.drop(subs)
        t = subs.client.transport
        if t is not None:
            t.abort()

    # -- introspection ---------------------------------------------------------------------

    def upstream_connections(self) -> list[tuple[str, str, int]]:
        """(shard, node, subscriber connections READY) for every shard subscribed on."""
        return [
            (up.shard, up.node.address, sum(1 for c in up.conns if c.state == "ready"))
            for up in self.upstreams.values()
        ]


def _commands(verb: bytes, names: list[bytes]) -> list[bytes]:
    return [
        encode.encode_command([verb, *names[i : i + CHUNK]]) for i in range(0, len(names), CHUNK)
    ]
