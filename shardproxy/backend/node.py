"""A Redis server of the fleet, with its shared pipelines and its pool of leased connections.

One :class:`Node` per server address. Per client protocol (RESP2 / RESP3) it keeps
``backend.connections`` shared pipelines (``pipeline.py``), opened on first use, and one
:class:`~shardproxy.backend.lease.LeasePool` for the commands that need a connection of their
own (``lease.py``). Without a health monitor, a node is unusable while every one of its
shared pipelines is DOWN; with one, the monitor decides and is told of each failure.
"""

from __future__ import annotations

import asyncio

from shardproxy.backend.connection import DOWN, BackendSettings, NodeBase, NodeListener
from shardproxy.backend.lease import LeasePool
from shardproxy.backend.pipeline import Pipeline
from shardproxy.protocol import errors


class Node(NodeBase):
    """One server of the fleet and its connections."""

    __slots__ = ("_pipelines", "leases")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        shard: str,
        role: str,
        host: str,
        port: int,
        settings: BackendSettings,
        unix: str | None = None,
        listener: NodeListener | None = None,
    ) -> None:
        super().__init__(loop, shard, role, host, port, settings, unix, listener)
        # protocol (2 or 3) -> the pipelines for clients speaking it (created on first use)
        self._pipelines: dict[int, list[Pipeline]] = {}
        self.leases = LeasePool(self)

    def connection(self, proto: int, client_id: int) -> Pipeline:
        """The shared pipeline this client's requests of protocol ``proto`` travel on."""
        conns = self._pipelines.get(proto)
        if conns is None:
            conns = [Pipeline(self, proto) for _ in range(self.settings.connections)]
            self._pipelines[proto] = conns
            for c in conns:
                c.start()
        return conns[client_id % len(conns)]

    def track(self, client_id: int) -> None:
        """The near-cache's invalidation connection to this node is client ``client_id``
        (0: none): every pipeline's reads are tracked for it from now on."""
        self.tracking_id = client_id
        if client_id:
            for c in self.connections():
                c.track(client_id)

    def lease_limit_error(self) -> bytes:
        """What a command that needs a lease answers when this node has none free."""
        return errors.reply(
            "lease_limit", shard=self.shard, node=self.address, limit=self.settings.max_leases
        )

    def connections(self) -> list[Pipeline]:
        return [c for conns in self._pipelines.values() for c in conns]

    def pending_count(self) -> int:
        return sum(len(c.pending) for c in self.connections())

    def connection_failed(self, reason: str) -> None:
        """A pipeline went DOWN. With a health monitor, that counts as one failure of the
        node; without one, the node is unusable while every pipeline is down."""
        if self.listener is not None:
            self.listener.failure(self, reason)
            return
        self.connection_up()

    def reconnect_now(self) -> None:
        """The node answers again (health checking): pipelines and subscriber connections
        still DOWN reconnect now."""
        for c in self.connections():
            c.reconnect_now()
        for s in list(self.subscribers):
            s.reconnect_now()

    def connection_up(self) -> None:
        if self.listener is None:
            self.usable = any(c.state != DOWN for c in self.connections())

    def last_error(self) -> str:
        for c in self.connections():
            if c.last_error:
                return c.last_error
        return "unknown"

    def close(self) -> None:
        for c in self.connections():
            c.close()
        self._pipelines.clear()
        for sub in list(self.subscribers):
            sub.close()
        self.leases.close()

    def __repr__(self) -> str:
        return f"Node({self.shard} {self.role} {self.address})"
