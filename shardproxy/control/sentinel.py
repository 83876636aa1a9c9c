"""``failover.mode: sentinel``: the shards' primaries and replicas follow Redis Sentinel.

Sentinel decides; the proxy only follows. Each shard is monitored in Sentinel under its
``sentinel_name`` (default: the shard name). Two kinds of background task feed one decision
function, :meth:`SentinelFailover.apply`:

**Subscribers**, one per Sentinel address, each a small state machine::

                 connect, AUTH, SUBSCRIBE             all channels confirmed
    (start) ──▶ CONNECTING ─────────────────▶ SUBSCRIBING ─────────────────▶ SUBSCRIBED
                 ▲    │ refused / timeout          │ error                    │ lost, or no reply
                 │    ▼                            ▼                          ▼ to two PINGs
                 └── BACKOFF (0.1 s doubling to 2 s, jittered) ◀──────────────┘

  In SUBSCRIBED, ``+switch-master <name> <old ip> <old port> <new ip> <new port>`` switches the
  shard's primary at once (no I/O on that path: traffic follows within one loop tick), then asks
  for a refresh of the shard (its replica list). Replica events (``+slave``, ``+sdown``,
  ``-sdown``, ``+convert-to-slave``, ``+slave-reconf-done`` about a ``slave``) only ask for a
  refresh. Entering SUBSCRIBED asks for a refresh of every shard: events may have been missed
  while the subscription was down.

**The poller**, one task::

    refresh every shard ─▶ wait for (poll_interval_ms elapsed  ─▶ refresh every shard
          (at start)               | a shard asked for a refresh ─▶ refresh that shard, at
                                                                   most once per REFRESH_GAP)

  A refresh asks *every* Sentinel, concurrently, ``SENTINEL get-master-addr-by-name``,
  ``SENTINEL master`` (for ``config-epoch``) and ``SENTINEL replicas`` for each shard due, all
  pipelined in one round trip on one query connection per Sentinel (so an unreachable Sentinel
  costs one timeout per refresh, whatever the number of shards), and believes, per shard, the
  answer with the highest config epoch: during a failover the Sentinels learn the new
  configuration one after the other (within ~2 s), and the first one to answer may be behind. Refreshes are asked for by the subscribers, by
  :meth:`SentinelFailover.check` (after each health round: the primary is DOWN, or reports that
  it is a replica) and by :meth:`SentinelFailover.readonly` (a -READONLY reply from the node
  routing believes is the primary).

:meth:`SentinelFailover.apply`: if the best answer names another primary, the shard switches to
it (:func:`shardproxy.control.failover.switch_primary`; the node is created if the topology file does
not list it); the replica list becomes the replicas that Sentinel reports without ``s_down``,
``o_down`` or ``disconnected`` (so a demoted old primary that is still down leaves the list, and
comes back once Sentinel has made it a replica). For ``HOLD`` seconds after a +switch-master,
answers that disagree with it and carry no newer epoch than the one known before the event are
ignored (the Sentinel that published it may be briefly unreachable while the others catch up).

``SentinelFailover.ready`` is set once the first full refresh is over, for a server that wants
to accept clients only after the primaries have been checked with Sentinel.

Nodes start as the fleet makes them (a primary usable, a replica not yet) and the health
monitor, which reads ``ctx.shards`` every round, probes them from its next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from shardproxy.backend.dial import ControlConnection, Credentials, Endpoint, HandshakeError
from shardproxy.control.failover import MutableShard, switch_primary
from shardproxy.control.health import DOWN, HealthMonitor, NoFailover, ProbedNode
from shardproxy.protocol import replies

if TYPE_CHECKING:
    from shardproxy.backend.node import Node
    from shardproxy.config import Address, Config
    from shardproxy.control.health import Shard
    from shardproxy.routing.router import ShardNodes

log = logging.getLogger("shardproxy.sentinel")

SWITCH_MASTER = b"+switch-master"
REPLICA_EVENTS = (b"+slave", b"+sdown", b"-sdown", b"+convert-to-slave", b"+slave-reconf-done")
CHANNELS = (SWITCH_MASTER, *REPLICA_EVENTS)
BAD_REPLICA_FLAGS = frozenset({"s_down", "o_down", "disconnected"})

BACKOFF_MIN = 0.1  # seconds before reconnecting to a Sentinel, doubling per failure...
BACKOFF_MAX = 2.0  # ...up to this
KEEPALIVE = 2.0  # a silent subscription is PINGed after this long, dropped after twice that
REFRESH_GAP = 0.5  # asked-for refreshes of one shard are at least this far apart
HOLD = 5.0  # seconds a +switch-master outweighs answers that are not newer (see the docstring)


@dataclass
class Answer:
    """What one Sentinel says about one master name."""

    sentinel: str  # the Sentinel's address
    host: str  # the primary, as get-master-addr-by-name reports it
    port: int
    epoch: int  # config-epoch of the master (-1 if SENTINEL master did not say)
    replicas: list[tuple[str, int]] | None  # replicas fit to serve; None: unknown


class SentinelContext(Protocol):
    """What :class:`SentinelFailover` uses of the proxy's topology (its fleet satisfies it)."""

    @property
    def shards(self) -> Sequence[ShardNodes[Node]]:
        """Every shard, ejected or not (built after the failover strategy: read it late)."""
        ...

    def node_for(self, shard: str, role: str, host: str, port: int) -> Node:
        """The node at host:port, created (for ``shard``, with ``role``) if need be."""
        ...

    def record_failover(self, shard: str, result: str) -> None:
        """Count a failover of ``shard`` with ``result`` (here ``success``) in the metrics."""
        ...


