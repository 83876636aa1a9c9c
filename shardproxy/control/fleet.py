"""The fleet: every node and shard the proxy serves, and the live router over them.

One :class:`Fleet` per worker process owns the nodes (one per address, shared by every shard
that lists it), the shards in ring order, the health monitor that watches them, the current
key migration, and the router sessions use. Every topology edit happens here and ends in one
assignment of a new router, which the fleet hands to whoever publishes it (``on_router``):

* a reload (:meth:`Fleet.apply`): nodes that stay keep their connections and state, nodes that
  leave are closed once their pending requests are answered, keys that change shard migrate;
* an ejection or restoration under ``failover.mode: eject`` (:meth:`Fleet.set_ejected`);
* a failover switches a shard's primary in place (``failover.switch_primary``), with no new
  router: the shard keeps its place on the ring.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

from shardproxy.backend.connection import BackendSettings
from shardproxy.backend.node import Node
from shardproxy.config import Address, Config, changed_settings
from shardproxy.control.health import Failover, HealthMonitor, HealthSettings, Shard
from shardproxy.control.migration import Migration
from shardproxy.observe.metrics import Histogram, Stats
from shardproxy.routing.ring import Ring, moved_share
from shardproxy.routing.router import Router, ShardNodes

#: Settings a running proxy cannot change; a reload reports them as needing a restart.
NEEDS_RESTART = frozenset(
    {"listen", "admin", "failover", "sentinel", "backend.connections", "metrics"}
)


def health_settings(config: Config) -> HealthSettings:
    h = config.health
    lag = config.max_replica_lag
    return HealthSettings(
        interval=h.interval_ms / 1000,
        timeout=h.timeout_ms / 1000,
        failures=h.failures,
        successes=h.successes,
        max_lag_bytes=lag.amount if lag.unit == "bytes" else None,
        max_lag_ms=lag.amount if lag.unit == "ms" else None,
        username=config.backend.username,
        password=config.backend.password,
    )


def backend_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of every connection to a node (``backend.tls``), or None; certificate
    files are read here, so a reload reads them again."""
    t = config.backend.tls
    if not (t.enabled or t.ca_file or t.cert_file or t.server_name):
        return None  # (any of these turns TLS on: the section given is TLS wanted)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=t.ca_file)
    if not t.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if t.cert_file is not None and t.key_file is not None:
        ctx.load_cert_chain(t.cert_file, t.key_file)
    return ctx


def backend_settings(config: Config, tls: ssl.SSLContext | None = None) -> BackendSettings:
    b = config.backend
    return BackendSettings(
        connect_timeout=config.timeouts.connect_ms / 1000,
        command_timeout=config.timeouts.command_ms / 1000,
        connections=b.connections,
        username=b.username,
        password=b.password,
        max_leases=b.max_leases,
        lease_idle=b.lease_idle_ms / 1000,
        tls=tls,
        tls_server_name=b.tls.server_name,
    )


