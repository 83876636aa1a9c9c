"""The composition root: a validated config becomes a running proxy's collaborators.

Only this module constructs concrete collaborators (ring, nodes, router, fan-out, local command
handler). Everything a client session needs is reached through one :class:`ProxyContext`, whose
``router`` is replaced in one assignment when the topology changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import platform
import time
from typing import TYPE_CHECKING, Any, cast

from shardproxy import __version__, commands, metrics
from shardproxy.backend import BackendSettings, Node
from shardproxy.commands import CommandSpec
from shardproxy.config import Address, Config, changed_settings
from shardproxy.failover import EjectFailover, PromoteFailover
from shardproxy.fanout import Fanout
from shardproxy.health import Failover, HealthMonitor, HealthSettings, NoFailover, Shard
from shardproxy.local import LocalCommands, process_info
from shardproxy.migration import Migration
from shardproxy.ring import Ring, moved_share
from shardproxy.router import Router, ShardNodes
from shardproxy.session import KIND_DENIED

if TYPE_CHECKING:
    from shardproxy.session import ClientSession


def command_table(deny: frozenset[str]) -> dict[bytes, CommandSpec]:
    """The lookup table sessions use: the command table with denied commands marked."""
    table = {**{k.upper(): v for k, v in commands.COMMANDS.items()}, **commands.COMMANDS}
    if deny:
        for key, spec in table.items():
            if spec.name in deny:
                table[key] = dataclasses.replace(spec, kind=KIND_DENIED, single_key=False)
    return table


@functools.cache
def command_label_names() -> tuple[str, ...]:
    """The ``command`` label of each command table index (and "unknown" after the last)."""
    return (*(spec.name.replace("|", " ") for spec in commands.iter_specs()), "unknown")


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

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, worker: int = 0) -> None:
        self.loop = loop
        self.worker = worker  # index under the supervisor (0 when there is one process)
        self.config = config
        self.limits = config.limits
        self.deny = config.deny_commands
        self.table = command_table(self.deny)
        self.stats = metrics.Stats()
        self.count_commands = config.metrics.commands
        self.command_counters = metrics.CommandCounters(commands.SPEC_COUNT + 1)
        # backend latency: one histogram series per (shard, role)
        self.backend_latency = metrics.Histogram(0)
        self.latency_series: dict[tuple[str, str], int] = {}
        self.start_time = time.time()
        self.clients: set[ClientSession] = set()
        self._ids = itertools.count(1)
        self.draining = False
        self.nodes: dict[str, Node] = {}  # address -> node
        self.health = HealthMonitor(
            lambda: cast("list[Shard]", self.shards),
            health_settings(config),
            self._failover(config),
        )
        self.shards: list[ShardNodes[Node]] = []  # every shard, ejected or not, in ring order
        self.ejected: set[str] = set()  # shards off the ring (failover.mode eject)
        self.migration: Migration | None = None  # the last reload's key migration
        self.router: Router[Node] = self._build_router(config)
        self.read_your_writes = config.read_your_writes_ms / 1000
        self.fanout = Fanout()
        self.local = LocalCommands(self)

    # -- topology --------------------------------------------------------------------------

    def _build_router(self, config: Config) -> Router[Node]:
        ring = build_ring(config)
        settings = backend_settings(config)
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
        live = [s for s in config.shards if s.name not in self.ejected] or list(config.shards)
        ring = full if full is not None and len(live) == len(config.shards) else None
        if ring is None:
            ring = Ring.build(
                [(s.name, s.weight) for s in live],
                function=config.hash.function,
                distribution=config.hash.distribution,
                tag=config.hash.tag,
            )
        by_name = {s.name: s for s in self.shards}
        return Router(ring, [by_name[n] for n in ring.names], config.read_policy)

    def _failover(self, config: Config) -> Failover:
        mode = config.failover.mode
        if mode == "promote":
            # with several workers only worker 0 acts; the others adopt what the nodes report
            return PromoteFailover(self.record_failover, act=self.worker == 0)
        if mode == "eject":
            return EjectFailover(self.set_ejected)
        if mode == "sentinel":
            from shardproxy.sentinel import SentinelFailover

            return SentinelFailover(self, config)
        return NoFailover()

    def record_failover(self, shard: str, result: str) -> None:
        key = (shard, result)
        self.stats.failovers[key] = self.stats.failovers.get(key, 0) + 1

    def set_ejected(self, shard: str, ejected: bool) -> None:
        """failover.mode eject: rebuild the ring without the shards that have no usable node."""
        if ejected:
            self.ejected.add(shard)
        else:
            self.ejected.discard(shard)
        router = self._live_router(self.config)
        router.set_migration(self.router.migration)  # a reload's key migration goes on
        self.router = router
        self.record_failover(shard, "ejected" if ejected else "restored")

    def _node(
        self,
        shard: str,
        role: str,
        address: Address,
        settings: BackendSettings,
    ) -> Node:
        existing = self.nodes.get(str(address))
        if existing is not None:  # a reload keeps the node, its connections and its state
            existing.settings = settings
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
        shard, role = node.shard, node.role
        if self.count_commands:
            series = self.latency_series.setdefault((shard, role), len(self.latency_series))
            self.backend_latency.grow(series + 1)
            node.latency = self.backend_latency
            node.latency_series = series

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
            nodes = ",".join(f"{n.role}={n.address}:{self.node_state(n)}" for n in s.nodes())
            shards.append((f"shard_{s.name}", nodes))
        listen = ",".join(str(a) for a in self.config.listen)
        st = self.stats
        return [
            ("Server", [*process_info(self.start_time), ("listen", listen)]),
            (
                "Clients",
                [
                    ("connected_clients", len(self.clients)),
                    ("pending_requests", self.pending_requests()),
                ],
            ),
            (
                "Stats",
                [
                    ("total_connections_received", st.connections_received),
                    ("rejected_connections", st.connections_rejected),
                    ("total_commands_processed", st.commands),
                    ("total_net_input_bytes", st.bytes_in),
                    ("total_net_output_bytes", st.bytes_out),
                    ("backend_requests", sum(n.requests for n in self.nodes.values())),
                    ("backend_errors", sum(sum(n.errors.values()) for n in self.nodes.values())),
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

    def warm_up(self) -> None:
        """Open the RESP2 connections to every node now, so health is known before traffic."""
        for node in self.nodes.values():
            node.connection(2, 0)

    def node_for(self, shard: str, role: str, host: str, port: int) -> Node:
        """The node at host:port, created (for ``shard``, with ``role``) if the topology file
        does not list it (a replica Sentinel reports, say)."""
        address = Address(host, port)
        node = self.nodes.get(str(address))
        if node is None:
            node = self._node(shard, role, address, backend_settings(self.config))
        return node

    def node_state(self, node: Node) -> str:
        """up, down or unknown (not probed enough yet), as health checking sees it."""
        return self.health.state(node)

    def topology_json(self) -> dict[str, object]:
        """/topology: the ring and every node's role and state."""
        router = self.router
        shares = router.ring.shares()
        weights = {s.name: s.weight for s in self.config.shards}

        def node_json(n: Node) -> dict[str, object]:
            d: dict[str, object] = {
                "address": n.address,
                "role": n.role,
                "health": self.node_state(n),
                "usable": n.usable,
                "pending": n.pending_count(),
            }
            if not n.usable:
                d["error"] = n.last_error()
            if n.role == "replica":
                d["lag_bytes"] = n.lag_bytes
            return d

        m = self.migration
        return {
            "migration": m.status() if m is not None else None,
            "hash": dataclasses.asdict(self.config.hash),
            "read_policy": router.policy,
            "shards": [
                {
                    "name": s.name,
                    "weight": weights[s.name],
                    "keyspace_share": round(shares[s.name], 6),
                    "primary": s.primary.address,
                    "replicas": [r.address for r in s.replicas],
                    "nodes": [node_json(n) for n in s.nodes()],
                }
                for s in router.shards
            ],
        }

    # -- metrics ---------------------------------------------------------------------------

    def metric_samples(self) -> dict[str, list[metrics.Sample] | list[metrics.HistogramSample]]:
        """Current values of every metric in the table (called at scrape time)."""
        S = metrics.Sample
        st = self.stats
        out: dict[str, list[metrics.Sample] | list[metrics.HistogramSample]] = {
            "shardproxy_build_info": [S((__version__, platform.python_version()), 1)],
            "shardproxy_client_connections": [S((), len(self.clients))],
            "shardproxy_client_connections_accepted_total": [S((), st.connections_received)],
            "shardproxy_client_connections_rejected_total": [S((), st.connections_rejected)],
            "shardproxy_client_received_bytes_total": [S((), st.bytes_in)],
            "shardproxy_client_sent_bytes_total": [S((), st.bytes_out)],
            "shardproxy_failovers_total": [S(k, v) for k, v in st.failovers.items()],
            "shardproxy_config_reloads_total": [S((k,), v) for k, v in st.reloads.items()],
        }
        m = self.migration
        out["shardproxy_migration_active"] = [S((), 1 if m is not None and not m.finished else 0)]
        out["shardproxy_migration_keys_moved_total"] = (
            [S(("access",), m.moved_on_access), S(("background",), m.moved_background)]
            if m is not None
            else []
        )
        counters = self.command_counters
        hist = counters.latency
        names = command_label_names()
        cmd_samples = []
        hist_samples = []
        for i, name in enumerate(names):
            ok, err = counters.calls(i)
            if ok:
                cmd_samples.append(S((name, "ok"), ok))
            if err:
                cmd_samples.append(S((name, "error"), err))
            if ok or err:
                buckets, total, _ = hist.buckets(i)
                hist_samples.append(metrics.HistogramSample((name,), buckets, total))
        out["shardproxy_commands_total"] = cmd_samples
        out["shardproxy_command_duration_seconds"] = hist_samples
        req, pend, up, errs, lag = [], [], [], [], []
        for node in self.nodes.values():
            labels = (node.shard, node.address, node.role)
            req.append(S(labels, node.requests))
            pend.append(S(labels, node.pending_count()))
            up.append(S(labels, 1 if node.usable else 0))
            for kind, n in node.errors.items():
                errs.append(S((node.shard, node.address, kind), n))
            if node.role == "replica" and node.lag_bytes is not None:
                lag.append(S((node.shard, node.address), node.lag_bytes))
        out["shardproxy_backend_requests_total"] = req
        out["shardproxy_backend_pending_requests"] = pend
        out["shardproxy_backend_up"] = up
        out["shardproxy_backend_errors_total"] = errs
        out["shardproxy_replica_lag_bytes"] = lag
        bl = self.backend_latency
        out["shardproxy_backend_request_duration_seconds"] = [
            metrics.HistogramSample(key, *bl.buckets(series)[:2])
            for key, series in self.latency_series.items()
        ]
        return out

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
        self.limits = new.limits
        self.deny = new.deny_commands
        self.table = command_table(self.deny)
        self.read_your_writes = new.read_your_writes_ms / 1000
        self.health.settings = health_settings(new)
        self.ejected &= {s.name for s in new.shards}
        router = self._build_router(new)
        self.router = router  # the swap: every request from now on uses the new topology
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
        if self.migration is m:
            self.stats.migrations_done += 1

    async def _retire(self, node: Node, timeout: float = 30.0) -> None:
        """Close a node that left the topology once its pending requests are answered."""
        deadline = self.loop.time() + timeout
        while node.pending_count() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        node.close()

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
