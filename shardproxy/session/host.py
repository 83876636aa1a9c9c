"""What a client session needs from the rest of the proxy, declared here as protocols.

The composition root (``app.proxy``) provides one object satisfying :class:`SessionHost`;
nothing in this sub-package imports it. Everything here is read per request or per read, so
the protocol is small: the command table, the live router (replaced in one assignment by a
reload, failover ejection or migration; never mutated during a read), limits, counters, and
the client registry.
"""

from __future__ import annotations

from typing import Protocol

from shardproxy.backend.node import Node
from shardproxy.commands.acl import Users
from shardproxy.commands.table import CommandSpec
from shardproxy.observe.hotkeys import HotKeys
from shardproxy.observe.metrics import CommandCounters, Stats
from shardproxy.routing.router import Router
from shardproxy.session.builtin import Builtin
from shardproxy.session.cache import NearCache
from shardproxy.session.fanout import Fanout
from shardproxy.session.registry import Client
from shardproxy.session.scripts import Scripts
from shardproxy.session.subscribed import PubSubCommands


class Limits(Protocol):
    """``limits`` of the topology file, as sessions read them."""

    @property
    def max_pending_per_client(self) -> int: ...

    @property
    def max_request_bytes(self) -> int: ...

    @property
    def max_inline_bytes(self) -> int: ...

    @property
    def max_unread_bytes(self) -> int: ...


class Live:
    """What every read of every client consults of its host, in one compiled object: an
    attribute of the host itself (the composition root, interpreted) is a dictionary look-up,
    one of these a load. The host keeps them current: a reload or an ejection swaps
    ``router`` here, a reload sets ``read_your_writes`` and ``max_pending``."""

    __slots__ = ("cache", "hotkeys", "max_pending", "read_your_writes", "router")

    router: Router[Node]  # (set by the host before its first client)

    def __init__(self, hotkeys: HotKeys) -> None:
        self.hotkeys = hotkeys  # the sampled sketch of each shard's hottest keys
        self.cache: NearCache | None = None  # the near-cache (cache.enabled), else None
        self.read_your_writes = 0.0  # seconds; 0 disables
        self.max_pending = 1024  # limits.max_pending_per_client


class SessionHost(Protocol):
    """The proxy, as one client session sees it."""

    #: the fields read per request, kept current by the host (``router``, ``cache``,
    #: ``hotkeys`` and ``read_your_writes`` below are the same values)
    live: Live

    #: command name (as sent, or lower case) -> spec, with the operator's denials applied
    table: dict[bytes, CommandSpec]
    router: Router[Node]

    @property
    def limits(self) -> Limits: ...

    stats: Stats
    #: per-command latency and error counters; None when metrics.commands is off
    command_counters: CommandCounters | None

    @property
    def read_your_writes(self) -> float:
        """Seconds; 0 disables."""
        ...

    per_shard_transactions: bool  # transactions.cross_shard is per-shard
    fanout: Fanout
    builtin: Builtin
    scripts: Scripts
    pubsub: PubSubCommands
    users: Users  # client users (auth); their command tables
    hotkeys: HotKeys  # the sampled sketch of each shard's hottest keys

    @property
    def cache(self) -> NearCache | None:
        """The near-cache (cache.enabled), else None."""
        ...

    def next_client_id(self) -> int: ...

    def client_connected(self, session: Client) -> bool:
        """Register a new client; False if it must be refused (max_clients, draining)."""
        ...

    def client_disconnected(self, session: Client) -> None: ...

    def resolve_sub(self, spec: CommandSpec) -> CommandSpec:
        """A subcommand's spec, marked denied when it (or its container) is denied."""
        ...