def _endpoint(address: Address) -> Endpoint:
    return Endpoint(address.host, address.port, address.unix)


def _text(item: replies.RespValue) -> str:
    if isinstance(item, bytes):
        return item.decode(errors="replace")
    return "" if item is None else str(item)


def _array(raw: bytes) -> list[replies.RespValue]:
    """An array reply, decoded; [] for an error or a null array (ReplyError for others)."""
    if replies.is_error(raw):
        return []
    items = replies.decode(raw)
    if items is None:
        return []
    if not isinstance(items, list):
        raise replies.ReplyError(f"expected an array, got {raw[:40]!r}")
    return items


def _fields(items: replies.RespValue) -> dict[str, str]:
    """A RESP2 flat array of field/value pairs (we speak RESP2 to Sentinel)."""
    s = [_text(i) for i in items] if isinstance(items, list) else []
    return dict(zip(s[::2], s[1::2], strict=False))


def parse_answer(sentinel: str, addr: bytes, master: bytes, replicas: bytes) -> Answer | None:
    """The replies to get-master-addr-by-name, master and replicas (None: no usable answer)."""
    hp = [_text(i) for i in _array(addr)]
    if len(hp) != 2 or not hp[1].isdigit():
        return None
    info = _fields(_array(master))
    epoch = info.get("config-epoch", "")
    reps: list[tuple[str, int]] | None = None
    if not replies.is_error(replicas):
        reps = []
        for item in _array(replicas):
            r = _fields(item)
            flags = set(r.get("flags", "").split(","))
            if flags & BAD_REPLICA_FLAGS or not r.get("port", "").isdigit():
                continue
            reps.append((r.get("ip", ""), int(r["port"])))
    return Answer(sentinel, hp[0], int(hp[1]), int(epoch) if epoch.isdigit() else -1, reps)


def parse_event(channel: bytes, payload: bytes) -> tuple[str, list[str]] | None:
    """(master name, the payload's words) of an event that concerns a master, or None.

    ``+switch-master <name> <oldip> <oldport> <newip> <newport>``; replica events are
    ``slave <name> <ip> <port> @ <master name> <master ip> <master port>``."""
    words = payload.decode(errors="replace").split()
    if channel == SWITCH_MASTER:
        return (words[0], words) if len(words) == 5 and words[4].isdigit() else None
    if len(words) >= 6 and words[0] == "slave" and words[4] == "@":
        return words[5], words
    return None


