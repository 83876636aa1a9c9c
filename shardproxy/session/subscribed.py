"""A client's pub/sub commands, and the subscribed mode of a RESP2 client.

(P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE are answered by the proxy from the client's own
subscriptions (``pubsub.Subscriptions``), with Redis's confirmations and counts; a SUBSCRIBE's
confirmation waits until the proxy's subscriber connections have the names in effect on every
shard (their PINGs answered), so a message published once the client has its confirmation is
not missed. PUBLISH and SPUBLISH go to the primary of the shard the channel hashes to (any
shard would do for PUBLISH: every shard is subscribed); their receiver count is the node's,
with the proxy's subscriber connections replaced by the proxy's clients. PUBSUB CHANNELS,
NUMSUB, NUMPAT, SHARDCHANNELS and SHARDNUMSUB ask every primary and count the proxy's
clients the same way.

Subscribed mode (RESP2 only, as in Redis; a RESP3 client keeps running every command and gets
messages as push frames)::

    NORMAL or WATCHING ── first subscription ──▶ SUBSCRIBED ── last one ends ──▶ back
                                                   │  only (P|S)(UN)SUBSCRIBE, PING
                                                   │  (answered *2 pong ...), QUIT, RESET
                                                   └── RESET ──▶ NORMAL (nothing subscribed)

A watch held when the client subscribed is kept (the lease goes along, as across a block).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final, Protocol, cast

from shardproxy.backend.node import Node
from shardproxy.backend.slots import Recipient, ReplySlot
from shardproxy.commands.table import CommandSpec, arity_ok
from shardproxy.protocol import encode, errors, glob, replies
from shardproxy.routing.router import Router
from shardproxy.session.fanout import Gather, Leg
from shardproxy.session.modes import (
    NORMAL,
    SUBSCRIBED,
    SUBSCRIBING,
    UNSUBSCRIBED,
    WATCHING,
    ClientMode,
    ModeClient,
    Pin,
    next_mode,
)
from shardproxy.session.pubsub import CHANNEL, PATTERN, SHARD, PubSub, Subscriptions

#: command -> (namespace, subscribes)
SUBSCRIPTION_COMMANDS: Final[dict[str, tuple[int, bool]]] = {
    "subscribe": (CHANNEL, True),
    "psubscribe": (PATTERN, True),
    "ssubscribe": (SHARD, True),
    "unsubscribe": (CHANNEL, False),
    "punsubscribe": (PATTERN, False),
    "sunsubscribe": (SHARD, False),
}
_WORDS: Final = (
    (b"subscribe", b"psubscribe", b"ssubscribe"),
    (b"unsubscribe", b"punsubscribe", b"sunsubscribe"),
)
#: what a RESP2 client may send while subscribed (PING is answered by the mode)
ALLOWED: Final = frozenset({*SUBSCRIPTION_COMMANDS, "ping", "quit", "reset"})


def confirmation(word: bytes, name: bytes | None, count: int, proto: int) -> bytes:
    """``subscribe a 1`` and friends: an array in RESP2, a push in RESP3."""
    head = b">3\r\n" if proto == 3 else b"*3\r\n"
    return head + encode.bulk(word) + encode.bulk(name, proto) + encode.integer(count)


class PubSubClient(ModeClient, Protocol):
    """What the pub/sub commands need of the client session."""

    @property
    def mode(self) -> ClientMode | None: ...

    @property
    def id(self) -> int: ...

    @property
    def router(self) -> Router[Node]: ...

    def subscriptions(self) -> Subscriptions:
        """The client's subscriptions (made on first use)."""
        ...

    def send_leg(
        self, shard: int, write: bool, frame: bytes, slot: ReplySlot, keys: Sequence[bytes] = ()
    ) -> None: ...


