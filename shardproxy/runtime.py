"""The composition root: a validated config becomes a running proxy's collaborators.

Only this module constructs concrete collaborators (ring, nodes, router, fan-out, local command
handler). Everything a client session needs is reached through one :class:`ProxyContext`, whose
``router`` is replaced in one assignment when the topology changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import TYPE_CHECKING

from shardproxy import commands
from shardproxy.backend import BackendSettings, Node
from shardproxy.commands import CommandSpec
from shardproxy.config import Config
from shardproxy.fanout import Fanout
from shardproxy.local import LocalCommands, process_info
from shardproxy.ring import Ring
from shardproxy.router import Router, ShardNodes
from shardproxy.session import KIND_DENIED

if TYPE_CHECKING:
    from shardproxy.session import ClientSession


class Stats:
    """Plain counters bumped on the hot path and read by INFO."""

    __slots__ = ("commands", "connections_received", "connections_rejected")

    def __init__(self) -> None:
        self.commands = 0
        self.connections_received = 0
        self.connections_rejected = 0


def command_table(deny: frozenset[str]) -> dict[bytes, CommandSpec]:
    """The lookup table sessions use: the command table with denied commands marked."""
    table = {**{k.upper(): v for k, v in commands.COMMANDS.items()}, **commands.COMMANDS}
    if deny:
        for key, spec in table.items():
            if spec.name in deny:
                table[key] = dataclasses.replace(spec, kind=KIND_DENIED, single_key=False)
    return table


def backend_settings(config: Config) -> BackendSettings:
    return BackendSettings(
        connect_timeout=config.timeouts.connect_ms / 1000,
        command_timeout=config.timeouts.command_ms / 1000,
        connections=config.backend.connections,
        username=config.backend.username,
        password=config.backend.password,
    )


def build_ring(config: Config) -> Ring:
    return Ring.build(
        [(s.name, s.weight) for s in config.shards],
        function=config.hash.function,
        distribution=config.hash.distribution,
        tag=config.hash.tag,
    )


class ProxyContext:
    """Everything sessions share. Owned by :class:`Runtime`; one per worker process."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = config
        self.limits = config.limits
        self.deny = config.deny_commands
        self.table = command_table(self.deny)
        self.stats = Stats()
        self.start_time = time.time()
        self.clients: set[ClientSession] = set()
        self._ids = itertools.count(1)
        self.draining = False
        self.nodes: dict[str, Node] = {}  # address -> node
        self.router: Router[Node] = self._build_router(config)
        self.fanout = Fanout()
        self.local = LocalCommands(self)

    # -- topology --------------------------------------------------------------------------

    def _build_router(self, config: Config) -> Router[Node]:
        ring = build_ring(config)
        settings = backend_settings(config)
        by_name = {s.name: s for s in config.shards}
        shards = []
        for name in ring.names:
            sc = by_name[name]
            primary = self._node(name, "primary", sc.primary, settings)
            replicas = [self._node(name, "replica", a, settings) for a in sc.replicas]
            shards.append(ShardNodes(name, primary, replicas))
        return Router(ring, shards, config.read_policy)

    def _node(self, shard: str, role: str, address: object, settings: BackendSettings) -> Node:
        host = getattr(address, "host", "")
        port = getattr(address, "port", 0)
        unix = getattr(address, "unix", None)
        node = Node(self.loop, shard, role, host, port, settings, unix=unix)
        self.nodes[node.address] = node
        return node

    def resolve_sub(self, spec: CommandSpec) -> CommandSpec:
        """A subcommand's spec, marked denied when it (or its container) is denied."""
        if self.deny and (spec.name in self.deny or spec.name.split("|")[0] in self.deny):
            return dataclasses.replace(spec, kind=KIND_DENIED, single_key=False)
        return spec

    # -- clients ---------------------------------------------------------------------------

    def next_client_id(self) -> int:
        return next(self._ids)

    def client_connected(self, session: ClientSession) -> bool:
        if len(self.clients) >= self.limits.max_clients or self.draining:
            self.stats.connections_rejected += 1
            return False
        self.clients.add(session)
        self.stats.connections_received += 1
        return True

    def client_disconnected(self, session: ClientSession) -> None:
        self.clients.discard(session)

    def pending_requests(self) -> int:
        return sum(len(s.queue) for s in self.clients)

    # -- INFO ------------------------------------------------------------------------------

    def info_sections(
        self, keyspace: dict[str, dict[str, int]]
    ) -> list[tuple[str, list[tuple[str, object]]]]:
        router = self.router
        shards: list[tuple[str, object]] = []
        for s in router.shards:
            nodes = ",".join(
                f"{n.role}={n.address}:{'up' if n.usable else 'down'}" for n in s.nodes()
            )
            shards.append((f"shard_{s.name}", nodes))
        listen = ",".join(str(a) for a in self.config.listen)
        return [
            ("Server", [*process_info(self.start_time), ("listen", listen)]),
            ("Clients", [("connected_clients", len(self.clients))]),
            (
                "Stats",
                [
                    ("total_connections_received", self.stats.connections_received),
                    ("rejected_connections", self.stats.connections_rejected),
                    ("total_commands_processed", self.stats.commands),
                ],
            ),
            (
                "Proxy",
                [
                    ("shards", len(router.shards)),
                    ("hash", f"{self.config.hash.function}/{self.config.hash.distribution}"),
                    ("read_policy", router.policy),
                ],
            ),
            ("Shards", shards),
            (
                "Keyspace",
                [
                    (db, f"keys={v.get('keys', 0)},expires={v.get('expires', 0)},avg_ttl=0")
                    for db, v in sorted(keyspace.items())
                ],
            ),
        ]

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
