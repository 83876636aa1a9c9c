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
from typing import TYPE_CHECKING, cast

from shardproxy import __version__, commands, metrics
from shardproxy.backend import BackendSettings, Node
from shardproxy.commands import CommandSpec
from shardproxy.config import Address, Config
from shardproxy.failover import EjectFailover, PromoteFailover
from shardproxy.fanout import Fanout
from shardproxy.health import Failover, HealthMonitor, HealthSettings, NoFailover, Shard
from shardproxy.local import LocalCommands, process_info
from shardproxy.ring import Ring
from shardproxy.router import Router, ShardNodes
from shardproxy.session import KIND_DENIED

if TYPE_CHECKING:
    from shardproxy.session import ClientSession


class Stats:
    """Plain counters bumped on the hot path and read by INFO and /metrics."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "commands",
        "connections_received",
        "connections_rejected",
        "failovers",
        "reloads",
    )

    def __init__(self) -> None:
        self.commands = 0  # requests parsed
        self.connections_received = 0
        self.connections_rejected = 0
        self.bytes_in = 0  # from clients
        self.bytes_out = 0  # to clients
        self.failovers: dict[tuple[str, str], int] = {}  # (shard, result) -> count
        self.reloads = {"success": 0, "failure": 0}


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

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = config
        self.limits = config.limits
        self.deny = config.deny_commands
        self.table = command_table(self.deny)
        self.stats = Stats()
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
        self.router: Router[Node] = self._build_router(config)
        self.read_your_writes = config.read_your_writes_ms / 1000
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
        self.shards = shards
        return Router(ring, shards, config.read_policy)

    def _failover(self, config: Config) -> Failover:
        mode = config.failover.mode
        if mode == "promote":
            return PromoteFailover(self.record_failover)
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
        live = [s for s in self.config.shards if s.name not in self.ejected] or list(
            self.config.shards
        )
        ring = Ring.build(
            [(s.name, s.weight) for s in live],
            function=self.config.hash.function,
            distribution=self.config.hash.distribution,
            tag=self.config.hash.tag,
        )
        by_name = {s.name: s for s in self.shards}
        self.router = Router(ring, [by_name[n] for n in ring.names], self.config.read_policy)
        self.record_failover(shard, "ejected" if ejected else "restored")

    def _node(
        self,
        shard: str,
        role: str,
        address: Address,
        settings: BackendSettings,
    ) -> Node:
        host, port, unix = address.host, address.port, address.unix
        node = Node(self.loop, shard, role, host, port, settings, unix=unix, listener=self.health)
        node.usable = role == "primary"  # a replica serves reads once a probe has vetted it
        if self.count_commands:
            series = self.latency_series.setdefault((shard, role), len(self.latency_series))
            self.backend_latency.grow(series + 1)
            node.latency = self.backend_latency
            node.latency_series = series
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

        return {
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
        calls = self.command_counters.calls
        hist = self.command_counters.latency
        names = command_label_names()
        cmd_samples = []
        hist_samples = []
        for i, name in enumerate(names):
            ok, err = calls[2 * i], calls[2 * i + 1]
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

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