class Fleet:
    """Nodes, shards, health, migration and the live router of one worker process."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        stats: Stats,
        failover: Callable[[Fleet], Failover],
        on_router: Callable[[Router[Node]], None],
        backend_latency: Histogram | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self.stats = stats
        self.on_router = on_router
        # told when a failover switched a shard's primary in place (no new router then)
        self.on_switch: Callable[[], None] | None = None
        # backend latency: one histogram series per (shard, role); None when metrics are off
        self.backend_latency = backend_latency
        self.latency_series: dict[tuple[str, str], int] = {}
        self.nodes: dict[str, Node] = {}  # address -> node
        self.shards: list[ShardNodes[Node]] = []  # every shard, ejected or not, in ring order
        self.ejected: set[str] = set()  # shards off the ring (failover.mode eject)
        self.migration: Migration | None = None  # the last reload's key migration
        self.tls = backend_context(config)  # backend.tls, read at start and at each reload
        self.health = HealthMonitor(
            lambda: cast("list[Shard]", self.shards), health_settings(config), failover(self)
        )
        self.router: Router[Node] = self._build_router(config)
        on_router(self.router)

    def _publish(self, router: Router[Node]) -> None:
        self.router = router
        self.on_router(router)  # the swap: every request from now on uses this router

    # -- building --------------------------------------------------------------------------

    def _build_router(self, config: Config) -> Router[Node]:
        ring = config.ring()
        settings = backend_settings(config, self.tls)
        by_name = {s.name: s for s in config.shards}
        # With failover, the primary the proxy follows now (promoted, or reported by Sentinel)
        # wins over the file's order as long as the file still lists that node for the shard.
        current = {s.name: s.primary.address for s in self.shards}
        follow = config.failover.mode in ("promote", "sentinel")
        shards = []
        for name in ring.names:
            sc = by_name[name]
            listed = list(sc.nodes)
            first = sc.primary
            if follow and name in current:
                first = next((a for a in listed if str(a) == current[name]), sc.primary)
            primary = self._node(name, "primary", first, settings)
            replicas = [self._node(name, "replica", a, settings) for a in listed if a != first]
            shards.append(ShardNodes(name, primary, replicas))
        self.shards = shards
        return self._live_router(config, ring)

    def _live_router(self, config: Config, full: Ring | None = None) -> Router[Node]:
        """A router over ``self.shards`` without the ejected ones (all of them if every shard
        is ejected: errors naming the shards beat an empty ring)."""
        names = {s.name for s in config.shards}
        ejected = self.ejected if self.ejected < names else set()
        ring = full if full is not None and not ejected else config.ring(ejected)
        by_name = {s.name: s for s in self.shards}
        return Router(ring, [by_name[n] for n in ring.names], config.read_policy)

    def _node(self, shard: str, role: str, address: Address, settings: BackendSettings) -> Node:
        existing = self.nodes.get(str(address))
        if existing is not None:  # a reload keeps the node, its connections and its state
            existing.configure(settings)
            if existing.role != role or existing.shard != shard:
                existing.role, existing.shard = role, shard
                self._attach_latency(existing)
            return existing
        host, port, unix = address.host, address.port, address.unix
        node = Node(self.loop, shard, role, host, port, settings, unix=unix, listener=self.health)
        node.usable = role == "primary"  # a replica serves reads once a probe has vetted it
        self._attach_latency(node)
        self.nodes[node.address] = node
        return node

    def _attach_latency(self, node: Node) -> None:
        hist = self.backend_latency
        if hist is not None:
            key = (node.shard, node.role)
            series = self.latency_series.setdefault(key, len(self.latency_series))
            hist.grow(series + 1)
            node.latency = hist
            node.latency_series = series

    def node_for(self, shard: str, role: str, host: str, port: int) -> Node:
        """The node at host:port, created (for ``shard``, with ``role``) if the topology file
        does not list it (a replica Sentinel reports, say)."""
        address = Address(host, port)
        node = self.nodes.get(str(address))
        if node is None:
            node = self._node(shard, role, address, backend_settings(self.config, self.tls))
        return node

    def warm_up(self) -> None:
        """Open the RESP2 connections to every node now, so health is known before traffic."""
        for node in self.nodes.values():
            node.connection(2, 0)

    def node_state(self, node: Node) -> str:
        """up, down or unknown (not probed enough yet), as health checking sees it."""
        return self.health.state(node)

    # -- failover --------------------------------------------------------------------------

    def record_failover(self, shard: str, result: str) -> None:
        key = (shard, result)
        self.stats.failovers[key] = self.stats.failovers.get(key, 0) + 1
        if result in ("success", "adopted") and self.on_switch is not None:
            self.on_switch()  # a primary switched in place: who follows primaries, now

    def set_ejected(self, shard: str, ejected: bool) -> None:
        """failover.mode eject: rebuild the ring without the shards that have no usable node."""
        if ejected:
            self.ejected.add(shard)
        else:
            self.ejected.discard(shard)
        router = self._live_router(self.config)
        router.set_migration(self.router.migration)  # a reload's key migration goes on
        self._publish(router)
        self.record_failover(shard, "ejected" if ejected else "restored")

    # -- reload ----------------------------------------------------------------------------

    def apply(self, new: Config) -> dict[str, Any]:
        """Switch to a new, already validated topology in one step.

        Nodes that stay keep their connections (requests in flight finish on them); nodes that
        leave are closed once their pending requests are answered. Returns what changed.
        """
        old = self.config
        old_router = self.router
        old_nodes = dict(self.nodes)
        self.config = new
        self.tls = backend_context(new)
        self.health.settings = health_settings(new)
        self.ejected &= {s.name for s in new.shards}
        router = self._build_router(new)
        self._publish(router)
        used = {n.address for s in self.shards for n in s.nodes()}
        removed = [n for a, n in old_nodes.items() if a not in used]
        for node in removed:
            del self.nodes[node.address]
        total, _ = moved_share(old_router.ring, router.ring)
        self._start_migration(old_router, router, total, removed if total > 0 else [])
        if total == 0 or not new.migration.window_s:
            for node in removed:
                self.loop.create_task(self._retire(node))
        changes = changed_settings(old, new)
        restart = [
            path
            for path, _, _ in changes
            if path.split(".")[0] in NEEDS_RESTART or path in NEEDS_RESTART
        ]
        old_names = set(old_router.ring.names)
        return {
            "shards_added": sorted(set(router.ring.names) - old_names),
            "shards_removed": sorted(old_names - set(router.ring.names)),
            "nodes_added": sorted(a for a in used if a not in old_nodes),
            "nodes_removed": sorted(n.address for n in removed),
            "keyspace_moved": round(total, 6),
            "settings_changed": [path for path, _, _ in changes],
            "restart_required": restart,
        }

    def _start_migration(
        self, old: Router[Node], new: Router[Node], moved: float, retiring: list[Node]
    ) -> None:
        """Keys changed shard: keep the previous ring(s) for the migration window."""
        cfg = self.config.migration
        previous: list[Router[Node]] = [old]
        if moved and self.migration is not None and not self.migration.finished:
            # a reload during a migration: keys may still be on the older owners too
            self.migration.cancel()
            previous += self.migration.previous
            retiring = retiring + self.migration.retiring
        if moved == 0:
            if self.migration is not None and not self.migration.finished:
                new.set_migration(self.migration)  # the earlier migration goes on
            return
        if not cfg.window_s:
            self.migration = None
            return
        m = Migration(
            new, previous, cfg.window_s, cfg.copy == "background", cfg.rate, self._migration_done
        )
        m.retiring = retiring
        self.migration = m
        new.set_migration(m)
        m.start()

    def _migration_done(self, m: Migration) -> None:
        if self.router.migration is m:
            self.router.set_migration(None)

    async def _retire(self, node: Node, timeout: float = 30.0) -> None:
        """Close a node that left the topology once its pending requests are answered."""
        deadline = self.loop.time() + timeout
        while node.pending_count() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        node.close()

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
