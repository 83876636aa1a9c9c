"""Connections from the proxy to the Redis nodes, multiplexed and pipelined.

One :class:`Node` per server address. A node keeps, per client protocol (RESP2 / RESP3),
``backend.connections`` connections shared by every client; a client is pinned to one of them
(``client_id % connections``) so its commands to one node stay in order.

A :class:`BackendConnection` is a FIFO pipeline: :meth:`BackendConnection.send` appends the
request's reply slot to ``pending`` and the request bytes to the write buffer; the buffer is
written once per loop tick (one ``write`` for everything many clients sent in that tick).
Replies come back in order, so the n-th reply completes the n-th pending slot, raw bytes
untouched. A slot whose client has gone is still completed (and its reply dropped), so the
pipeline never desyncs.

Connection states::

            send() / start            connected + handshake ok
    (new) ──────────────▶ CONNECTING ───────────────────────────▶ READY
                              │  ▲                                   │
        connect error/timeout │  │ backoff timer                     │ lost / reply timeout /
                              ▼  │                                   │ garbage from server
                             DOWN ◀──────────────────────────────────┘
    any state ── close() ──▶ CLOSED (terminal; removed from the topology)

In CONNECTING, requests are queued and written once the handshake (AUTH, HELLO 3) succeeds. In
DOWN, requests fail at once with an error naming the shard (no hang, no queueing while the node
is known to be gone). The command timeout is one timer per connection, armed for the oldest
pending request: if the node has not answered it within ``command_ms``, every pending request
fails with a timeout error and the connection is dropped and re-established (a stuck pipeline
cannot be resynchronised).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass
from time import perf_counter as clock
from typing import Any, Final, Protocol, cast

from shardproxy import errors, resp
from shardproxy.fifo import Fifo
from shardproxy.metrics import Histogram

log = logging.getLogger("shardproxy.backend")

CONNECTING: Final = "connecting"
READY: Final = "ready"
DOWN: Final = "down"
CLOSED: Final = "closed"


class Flushable:
    """A client session, as backends see it: told to write out whatever replies are now
    ready, once per batch of replies (``dirty`` says it is already in the batch). A base
    class rather than a protocol so that, compiled, these calls are direct."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty = False

    def flush(self, now: float = -1.0) -> None:
        """``now``: clock() when the replies were read, if the caller has it (else -1)."""
        raise NotImplementedError


class ReplySlot:
    """Where a reply goes. ``complete`` returns the session to flush, or None. A base class
    (not a protocol) so that, compiled, a backend completes its slots with direct calls."""

    __slots__ = ()

    def complete(self, reply: bytes) -> Flushable | None:
        raise NotImplementedError

    def fail(self, reply: bytes) -> Flushable | None:
        """Completed by the proxy with an error (no reply from the node)."""
        raise NotImplementedError


class CallSlot(ReplySlot):
    """A reply slot for the proxy's own commands (health probes aside): resolves a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def complete(self, reply: bytes) -> Flushable | None:
        if not self.future.done():
            self.future.set_result(reply)
        return None

    def fail(self, reply: bytes) -> Flushable | None:
        return self.complete(reply)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Per-node connection settings, from the topology's ``timeouts`` and ``backend`` sections."""

    connect_timeout: float = 1.0
    command_timeout: float = 1.0
    connections: int = 1
    username: str | None = None
    password: str | None = None
    backoff_min: float = 0.05
    backoff_max: float = 1.0


class NodeListener(Protocol):
    """Told when live traffic to a node fails (health monitoring counts it), and when a node
    routing believes is a primary answers -READONLY."""

    def failure(self, node: Node, reason: str) -> None: ...

    def readonly(self, node: Node) -> None: ...


