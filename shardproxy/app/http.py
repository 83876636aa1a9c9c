"""The admin HTTP listener: a deliberately small HTTP/1.1 server and its route table.

One short request per connection (``Connection: close``). The request line is parsed, a body
announced by ``Content-Length`` is read and ignored, and the route table answers: a mapping
``(method, path) -> async handler`` (the query string is not part of the path). A path the table
does not know is answered 404 with the list of endpoints; a known path asked with another method
405 (``{"error": "use GET"}``); an unreadable request line 400; a handler that raises 500.
Requests are read with a size limit and a timeout, so a slow or stuck scraper holds one idle
connection and nothing else.

The routes are admin.py's (one proxy process) and workers_admin.py's (the supervisor of
``--workers N``); the listener runs on the event loop of the process that serves them.
:func:`unix_request` is the other side, with which the supervisor asks its workers' listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple, Protocol

from shardproxy.config import Address

log = logging.getLogger("shardproxy.admin")

MAX_REQUEST = 16 * 1024  # bytes of request head (and at most this much of a body is read)
READ_TIMEOUT = 10.0  # seconds for the request, and for writing the answer

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            401: "Unauthorized", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip


class Response(NamedTuple):
    """One answer: status code, Content-Type and body."""

    status: int
    content_type: str
    body: bytes


Handler = Callable[[], Awaitable[Response]]
#: (method, path) -> handler; the paths in the order the 404 answer lists them.
Routes = Mapping[tuple[str, str], Handler]


class AdminEndpoints(Protocol):
    """The admin surface (the operator contract): one process's, or the supervisor's."""

    async def metrics(self) -> Response: ...

    async def readyz(self) -> Response: ...

    async def topology(self) -> Response: ...

    async def hotkeys(self) -> Response: ...

    async def reload(self) -> Response: ...


def admin_routes(endpoints: AdminEndpoints) -> Routes:
    """The admin route table over ``endpoints``, in the order a 404 lists the paths."""
    return {
        ("GET", "/metrics"): endpoints.metrics,
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): endpoints.readyz,
        ("GET", "/topology"): endpoints.topology,
        ("GET", "/hotkeys"): endpoints.hotkeys,
        ("POST", "/reload"): endpoints.reload,
    }


async def healthz() -> Response:
    """200 while the process serves."""
    return text_response(200, "ok\n")


def json_response(status: int, body: object) -> Response:
    """A JSON answer (indented, with a final newline)."""
    return Response(status, "application/json", (json.dumps(body, indent=2) + "\n").encode())


def text_response(status: int, text: str) -> Response:
    return Response(status, "text/plain", text.encode())


async def dispatch(routes: Routes, method: str, target: str) -> Response:
    """The answer of ``routes`` to ``method target`` (target: path and optional query)."""
    path = target.split("?", 1)[0]
    handler = routes.get((method, path))
    if handler is not None:
        return await handler()
    allowed = [m for m, p in routes if p == path]
    if allowed:
        return json_response(405, {"error": f"use {' or '.join(allowed)}"})
    endpoints = list(dict.fromkeys(p for _, p in routes))
    return json_response(404, {"error": f"no such endpoint {path}", "endpoints": endpoints})


async def unix_request(
    path: str, method: str, target: str, host: str = "localhost"
) -> tuple[int, bytes]:
    """(status, body) of one request, without a body, to the HTTP server on the unix socket
    ``path``, which closes after one answer (as HttpServer does). Raises OSError, or ValueError
    when the answer is incomplete. No timeout of its own: the caller sets one."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, sep, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("incomplete HTTP answer")
    return int(parts[1]), body


class HttpServer:
    """Answers HTTP requests from a route table, on an address or on an inherited socket."""

    def __init__(self, routes: Routes, token: str | None = None, everywhere: bool = False) -> None:
        self.routes = routes
        self.server: asyncio.AbstractServer | None = None
        # admin_token: POST /reload (and with ``everywhere``, every path) must carry it
        self.expected = f"Bearer {token}".encode() if token else None
        self.everywhere = everywhere

    def authorized(self, method: str, target: str, authorization: str) -> bool:
        """Whether a request may go on (admin_token, compared in constant time)."""
        if self.expected is None:
            return True
        path = target.split("?", 1)[0]
        if not self.everywhere and (method, path) != ("POST", "/reload"):
            return True
        return hmac.compare_digest(authorization.strip().encode("latin-1"), self.expected)

    async def start(self, address: Address) -> None:
        """Listen on ``address`` (TCP, or a unix socket path). Raises OSError."""
        if address.unix:
            self.server = await asyncio.start_unix_server(self._handle, address.unix)
        else:
            self.server = await asyncio.start_server(
                self._handle, address.host, address.port, reuse_address=True
            )

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening socket (bound before forking, say)."""
        if sock.family == socket.AF_UNIX:
            self.server = await asyncio.start_unix_server(self._handle, sock=sock)
        else:
            self.server = await asyncio.start_server(self._handle, sock=sock)

    def close(self) -> None:
        """Stop accepting connections (again: nothing). A request being answered completes; each
        is bounded by READ_TIMEOUT."""
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > MAX_REQUEST:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            if len(parts) != 3:
                response = json_response(400, {"error": "bad request line"})
            else:
                method, target = parts[0].upper(), parts[1]
                length = 0
                authorization = ""
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    key = name.strip().lower()
                    if key == "content-length" and value.strip().isdigit():
                        length = min(int(value.strip()), MAX_REQUEST)
                    elif key == "authorization":
                        authorization = value
                if length:
                    await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
                if not self.authorized(method, target, authorization):
                    log.warning("admin %s %s refused: no valid admin_token", method, target)
                    response = json_response(
                        401, {"error": "Authorization: Bearer <admin_token> required"}
                    )
                else:
                    try:
                        response = await dispatch(self.routes, method, target)
                    except Exception as exc:  # an endpoint bug must not kill the listener
                        log.exception("admin endpoint %s failed", target)
                        response = json_response(500, {"error": str(exc)})
            status, ctype, body = response
            reason = _REASONS.get(status, "OK")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
