"""Node health: probes and live-traffic failures become node states that routing reads.

Every node is probed every ``health.interval_ms`` over a connection of its own (a
:class:`~shardproxy.backend.dial.ControlConnection`): ``PING`` and ``INFO replication`` (role,
link to the primary, replication offsets), pipelined. Live traffic reports its failures too (a
refused or lost connection, a reply timeout).

States of one node (``NodeHealth.state``)::

                 successes good probes
    UNKNOWN ─────────────────────────────▶ UP ◀──────────────┐
       │                                    │                 │ successes good probes
       │ failures consecutive failures      │ failures        │ in a row
       └───────────────────────────────▶  DOWN ───────────────┘
                                  (probe or live traffic)

A node is *usable* for routing while it is not DOWN; a replica serves reads only while it is
UP, its link to the primary is up and its lag is within ``max_replica_lag``. The monitor
writes ``node.usable`` and ``node.lag_bytes``; routing only reads them.

After each probe round the shard's :class:`Failover` strategy (``failover.mode``) looks at the
states and the roles the nodes report, and may change which node is the shard's primary. The
strategies send their commands to nodes (``REPLICAOF``) with :meth:`HealthMonitor.command`,
over the node's probe connection, never over the data-path connections; ``sentinel`` mode talks
to the Sentinels over connections of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shardproxy.backend.dial import ControlConnection, Credentials, Endpoint, HandshakeError
from shardproxy.protocol import replies

log = logging.getLogger("shardproxy.health")

UNKNOWN = "unknown"
UP = "up"
DOWN = "down"


class ProbedNode(Protocol):
    """What the monitor needs of a node (backend.Node satisfies it)."""

    address: str
    host: str
    port: int
    unix: str | None
    shard: str
    role: str
    usable: bool
    lag_bytes: int | None
    endpoint: Endpoint  # where and how to connect (its TLS, with backend.tls)

    def reconnect_now(self) -> None:
        """The node answers probes again: reconnect its data connections at once."""
        ...


@dataclass
class Replication:
    """What ``INFO replication`` said."""

    role: str = ""  # "master" | "slave"
    master: str | None = None  # "host:port" a replica follows
    link_up: bool = False  # replica: master_link_status:up
    offset: int = 0  # master_repl_offset (primary) / slave_repl_offset (replica)
    last_io_ms: int | None = None  # replica: master_last_io_seconds_ago * 1000
    replicas: dict[str, int] = field(default_factory=dict)  # primary: "ip:port" -> offset


def parse_replication(text: str) -> Replication:
    info: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            info[k.strip()] = v.strip()
    r = Replication(role=info.get("role", ""))
    if r.role == "slave":
        r.master = f"{info.get('master_host', '')}:{info.get('master_port', '')}"
        r.link_up = info.get("master_link_status") == "up"
        r.offset = int(info.get("slave_repl_offset", "0") or 0)
        io = info.get("master_last_io_seconds_ago")
        if io is not None and io.lstrip("-").isdigit() and int(io) >= 0:
            r.last_io_ms = int(io) * 1000
    else:
        r.offset = int(info.get("master_repl_offset", "0") or 0)
        for k, v in info.items():
            if k.startswith("slave") and k[5:].isdigit():
                fields = dict(part.partition("=")[::2] for part in v.split(","))
                if "ip" in fields and "port" in fields:
                    r.replicas[f"{fields['ip']}:{fields['port']}"] = int(fields.get("offset", 0))
    return r


class NodeHealth:
    """The monitor's view of one node."""

    __slots__ = ("fails", "last_error", "node", "oks", "replication", "state")

    def __init__(self, node: ProbedNode) -> None:
        self.node = node
        self.state = UNKNOWN
        self.fails = 0  # consecutive failures (probes or live traffic)
        self.oks = 0  # consecutive good probes
        self.replication: Replication | None = None  # last good probe's INFO replication
        self.last_error = ""


