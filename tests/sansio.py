"""A sans-IO harness: the proxy's real sessions, nodes, pipelines and leases, with no sockets.

A real asyncio loop runs everything (timers, ``call_soon`` write batching, connect tasks), but
the loop's ``create_connection`` / ``create_unix_connection`` are replaced, on that loop
instance only, by :class:`FakeNetwork`: a connect builds a :class:`FakeTransport`, calls the
protocol's ``connection_made`` and returns. Each node address has a :class:`FakeServer`; every
connection made to it is a :class:`ServerConn` that records what the proxy wrote and lets a
test answer on demand (``conn.answer(b"+OK\\r\\n")`` is the node's bytes arriving).

:class:`FakeHost` is a :class:`shardproxy.session.host.SessionHost` built from the real parts
(command table, router over real ``Node`` objects, counters, fan-out, built-ins, registry);
:class:`FakeClient` is a real ``ClientSession`` on a fake transport.

Nothing here subclasses a class of the compiled sub-packages (compiled classes cannot be
subclassed by interpreted code); only the transports are fakes. ``PushConsumer`` is the one
class built to allow it (:class:`RecordingPushes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shardproxy.backend import dial
from shardproxy.backend.connection import BackendSettings
from shardproxy.backend.lease import Lease
from shardproxy.backend.node import Node
from shardproxy.backend.slots import PushConsumer, Recipient, ReplySlot
from shardproxy.commands.acl import compile_users
from shardproxy.commands.table import SPEC_COUNT, CommandSpec, denied_sub, lookup_table
from shardproxy.observe.hotkeys import HotKeys
from shardproxy.observe.metrics import CommandCounters, Stats
from shardproxy.protocol import encode
from shardproxy.protocol.requests import RequestParser
from shardproxy.routing.ring import Ring
from shardproxy.routing.router import Router, ShardNodes
from shardproxy.session.builtin import Builtin
from shardproxy.session.cache import NearCache
from shardproxy.session.client import ClientSession
from shardproxy.session.fanout import Fanout
from shardproxy.session.host import Live
from shardproxy.session.pubsub import PubSub
from shardproxy.session.registry import ClientRegistry
from shardproxy.session.scripts import Scripts
from shardproxy.session.subscribed import PubSubCommands

Arg = bytes | str | int


def _b(a: Arg) -> bytes:
    return a if isinstance(a, bytes) else str(a).encode()


def cmd(*argv: Arg) -> bytes:
    """The RESP frame of one request."""
    return encode.encode_command([_b(a) for a in argv])


def bulk(value: Arg | None) -> bytes:
    return encode.bulk(None if value is None else _b(value))


def parse_requests(data: bytes) -> list[list[bytes]]:
    """Every request in ``data`` (what the proxy wrote to a node), as argv lists. Fails the
    test on a partial trailing request or bytes that are not RESP requests."""
    parser = RequestParser()
    out = [argv for argv, _ in parser.feed(data)]
    assert parser.error is None, parser.error
    assert parser.buffered == 0, f"a partial request at the end of {data!r}"
    return out


# -- ticks ---------------------------------------------------------------------------------


async def settle(ticks: int = 20) -> None:
    """Let the loop run ``ticks`` iterations: connect tasks, handshakes and the batched
    (``call_soon``) writes all complete within a handful."""
    for _ in range(ticks):
        await asyncio.sleep(0)


async def wait_until(pred: Callable[[], bool], timeout: float = 2.0, step: float = 0.002) -> None:
    """Poll ``pred`` until it holds (timers: command timeouts, backoff, idle sweeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)


# -- transports ----------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Records every write; reading can be paused; close / abort report ``connection_lost``
    to the protocol on the next loop tick, once, as asyncio's transports do."""

    def __init__(
        self,
        protocol: Any,
        loop: asyncio.AbstractEventLoop,
        peername: object = ("127.0.0.1", 50000),
    ) -> None:
        super().__init__({"peername": peername, "socket": None, "sockname": None})
        self.protocol = protocol
        self.loop = loop
        self.writes: list[bytes] = []
        self.writes_after_close: list[bytes] = []
        self.reading = True
        self.pauses = 0  # pause_reading() calls that paused
        self.resumes = 0  # resume_reading() calls that resumed
        self.closed = False  # close() or abort() called (or the peer hung up)
        self.aborted = False
        self.lost = False  # connection_lost has been called

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if not data:
            return
        (self.writes_after_close if self.closed else self.writes).append(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for d in list_of_data:
            self.write(d)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.pauses += 1

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.resumes += 1

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self.aborted = True
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._lose, None)

    def hang_up(self, exc: Exception | None = None) -> None:
        """The peer closed the connection: ``connection_lost`` now."""
        self.closed = True
        self._lose(exc)

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)