class Node:
    """One Redis server of the fleet and its shared connections.

    ``usable`` says whether routing may use the node. The health monitor owns it (see
    health.py), and live-traffic failures are reported to it through ``listener``; without a
    monitor, a node is unusable while all its connections are DOWN.

    Metrics: ``requests`` and ``errors`` are plain counters; ``latency`` (owned by the runtime,
    None when command metrics are off) is observed at series ``latency_series``.
    """

    __slots__ = (
        "_conns",
        "address",
        "errors",
        "host",
        "lag_bytes",
        "latency",
        "latency_series",
        "listener",
        "loop",
        "port",
        "requests",
        "role",
        "settings",
        "shard",
        "unix",
        "usable",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        shard: str,
        role: str,
        host: str,
        port: int,
        settings: BackendSettings,
        unix: str | None = None,
        listener: NodeListener | None = None,
    ) -> None:
        self.loop = loop
        self.shard = shard  # name of the shard this node serves
        self.role = role  # "primary" or "replica"
        self.host = host
        self.port = port
        self.unix = unix
        self.address = (
            f"unix:{unix}" if unix else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        )
        self.settings = settings
        self.listener = listener
        self.usable = True
        self.requests = 0  # requests written to this node (all connections)
        self.errors = {"timeout": 0, "connection": 0, "protocol": 0}  # connection failures
        self.latency: Histogram | None = None
        self.latency_series = 0
        self.lag_bytes: int | None = None  # replicas: bytes behind the primary (health probes)
        # protocol (2 or 3) -> the connections for clients speaking it (created on first use)
        self._conns: dict[int, list[BackendConnection]] = {}

    def connection(self, proto: int, client_id: int) -> BackendConnection:
        conns = self._conns.get(proto)
        if conns is None:
            conns = [BackendConnection(self, proto) for _ in range(self.settings.connections)]
            self._conns[proto] = conns
            for c in conns:
                c.start()
        return conns[client_id % len(conns)]

    def connections(self) -> list[BackendConnection]:
        return [c for conns in self._conns.values() for c in conns]

    def pending_count(self) -> int:
        return sum(len(c.pending) for c in self.connections())

    def _connection_failed(self, reason: str) -> None:
        """A connection went DOWN. With a health monitor, that counts as one failure of the
        node; without one, the node is unusable while every connection is down."""
        if self.listener is not None:
            self.listener.failure(self, reason)
            return
        self._connection_up()

    def _connection_up(self) -> None:
        if self.listener is None:
            self.usable = any(c.state != DOWN for c in self.connections())

    def last_error(self) -> str:
        for c in self.connections():
            if c.last_error:
                return c.last_error
        return "unknown"

    def close(self) -> None:
        for c in self.connections():
            c.close()
        self._conns.clear()

    def __repr__(self) -> str:
        return f"Node({self.shard} {self.role} {self.address})"


