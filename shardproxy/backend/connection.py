"""What every connection to one Redis node shares, shared pipeline or lease alike.

:class:`NodeBase` is a node as its connections see it: where it is, how to connect, what it
counts, and whom to tell of a failure (``backend.node.Node`` completes it with the pipelines
and the lease pool). :class:`Connection` is the common life of one connection: dial (through
``backend.dial``), the handshake, reading replies with one scanner, and failing every pending
request when the connection goes. Subclasses say what a reply means (:meth:`Connection._deliver`)
and what a failure does next (:meth:`Connection._after_failure`).

States::

            start()                   connected + handshake ok
    (new) ──────────▶ CONNECTING ───────────────────────────▶ READY
                          │                                      │
    connect error/timeout │          lost / reply timeout /      │
                          ▼          garbage from the server     │
                         DOWN ◀──────────────────────────────────┘
    any state ── close() ──▶ CLOSED (terminal)

A :class:`Reconnecting` connection (shared pipelines, subscriber and invalidation
connections) leaves DOWN again by reconnecting after a backoff; a lease never does.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

from shardproxy.backend import dial
from shardproxy.backend.slots import PushConsumer, Recipient, ReplySlot
from shardproxy.observe.metrics import Histogram
from shardproxy.protocol import errors, replies
from shardproxy.protocol.fifo import Fifo

CONNECTING: Final = "connecting"
READY: Final = "ready"
DOWN: Final = "down"
CLOSED: Final = "closed"


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Per-node connection settings, from the topology's ``timeouts`` and ``backend`` sections."""

    connect_timeout: float = 1.0
    command_timeout: float = 1.0
    connections: int = 1
    username: str | None = None
    password: str | None = None
    backoff_min: float = 0.05
    backoff_max: float = 0.1  # a node back is served again within ~100 ms (health
    # checking, not connect attempts, decides whether a flapping node gets traffic)
    max_leases: int = 64  # leased connections open at once, per node
    lease_idle: float = 30.0  # an idle leased connection is closed after this many seconds
    tls: ssl.SSLContext | None = None  # backend.tls: every connection to a node over TLS
    tls_server_name: str | None = None
    credentials: dial.Credentials = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "credentials", dial.Credentials(self.username, self.password))


class NodeListener(Protocol):
    """Told when live traffic to a node fails (health monitoring counts it), and when a node
    routing believes is a primary answers -READONLY."""

    def failure(self, node: NodeBase, reason: str) -> None: ...

    def readonly(self, node: NodeBase) -> None: ...