class Prober:
    """The connection used only for probes of one node and the monitor's commands to it
    (reopened after any failure)."""

    def __init__(self, node: ProbedNode, password: str | None, username: str | None) -> None:
        self.node = node
        self.creds = Credentials(username, password)
        self.conn: ControlConnection | None = None

    async def probe(self, timeout: float) -> Replication:
        """PING + INFO replication; raises on any failure (and drops the connection)."""
        try:
            return await asyncio.wait_for(self._probe(timeout), timeout)
        except BaseException:
            self.close()
            raise

    async def command(self, argv: list[bytes], timeout: float) -> bytes:
        """One command on this connection (failover's REPLICAOF); an error reply on failure."""
        try:
            return await asyncio.wait_for(self._command(argv, timeout), timeout)
        except (OSError, TimeoutError, replies.ReplyError) as exc:
            self.close()
            return b"-ERR " + _describe(exc, timeout).encode() + b"\r\n"

    async def _connection(self, timeout: float) -> ControlConnection:
        """The open connection (opened now if there is none), its calls timed by ``timeout``
        (the caller bounds the whole operation, connecting included, by the same)."""
        conn = self.conn
        if conn is None or conn.closed:
            node = self.node
            conn = self.conn = await ControlConnection.open(
                node.endpoint, self.creds, timeout=timeout
            )
        conn.timeout = timeout
        return conn

    async def _command(self, argv: list[bytes], timeout: float) -> bytes:
        return await (await self._connection(timeout)).call(*argv)

    async def _probe(self, timeout: float) -> Replication:
        conn = await self._connection(timeout)
        pong, info = await conn.call_many([[b"PING"], [b"INFO", b"replication"]])
        if replies.is_error(pong) and not pong.startswith(b"-LOADING"):
            raise ConnectionError(replies.error_text(pong))
        if replies.is_error(info):
            raise ConnectionError(replies.error_text(info))
        return parse_replication((replies.parse_bulk(info) or b"").decode(errors="replace"))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _describe(exc: BaseException, timeout: float) -> str:
    """Why a probe or a command failed, for the log and for the error reply of a command."""
    if isinstance(exc, TimeoutError):
        return f"no reply within {timeout * 1000:.0f} ms"
    if isinstance(exc, HandshakeError):
        return f"AUTH refused: {exc}"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class HealthSettings:
    interval: float = 1.0
    timeout: float = 0.5
    failures: int = 3
    successes: int = 2
    max_lag_bytes: int | None = 1024 * 1024
    max_lag_ms: int | None = None
    username: str | None = None
    password: str | None = None


class Shard(Protocol):
    name: str
    primary: ProbedNode
    replicas: tuple[ProbedNode, ...]


class Failover(Protocol):
    """A ``failover.mode``: looks at a shard after each probe round and may change it.

    ``start``/``stop`` run background work of its own (Sentinel subscriptions);
    ``readonly`` is told when the node routing believes is a primary answers ``-READONLY``
    (it was demoted behind the proxy's back)."""

    async def check(self, shard: Shard, monitor: HealthMonitor) -> None: ...

    def start(self, monitor: HealthMonitor) -> None: ...

    async def stop(self) -> None: ...

    def readonly(self, node: ProbedNode) -> None: ...


class NoFailover:
    """``none``: the shard's primary stays what the file says; errors until it returns."""

    async def check(self, shard: Shard, monitor: HealthMonitor) -> None:
        return None

    def start(self, monitor: HealthMonitor) -> None:
        return None

    async def stop(self) -> None:
        return None

    def readonly(self, node: ProbedNode) -> None:
        return None


