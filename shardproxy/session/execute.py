"""EXEC: writing a queued transaction on leased connections, on one shard or one per shard.

One shard (``send_transaction``): ``MULTI``, the queued commands and ``EXEC`` are written at
once on a lease to the shard's primary; the replies to MULTI and to each queued command
(``+OK``, ``+QUEUED``) are read and dropped, EXEC's reply is the client's, forwarded raw. The
lease goes back to its pool without a reset once EXEC is answered: EXEC leaves a connection
as MULTI found it (nothing that changes a connection's state can be queued).

Per shard (``transactions.cross_shard: per-shard``, opt-in; ``run_per_shard``)::

    queued: c0(s1) c1(s2) c2(s1) c3(keyless)
      s1: MULTI c0 c2 c3 EXEC     s2: MULTI c1 EXEC       (keyless ones go with the first shard)
      EXEC's reply: [s1[0], s2[0], s1[1], s1[2]]          (the client's order)

Every lease is taken before anything is written: if one shard has none free, nothing runs
and EXEC answers the error. After that each shard commits or fails on its own — atomic per
shard, not across shards: a shard whose EXEC fails (connection lost, EXECABORT) puts its error
at each of its commands' places, while the other shards' commands did run.
"""

from __future__ import annotations

from shardproxy.backend.lease import Lease
from shardproxy.backend.node import Node
from shardproxy.backend.slots import IGNORE, Recipient, ReplySlot
from shardproxy.observe.metrics import Stats
from shardproxy.protocol import encode, errors, replies
from shardproxy.routing.router import ShardNodes
from shardproxy.session.fanout import Gather, Leg
from shardproxy.session.modes import ModeClient
from shardproxy.session.queue import QueuedReply

MULTI_FRAME = encode.encode_command([b"MULTI"])
EXEC_FRAME = encode.encode_command([b"EXEC"])
_NULLS = (b"*-1\r\n", b"_\r\n")


class ExecReply(QueuedReply):
    """The client's slot for EXEC's reply: counts how the transaction ended."""

    __slots__ = ("stats",)

    def __init__(self, stats: Stats) -> None:
        super().__init__(None, 0, 0.0)  # the session, command and time are set by add_slot
        self.stats = stats

    def complete(self, reply: bytes) -> Recipient | None:
        if reply in _NULLS:
            self.stats.count_transaction("watch_aborted")
        elif replies.is_error(reply):
            self.stats.count_transaction("aborted")
        else:
            self.stats.count_transaction("committed")
        self.reply = reply
        return self.session

    def fail(self, reply: bytes) -> Recipient | None:
        self.stats.count_transaction("failed")
        self.reply = reply
        return self.session


def send_transaction(lease: Lease, frames: list[bytes], slot: ReplySlot) -> None:
    """Write MULTI, ``frames`` and EXEC on ``lease`` (one write), EXEC's reply to ``slot``;
    the lease goes back to its pool, as it was, once EXEC is answered."""
    lease.send(MULTI_FRAME, IGNORE)
    for frame in frames:
        lease.send(frame, IGNORE)
    lease.send(EXEC_FRAME, slot)
    lease.release(clean=True)


def forward_then(
    client: ModeClient,
    s: ShardNodes[Node],
    keys: list[bytes],
    lease: Lease,
    frames: list[bytes],
    slot: ReplySlot,
) -> None:
    """Send the transaction, once keys a reload moved to ``s`` have been moved there."""
    migration = client.host.router.migration
    if migration is not None and keys:

        def send() -> None:
            send_transaction(lease, frames, slot)

        if migration.forward(keys, s, send):
            return
    send_transaction(lease, frames, slot)


def lease_for(client: ModeClient, node: Node) -> Lease | None:
    """A lease on ``node`` for the client, or None after answering the lease-limit error."""
    lease = node.leases.acquire(client.proto, client.push_consumer())
    if lease is None:
        client.reply_now(node.lease_limit_error())
    return lease


class PerShardPlan:
    """What the merge of a per-shard EXEC needs: each shard's command positions."""

    __slots__ = ("positions", "stats", "total")

    def __init__(self, positions: list[list[int]], total: int, stats: Stats) -> None:
        self.positions = positions
        self.total = total
        self.stats = stats


def merge_per_shard(g: Gather) -> bytes:
    """Each shard's EXEC array back at its commands' places; a shard's error at each of its."""
    plan: PerShardPlan = g.data  # type: ignore[assignment]
    out: list[bytes] = [b""] * plan.total
    failed = False
    for leg, raw in enumerate(g.results):
        where = plan.positions[leg]
        items = None if replies.is_error(raw) else replies.split_aggregate(raw)
        if items is None or len(items) != len(where):
            failed = True
            err = raw if replies.is_error(raw) else errors.reply("per_shard_failed")
            for pos in where:
                out[pos] = err
            continue
        for pos, item in zip(where, items, strict=True):
            out[pos] = item
    plan.stats.count_transaction("failed" if failed else "committed")
    return encode.array(out)


def run_per_shard(
    client: ModeClient,
    frames: list[bytes],
    shards: list[str | None],
    keys: list[list[bytes]],
    stats: Stats,
) -> None:
    """EXEC of a transaction whose commands live on several shards (see the module doc)."""
    order: dict[str, list[int]] = {}
    first = next(s for s in shards if s is not None)
    for pos, shard in enumerate(shards):
        order.setdefault(shard if shard is not None else first, []).append(pos)
    router = client.host.router
    targets: list[ShardNodes[Node]] = []
    for name in order:
        index = router.index_of(name)
        if index < 0:
            client.reply_now(errors.reply("tx_shard_gone", shard=name))
            stats.count_transaction("failed")
            return
        targets.append(router.shards[index])
    leases: list[Lease] = []
    for s in targets:
        lease = lease_for(client, s.primary)
        if lease is None:
            for got in leases:
                got.release(clean=True)  # nothing was written on them
            stats.count_transaction("failed")
            return
        leases.append(lease)
    positions = list(order.values())
    plan = PerShardPlan(positions, len(frames), stats)
    g = Gather(client, len(order), merge_per_shard, client.proto, plan)
    client.add_slot(g)
    for leg, (s, lease, where) in enumerate(zip(targets, leases, positions, strict=True)):
        client.wrote_to(router.index_of(s.name))
        forward_then(
            client,
            s,
            [k for pos in where for k in keys[pos]],
            lease,
            [frames[pos] for pos in where],
            Leg(g, leg),
        )
