"""The proxy's read models: INFO sections, the /topology document, and metric samples.

Everything an operator reads about a running worker is assembled here, at the moment it is
asked for, from the fleet (nodes, shards, router, migration), the client registry and the
plain counters the hot path bumps. Nothing here is on the request path.
"""

from __future__ import annotations

import dataclasses
import functools
import platform

from shardproxy import __version__
from shardproxy.backend.node import Node
from shardproxy.commands import table as commands
from shardproxy.control.fleet import Fleet
from shardproxy.observe import metrics
from shardproxy.observe.hotkeys import HotKeys
from shardproxy.session.builtin import process_info
from shardproxy.session.cache import NearCache
from shardproxy.session.pubsub import CHANNEL, PATTERN, SHARD, PubSub
from shardproxy.session.registry import ClientRegistry
from shardproxy.session.scripts import ScriptRegistry


@functools.cache
def command_label_names() -> tuple[str, ...]:
    """The ``command`` label of each command table index (and "unknown" after the last)."""
    return (*(spec.name.replace("|", " ") for spec in commands.iter_specs()), "unknown")


class Telemetry:
    """What INFO, /topology and /metrics say about one worker process."""

    def __init__(
        self,
        fleet: Fleet,
        registry: ClientRegistry,
        stats: metrics.Stats,
        command_counters: metrics.CommandCounters,
        start_time: float,
        scripts: ScriptRegistry,
        pubsub: PubSub,
        hotkeys: HotKeys,
        cache: NearCache | None,
    ) -> None:
        self.fleet = fleet
        self.cache = cache
        self.hotkeys = hotkeys
        self.pubsub = pubsub
        self.scripts = scripts
        self.registry = registry
        self.stats = stats
        self.command_counters = command_counters
        self.start_time = start_time

    def info_sections(
        self, keyspace: dict[str, dict[str, int]]
    ) -> list[tuple[str, list[tuple[str, object]]]]:
        router = self.fleet.router
        shards: list[tuple[str, object]] = []
        for s in router.shards:
            nodes = ",".join(f"{n.role}={n.address}:{self.fleet.node_state(n)}" for n in s.nodes())
            shards.append((f"shard_{s.name}", nodes))
        listen = ",".join(str(a) for a in self.fleet.config.listen)
        st = self.stats
        return [
            ("Server", [*process_info(self.start_time), ("listen", listen)]),
            (
                "Clients",
                [
                    ("connected_clients", len(self.registry)),
                    ("blocked_clients", sum(self.registry.blocked().values())),
                    ("pending_requests", self.registry.pending_requests()),
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
                    ("backend_requests", sum(n.requests for n in self.fleet.nodes.values())),
                    (
                        "backend_errors",
                        sum(sum(n.errors.values()) for n in self.fleet.nodes.values()),
                    ),
                    ("total_transactions_started", st.transactions_started),
                    *((f"transactions_{k}", v) for k, v in st.transactions.items()),
                    ("noscript_recoveries", st.noscript_recoveries),
                    ("auth_failures", st.auth_failures),
                    *((f"disconnected_{k}", v) for k, v in st.client_disconnects.items()),
                    ("pubsub_channels", len(self.pubsub.interest[CHANNEL])),
                    ("pubsub_patterns", len(self.pubsub.interest[PATTERN])),
                    ("pubsubshard_channels", len(self.pubsub.interest[SHARD])),
                    ("pubsub_clients", len(self.pubsub.subscribed)),
                    ("pubsub_messages_delivered", st.pubsub_messages),
                    ("pubsub_slow_disconnects", st.pubsub_slow_disconnects),
                    (
                        "pubsub_upstream_connections",
                        sum(n for _, _, n in self.pubsub.upstream_connections()),
                    ),
                ],
            ),
            # client libraries check it on connect (valkey-glide wants role:master): to them the
            # proxy is one primary; the shards' own replication is in the Shards section
            ("Replication", [("role", "master"), ("connected_slaves", 0)]),
            (
                "Proxy",
                [
                    ("shards", len(router.shards)),
                    (
                        "hash",
                        f"{self.fleet.config.hash.function}/{self.fleet.config.hash.distribution}",
                    ),
                    ("read_policy", router.policy),
                    (
                        "leased_connections",
                        sum(len(n.leases.leased) for n in self.fleet.nodes.values()),
                    ),
                    ("scripts_cached", len(self.scripts)),
                ],
            ),
            ("Cache", self._cache_info()),
            ("Shards", shards),
            (
                "Hotkeys",
                [
                    (f"hotkey_{i}", f"key={_key_text(k)},shard={shard},count={n}")
                    for i, (k, shard, n) in enumerate(self.hotkeys.top(10))
                ],
            ),
            (
                "Keyspace",
                [
                    (db, f"keys={v.get('keys', 0)},expires={v.get('expires', 0)},avg_ttl=0")
                    for db, v in sorted(keyspace.items())
                ],
            ),
        ]

    def _cache_samples(self) -> dict[str, list[metrics.Sample]]:
        S = metrics.Sample
        c = self.cache
        hits, misses = (c.hits, c.misses) if c is not None else (0, 0)
        return {
            "shardproxy_cache_requests_total": [S(("hit",), hits), S(("miss",), misses)],
            "shardproxy_cache_entries": [S((), len(c.entries) if c is not None else 0)],
            "shardproxy_cache_bytes": [S((), c.used if c is not None else 0)],
            "shardproxy_cache_invalidations_total": [
                S((), c.invalidations if c is not None else 0)
            ],
            "shardproxy_cache_evictions_total": [S((), c.evictions if c is not None else 0)],
        }

    def _cache_info(self) -> list[tuple[str, object]]:
        c = self.cache
        if c is None:
            return [("cache_enabled", 0)]
        asked = c.hits + c.misses
        return [
            ("cache_enabled", 1),
            ("cache_entries", len(c.entries)),
            ("cache_bytes", c.used),
            ("cache_max_memory", c.max_memory),
            ("cache_hits", c.hits),
            ("cache_misses", c.misses),
            ("cache_hit_ratio", round(c.hits / asked, 4) if asked else 0),
            ("cache_invalidations", c.invalidations),
            ("cache_evictions", c.evictions),
            ("cache_tracked_nodes", sum(1 for x in c.conns.values() if x.client_id)),
        ]

    def hotkeys_json(self) -> dict[str, object]:
        """/hotkeys: the hottest keys, estimated requests, hottest first."""
        return {
            "keys": [
                {"key": _key_text(k), "shard": shard, "count": n}
                for k, shard, n in self.hotkeys.top(20)
            ]
        }

    def topology_json(self) -> dict[str, object]:
        """/topology: the ring and every node's role and state."""
        router = self.fleet.router
        shares = router.ring.shares()
        weights = {s.name: s.weight for s in self.fleet.config.shards}

        def node_json(n: Node) -> dict[str, object]:
            d: dict[str, object] = {
                "address": n.address,
                "role": n.role,
                "health": self.fleet.node_state(n),
                "usable": n.usable,
                "pending": n.pending_count(),
            }
            if not n.usable:
                d["error"] = n.last_error()
            if n.role == "replica":
                d["lag_bytes"] = n.lag_bytes
            return d

        m = self.fleet.migration
        return {
            "migration": m.status() if m is not None else None,
            "hash": dataclasses.asdict(self.fleet.config.hash),
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

    def metric_samples(self) -> dict[str, list[metrics.Sample] | list[metrics.HistogramSample]]:
        """Current values of every metric in the table (called at scrape time)."""
        S = metrics.Sample
        st = self.stats
        out: dict[str, list[metrics.Sample] | list[metrics.HistogramSample]] = {
            "shardproxy_build_info": [S((__version__, platform.python_version()), 1)],
            "shardproxy_client_connections": [S((), len(self.registry))],
            "shardproxy_client_connections_accepted_total": [S((), st.connections_received)],
            "shardproxy_client_connections_rejected_total": [S((), st.connections_rejected)],
            "shardproxy_client_received_bytes_total": [S((), st.bytes_in)],
            "shardproxy_client_sent_bytes_total": [S((), st.bytes_out)],
            "shardproxy_failovers_total": [S(k, v) for k, v in st.failovers.items()],
            "shardproxy_config_reloads_total": [S((k,), v) for k, v in st.reloads.items()],
            "shardproxy_transactions_started_total": [S((), st.transactions_started)],
            "shardproxy_transactions_total": [S((k,), v) for k, v in st.transactions.items()],
            "shardproxy_scripts_cached": [S((), len(self.scripts))],
            "shardproxy_script_cache_bytes": [S((), self.scripts.size)],
            "shardproxy_noscript_recoveries_total": [S((), st.noscript_recoveries)],
            "shardproxy_blocked_clients": [
                S((shard,), n) for shard, n in sorted(self.registry.blocked().items())
            ],
            "shardproxy_blocking_commands_total": [S((), st.blocks)],
            "shardproxy_blocks_reissued_total": [S((), st.blocks_reissued)],
            "shardproxy_block_replies_orphaned_total": [S((), st.block_replies_orphaned)],
            "shardproxy_pubsub_channels": [
                S((label,), len(self.pubsub.interest[kind]))
                for label, kind in (("channel", CHANNEL), ("pattern", PATTERN), ("shard", SHARD))
            ],
            "shardproxy_pubsub_clients": [S((), len(self.pubsub.subscribed))],
            "shardproxy_auth_failures_total": [S((), st.auth_failures)],
            **self._cache_samples(),
            "shardproxy_hotkeys_top_share": [
                S((shard,), round(v, 6)) for shard, v in sorted(self.hotkeys.top_share().items())
            ],
            "shardproxy_client_disconnects_total": [
                S((k,), v) for k, v in st.client_disconnects.items()
            ],
            "shardproxy_pubsub_messages_total": [S((), st.pubsub_messages)],
            "shardproxy_pubsub_slow_disconnects_total": [S((), st.pubsub_slow_disconnects)],
            "shardproxy_pubsub_upstream_connections": [
                S((shard, node), n) for shard, node, n in self.pubsub.upstream_connections()
            ],
        }
        m = self.fleet.migration
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
        for node in self.fleet.nodes.values():
            labels = (node.shard, node.address, node.role)
            req.append(S(labels, node.requests))
            pend.append(S(labels, node.pending_count()))
            up.append(S(labels, 1 if node.usable else 0))
            for kind, n in node.errors.items():
                errs.append(S((node.shard, node.address, kind), n))
            if node.role == "replica" and node.lag_bytes is not None:
                lag.append(S((node.shard, node.address), node.lag_bytes))
        leases, refusals, caps = [], [], []
        for node in self.fleet.nodes.values():
            pool = node.leases
            leases.append(S((node.shard, node.address, "in_use"), len(pool.leased)))
            leases.append(S((node.shard, node.address, "idle"), len(pool.idle)))
            refusals.append(S((node.shard, node.address), pool.refused))
            caps.append(S((node.shard, node.address), node.settings.max_leases))
        out["shardproxy_backend_leased_connections"] = leases
        out["shardproxy_backend_lease_refusals_total"] = refusals
        out["shardproxy_backend_lease_limit"] = caps
        out["shardproxy_backend_requests_total"] = req
        out["shardproxy_backend_pending_requests"] = pend
        out["shardproxy_backend_up"] = up
        out["shardproxy_backend_errors_total"] = errs
        out["shardproxy_replica_lag_bytes"] = lag
        bl = self.fleet.backend_latency
        out["shardproxy_backend_request_duration_seconds"] = (
            []
            if bl is None
            else [
                metrics.HistogramSample(key, *bl.buckets(series)[:2])
                for key, series in self.fleet.latency_series.items()
            ]
        )
        return out


def _key_text(key: bytes) -> str:
    """A key for JSON and INFO: UTF-8 where it is, backslash escapes elsewhere."""
    return key.decode("utf-8", "backslashreplace")