class HealthMonitor:
    """Probes every node of the live topology and keeps ``node.usable`` true to what it sees."""

    def __init__(
        self,
        shards: Callable[[], Sequence[Shard]],
        settings: HealthSettings,
        failover: Failover | None = None,
    ) -> None:
        self.shards = shards  # the current topology's shards (read at every round)
        self.settings = settings
        self.failover: Failover = failover or NoFailover()
        self.health: dict[str, NodeHealth] = {}  # by node address
        self.probers: dict[str, Prober] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.rounds = 0  # completed probe rounds (tests wait on it)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.failover.start(self)

    async def stop(self) -> None:
        self._stopping = True
        await self.failover.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for p in self.probers.values():
            p.close()

    async def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a round must not stop health checking
                log.exception("health round failed")
            self.rounds += 1
            await asyncio.sleep(max(0.0, self.settings.interval - (time.monotonic() - started)))

    # -- probing ---------------------------------------------------------------------------

    def prober(self, node: ProbedNode) -> Prober:
        prober = self.probers.get(node.address)
        if prober is None or prober.node is not node:
            prober = self.probers[node.address] = Prober(
                node, self.settings.password, self.settings.username
            )
        return prober

    async def command(self, node: ProbedNode, argv: list[bytes]) -> bytes:
        """Run an administrative command on ``node`` (over its probe connection)."""
        return await self.prober(node).command(argv, max(self.settings.timeout, 1.0))

    def of(self, node: ProbedNode) -> NodeHealth:
        h = self.health.get(node.address)
        if h is None or h.node is not node:
            h = self.health[node.address] = NodeHealth(node)
        return h

    async def round(self) -> None:
        shards = list(self.shards())
        nodes = [n for s in shards for n in (s.primary, *s.replicas)]
        await asyncio.gather(*(self._probe(n) for n in nodes))
        for s in shards:
            self._update_replicas(s)
        for s in shards:
            try:
                await self.failover.check(s, self)
            except Exception:
                log.exception("failover check of shard %s failed", s.name)
        live = {n.address for n in nodes}
        for address in list(self.probers):
            if address not in live:
                self.probers.pop(address).close()
                self.health.pop(address, None)

    async def _probe(self, node: ProbedNode) -> None:
        try:
            repl = await self.prober(node).probe(self.settings.timeout)
        except (OSError, TimeoutError, replies.ReplyError) as exc:
            self.failure(node, _describe(exc, self.settings.timeout))
            return
        self.success(node, repl)

    def success(self, node: ProbedNode, repl: Replication) -> None:
        h = self.of(node)
        h.replication = repl
        h.fails = 0
        h.oks += 1
        if h.state != UP and h.oks >= self.settings.successes:
            self._set(h, UP, "probes answer")
        elif h.state == UNKNOWN:
            node.usable = node.role == "primary"  # a replica waits for its link and lag

    def readonly(self, node: ProbedNode) -> None:
        """Live traffic: a presumed primary answered -READONLY."""
        self.failover.readonly(node)

    def failure(self, node: ProbedNode, reason: str) -> None:
        """A failed probe, or a failure of live traffic (reported by the backend)."""
        h = self.of(node)
        h.oks = 0
        h.fails += 1
        h.last_error = reason
        if h.state != DOWN and h.fails >= self.settings.failures:
            self._set(h, DOWN, reason)

    def _set(self, h: NodeHealth, state: str, reason: str) -> None:
        old, h.state = h.state, state
        node = h.node
        if state == DOWN:
            node.usable = False
            log.warning(
                "node %s (shard %s, %s) is down: %s", node.address, node.shard, node.role, reason
            )
        else:
            node.usable = node.role == "primary" or self._replica_ok(h)
            if old == DOWN:
                log.info("node %s (shard %s, %s) is up again", node.address, node.shard, node.role)
                # its pipelines may still be waiting out a reconnect backoff: a request routed
                # to it now must not meet the error of when it was down
                node.reconnect_now()

    # -- replicas --------------------------------------------------------------------------

    def _update_replicas(self, shard: Shard) -> None:
        """Lag and link of each replica, and whether it may serve reads."""
        ph = self.health.get(shard.primary.address)
        primary_repl = ph.replication if ph is not None and ph.state != DOWN else None
        for r in shard.replicas:
            h = self.of(r)
            repl = h.replication
            lag: int | None = None
            if repl is not None and primary_repl is not None:
                seen = primary_repl.replicas.get(r.address)
                lag = max(0, primary_repl.offset - (seen if seen is not None else repl.offset))
            r.lag_bytes = lag
            if h.state == UP:
                r.usable = self._replica_ok(h)
            elif h.state == DOWN:
                r.usable = False
        p = shard.primary
        p.lag_bytes = None
        if self.of(p).state != DOWN:
            p.usable = True

    def _replica_ok(self, h: NodeHealth) -> bool:
        repl = h.replication
        if repl is None or repl.role != "slave" or not repl.link_up:
            return False
        s = self.settings
        if s.max_lag_bytes is not None and (
            h.node.lag_bytes is None or h.node.lag_bytes > s.max_lag_bytes
        ):
            return False
        if s.max_lag_ms is not None and (repl.last_io_ms is None or repl.last_io_ms > s.max_lag_ms):
            return False
        return True

    def state(self, node: ProbedNode) -> str:
        return self.of(node).state

    def replication(self, node: ProbedNode) -> Replication | None:
        h = self.health.get(node.address)
        return h.replication if h is not None and h.state != DOWN else None
