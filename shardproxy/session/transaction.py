"""Transaction mode: MULTI ... EXEC, queued in the proxy, run at once on a leased connection.

Entered by MULTI (answered ``+OK`` by the proxy), from normal mode or from watching mode (then
pinned to the watched shard, on its lease). Each command is checked as Redis checks it while
queueing — unknown, wrong arity, not allowed in a transaction — and, for the proxy, whether
its keys live on the transaction's shard: the first keyed command decides it (or WATCH did).
A checked command is kept in the proxy and answered ``+QUEUED``; nothing reaches Redis before
EXEC, so a client that vanishes mid-transaction leaves nothing executed. ::

    MULTI ─▶ TRANSACTION(shard: none, or the watched one)
      │ command ok, keyless or on the shard ─▶ kept, +QUEUED   (the first keyed one fixes the
      │                                                          shard)
      │ unknown / arity / not allowed / keys elsewhere / too large ─▶ the error; refused += 1
      │ MULTI, WATCH ─▶ an error, nothing else (as Redis)
      ▼
    EXEC ── refused ─▶ -EXECABORT                                              ─┐
         ── nothing queued, not watching ─▶ *0                                  │
         ── the shard's primary changed since WATCH ─▶ -TRYAGAIN naming it      ├▶ NORMAL
         ── else: MULTI, the queue, EXEC written at once on the lease; EXEC's   │
            reply (array, null when a watched key changed, EXECABORT) forwarded │
            raw; the lease goes back to the pool untouched once it is answered ─┤
    DISCARD ─▶ +OK (nothing was sent); RESET, client gone ─▶ lease reset     ───┘

Keyless commands (PING, ECHO, TIME ...) run on the transaction's shard so that EXEC's array
has every reply in place; a transaction with no keyed command runs on any usable shard. The
transaction is never re-sent: if the lease fails before EXEC's reply, EXEC answers the error
naming the shard.

``transactions.cross_shard: per-shard`` (opt-in, see execute.py): commands of several shards
are accepted (not with WATCH), and EXEC runs one MULTI/EXEC per shard.
"""

from __future__ import annotations

from shardproxy.backend.lease import Lease
from shardproxy.backend.node import Node
from shardproxy.commands.table import (
    KIND_DENIED,
    KIND_UNSUPPORTED,
    CommandSpec,
    arity_ok,
    get_keys,
)
from shardproxy.observe.metrics import Stats
from shardproxy.protocol import encode, errors
from shardproxy.routing.router import ShardNodes
from shardproxy.session.execute import ExecReply, forward_then, lease_for, run_per_shard
from shardproxy.session.modes import NORMAL, TRANSACTION, ClientMode, ModeClient, Pin
from shardproxy.session.watch import same_protocol

_AT_ONCE = frozenset({"quit", "reset"})
QUEUED = b"+QUEUED\r\n"


