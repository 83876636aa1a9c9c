"""Failover strategies for ``failover.mode: promote`` and ``eject`` (Sentinel: sentinel.py).

They run after every health round (see health.py), one shard at a time, and decide from the
node states and the roles the nodes themselves report.

``promote`` — the proxy promotes a replica when the primary is down::

    listed primary reports it is a replica of X (X a node of the shard, reporting master)
        └─▶ adopt X as primary                      (restarted proxies, several proxies)
    several nodes of the shard report master (an old primary came back empty)
        └─▶ the one with the highest replication offset is the primary
    primary DOWN and a replica already reports master
        └─▶ adopt that replica                      (another proxy promoted it first)
    primary DOWN, replicas UP
        └─▶ REPLICAOF NO ONE on the most up-to-date (highest offset, then lowest address),
            REPLICAOF <new> on the other replicas, swap roles in the topology
    primary UP and a replica reports master (the old primary came back)
        └─▶ REPLICAOF <primary> on it: it rejoins as a replica

The roles the nodes report win over the order in the YAML, and the choice of replica is a
function of what the nodes report, so proxies in front of one fleet converge on one primary.

``eject`` — a shard with no usable node leaves the ring until one returns; its keys rehash to
other shards meanwhile (twemproxy's auto_eject_hosts: for caches only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shardproxy.control.health import DOWN, UP, HealthMonitor, NoFailover, ProbedNode
from shardproxy.protocol import replies

if TYPE_CHECKING:
    from shardproxy.control.health import Shard

log = logging.getLogger("shardproxy.failover")


class MutableShard(Protocol):
    name: str
    primary: ProbedNode
    replicas: tuple[ProbedNode, ...]


Record = Callable[[str, str], None]  # (shard, result) -> count a failover


def switch_primary(shard: MutableShard, new: ProbedNode) -> None:
    """Make ``new`` the shard's primary; the old primary becomes one of its replicas."""
    old = shard.primary
    if new is old:
        return
    others = [r for r in shard.replicas if r is not new]
    old.role = "replica"
    new.role = "primary"
    shard.primary = new
    shard.replicas = (old, *others)
    new.usable = True
    old.usable = False  # until health sees it linked to the new primary
    log.warning("shard %s: primary is now %s (was %s)", shard.name, new.address, old.address)


class PromoteFailover(NoFailover):
    def __init__(self, record: Record, act: bool = True) -> None:
        self.record = record
        # False in workers other than worker 0: they never send REPLICAOF themselves and
        # follow the roles the nodes report once worker 0 has acted
        self.act = act
        self.failed_once: set[str] = set()  # shards whose failed attempt was already counted
        # shard -> the node this proxy promoted: while it is up it stays the primary, even if
        # the old primary comes back (from a SIGSTOP, say) with a higher offset of its own
        # history, which would be the wrong data to keep
        self.promoted: dict[str, str] = {}

    async def check(self, shard: Shard, monitor: HealthMonitor) -> None:
        s: MutableShard = shard
        p = s.primary
        p_repl = monitor.replication(p)
        by_address = {n.address: n for n in (s.primary, *s.replicas)}
        # 1. the listed primary says it follows another node of the shard: believe it
        if p_repl is not None and p_repl.role == "slave" and p_repl.master in by_address:
            target = by_address[p_repl.master]
            t_repl = monitor.replication(target)
            if t_repl is not None and t_repl.role == "master":
                switch_primary(s, target)
                self.record(s.name, "adopted")
                return
        # several nodes report master (an old primary came back empty while no proxy that saw
        # the promotion ran): the one with the most data is the primary, never the empty one
        masters = [
            n
            for n in (s.primary, *s.replicas)
            if monitor.state(n) != DOWN and _role(monitor, n) == "master"
        ]
        if len(masters) > 1 and self.promoted.get(s.name) != p.address:
            # (offsets of two histories are compared only when this proxy did not choose)
            best = max(masters, key=lambda n: (_offset(monitor, n), n is p))
            if best is not p:
                switch_primary(s, best)
                self.record(s.name, "adopted")
                p = best
        if monitor.state(p) != DOWN:
            self.failed_once.discard(s.name)
            if self.act:
                await self._rejoin_old_primaries(s, monitor)
            return
        # 2. primary down: a replica may already have been promoted (by another proxy)
        masters = sorted(
            (r for r in s.replicas if monitor.state(r) != DOWN and _role(monitor, r) == "master"),
            key=lambda n: n.address,
        )
        if masters:
            switch_primary(s, masters[0])
            self.record(s.name, "adopted")
            return
        # 3. promote the most up-to-date healthy replica
        if not self.act:
            return
        candidates = [
            r for r in s.replicas if monitor.state(r) == UP and _role(monitor, r) == "slave"
        ]
        if not candidates:
            if s.name not in self.failed_once:
                self.failed_once.add(s.name)
                self.record(s.name, "failure")
                log.error("shard %s: primary down and no healthy replica to promote", s.name)
            return
        best = min(candidates, key=lambda r: (-_offset(monitor, r), r.address))
        reply = await monitor.command(best, [b"REPLICAOF", b"NO", b"ONE"])
        if replies.is_error(reply):
            self.record(s.name, "failure")
            log.error("shard %s: REPLICAOF NO ONE on %s failed: %r", s.name, best.address, reply)
            return
        switch_primary(s, best)
        self.promoted[s.name] = best.address
        self.record(s.name, "success")
        for r in s.replicas:
            if r is not best and monitor.state(r) != DOWN:
                await _follow(monitor, r, best)

    async def _rejoin_old_primaries(self, s: MutableShard, monitor: HealthMonitor) -> None:
        for r in s.replicas:
            if monitor.state(r) != DOWN and _role(monitor, r) == "master":
                log.warning(
                    "shard %s: %s reports master; making it a replica of %s",
                    s.name,
                    r.address,
                    s.primary.address,
                )
                await _follow(monitor, r, s.primary)


async def _follow(monitor: HealthMonitor, node: ProbedNode, primary: ProbedNode) -> None:
    reply = await monitor.command(
        node, [b"REPLICAOF", primary.host.encode(), str(primary.port).encode()]
    )
    if replies.is_error(reply):
        log.error("REPLICAOF %s on %s failed: %r", primary.address, node.address, reply)


def _role(monitor: HealthMonitor, node: ProbedNode) -> str:
    repl = monitor.replication(node)
    return repl.role if repl is not None else ""


def _offset(monitor: HealthMonitor, node: ProbedNode) -> int:
    repl = monitor.replication(node)
    return repl.offset if repl is not None else -1


class EjectFailover(NoFailover):
    """Take a shard with no usable node off the ring; put it back when a node returns."""

    def __init__(self, set_ejected: Callable[[str, bool], None]) -> None:
        self.set_ejected = set_ejected
        self.ejected: set[str] = set()

    async def check(self, shard: Shard, monitor: HealthMonitor) -> None:
        dead = all(monitor.state(n) == DOWN for n in (shard.primary, *shard.replicas))
        if dead and shard.name not in self.ejected:
            self.ejected.add(shard.name)
            log.warning("shard %s ejected from the ring: no usable node", shard.name)
            self.set_ejected(shard.name, True)
        elif not dead and monitor.state(shard.primary) == UP and shard.name in self.ejected:
            self.ejected.discard(shard.name)
            log.warning("shard %s back on the ring", shard.name)
            self.set_ejected(shard.name, False)