class BackendConnection(asyncio.Protocol):
    """One pipelined connection to a node (see the module docstring for its states)."""

    __slots__ = (
        "_backoff",
        "_flush_scheduled",
        "_handshake_left",
        "_reconnect_handle",
        "_scanner",
        "_timer",
        "batches",
        "head_since",
        "last_error",
        "loop",
        "node",
        "pending",
        "proto",
        "state",
        "transport",
        "wbuf",
    )

    def __init__(self, node: Node, proto: int) -> None:
        self.node = node
        self.proto = proto
        self.loop = node.loop
        self.state = CONNECTING
        self.transport: asyncio.Transport | None = None
        self.pending: Fifo[ReplySlot] = Fifo()  # slots of requests sent or queued, in order
        self.wbuf: list[bytes] = []  # request bytes not yet written
        # [requests, clock()] of each write not yet fully answered (latency metrics)
        self.batches: deque[list[Any]] = deque()
        self._flush_scheduled = False
        self._scanner = resp.ReplyScanner()
        self._handshake_left = 0  # handshake replies still expected before client replies
        self._timer: asyncio.TimerHandle | None = None  # command timeout for the oldest request
        self.head_since = 0.0  # loop time since which pending.head() has been the oldest request
        self._backoff = node.settings.backoff_min
        self._reconnect_handle: asyncio.TimerHandle | None = None
        self.last_error = ""  # why the connection was last lost or refused ("" if never)

    # -- sending ---------------------------------------------------------------------------

    def send(self, frame: bytes, slot: ReplySlot) -> None:
        """Queue ``frame``; ``slot`` completes with its reply (or with an error reply)."""
        state = self.state
        if state is READY or state is CONNECTING:
            pending = self.pending
            if not pending:
                self.head_since = self.loop.time()
                if self._timer is None:
                    self._arm_timer()
            pending.append(slot)
            self.wbuf.append(frame)
            if state is READY and not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        else:
            slot.fail(self._unavailable())

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.state is READY and self.wbuf and self.transport is not None:
            buf = self.wbuf
            self.wbuf = []
            self.node.requests += len(buf)
            if self.node.latency is not None:
                self.batches.append([len(buf), clock()])
            self.transport.write(b"".join(buf) if len(buf) > 1 else buf[0])

    def _unavailable(self) -> bytes:
        return errors.reply(
            "shard_unavailable",
            shard=self.node.shard,
            node=self.node.address,
            detail=self.last_error or "not connected",
        )

    # -- connecting ------------------------------------------------------------------------

    def start(self) -> None:
        self.state = CONNECTING
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        node = self.node
        try:
            if node.unix:
                coro = self.loop.create_unix_connection(lambda: self, node.unix)
            else:
                coro = self.loop.create_connection(lambda: self, node.host, node.port)
            await asyncio.wait_for(coro, node.settings.connect_timeout)
        except TimeoutError:
            self._fail(
                f"connect timed out after {int(node.settings.connect_timeout * 1000)} ms",
                kind="timeout",
            )
        except OSError as exc:
            self._fail(exc.strerror or str(exc))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self.state is CLOSED:
            transport.close()
            return
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hs = self._handshake()
        if hs:
            self._handshake_left = len(hs)
            transport.write(b"".join(hs))
        else:
            self._ready()

    def _handshake(self) -> list[bytes]:
        s = self.node.settings
        if self.proto == 3:
            argv = [b"HELLO", b"3"]
            if s.password is not None:
                argv += [b"AUTH", (s.username or "default").encode(), s.password.encode()]
            return [resp.encode_command(argv)]
        if s.password is not None:
            argv = [b"AUTH"] + ([s.username.encode()] if s.username else []) + [s.password.encode()]
            return [resp.encode_command(argv)]
        return []

    def _ready(self) -> None:
        self.state = READY
        self._backoff = self.node.settings.backoff_min
        self.last_error = ""
        self.node._connection_up()
        if self.wbuf and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    # -- receiving -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._scanner.feed(data)
        except resp.ReplyError as exc:
            self._fail(f"protocol error from server: {exc}", kind="protocol")
            return
        if not replies:
            return
        if self._handshake_left:
            while self._handshake_left and replies:
                r = replies.pop(0)
                self._handshake_left -= 1
                if resp.is_error(r):
                    msg = r[1:-2].decode("utf-8", "replace")
                    self._fail("handshake refused: " + msg, kind="protocol")
                    return
            if self._handshake_left:
                return
            self._ready()
        pending = self.pending
        touched: list[Flushable] = []
        self.head_since = self.loop.time()
        node = self.node
        done = 0
        for r in replies:
            if r[0] == resp.PUSH:
                continue  # out-of-band push (RESP3); nothing subscribed, nothing to deliver
            if not pending:
                self._fail("reply without a request", kind="protocol")
                return
            done += 1
            if r[0] == 45 and r.startswith(b"-READONLY") and node.role == "primary":
                if node.listener is not None:
                    node.listener.readonly(node)
            s = pending.popleft().complete(r)
            if s is not None and not s.dirty:
                s.dirty = True
                touched.append(s)
        now = clock()  # one reading for this batch of replies, its latency metrics too
        if node.latency is not None:
            self._observe(done, now)
        for s in touched:
            s.flush(now)

    def _observe(self, n: int, now: float) -> None:
        """Latency of ``n`` requests answered at ``now``: each write batch's requests share a
        send time."""
        batches = self.batches
        hist = self.node.latency
        series = self.node.latency_series
        while n and batches:
            batch = batches[0]
            k = batch[0] if batch[0] <= n else n
            hist.observe_many(series, now - batch[1], k)  # type: ignore[union-attr]
            n -= k
            if k == batch[0]:
                batches.popleft()
            else:
                batch[0] -= k

    # -- failures --------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(
            self.head_since + self.node.settings.command_timeout, self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        if not self.pending or self.state is DOWN or self.state is CLOSED:
            return
        timeout = self.node.settings.command_timeout
        if self.loop.time() >= self.head_since + timeout - 0.001:
            ms = int(timeout * 1000)
            err = errors.reply(
                "shard_timeout", shard=self.node.shard, node=self.node.address, ms=ms
            )
            self._fail(f"no reply within {ms} ms", err, kind="timeout")
        else:
            self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state is CLOSED:
            self._fail_pending(None)
            return
        if self.state is not DOWN:
            self._fail(str(exc) if exc else "connection closed by server")

    def _fail(self, reason: str, reply: bytes | None = None, kind: str = "connection") -> None:
        """Drop the connection: fail every pending request, go DOWN, schedule a reconnect.

        ``kind`` is the metrics' error type: timeout, connection or protocol."""
        was_ready = self.state is READY
        self.node.errors[kind] += 1
        self.last_error = reason
        if reply is None:
            if was_ready:
                reply = errors.reply(
                    "shard_closed", shard=self.node.shard, node=self.node.address, detail=reason
                )
            else:
                reply = self._unavailable()
        if self.state is not CLOSED:
            self.state = DOWN
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        self._fail_pending(reply)
        if self.state is DOWN:
            self.node._connection_failed(reason)
            self._schedule_reconnect()

    def _fail_pending(self, reply: bytes | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.wbuf.clear()
        self.batches.clear()
        self._handshake_left = 0
        self._scanner = resp.ReplyScanner()
        pending, self.pending = self.pending, Fifo()
        err = reply or errors.reply(
            "shard_closed", shard=self.node.shard, node=self.node.address, detail="node removed"
        )
        touched: list[Flushable] = []
        for slot in pending:
            s = slot.fail(err)
            if s is not None and not s.dirty:
                s.dirty = True
                touched.append(s)
        for s in touched:
            s.flush()

    def _schedule_reconnect(self) -> None:
        if self._reconnect_handle is not None:
            return
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.node.settings.backoff_max)
        self._reconnect_handle = self.loop.call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._reconnect_handle = None
        if self.state is DOWN:
            self.start()

    def close(self) -> None:
        """Close for good (node removed or proxy stopping); pending requests fail."""
        self.state = CLOSED
        if self._reconnect_handle is not None:
            self._reconnect_handle.cancel()
            self._reconnect_handle = None
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
        self._fail_pending(None)