class SubscribedMode(ClientMode):
    """A RESP2 client with at least one subscription."""

    __slots__ = ("pin",)

    name: ClassVar[str] = SUBSCRIBED

    def __init__(self, pin: Pin | None) -> None:
        self.pin = pin  # a watch the client held when it subscribed

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        if spec is None or not arity_ok(spec, len(argv)):
            return False  # unknown command, wrong arity: Redis says so first
        name = spec.name
        if spec.subcommands and len(argv) >= 2:
            sub = spec.subcommands.get(argv[1].lower())
            if sub is None:
                return False  # unknown subcommand: answered as such
            name = sub.name
        if name == "ping":
            client.reply_now(
                b"*2\r\n$4\r\npong\r\n" + encode.bulk(argv[1] if len(argv) > 1 else b"")
            )
            return True
        if name in ALLOWED:
            return False
        client.reply_now(errors.reply("pubsub_context", name=name))
        return True

    def take_pin(self) -> Pin | None:
        pin, self.pin = self.pin, None
        return pin

    def close(self) -> None:
        pin, self.pin = self.pin, None
        if pin is not None:
            pin.release()


def enter(client: PubSubClient) -> None:
    """A RESP2 client with a subscription: subscribed mode (from normal or watching)."""
    mode = client.mode
    if mode is None or mode.name == WATCHING:
        client.set_mode(next_mode(NORMAL if mode is None else mode.name, SUBSCRIBING))


def protocol_changed(client: PubSubClient) -> None:
    """HELLO switched the protocol of a client with subscriptions: RESP2 has subscribed mode
    (Redis refuses other commands to it), RESP3 has not."""
    mode = client.mode
    if client.proto == 2:
        enter(client)
    elif isinstance(mode, SubscribedMode):
        client.set_mode(WATCHING if mode.pin is not None else NORMAL)


class PubSubCommands:
    """The pub/sub commands of every client of one proxy."""

    def __init__(self, hub: PubSub) -> None:
        self.hub = hub

    def handle(
        self, client: PubSubClient, spec: CommandSpec, argv: list[bytes], frame: bytes
    ) -> None:
        name = spec.name
        entry = SUBSCRIPTION_COMMANDS.get(name)
        if entry is not None:
            kind, subscribing = entry
            if subscribing:
                self.subscribe(client, kind, argv[1:])
            else:
                self.unsubscribe(client, kind, argv[1:])
        elif name == "publish" or name == "spublish":
            self.publish(client, SHARD if name == "spublish" else CHANNEL, frame, argv[1])
        else:
            self.introspect(client, spec, argv, frame)

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(self, client: PubSubClient, kind: int, names: list[bytes]) -> None:
        subs = client.subscriptions()
        proto = client.proto
        word = _WORDS[0][kind]
        count = subs.count(kind)
        seen = set(subs.names[kind])
        out: list[bytes] = []
        for name in names:
            if name not in seen:
                seen.add(name)
                count += 1
            out.append(confirmation(word, name, count, proto))
        hub = self.hub
        hub.add(subs, kind, names)
        conns = hub.barrier_conns(kind, names)
        reply = b"".join(out)
        if conns:
            g = Gather(client, len(conns), _confirmed, proto, reply)
            client.add_slot(g)
            for i, conn in enumerate(conns):
                conn.barrier(Leg(g, i))
        else:
            client.reply_now(reply)
        if proto == 2:
            enter(client)

    def unsubscribe(self, client: PubSubClient, kind: int, names: list[bytes]) -> None:
        subs = client.subscriptions()
        proto = client.proto
        word = _WORDS[1][kind]
        if not names:
            names = list(subs.names[kind])
        count = subs.count(kind)
        left = set(subs.names[kind])
        out: list[bytes] = []
        for name in names:
            if name in left:
                left.discard(name)
                count -= 1
            out.append(confirmation(word, name, count, proto))
        if not out:
            out.append(confirmation(word, None, count, proto))
        self.hub.remove(subs, kind, names)
        client.reply_now(b"".join(out))
        mode = client.mode
        if isinstance(mode, SubscribedMode) and not subs.total():
            client.set_mode(
                WATCHING if mode.pin is not None else next_mode(SUBSCRIBED, UNSUBSCRIBED)
            )

    # -- publishing ------------------------------------------------------------------------

    def publish(self, client: PubSubClient, kind: int, frame: bytes, channel: bytes) -> None:
        ours, local = self.hub.receivers(kind, channel)
        slot = client.new_slot()
        shard = client.router.shard_index(channel)
        client.send_leg(shard, True, frame, Receivers(slot, ours, local))

    # -- PUBSUB ----------------------------------------------------------------------------

    def introspect(
        self, client: PubSubClient, spec: CommandSpec, argv: list[bytes], frame: bytes
    ) -> None:
        name = spec.name
        if name in ("pubsub|channels", "pubsub|shardchannels") and len(argv) > 3:
            client.reply_now(
                errors.reply("pubsub_syntax", sub=argv[1].decode("utf-8", "replace").lower())
            )
            return
        if name == "pubsub|numpat" and len(argv) != 2:
            client.reply_now(errors.reply("pubsub_syntax", sub="numpat"))
            return
        router = client.router
        shards = router.shards
        g = Gather(
            client,
            len(shards),
            _MERGES[name],
            client.proto,
            (self.hub, argv, [s.name for s in shards]),
        )
        client.add_slot(g)
        for i, s in enumerate(shards):
            s.primary.connection(2, client.id).send(frame, Leg(g, i))


