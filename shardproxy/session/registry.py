"""The client registry: every open client session of one worker process, and their ids."""

from __future__ import annotations

import itertools
from collections.abc import Sized
from typing import Protocol

from shardproxy.commands.acl import Users
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

    def users_changed(self, users: Users) -> bool:
        """A reload compiled the users again: False if this client's user is gone or off."""
        ...

    def idle_since(self) -> float:
        """clock() of its last request; -1 while it may stay idle (subscribed, blocked, owed
        replies)."""
        ...

    def close_idle(self) -> None: ...


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

    def users_changed(self, users: Users) -> None:
        """A reload changed the users: each client acts as its user's new rules; one whose
        user was removed or turned off is disconnected (as Redis does with ACL DELUSER)."""
        for session in list(self.clients):
            if not session.users_changed(users):
                self.stats.client_disconnects["user_removed"] += 1
                session.abort()

    def close_idle(self, now: float, timeout: float) -> int:
        """Close the clients idle for more than ``timeout`` seconds (limits.client_idle_
        timeout_s); subscribed and blocked clients, and those owed replies, stay."""
        closed = 0
        for session in list(self.clients):
            since = session.idle_since()
            if since >= 0 and now - since > timeout:
                session.close_idle()
                closed += 1
        self.stats.client_disconnects["idle"] += closed
        return closed

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