class TransactionMode(ClientMode):
    """One client's MULTI, until EXEC, DISCARD or RESET."""

    __slots__ = (
        "crossslot", "ended", "frames", "keys", "pin", "refused", "shard", "shards", "size", "stats",
    )  # fmt: skip

    name = TRANSACTION

    def __init__(self, stats: Stats, pin: Pin | None = None) -> None:
        self.stats = stats
        stats.transactions_started += 1
        self.ended = False  # EXEC answered it (else leaving the mode discards it)
        self.pin = pin  # the watched shard's lease (WATCH before MULTI), else None
        self.shard: str | None = None if pin is None else pin.shard  # decided by a keyed cmd
        self.frames: list[bytes] = []  # the queued commands, as the client sent them
        self.shards: list[str | None] = []  # each one's shard (None: keyless)
        self.keys: list[list[bytes]] = []  # each one's keys (for a reload's key migration)
        self.refused = 0  # commands refused while queueing: EXEC answers -EXECABORT
        self.crossslot = False  # one of them for its keys' shard (counted as cross-shard)
        self.size = 0  # bytes queued

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        if spec is None:
            name = errors.command_name(argv[0])
            self.refuse(
                client,
                errors.reply("unknown_command", name=name, args=errors.quote_args(argv[1:])),
            )
            return True
        name = spec.name
        if name in _AT_ONCE:
            return False
        if not arity_ok(spec, len(argv)):
            self.refuse(client, errors.reply("arity", name=name))
            return True
        if name == "exec":
            self.ended = True
            self.execute(client)
            client.set_mode(NORMAL)
        elif name == "discard":
            client.reply_now(encode.OK)
            client.set_mode(NORMAL)
        elif name == "multi":
            client.reply_now(errors.reply("multi_nested"))
        elif name == "watch":
            client.reply_now(errors.reply("watch_in_multi"))
        else:
            self.queue(client, spec, argv, frame)
        return True

    def refuse(self, client: ModeClient, reply: bytes) -> None:
        self.refused += 1
        client.reply_now(reply)

    def queue(self, client: ModeClient, spec: CommandSpec, argv: list[bytes], frame: bytes) -> None:
        if spec.subcommands is not None and len(argv) >= 2:
            sub = spec.subcommands.get(argv[1].lower())
            if sub is None:
                self.refuse(
                    client,
                    errors.reply(
                        "subcommand",
                        sub=argv[1].decode("utf-8", "replace"),
                        name=spec.name.upper(),
                    ),
                )
                return
            spec = client.host.resolve_sub(sub)
            if not arity_ok(spec, len(argv)):
                self.refuse(client, errors.reply("arity", name=spec.name))
                return
        display = spec.name.replace("|", " ")
        if spec.kind == KIND_DENIED:
            self.refuse(client, errors.reply("denied", name=display))
            return
        if not spec.queueable and spec.name != "unwatch":
            if "no_multi" in spec.flags:
                self.refuse(client, errors.reply("no_multi"))
            elif spec.kind == KIND_UNSUPPORTED:
                self.refuse(client, errors.reply("unsupported", name=display))
            else:  # answered by the proxy, or sent to every shard: no place in one shard's EXEC
                self.refuse(client, errors.reply("not_queueable", name=display))
            return
        limit = client.host.limits.max_request_bytes
        if self.size + len(frame) > limit:
            self.refuse(client, errors.reply("tx_too_large", limit=limit))
            return
        shard: str | None = None
        positions = get_keys(spec, argv)
        if positions:
            keys = [argv[i] for i in positions]
            router = client.host.router
            index = router.shard_of_keys(keys)
            if index < 0:
                self.crossslot = True
                self.refuse(client, errors.reply("crossslot"))
                return
            shard = router.shards[index].name
            if self.shard is None:
                self.shard = shard
            elif shard != self.shard and (
                self.pin is not None or not client.host.per_shard_transactions
            ):
                self.crossslot = True
                self.refuse(client, errors.reply("crossslot"))
                return
        else:
            keys = []
        self.keys.append(keys)
        self.frames.append(frame)
        self.shards.append(shard)
        self.size += len(frame)
        client.reply_now(QUEUED)

    # -- EXEC ------------------------------------------------------------------------------

    def execute(self, client: ModeClient) -> None:
        stats = self.stats
        if self.refused:
            client.reply_now(errors.reply("execabort"))
            stats.count_transaction("cross_shard_refused" if self.crossslot else "aborted")
            return
        if not self.frames and self.pin is None:
            client.reply_now(encode.array([]))
            stats.count_transaction("committed")
            return
        router = client.host.router
        if self.shard is None:
            index = -1
            for i, s in enumerate(router.shards):
                if s.primary.usable:
                    index = i
                    break
            if index < 0:
                index = 0
        else:
            index = router.index_of(self.shard)
            if index < 0:
                client.reply_now(errors.reply("tx_shard_gone", shard=self.shard))
                stats.count_transaction("failed")
                return
        groups = [x for x in dict.fromkeys(self.shards) if x is not None]
        if len(groups) > 1:
            run_per_shard(client, self.frames, self.shards, self.keys, self.stats)
            return
        self.run_on(client, router.shards[index])

    def run_on(self, client: ModeClient, s: ShardNodes[Node]) -> None:
        stats = self.stats
        node = s.primary
        pin, self.pin = self.pin, None
        if pin is not None:
            if pin.node is not node:
                pin.release()
                client.reply_now(
                    errors.reply("tx_primary_changed", shard=s.name, node=pin.node.address)
                )
                stats.count_transaction("failed")
                return
            lease: Lease | None = pin.lease
            same_protocol(client, pin.lease)
        else:
            lease = lease_for(client, node)
        if lease is None:
            stats.count_transaction("failed")
            return
        slot = ExecReply(stats)
        client.add_slot(slot)
        client.wrote_to(client.host.router.index_of(s.name))
        frames = self.frames
        got: Lease = lease
        forward_then(client, s, [k for ks in self.keys for k in ks], got, frames, slot)

    def take_pin(self) -> Pin | None:
        pin, self.pin = self.pin, None
        return pin

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.stats.count_transaction("discarded")  # DISCARD, RESET, or the client left
        pin, self.pin = self.pin, None
        if pin is not None:
            pin.release()  # nothing of the transaction was sent; RESET forgets the WATCH