class NodeBase:
    """One Redis server as its connections see it.

    ``usable`` says whether routing may use the node; the health monitor owns it, and
    live-traffic failures reach the monitor through ``listener``. Metrics: ``requests`` and
    ``errors`` are plain counters; ``latency`` (None when command metrics are off) is observed
    at series ``latency_series``. ``pushes`` is who gets unsolicited frames from the shared
    pipelines (None: they are counted in ``pushes_dropped`` and dropped)."""

    __slots__ = (
        "address",
        "endpoint",
        "errors",
        "host",
        "lag_bytes",
        "latency",
        "latency_series",
        "listener",
        "loop",
        "port",
        "pushes",
        "pushes_dropped",
        "requests",
        "role",
        "settings",
        "shard",
        "subscribers",
        "tracking_id",
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
        self.settings = settings
        self.endpoint = dial.Endpoint(host, port, unix, settings.tls, settings.tls_server_name)
        self.address = str(self.endpoint)
        self.listener = listener
        self.usable = True
        self.requests = 0  # requests written to this node (all connections)
        self.errors = {"timeout": 0, "connection": 0, "protocol": 0}  # connection failures
        self.latency: Histogram | None = None
        self.latency_series = 0
        self.lag_bytes: int | None = None  # replicas: bytes behind the primary (health probes)
        self.pushes: PushConsumer | None = None
        self.pushes_dropped = 0
        self.subscribers: list[Connection] = []  # the proxy's pub/sub connections to it
        # the near-cache's invalidation connection's client id (0: reads are not tracked)
        self.tracking_id = 0

    def configure(self, settings: BackendSettings) -> None:
        """A reload's settings (and TLS context: certificates read again) for the next
        connections."""
        self.settings = settings
        self.endpoint = dial.Endpoint(
            self.host, self.port, self.unix, settings.tls, settings.tls_server_name
        )

    def connection_failed(self, reason: str) -> None:
        """A shared connection went DOWN (the node reports it, see ``Node``)."""
        raise NotImplementedError

    def reconnect_now(self) -> None:
        """The node answers again (health checking): reconnect what is DOWN now (``Node``)."""

    def connection_up(self) -> None:
        """A shared connection is READY again."""
        raise NotImplementedError


class Connection:
    """One connection to a node; an asyncio protocol by its methods (a native base class, so
    compiled subclasses call each other directly)."""

    __slots__ = (
        "_connecting",
        "_flush_scheduled",
        "_handshake_left",
        "_scanner",
        "last_error",
        "loop",
        "node",
        "pending",
        "proto",
        "state",
        "transport",
        "wbuf",
    )

    def __init__(self, node: NodeBase, proto: int) -> None:
        self.node = node
        self.proto = proto
        self.loop = node.loop
        self.state = CONNECTING
        self.transport: asyncio.Transport | None = None
        self.pending: Fifo[ReplySlot] = Fifo()  # slots of requests sent or queued, in order
        self.wbuf: list[bytes] = []  # request bytes not yet written
        self._flush_scheduled = False  # a write of wbuf is due this loop tick
        self._connecting: asyncio.Task[None] | None = None  # the connect attempt under way
        self._scanner = replies.ReplyScanner()
        self._handshake_left = 0  # handshake replies still expected before client replies
        self.last_error = ""  # why the connection was last lost or refused ("" if never)

    # -- connecting ------------------------------------------------------------------------

    def start(self) -> None:
        self.state = CONNECTING
        self._connecting = self.loop.create_task(self._connect())

    def _cancel_connect(self) -> None:
        """Forget a connect attempt still under way: a late connect or timeout of an attempt
        this connection gave up on must not touch it (nor leave a socket nobody owns)."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _connect(self) -> None:
        node = self.node
        timeout = node.settings.connect_timeout
        try:
            await dial.open_transport(
                self.loop, node.endpoint, lambda: cast(asyncio.Protocol, self), timeout
            )
        except TimeoutError:
            self._fail(f"connect timed out after {int(timeout * 1000)} ms", kind="timeout")
        except OSError as exc:
            self._fail(exc.strerror or str(exc))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self.state is not CONNECTING:  # closed, or failed while this attempt was late
            transport.close()
            return
        self.transport = transport
        hs = dial.handshake(self.proto, self.node.settings.credentials)
        if hs:
            self._handshake_left = len(hs)
            transport.write(b"".join(hs))
        else:
            self._ready()

    def _ready(self) -> None:
        self.state = READY
        self.last_error = ""
        self._on_ready()

    def _on_ready(self) -> None:
        """READY: write what was queued while connecting (subclasses add their part)."""
        if self.wbuf and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write everything queued since the last write, in one write (once per loop tick)."""
        self._flush_scheduled = False
        if self.state is READY and self.wbuf and self.transport is not None:
            buf = self.wbuf
            self.wbuf = []
            self.node.requests += len(buf)
            self._written(len(buf))
            self.transport.write(b"".join(buf) if len(buf) > 1 else buf[0])

    def _written(self, requests: int) -> None:
        """``requests`` requests are being written now (a shared pipeline times them)."""

    def reconnect_now(self) -> None:
        """The node answers again: a connection waiting out a backoff reconnects now (those
        that reconnect at all: a lease never does)."""

    def pause_writing(self) -> None:
        pass  # the node reads its replies; what it has not read waits in the kernel

    def resume_writing(self) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    # -- receiving -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._scanner.feed(data)
        except replies.ReplyError as exc:
            self._fail(f"protocol error from server: {exc}", kind="protocol")
            return
        if not frames:
            return
        if self._handshake_left:
            while self._handshake_left and frames:
                r = frames.pop(0)
                self._handshake_left -= 1
                if replies.is_error(r):
                    msg = r[1:-2].decode("utf-8", "replace")
                    self._fail("handshake refused: " + msg, kind="protocol")
                    return
            if self._handshake_left:
                return
            self._ready()
            if not frames:
                return
        self._deliver(frames)

    def _deliver(self, frames: list[bytes]) -> None:
        """Complete pending slots with ``frames`` (replies in request order, and pushes)."""
        raise NotImplementedError

    def _push(self, frame: bytes, consumer: PushConsumer | None, touched: list[Recipient]) -> None:
        """Hand an unsolicited frame to ``consumer``, before the oldest unanswered request's
        reply; without a consumer it is counted and dropped."""
        if consumer is None:
            self.node.pushes_dropped += 1
            return
        s = consumer.push(frame, self.pending.head() if self.pending else None)
        if s is not None and not s.dirty:
            s.dirty = True
            touched.append(s)

    # -- failures --------------------------------------------------------------------------

    def _unavailable(self) -> bytes:
        return errors.reply(
            "shard_unavailable",
            shard=self.node.shard,
            node=self.node.address,
            detail=self.last_error or "not connected",
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None and self.state is CONNECTING:
            return  # the loss of a transport already dropped: a new attempt is under way
        self.transport = None
        if self.state is CLOSED:
            self._fail_pending(None)
            return
        if self.state is not DOWN:
            self._fail(str(exc) if exc else "connection closed by server")

    def _fail(self, reason: str, reply: bytes | None = None, kind: str = "connection") -> None:
        """Drop the connection: fail every pending request, go DOWN, then whatever the kind of
        connection does next. ``kind`` is the metrics' error type: timeout, connection or
        protocol."""
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
        self._cancel_connect()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        self._fail_pending(reply)
        if self.state is DOWN:
            self._after_failure(reason)

    def _after_failure(self, reason: str) -> None:
        raise NotImplementedError

    def _fail_pending(self, reply: bytes | None) -> None:
        self._reset_state()
        self.wbuf.clear()
        self._handshake_left = 0
        self._scanner = replies.ReplyScanner()
        pending, self.pending = self.pending, Fifo()
        err = reply or errors.reply(
            "shard_closed", shard=self.node.shard, node=self.node.address, detail="node removed"
        )
        touched: list[Recipient] = []
        for slot in pending:
            s = slot.fail(err)
            if s is not None and not s.dirty:
                s.dirty = True
                touched.append(s)
        for s in touched:
            s.flush()

    def _reset_state(self) -> None:
        """Forget per-request bookkeeping (timers, write batches) before pending is failed."""
        raise NotImplementedError

    def close(self, detail: str = "node removed") -> None:
        """Close for good; pending requests fail with an error saying why (``detail``)."""
        self.state = CLOSED
        self._cancel_connect()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
        self._fail_pending(
            errors.reply(
                "shard_closed", shard=self.node.shard, node=self.node.address, detail=detail
            )
        )


class Reconnecting(Connection):
    """A connection that comes back by itself (a shared pipeline, a subscriber or
    invalidation connection; a lease never does): DOWN, then a new attempt after a backoff
    that starts at ``backoff_min`` and doubles up to ``backoff_max``, or at once when the
    node answers again (:meth:`reconnect_now`)."""

    __slots__ = ("_backoff", "_reconnect_handle")

    def __init__(self, node: NodeBase, proto: int) -> None:
        super().__init__(node, proto)
        self._backoff = node.settings.backoff_min
        self._reconnect_handle: asyncio.TimerHandle | None = None

    def _reset_backoff(self) -> None:
        """Connected: the next failure waits the shortest backoff again."""
        self._backoff = self.node.settings.backoff_min

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

    def _cancel_reconnect(self) -> None:
        if self._reconnect_handle is not None:
            self._reconnect_handle.cancel()
            self._reconnect_handle = None

    def reconnect_now(self) -> None:
        """DOWN and waiting out a backoff: reconnect now, with the backoff reset (the node
        answers again; health checking says so)."""
        if self.state is not DOWN:
            return
        self._cancel_reconnect()
        self._reset_backoff()
        self.start()

    def close(self, detail: str = "node removed") -> None:
        self._cancel_reconnect()
        super().close(detail)