class ServerConn:
    """One connection the proxy opened to a fake node."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.protocol: Any = transport.protocol
        self._taken = 0

    @property
    def writes(self) -> list[bytes]:
        return self.transport.writes

    @property
    def received(self) -> bytes:
        """Everything the proxy wrote on this connection."""
        return self.transport.written

    def requests(self) -> list[list[bytes]]:
        return parse_requests(self.received)

    def take(self) -> bytes:
        """What the proxy wrote since the last take()."""
        data = self.received
        new, self._taken = data[self._taken :], len(data)
        return new

    def answer(self, data: bytes) -> None:
        """The node's bytes arrive (``data_received``), at once."""
        assert not self.transport.closed, "answering on a closed connection"
        self.protocol.data_received(data)

    def hang_up(self) -> None:
        self.transport.hang_up()


class FakeServer:
    """A node address: the connections made to it. ``refuse``: connects fail with
    ECONNREFUSED; ``hang``: connects never complete (the connect timeout fires); ``delay``:
    connects complete after that many seconds (each as it was when the connect began)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.conns: list[ServerConn] = []
        self.refuse = False
        self.hang = False
        self.delay = 0.0
        self.attempts = 0

    @property
    def conn(self) -> ServerConn:
        """The only connection (fails the test if there is not exactly one)."""
        assert len(self.conns) == 1, f"{self.address}: {len(self.conns)} connections"
        return self.conns[0]

    @property
    def received(self) -> bytes:
        return b"".join(c.received for c in self.conns)

    def open_conns(self) -> list[ServerConn]:
        return [c for c in self.conns if not c.transport.closed]


class FakeNetwork:
    """Replaces the loop's connect methods (on this loop instance) with fake servers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.servers: dict[str, FakeServer] = {}
        self._ports = itertools.count(40000)
        self._connects: set[asyncio.Task[Any]] = set()  # connects still in progress

    def server(self, address: str) -> FakeServer:
        """The server at ``address`` (``host:port`` or ``unix:/path``, as ``Node.address``)."""
        srv = self.servers.get(address)
        if srv is None:
            srv = self.servers[address] = FakeServer(address)
        return srv

    def server_of(self, node: Node) -> FakeServer:
        return self.server(node.address)

    def total_received(self) -> bytes:
        """Everything written to every server."""
        return b"".join(s.received for s in self.servers.values())

    async def _open(self, address: str, factory: Callable[[], asyncio.BaseProtocol]) -> Any:
        srv = self.server(address)
        srv.attempts += 1
        task = asyncio.current_task()
        if task is not None:
            self._connects.add(task)
            task.add_done_callback(self._connects.discard)
        if srv.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        if srv.hang:
            await self.loop.create_future()  # cancelled by the caller's connect timeout
        if srv.delay:
            await asyncio.sleep(srv.delay)
        protocol = factory()
        transport = FakeTransport(protocol, self.loop, ("10.255.0.1", next(self._ports)))
        srv.conns.append(ServerConn(transport))
        protocol.connection_made(transport)
        return transport, protocol

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        **kw: object,
    ) -> Any:
        return await self._open(str(dial.Endpoint(host or "", port or 0)), protocol_factory)

    async def create_unix_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | None = None,
        **kw: object,
    ) -> Any:
        return await self._open(str(dial.Endpoint(unix=path)), protocol_factory)

    def install(self) -> None:
        self.loop.create_connection = self.create_connection  # type: ignore[method-assign]
        self.loop.create_unix_connection = self.create_unix_connection  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for task in list(self._connects):
            task.cancel()  # hanging or delayed connects end with the test
        for name in ("create_connection", "create_unix_connection"):
            with contextlib.suppress(AttributeError):
                delattr(self.loop, name)

    @classmethod
    @contextlib.contextmanager
    def installed(cls, loop: asyncio.AbstractEventLoop) -> Iterator[FakeNetwork]:
        net = cls(loop)
        net.install()
        try:
            yield net
        finally:
            net.uninstall()