class Receivers(ReplySlot):
    """A PUBLISH's reply: the node's receiver count, the proxy's subscriber connections among
    them replaced by the proxy's clients that get the message."""

    __slots__ = ("inner", "local", "ours")

    def __init__(self, inner: ReplySlot, ours: int, local: int) -> None:
        self.inner = inner
        self.ours = ours
        self.local = local

    def complete(self, reply: bytes) -> Recipient | None:
        if reply[:1] == b":":
            n = max(0, int(reply[1:-2]) - self.ours) + self.local
            return self.inner.complete(encode.integer(n))
        return self.inner.complete(reply)

    def fail(self, reply: bytes) -> Recipient | None:
        return self.inner.fail(reply)


def _confirmed(g: Gather) -> bytes:
    data = g.data
    assert isinstance(data, bytes)
    return data


def _query(g: Gather) -> tuple[PubSub, list[bytes], list[str]]:
    data = cast("tuple[PubSub, list[bytes], list[str]]", g.data)
    return data


def _channels(g: Gather, kind: int) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    hub, argv, _ = _query(g)
    pattern = argv[2] if len(argv) > 2 else None
    names: dict[bytes, None] = {}
    for r in g.results:
        for item in replies.split_aggregate(r) or []:
            value = replies.parse_bulk(item)
            if value is not None:
                names[value] = None
    for name in hub.interest[kind]:
        if pattern is None or glob.match(pattern, name):
            names[name] = None
    return encode.array([encode.bulk(n) for n in names])


def _numsub(g: Gather, kind: int) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    hub, argv, shards = _query(g)
    channels = argv[2:]
    totals = [0] * len(channels)
    for shard, r in zip(shards, g.results, strict=True):
        items = replies.split_aggregate(r) or []
        for j, channel in enumerate(channels):
            n = replies.parse_integer(items[2 * j + 1])
            if kind == SHARD:
                ours = 1 if hub.shard_of.get(channel) == shard else 0
            else:
                ours = 1 if channel in hub.interest[CHANNEL] else 0
            totals[j] += max(0, n - ours)
    out: list[bytes] = []
    for j, channel in enumerate(channels):
        out.append(encode.bulk(channel))
        out.append(encode.integer(totals[j] + len(hub.interest[kind].get(channel, ()))))
    return encode.array(out)


def _numpat(g: Gather) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    hub, _, _ = _query(g)
    ours = len(hub.interest[PATTERN])
    others = sum(max(0, replies.parse_integer(r) - ours) for r in g.results)
    return encode.integer(others + ours)


_MERGES: Final = {
    "pubsub|channels": lambda g: _channels(g, CHANNEL),
    "pubsub|shardchannels": lambda g: _channels(g, SHARD),
    "pubsub|numsub": lambda g: _numsub(g, CHANNEL),
    "pubsub|shardnumsub": lambda g: _numsub(g, SHARD),
    "pubsub|numpat": _numpat,
}
