"""The client registry: every open client session of one worker process, and their ids."""

from __future__ import annotations

import itertools
from collections.abc import Sized
from typing import Protocol

from shardproxy.observe.metrics import Stats


class Client(Protocol):
    """A client session as the registry sees it."""

    id: int

    @property
    def queue(self) -> Sized: ...

    def begin_drain(self) -> None: ...

    def abort(self) -> None: ...

    def router_changed(self) -> None: ...

    def blocked_shard(self) -> str | None: ...


class ClientRegistry:
    """Counts clients in and out against ``limits.max_clients``; refuses new ones while the
    process drains."""

    def __init__(self, stats: Stats, max_clients: int) -> None:
        self.stats = stats
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self.draining = False
        self._ids = itertools.count(1)

    def next_client_id(self) -> int:
        return next(self._ids)

    def client_connected(self, session: Client) -> bool:
        if len(self.clients) >= self.max_clients or self.draining:
            self.stats.connections_rejected += 1
            return False
        self.clients.add(session)
        self.stats.connections_received += 1
        return True

    def client_disconnected(self, session: Client) -> None:
        self.clients.discard(session)

    def __len__(self) -> int:
        return len(self.clients)

    def drain(self) -> None:
        """Shutdown: refuse new clients; each open one reads nothing more and closes once its
        outstanding replies are written."""
        self.draining = True
        for session in list(self.clients):
            session.begin_drain()

    def abort_all(self) -> None:
        """The drain timeout passed: drop the clients still open."""
        for session in list(self.clients):
            session.abort()

    def router_changed(self) -> None:
        """A new router was published: clients whose mode follows keys (blocked) look again."""
        for session in list(self.clients):
            session.router_changed()

    def blocked(self) -> dict[str, int]:
        """Blocked clients per shard."""
        out: dict[str, int] = {}
        for session in self.clients:
            shard = session.blocked_shard()
            if shard is not None:
                out[shard] = out.get(shard, 0) + 1
        return out

    def pending_requests(self) -> int:
        """Requests read from clients and not yet answered."""
        return sum(len(c.queue) for c in self.clients)