# -- slots and push consumers (the real classes, observed) -----------------------------------


def reply_of(slot: ReplySlot) -> bytes | None:
    """The reply a QueuedReply / Gather got (None while unanswered)."""
    return slot.reply  # type: ignore[attr-defined]


class RecordingPushes(PushConsumer):
    """A push consumer that records each frame and the slot it came before."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, ReplySlot | None]] = []

    def push(self, frame: bytes, before: ReplySlot | None) -> Recipient | None:
        self.frames.append((frame, before))
        return None


# -- the session host ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_pending_per_client: int = 1024
    max_request_bytes: int = 512 * 1024 * 1024
    max_inline_bytes: int = 64 * 1024
    max_clients: int = 100
    max_unread_bytes: int = 256 * 1024 * 1024


class TelemetryStub:
    """INFO's sections: a fixed Server section and the merged keyspace."""

    def __init__(self) -> None:
        self.keyspaces: list[dict[str, dict[str, int]]] = []

    def info_sections(
        self, keyspace: dict[str, dict[str, int]]
    ) -> list[tuple[str, list[tuple[str, object]]]]:
        self.keyspaces.append(keyspace)
        lines: list[tuple[str, object]] = [
            (db, ",".join(f"{k}={v}" for k, v in fields.items()))
            for db, fields in sorted(keyspace.items())
        ]
        return [("Server", [("redis_version", "7.0.0")]), ("Keyspace", lines)]


