"""The composition root: a validated config becomes one worker process's running proxy.

Only this module chooses and wires the concrete collaborators: the :class:`Fleet` (nodes,
shards, health, failover strategy, router), the :class:`ClientRegistry`, the :class:`Telemetry`
read models, fan-out and the built-in commands. :class:`Proxy` is also what every client
session sees as its ``SessionHost``: the command table, the live router (replaced in one
assignment by the fleet), limits and counters. Nothing below this module imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from shardproxy.app import security
from shardproxy.app.telemetry import Telemetry
from shardproxy.backend.node import Node
from shardproxy.commands import table as commands
from shardproxy.commands.table import CommandSpec
from shardproxy.config import Config, LimitsConfig
from shardproxy.control.failover import EjectFailover, PromoteFailover
from shardproxy.control.fleet import Fleet
from shardproxy.control.health import Failover, NoFailover
from shardproxy.control.sentinel import SentinelFailover
from shardproxy.observe import metrics
from shardproxy.observe.hotkeys import HotKeys
from shardproxy.routing.router import Router
from shardproxy.session.builtin import Builtin
from shardproxy.session.cache import NearCache
from shardproxy.session.fanout import Fanout
from shardproxy.session.host import Live
from shardproxy.session.pubsub import PubSub
from shardproxy.session.registry import Client, ClientRegistry
from shardproxy.session.scripts import Scripts
from shardproxy.session.subscribed import PubSubCommands


def failover_strategy(config: Config, worker: int) -> Callable[[Fleet], Failover]:
    """The strategy ``failover.mode`` names, as a function of the fleet it acts on."""
    mode = config.failover.mode

    def make(fleet: Fleet) -> Failover:
        if mode == "promote":
            # with several workers only worker 0 acts; the others adopt what the nodes report
            return PromoteFailover(fleet.record_failover, act=worker == 0)
        if mode == "eject":
            return EjectFailover(fleet.set_ejected)
        if mode == "sentinel":
            return SentinelFailover(fleet, config)
        return NoFailover()

    return make


class Proxy:
    """One worker process's proxy: built from a config, reconfigured by :meth:`apply`."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, worker: int = 0) -> None:
        self.loop = loop
        self.worker = worker  # index under the supervisor (0 when there is one process)
        self.config = config
        self.stats = metrics.Stats()
        self.hotkeys = HotKeys()
        self.live = Live(self.hotkeys)  # what sessions read per request (router, ...)
        counters = metrics.CommandCounters(commands.SPEC_COUNT + 1)
        self.command_counters: metrics.CommandCounters | None = (
            counters if config.metrics.commands else None
        )
        self._configure(config)
        ps = config.pubsub
        self.hub = PubSub(
            loop,
            self.stats,
            ps.connections,
            ps.output_hard_limit,
            ps.output_soft_limit,
            ps.output_soft_seconds,
        )
        self.pubsub = PubSubCommands(self.hub)
        c = config.cache
        self.live.cache = (
            NearCache(tuple(k.encode() for k in c.keys), c.max_memory, c.max_age_ms / 1000)
            if c.enabled
            else None
        )
        self.fleet = Fleet(
            config,
            loop,
            self.stats,
            failover_strategy(config, worker),
            self._set_router,
            metrics.Histogram(0) if config.metrics.commands else None,
        )
        self.health = self.fleet.health
        self.server_tls = security.server_context(config)  # tls: the client listeners'
        self.fleet.on_switch = self._primary_switched
        self.registry = ClientRegistry(self.stats, config.limits.max_clients)
        self.fanout = Fanout()
        self.scripts = Scripts(self.fanout, config.scripts.cache_bytes)
        self.telemetry = Telemetry(
            self.fleet,
            self.registry,
            self.stats,
            counters,
            time.time(),
            self.scripts.registry,
            self.hub,
            self.hotkeys,
            self.cache,
        )
        self.builtin = Builtin(self.fanout, self.telemetry)

    def _configure(self, config: Config) -> None:
        self.config = config
        self.limits: LimitsConfig = config.limits
        self.deny = config.deny_commands
        self.table = commands.lookup_table(self.deny)
        self.users = security.users(config, self.table)  # (validated: security.problems)
        self.live.read_your_writes = config.read_your_writes_ms / 1000
        self.live.max_pending = config.limits.max_pending_per_client
        self.per_shard_transactions = config.transactions.cross_shard == "per-shard"

    def _primary_switched(self) -> None:
        """A failover switched a shard's primary in place."""
        self.hub.reconcile()  # subscriptions follow it at once
        if self.cache is not None:
            self.cache.primary_switched()

    def _set_router(self, router: Router[Node]) -> None:
        self.router = router
        self.hub.router_changed(router)  # subscriptions follow the shards
        if self.cache is not None:
            self.cache.router_changed(router)
        registry = getattr(self, "registry", None)  # (the fleet publishes its first router
        if registry is not None:  # before the registry exists)
            registry.router_changed()

    # -- what sessions need (session.host.SessionHost) -------------------------------------

    @property
    def router(self) -> Router[Node]:
        """The live router: set by the fleet, now and at every swap."""
        return self.live.router

    @router.setter
    def router(self, router: Router[Node]) -> None:
        self.live.router = router

    @property
    def cache(self) -> NearCache | None:
        return self.live.cache

    @property
    def read_your_writes(self) -> float:
        return self.live.read_your_writes

    def resolve_sub(self, spec: CommandSpec) -> CommandSpec:
        return commands.denied_sub(spec, self.deny)

    def next_client_id(self) -> int:
        return self.registry.next_client_id()

    def client_connected(self, session: Client) -> bool:
        return self.registry.client_connected(session)

    def client_disconnected(self, session: Client) -> None:
        self.registry.client_disconnected(session)

    # -- what the server and admin need ----------------------------------------------------

    @property
    def clients(self) -> set[Client]:
        return self.registry.clients

    @property
    def draining(self) -> bool:
        return self.registry.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.registry.draining = value

    def warm_up(self) -> None:
        self.fleet.warm_up()

    def topology_json(self) -> dict[str, object]:
        return self.telemetry.topology_json()

    def hotkeys_json(self) -> dict[str, object]:
        return self.telemetry.hotkeys_json()

    def metric_samples(self) -> dict[str, list[metrics.Sample] | list[metrics.HistogramSample]]:
        return self.telemetry.metric_samples()

    def apply(self, new: Config) -> dict[str, Any]:
        """Switch to a new, already validated topology in one step (see Fleet.apply)."""
        self._configure(new)
        self.registry.users_changed(self.users)  # each client acts as its user's new rules
        if self.server_tls is not None and new.tls.cert_file and new.tls.key_file:
            # certificates read again; new handshakes use them (the listeners stay)
            self.server_tls.load_cert_chain(new.tls.cert_file, new.tls.key_file)
            if new.tls.ca_file:
                self.server_tls.load_verify_locations(new.tls.ca_file)
        self.registry.max_clients = new.limits.max_clients
        self.scripts.registry.limit = new.scripts.cache_bytes
        ps = new.pubsub
        self.hub.hard_limit = ps.output_hard_limit
        self.hub.soft_limit = ps.output_soft_limit
        self.hub.soft_seconds = ps.output_soft_seconds
        return self.fleet.apply(new)

    def close(self) -> None:
        self.hub.close()
        if self.cache is not None:
            self.cache.close()
        self.fleet.close()