class SentinelLink:
    """The query connection to one Sentinel (opened on demand, dropped after any failure)."""

    def __init__(self, address: Address, password: str | None, timeout: float) -> None:
        self.address = address
        self.creds = Credentials(password=password)
        self.timeout = timeout  # for connecting, and for all the replies of one call
        self.conn: ControlConnection | None = None  # None: not connected
        self.lock = asyncio.Lock()  # one pipelined call at a time

    async def call(self, commands: Sequence[list[bytes]]) -> list[bytes]:
        """The replies to ``commands``, sent pipelined. Raises on any failure."""
        async with self.lock:
            try:
                return await asyncio.wait_for(self._call(commands), self.timeout)
            except BaseException:
                self.close()
                raise

    async def _call(self, commands: Sequence[list[bytes]]) -> list[bytes]:
        if self.conn is not None and self.conn.closed:
            self.close()  # the Sentinel closed it since the last call (restarted, say)
        reused = self.conn is not None
        while True:
            if self.conn is None:
                self.conn = await ControlConnection.open(
                    _endpoint(self.address), self.creds, timeout=self.timeout
                )
            try:
                return await self.conn.call_many(commands)
            except ConnectionError:
                if not reused:
                    raise
                # a kept connection found dead: queries are read-only, so ask once more on a
                # new one
                reused = False
                self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SentinelFailover(NoFailover):
    """Follows Sentinel for every shard of ``ctx`` (see the module docstring)."""

    def __init__(self, ctx: SentinelContext, config: Config) -> None:
        # the fleet's shards are not built yet when it constructs us: read it only from start()
        self.ctx = ctx
        sc = config.sentinel
        self.poll_interval = sc.poll_interval_ms / 1000
        self.timeout = max(0.2, config.timeouts.command_ms / 1000)  # one Sentinel round trip
        self.connect_timeout = config.timeouts.connect_ms / 1000
        self.creds = Credentials(password=sc.password)
        self.addresses = sc.addresses
        self.links = [SentinelLink(a, sc.password, self.timeout) for a in sc.addresses]
        self.master_name = {s.name: s.sentinel_name or s.name for s in config.shards}
        self.shard_of = {m: s for s, m in self.master_name.items()}  # master name -> shard
        self.epochs: dict[str, int] = {}  # shard -> config epoch of the last answer applied
        # shard -> (until when, epoch known before) after a +switch-master (see HOLD)
        self.holds: dict[str, tuple[float, int]] = {}
        self.wanted: set[str] = set()  # shards asked to be refreshed
        self.refreshed: dict[str, float] = {}  # shard -> loop time of its last refresh
        self.unknown: set[str] = set()  # shards no Sentinel answered for (logged once)
        self.subscribed: dict[str, bool] = {}  # Sentinel address -> subscription is live
        self._wake = asyncio.Event()  # set when a shard is asked to be refreshed
        # set once the first full refresh is over (answered or not): a server may wait on it
        # before accepting clients, so none is routed by the file's possibly stale primaries
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: set[ControlConnection] = set()  # live subscription connections

    # -- the Failover protocol -------------------------------------------------------------

    def start(self, monitor: HealthMonitor) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll(), name="sentinel-poll"))
        for address in self.addresses:
            self._tasks.append(
                loop.create_task(self._subscribe(address), name=f"sentinel-sub-{address}")
            )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for link in self.links:
            link.close()
        for conn in list(self._subscriptions):
            conn.close()
        self._subscriptions.clear()

    async def check(self, shard: Shard, monitor: HealthMonitor) -> None:
        """After each health round: a primary that is down or reports it is a replica makes
        us ask Sentinel again (cheap: no I/O here, at most one refresh per REFRESH_GAP)."""
        p = shard.primary
        repl = monitor.replication(p)
        if (repl is not None and repl.role == "slave") or monitor.state(p) == DOWN:
            self.request(shard.name)

    def readonly(self, node: ProbedNode) -> None:
        if node.role == "primary":
            self.request(node.shard)

    # -- refreshing ------------------------------------------------------------------------

    def request(self, shard: str) -> None:
        """Ask the poller to refresh ``shard`` soon."""
        if shard in self.master_name and shard not in self.wanted:
            self.wanted.add(shard)
            self._wake.set()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time()  # a full refresh at once: follow the current primaries
        while True:
            self._wake.clear()
            now = loop.time()
            if now >= next_full:
                next_full = now + self.poll_interval
                self.wanted.clear()
                await self._refresh_many(list(self.master_name))
                self.ready.set()
                continue
            due = [s for s in self.wanted if self.refreshed.get(s, -1e9) + REFRESH_GAP <= now]
            if due:
                self.wanted.difference_update(due)
                await self._refresh_many(due)
                continue
            until = min(
                [next_full, *(self.refreshed.get(s, now) + REFRESH_GAP for s in self.wanted)]
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, until - now))

    async def _refresh_many(self, shards: list[str]) -> None:
        try:
            await self.refresh(shards)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not stop following Sentinel
            log.exception("Sentinel refresh failed")

    async def refresh(self, shards: list[str]) -> None:
        """Ask every Sentinel about ``shards`` (one pipelined round trip each, concurrently)
        and apply, per shard, the newest answer."""
        now = asyncio.get_running_loop().time()
        for s in shards:
            self.refreshed[s] = now
        names = [self.master_name[s].encode() for s in shards]
        per_link = await asyncio.gather(*(self._ask(link, names) for link in self.links))
        for i, shard in enumerate(shards):
            self.apply(shard, [a for answers in per_link if (a := answers[i]) is not None])

    async def _ask(self, link: SentinelLink, names: list[bytes]) -> list[Answer | None]:
        """One Sentinel's answer for each master name (None: no usable answer)."""
        commands = []
        for name in names:
            commands += [
                [b"SENTINEL", b"get-master-addr-by-name", name],
                [b"SENTINEL", b"master", name],
                [b"SENTINEL", b"replicas", name],
            ]
        try:
            answers = await link.call(commands)
        except (OSError, TimeoutError, replies.ReplyError) as exc:
            log.debug("Sentinel %s did not answer: %r", link.address, exc)
            return [None] * len(names)
        out: list[Answer | None] = []
        for i in range(len(names)):
            try:
                out.append(parse_answer(str(link.address), *answers[3 * i : 3 * i + 3]))
            except (replies.ReplyError, ValueError, IndexError) as exc:
                log.warning("Sentinel %s: unexpected answer about %r: %r", link.address,
                            names[i], exc)  # fmt: skip
                out.append(None)
        return out

    def _shard(self, name: str) -> ShardNodes[Node] | None:
        for s in self.ctx.shards:
            if s.name == name:
                return s
        return None

    def apply(self, shard_name: str, answers: list[Answer]) -> None:
        """Make the shard what the newest of ``answers`` says (no I/O: atomic for routing)."""
        shard = self._shard(shard_name)
        if shard is None:
            return
        if not answers:
            if shard_name not in self.unknown:
                self.unknown.add(shard_name)
                log.error(
                    "shard %s: no Sentinel knows master %r (or none answers)",
                    shard_name,
                    self.master_name[shard_name],
                )
            return
        self.unknown.discard(shard_name)
        cur = shard.primary
        # newest epoch first; on a tie, the primary we already have, then Sentinel order
        best = max(answers, key=lambda a: (a.epoch, (a.host, a.port) == (cur.host, cur.port)))
        same = (best.host, best.port) == (cur.host, cur.port)
        hold = self.holds.get(shard_name)
        if hold is not None:
            until, before = hold
            if asyncio.get_running_loop().time() >= until or same or best.epoch > before:
                del self.holds[shard_name]
            else:
                log.info(
                    "shard %s: Sentinel %s still reports %s:%d (epoch %d); keeping %s from "
                    "+switch-master",
                    shard_name, best.sentinel, best.host, best.port, best.epoch, cur.address,
                )  # fmt: skip
                return
        if not same and not self.switch(shard, best.host, best.port, f"Sentinel {best.sentinel}"):
            return
        self.epochs[shard_name] = best.epoch
        if best.replicas is not None:
            self._set_replicas(shard, best.replicas)

    def switch(self, shard: ShardNodes[Node], host: str, port: int, why: str) -> bool:
        """Make host:port the primary of ``shard``; False if it cannot be."""
        node = self.ctx.node_for(shard.name, "primary", host, port)
        if node.shard != shard.name:
            log.error(
                "shard %s: %s names %s as primary, but that node serves shard %s; ignored",
                shard.name, why, node.address, node.shard,
            )  # fmt: skip
            return False
        if node is shard.primary:
            return True
        log.warning("shard %s: %s: primary %s -> %s", shard.name, why, shard.primary.address,
                    node.address)  # fmt: skip
        switch_primary(cast("MutableShard", shard), node)
        self.ctx.record_failover(shard.name, "success")
        return True

    def _set_replicas(self, shard: ShardNodes[Node], reported: list[tuple[str, int]]) -> None:
        nodes: list[Node] = []
        for host, port in reported:
            node = self.ctx.node_for(shard.name, "replica", host, port)
            if node is shard.primary or node.shard != shard.name or node in nodes:
                continue
            if node.role != "replica":
                node.role = "replica"
                node.usable = False  # until health vets it
            nodes.append(node)
        if set(nodes) != set(shard.replicas):
            log.info(
                "shard %s: replicas now [%s] (Sentinel)",
                shard.name,
                ", ".join(n.address for n in nodes),
            )
            shard.replicas = tuple(nodes)

    # -- subscriptions ---------------------------------------------------------------------

    async def _subscribe(self, address: Address) -> None:
        key = str(address)
        backoff = BACKOFF_MIN
        failed_before = False  # a failure was logged; log the recovery
        while True:
            conn: ControlConnection | None = None
            try:
                conn = await ControlConnection.open(
                    _endpoint(address), self.creds, timeout=self.connect_timeout
                )
                self._subscriptions.add(conn)
                conn.send(b"SUBSCRIBE", *CHANNELS)
                confirmed = 0
                silent = 0  # keepalive periods without any reply
                while True:
                    try:
                        reply = await conn.read(KEEPALIVE)
                    except TimeoutError:
                        silent += 1
                        if silent >= 2:
                            raise ConnectionError("no reply to PING") from None
                        conn.send(b"PING")
                        continue
                    silent = 0
                    if replies.is_error(reply):
                        raise ConnectionError(replies.error_text(reply))
                    if reply[:1] not in (b"*", b">"):
                        continue  # e.g. +PONG: nothing to act on
                    items = [i if isinstance(i, bytes) else b"" for i in _array(reply)]
                    kind = items[0].lower() if items else b""
                    if kind == b"subscribe":
                        confirmed += 1
                        if confirmed == len(CHANNELS):
                            self.subscribed[key] = True
                            backoff = BACKOFF_MIN
                            if failed_before:
                                log.info("Sentinel %s: subscribed again", key)
                                failed_before = False
                            for s in self.master_name:  # events may have been missed
                                self.request(s)
                    elif kind == b"message" and len(items) == 3:
                        self.on_event(key, items[1], items[2])
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, replies.ReplyError, ValueError, IndexError) as exc:
                if not failed_before:
                    log.warning(
                        "Sentinel %s: subscription lost or refused (%s); retrying",
                        key, _reason(exc),
                    )  # fmt: skip
                    failed_before = True
            finally:
                self.subscribed[key] = False
                if conn is not None:
                    self._subscriptions.discard(conn)
                    conn.close()
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def on_event(self, sentinel: str, channel: bytes, payload: bytes) -> None:
        """One message from a Sentinel subscription."""
        event = parse_event(channel, payload)
        if event is None:
            return
        master, words = event
        shard_name = self.shard_of.get(master)
        if shard_name is None:
            return  # a master that is not one of our shards
        if channel == SWITCH_MASTER:
            shard = self._shard(shard_name)
            if shard is not None:
                before = self.epochs.get(shard_name, -1)
                host, port = words[3], int(words[4])
                if (host, port) != (shard.primary.host, shard.primary.port) and self.switch(
                    shard, host, port, f"+switch-master from Sentinel {sentinel}"
                ):
                    loop = asyncio.get_running_loop()
                    self.holds[shard_name] = (loop.time() + HOLD, before)
        self.request(shard_name)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HandshakeError):
        return f"AUTH refused: {exc}"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
