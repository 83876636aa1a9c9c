"""Routing: which node serves a request, from the ring, the live topology and the read policy.

Pure logic (no I/O, no asyncio). A reload, or an ejection under ``failover.mode: eject``, builds
a new router and swaps it in one assignment, so a request is routed wholly by the old or wholly
by the new topology. Between swaps a router changes in place only where it must: the replicas'
round-robin counters, a shard's primary and replicas after a failover (``control.failover``),
and the key migration of a reload (:meth:`Router.set_migration`).

Read policies (``read_policy`` in the topology file):

``primary``         every command goes to the shard's primary.
``prefer-replica``  reads go to the shard's usable replicas in turn; to the primary when none is.
``replica``         reads go only to usable replicas; with none, the read fails naming the shard.

Writes always go to the primary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from shardproxy.routing.ring import Ring

READ_POLICIES = ("primary", "prefer-replica", "replica")


class RoutableNode(Protocol):
    usable: bool


N = TypeVar("N", bound=RoutableNode)


class ShardNodes(Generic[N]):
    """The nodes serving one shard: a primary and its replicas."""

    __slots__ = ("_rr", "name", "primary", "replicas")

    def __init__(self, name: str, primary: N, replicas: Sequence[N]) -> None:
        self.name = name
        self.primary = primary
        self.replicas = tuple(replicas)
        self._rr = 0  # next replica to try (round robin)

    def nodes(self) -> tuple[N, ...]:
        return (self.primary, *self.replicas)

    def pick_replica(self) -> N | None:
        reps = self.replicas
        n = len(reps)
        for _ in range(n):
            i = self._rr % n
            self._rr = i + 1
            node = reps[i]
            if node.usable:
                return node
        return None


class Router(Generic[N]):
    """Maps keys to shards and shards to nodes.

    ``shards[i]`` serves ``ring.names[i]``.
    """

    __slots__ = ("direct", "migration", "policy", "replica_reads", "ring", "shards")

    def __init__(self, ring: Ring, shards: Sequence[ShardNodes[N]], read_policy: str) -> None:
        if [s.name for s in shards] != list(ring.names):
            raise ValueError("shards must be given in ring order")
        if read_policy not in READ_POLICIES:
            raise ValueError(f"unknown read policy {read_policy!r}")
        self.ring = ring
        self.shards = tuple(shards)
        self.policy = read_policy
        self.replica_reads = read_policy != "primary"  # reads may go to replicas
        # keys moving after a reload (migration.Migration), None outside a migration window
        self.migration: Any = None
        # every single-key request goes straight to its shard's primary (no replica reads, no
        # migration): the session's fast path needs nothing else
        self.direct = not self.replica_reads

    def shard_index(self, key: bytes) -> int:
        """Index into ``shards`` of the shard that owns ``key``."""
        return self.ring.shard_index(key)

    def set_migration(self, migration: Any) -> None:
        self.migration = migration
        self.direct = not self.replica_reads and migration is None

    def node(self, shard: int, write: bool, recent_write: bool = False) -> N | None:
        """The node for a request to shard ``shard``; None only under policy ``replica``.

        ``recent_write``: the client wrote to this shard within read_your_writes_ms, so its
        reads go to the primary too."""
        s = self.shards[shard]
        if write or recent_write or self.policy == "primary":
            return s.primary
        node = s.pick_replica()
        if node is not None:
            return node
        return s.primary if self.policy == "prefer-replica" else None

    def index_of(self, name: str) -> int:
        """Index into ``shards`` of the shard called ``name``; -1 if the ring has none."""
        for i, s in enumerate(self.shards):
            if s.name == name:
                return i
        return -1

    def shard_of_keys(self, keys: Sequence[bytes]) -> int:
        """The one shard of all ``keys``, or -1 when they hash to different shards."""
        ring = self.ring
        first = ring.shard_index(keys[0])
        for k in keys[1:]:
            if ring.shard_index(k) != first:
                return -1
        return first
