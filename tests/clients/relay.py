"""A recording TCP relay between a client under test and the proxy.

Every byte goes through unchanged. On the way to the proxy the relay decodes the client's
commands (RESP arrays, with hiredis), so a test can say exactly what a client library sends
when it connects, and it notes which side closed each connection first: a proxy that closed
a client's connection after a refused command would show up as ``closed_by == "proxy"``.

Threads, not asyncio: the clients under test may run their own event loops in this process,
and a relay thread per direction keeps the two streams independent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import hiredis


@dataclass
class Connection:
    """One client connection through the relay."""

    number: int
    commands: list[list[bytes]] = field(default_factory=list)
    closed_by: str | None = None  # "client" or "proxy": whichever side hung up first
    unparsed: bytes = b""  # set if the client sent something that is not RESP

    def names(self) -> list[str]:
        return [c[0].decode(errors="replace").upper() for c in self.commands if c]


class Relay:
    """Listens on a free loopback port and relays every connection to ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name="relay-accept", daemon=True)

    def __enter__(self) -> Relay:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(5)
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        for s in sockets:
            s.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                conn = Connection(len(self.connections) + 1)
                self.connections.append(conn)
                self._sockets += [client, upstream]
                pumps = [
                    threading.Thread(
                        target=self._pump, args=(client, upstream, conn, True), daemon=True
                    ),
                    threading.Thread(
                        target=self._pump, args=(upstream, client, conn, False), daemon=True
                    ),
                ]
                self._threads += pumps
            for t in pumps:
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: Connection, up: bool) -> None:
        reader = hiredis.Reader() if up else None
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    if conn.closed_by is None and not self._stopping:
                        conn.closed_by = "client" if up else "proxy"
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if reader is not None and not conn.unparsed:
                reader.feed(data)
                try:
                    while (command := reader.gets()) is not False:
                        with self._lock:
                            conn.commands.append(list(command))
                except hiredis.ProtocolError:
                    conn.unparsed = data
            try:
                dst.sendall(data)
            except OSError:
                return

    def first_connection(self) -> Connection:
        with self._lock:
            assert self.connections, "the client never connected"
            return self.connections[0]

    def all(self) -> Iterator[Connection]:
        with self._lock:
            yield from list(self.connections)
