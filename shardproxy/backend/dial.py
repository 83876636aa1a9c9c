"""The one way to open a connection to a Redis server (or a Sentinel).

Every connection the proxy makes — shared data pipelines, leased connections, health probes,
Sentinel queries and subscriptions, key migration, the command-table generator — opens here:
TCP (with ``TCP_NODELAY``) or a unix socket, within a connect timeout, then the handshake
(``AUTH``, ``HELLO 3``). TLS is a field of :class:`Endpoint` (``backend.tls``): every kind
of connection gets it the same way.

Two shapes:

* :func:`open_transport` for the data path: an asyncio protocol of the caller's (a pipeline or
  a lease) gets the transport and sends :func:`handshake`'s frames itself, so that its own
  reply scanner reads their answers in order with everything else.
* :class:`ControlConnection` for the control plane: ``await conn.call(b"INFO", b"replication")``
  returns the raw reply, ``call_many`` pipelines several, ``value`` decodes. One small
  synchronous-style helper instead of a hand-written client per caller.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mypy_extensions import mypyc_attr

from shardproxy.protocol import encode, replies

P = TypeVar("P", bound=asyncio.BaseProtocol)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens: ``host:port``, or a unix socket path; ``tls`` to speak TLS to
    it (verified against ``server_name``, or the host)."""

    host: str = ""
    port: int = 0
    unix: str | None = None
    tls: ssl.SSLContext | None = None
    server_name: str | None = None

    def server_hostname(self) -> str | None:
        """The name the server's certificate is checked against (None without TLS)."""
        return None if self.tls is None else (self.server_name or self.host)

    def __str__(self) -> str:
        if self.unix:
            return f"unix:{self.unix}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who the proxy is to a server (``backend.username`` / ``backend.password``)."""

    username: str | None = None
    password: str | None = None


NO_CREDENTIALS = Credentials()


@mypyc_attr(native_class=False)  # compiled classes cannot derive from OSError's family
class HandshakeError(ConnectionError):
    """The server refused AUTH or HELLO; the message is the server's."""


def handshake(proto: int, creds: Credentials) -> list[bytes]:
    """The frames that open a connection speaking RESP ``proto`` as ``creds``, each answered
    by one reply: ``HELLO 3 [AUTH user pass]`` for RESP3, ``AUTH [user] pass`` for RESP2 with a
    password, nothing for RESP2 without one."""
    if proto == 3:
        argv = [b"HELLO", b"3"]
        if creds.password is not None:
            argv += [b"AUTH", (creds.username or "default").encode(), creds.password.encode()]
        return [encode.encode_command(argv)]
    if creds.password is not None:
        user = [creds.username.encode()] if creds.username else []
        return [encode.encode_command([b"AUTH", *user, creds.password.encode()])]
    return []


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_transport(
    loop: asyncio.AbstractEventLoop,
    endpoint: Endpoint,
    factory: Callable[[], P],
    timeout: float,
) -> tuple[asyncio.BaseTransport, P]:
    """Connect ``factory()``'s protocol to ``endpoint`` within ``timeout`` seconds. Raises
    TimeoutError or OSError; the caller's protocol sends the handshake."""
    if endpoint.unix:
        coro = loop.create_unix_connection(factory, endpoint.unix)
    else:
        coro = loop.create_connection(
            factory,
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.server_hostname(),
        )
    transport, protocol = await asyncio.wait_for(coro, timeout)
    _nodelay(transport)
    return transport, protocol


class ControlConnection:
    """A connection for the proxy's own commands, one caller at a time.

    Open it with :meth:`open` (connect and handshake within ``timeout``); every call has the
    same timeout. Any failure (timeout, connection lost, bytes that are not RESP) closes the
    connection and raises; the caller opens a new one when it wants to try again. The one
    exception: :meth:`read` running out of time raises TimeoutError and keeps the connection
    (a subscriber waiting for messages is idle, not failed: it may PING and read on).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._reader = reader
        self._writer = writer
        self._scanner = replies.ReplyScanner()
        self._ready: list[bytes] = []  # replies read but not yet returned

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        creds: Credentials = NO_CREDENTIALS,
        *,
        proto: int = 2,
        timeout: float = 1.0,
    ) -> ControlConnection:
        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            if endpoint.unix:
                return await asyncio.open_unix_connection(endpoint.unix)
            return await asyncio.open_connection(
                endpoint.host,
                endpoint.port,
                ssl=endpoint.tls,
                server_hostname=endpoint.server_hostname(),
            )

        reader, writer = await asyncio.wait_for(connect(), timeout)
        _nodelay(writer.transport)
        conn = cls(endpoint, reader, writer, timeout)
        frames = handshake(proto, creds)
        if frames:
            try:
                answers = await conn._exchange(b"".join(frames), len(frames))
            except BaseException:
                conn.close()
                raise
            for answer in answers:
                if replies.is_error(answer):
                    conn.close()
                    raise HandshakeError(replies.error_text(answer))
        return conn

    @property
    def closed(self) -> bool:
        """Closed by us, or by the server (its end reached, nothing left to read)."""
        return self._writer.is_closing() or self._reader.at_eof()

    async def call(self, *argv: bytes | str | int) -> bytes:
        """One command; its raw reply (an error reply is returned, not raised)."""
        return (await self._exchange(encode.encode_command(_args(argv)), 1))[0]

    async def call_many(self, commands: Sequence[Sequence[bytes | str | int]]) -> list[bytes]:
        """Several commands sent in one write; their raw replies, in order."""
        frame = b"".join(encode.encode_command(_args(c)) for c in commands)
        return await self._exchange(frame, len(commands))

    async def value(self, *argv: bytes | str | int) -> replies.RespValue:
        """One command; its reply decoded (raises RedisReplyError for an error reply)."""
        return replies.value(await self.call(*argv))

    def send(self, *argv: bytes | str | int) -> None:
        """Write a command whose replies are read with :meth:`read` (SUBSCRIBE, say)."""
        self._writer.write(encode.encode_command(_args(argv)))

    async def read(self, timeout: float | None = None) -> bytes:
        """The next reply or pushed frame; ``timeout`` defaults to the connection's. When it
        expires, TimeoutError is raised and the connection stays open (nothing read is lost:
        bytes of a partial frame stay in the scanner); any other failure closes it."""
        try:
            frames = await asyncio.wait_for(
                self._collect(1), self.timeout if timeout is None else timeout
            )
        except TimeoutError:
            raise
        except BaseException:
            self.close()
            raise
        return frames[0]

    async def _exchange(self, frame: bytes, n: int) -> list[bytes]:
        self._writer.write(frame)
        return await self._read(n, self.timeout)

    async def _read(self, n: int, timeout: float) -> list[bytes]:
        try:
            return await asyncio.wait_for(self._collect(n), timeout)
        except BaseException:
            self.close()
            raise

    async def _collect(self, n: int) -> list[bytes]:
        while len(self._ready) < n:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError(f"connection to {self.endpoint} closed")
            self._ready += self._scanner.feed(data)
        out, self._ready = self._ready[:n], self._ready[n:]
        return out

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()


def _args(argv: Sequence[bytes | str | int]) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in argv]