class FakeHost:
    """A SessionHost from the real parts, over nodes whose sockets are fake servers.

    Shards ``names`` get primaries at 10.0.<i>.1:6379 (and ``replicas`` replicas each at
    10.0.<i>.<2+r>:6379)."""

    def __init__(
        self,
        net: FakeNetwork,
        names: Sequence[str] = ("a", "b"),
        *,
        limits: Limits | None = None,
        settings: BackendSettings | None = None,
        replicas: int = 0,
        read_policy: str = "primary",
        read_your_writes: float = 0.0,
        per_shard_transactions: bool = False,
        pubsub_connections: int = 1,
        auth_password: str | None = None,
        users: Sequence[tuple[str, Sequence[str], str]] = (),
        pubsub_hard_limit: int = 32 * 1024**2,
    ) -> None:
        self.net = net
        self.loop = net.loop
        self.limits = limits or Limits()
        self.settings = settings or BackendSettings()
        self.table: dict[bytes, CommandSpec] = lookup_table()
        self.users = compile_users(auth_password, users, self.table)
        self.hotkeys = HotKeys()
        self.live = Live(self.hotkeys)
        self.live.max_pending = self.limits.max_pending_per_client
        self.stats = Stats()
        self.command_counters: CommandCounters | None = CommandCounters(SPEC_COUNT + 1)
        self.live.read_your_writes = float(read_your_writes)
        self.fanout = Fanout()
        self.telemetry = TelemetryStub()
        self.builtin = Builtin(self.fanout, self.telemetry)
        self.scripts = Scripts(self.fanout, 1024 * 1024)
        self.hub = PubSub(self.loop, self.stats, pubsub_connections, hard_limit=pubsub_hard_limit)
        self.pubsub = PubSubCommands(self.hub)
        self.per_shard_transactions = per_shard_transactions
        self.registry = ClientRegistry(self.stats, self.limits.max_clients)
        ring = Ring.build([(n, 1) for n in names])
        self.nodes: list[Node] = []
        shards: list[ShardNodes[Node]] = []
        for i, name in enumerate(ring.names):
            primary = self._node(name, "primary", f"10.0.{i}.1")
            reps = [self._node(name, "replica", f"10.0.{i}.{2 + r}") for r in range(replicas)]
            shards.append(ShardNodes(name, primary, reps))
        self.router = Router(ring, shards, read_policy)
        self.hub.router_changed(self.router)
        self.clients: list[FakeClient] = []

    def _node(self, shard: str, role: str, ip: str) -> Node:
        node = Node(self.loop, shard, role, ip, 6379, self.settings)
        self.nodes.append(node)
        return node

    # -- SessionHost ---------------------------------------------------------------------

    @property
    def router(self) -> Router[Node]:
        return self.live.router

    @router.setter
    def router(self, router: Router[Node]) -> None:
        self.live.router = router

    @property
    def cache(self) -> NearCache | None:
        return self.live.cache

    @cache.setter
    def cache(self, cache: NearCache | None) -> None:
        self.live.cache = cache

    @property
    def read_your_writes(self) -> float:
        return self.live.read_your_writes

    def next_client_id(self) -> int:
        return self.registry.next_client_id()

    def client_connected(self, session: Any) -> bool:
        return self.registry.client_connected(session)

    def client_disconnected(self, session: Any) -> None:
        self.registry.client_disconnected(session)

    def resolve_sub(self, spec: CommandSpec) -> CommandSpec:
        return denied_sub(spec, frozenset())

    # -- test helpers --------------------------------------------------------------------

    def shard(self, name: str) -> ShardNodes[Node]:
        return self.router.shards[self.router.ring.names.index(name)]

    def primary(self, name: str) -> Node:
        return self.shard(name).primary

    def server(self, shard: str, replica: int = -1) -> FakeServer:
        """The fake server of a shard's primary (or of its replica number ``replica``)."""
        s = self.shard(shard)
        return self.net.server_of(s.primary if replica < 0 else s.replicas[replica])

    def keys_on(self, shard: str, n: int = 1, prefix: str = "k") -> list[bytes]:
        """``n`` keys the ring puts on ``shard``."""
        out: list[bytes] = []
        for i in itertools.count():
            key = f"{prefix}{i}".encode()
            if self.router.ring.shard_name(key) == shard:
                out.append(key)
                if len(out) == n:
                    return out
        raise AssertionError("unreachable")

    def key_on(self, shard: str, prefix: str = "k") -> bytes:
        return self.keys_on(shard, 1, prefix)[0]

    def client(self) -> FakeClient:
        c = FakeClient(self)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class FakeClient:
    """A real ClientSession on a fake transport."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.session = ClientSession(host)
        self.transport = FakeTransport(
            self.session, host.loop, ("127.0.0.1", 50000 + self.session.id)
        )
        self.session.connection_made(self.transport)
        self._taken = 0

    @property
    def writes(self) -> list[bytes]:
        return self.transport.writes

    @property
    def received(self) -> bytes:
        return self.transport.written

    def take(self) -> bytes:
        """What the client received since the last take()."""
        data = self.received
        new, self._taken = data[self._taken :], len(data)
        return new

    def send_raw(self, data: bytes) -> None:
        """Bytes from the client, in one read."""
        self.session.data_received(data)

    def send(self, *requests: Sequence[Arg]) -> None:
        """Requests (argv lists), all in one read."""
        self.send_raw(b"".join(cmd(*argv) for argv in requests))

    def hang_up(self) -> None:
        self.transport.hang_up()


# -- what the mode suites share --------------------------------------------------------------

MakeHost = Callable[..., FakeHost]

OK = b"+OK\r\n"
QUEUED = b"+QUEUED\r\n"
CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same shard\r\n"
HELLO3_REPLY = b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
A_PRIMARY = "10.0.0.1:6379"  # the primaries of FakeHost's shards "a" and "b"
B_PRIMARY = "10.0.1.1:6379"


def the_lease(host: FakeHost, shard: str) -> Lease:
    """The one leased connection open to ``shard``'s primary (lent out or idle)."""
    pool = host.primary(shard).leases
    leases = [*pool.leased, *pool.idle]
    assert len(leases) == 1, f"shard {shard}: {len(leases)} leases"
    return leases[0]


def conn_of(host: FakeHost, node: Node, transport: object) -> ServerConn:
    """The server side of the connection ``transport`` to ``node``."""
    (conn,) = [c for c in host.net.server_of(node).conns if c.transport is transport]
    return conn


def lease_conn(host: FakeHost, shard: str) -> ServerConn:
    """The server side of the one lease open to ``shard``'s primary."""
    return conn_of(host, host.primary(shard), the_lease(host, shard).transport)


def nothing_sent(host: FakeHost) -> bool:
    """No connection was opened to any node, so nothing reached one."""
    return host.net.total_received() == b"" and all(
        s.conns == [] for s in host.net.servers.values()
    )
