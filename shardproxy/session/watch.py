"""Watching mode: WATCH pins the client to the watched keys' shard, on a leased connection.

WATCH must run on the very connection that later runs MULTI ... EXEC, so the first WATCH takes
a lease on the primary of the shard its keys live on (they must share one: ``-CROSSSLOT``
otherwise, as for watched keys on two shards) and sends WATCH there. Until the pin ends, the
client's commands for that shard travel on the lease too, in order with the WATCH (a read of
the watched key must not come from a replica or overtake it); commands for other shards go as
in normal mode. ::

    NORMAL ── WATCH k (shard s) ─▶ lease on s's primary, WATCH sent ─▶ WATCHING(s)
                                    (no lease free: -TRYAGAIN, stays NORMAL)
    WATCHING(s) ── WATCH k2 on s ─▶ sent on the lease
                ── WATCH k2 elsewhere ─▶ -CROSSSLOT
                ── command for s ─▶ on the lease;  other commands ─▶ normal dispatch
                ── UNWATCH, RESET ─▶ NORMAL (the lease is reset and given back)
                ── MULTI ─▶ TRANSACTION, pinned to s (transaction.py)
                ── client gone ─▶ the lease is reset and given back

After a failover the lease still reaches the old primary: commands then go as in normal mode,
and EXEC answers an error naming the shard (transaction.py), never a transaction run on a
demoted node.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardproxy.backend.connection import CONNECTING, READY
from shardproxy.backend.lease import Lease
from shardproxy.backend.slots import IGNORE, Recipient
from shardproxy.commands.table import (
    KIND_KEYED,
    KIND_SCRIPT,
    KIND_SPLIT,
    CommandSpec,
    arity_ok,
    get_keys,
)
from shardproxy.protocol import encode, errors
from shardproxy.session.modes import (
    NORMAL,
    TRANSACTION,
    WATCHING,
    ClientMode,
    ModeClient,
    Pin,
    next_mode,
)
from shardproxy.session.queue import QueuedReply

#: kinds routed by their keys: while watching, those for the watched shard use the lease
_BY_KEY = frozenset({KIND_KEYED, KIND_SCRIPT, KIND_SPLIT})


class WatchReply(QueuedReply):
    """The client's slot for a WATCH: remembers on the pin that a WATCH took effect."""

    __slots__ = ("pin",)

    def __init__(self, pin: Pin) -> None:
        super().__init__(None, 0, 0.0)  # session, command and time: set by add_slot
        self.pin = pin

    def complete(self, reply: bytes) -> Recipient | None:
        if reply == encode.OK:
            self.pin.watching = True
        self.reply = reply
        return self.session


def alive(lease: Lease) -> bool:
    state = lease.state
    return state is READY or state is CONNECTING


def same_protocol(client: ModeClient, lease: Lease) -> None:
    """A HELLO since the lease was taken switched the client's protocol: switch the lease's
    (HELLO keeps the watched keys; its reply is the proxy's to read, not the client's)."""
    proto = client.proto
    if lease.proto != proto:
        if lease.state is READY:
            lease.send(encode.encode_command([b"HELLO", b"%d" % proto]), IGNORE)
        lease.proto = proto  # (still connecting: its handshake will say HELLO proto)


class WatchMode(ClientMode):
    """A client between WATCH and MULTI (or UNWATCH)."""

    __slots__ = ("pin",)

    name = WATCHING

    def __init__(self, pin: Pin | None = None) -> None:
        self.pin = pin  # None until the first WATCH has a lease

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        if spec is None:
            return False
        name = spec.name
        if not arity_ok(spec, len(argv)):
            return False  # normal dispatch answers the arity error; the mode stays
        if name == "watch":
            self.watch(client, argv, frame)
            return True
        following = next_mode(WATCHING, name)
        if following == NORMAL:  # UNWATCH; RESET is run by the session (reset_connection)
            if name == "unwatch":
                client.reply_now(encode.OK)
                client.set_mode(NORMAL)
                return True
            return False
        if following == TRANSACTION:
            client.reply_now(encode.OK)
            client.set_mode(TRANSACTION)
            return True
        pin = self.pin
        if pin is None:
            return False
        if spec.subcommands is not None and len(argv) >= 2:
            sub = spec.subcommands.get(argv[1].lower())
            if sub is None:
                return False
            spec = client.host.resolve_sub(sub)
            if not arity_ok(spec, len(argv)):
                return False
        if spec.kind not in _BY_KEY or spec.blocking:
            return False
        positions = get_keys(spec, argv)
        if not positions:
            return False
        keys = [argv[i] for i in positions]
        router = client.host.router
        shard = router.shard_of_keys(keys)
        if shard < 0 or router.shards[shard].name != pin.shard:
            return False
        if router.shards[shard].primary is not pin.node:
            return False  # failed over: normal routing; EXEC will refuse to run
        self.send(client, pin, keys, frame)
        return True

    def watch(self, client: ModeClient, argv: list[bytes], frame: bytes) -> None:
        keys = argv[1:]
        router = client.host.router
        shard = router.shard_of_keys(keys)
        if shard < 0:
            client.reply_now(errors.reply("crossslot"))
            self._maybe_leave(client)
            return
        s = router.shards[shard]
        pin = self.pin
        if pin is not None and not pin.watching and not alive(pin.lease):
            # no WATCH took effect on it (its node was down): start again on a new lease
            self.pin = None
            pin.release()
            pin = None
        if pin is None:
            node = s.primary
            lease = node.leases.acquire(client.proto, client.push_consumer())
            if lease is None:
                client.reply_now(node.lease_limit_error())
                self._maybe_leave(client)
                return
            pin = self.pin = Pin(s.name, node, lease)
        elif s.name != pin.shard:
            client.reply_now(errors.reply("crossslot"))
            return
        self.send(client, pin, keys, frame, WatchReply(pin))

    def _maybe_leave(self, client: ModeClient) -> None:
        if self.pin is None:
            client.set_mode(NORMAL)  # the first WATCH failed: nothing is watched

    @staticmethod
    def send(
        client: ModeClient,
        pin: Pin,
        keys: Sequence[bytes],
        frame: bytes,
        slot: QueuedReply | None = None,
    ) -> None:
        """Send ``frame`` on the pinned lease, after moving keys a reload moved (if any)."""
        if slot is None:
            slot = client.new_slot()
        else:
            client.add_slot(slot)
        lease = pin.lease
        same_protocol(client, lease)
        router = client.host.router
        migration = router.migration
        if migration is not None:
            got: QueuedReply = slot

            def send() -> None:
                lease.send(frame, got)

            i = router.index_of(pin.shard)
            if i >= 0 and migration.forward(keys, router.shards[i], send):
                return
        lease.send(frame, slot)

    def take_pin(self) -> Pin | None:
        pin, self.pin = self.pin, None
        return pin

    def close(self) -> None:
        pin, self.pin = self.pin, None
        if pin is not None:
            pin.release()  # reset: RESET also forgets the watched keys
