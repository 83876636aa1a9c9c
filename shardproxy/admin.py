"""The HTTP admin listener: /metrics, /healthz, /readyz, /topology, POST /reload.

A deliberately small HTTP/1.1 server on the proxy's own event loop (one short request per
connection, ``Connection: close``). Requests are read with a size limit and a timeout, so a slow
or stuck scraper holds one idle connection and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from shardproxy.config import Address
from shardproxy.metrics import Collector

if TYPE_CHECKING:
    from shardproxy.runtime import ProxyContext

log = logging.getLogger("shardproxy.admin")

MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 10.0

Response = tuple[int, str, bytes]
ReloadHook = Callable[[], Awaitable[dict[str, Any]]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def json_response(status: int, body: object) -> Response:
    """A JSON answer (also used by the supervisor's admin)."""
    return status, "application/json", (json.dumps(body, indent=2) + "\n").encode()


class AdminServer:
    """Serves the admin endpoints for one proxy process."""

    def __init__(self, ctx: ProxyContext, reload: ReloadHook | None = None) -> None:
        self.ctx = ctx
        self.reload = reload
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(ctx))
        self.server: asyncio.AbstractServer | None = None

    async def start(self, address: Address) -> None:
        if address.unix:
            self.server = await asyncio.start_unix_server(self._handle, address.unix)
        else:
            self.server = await asyncio.start_server(
                self._handle, address.host, address.port, reuse_address=True
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    # -- endpoints -----------------------------------------------------------------------------

    async def route(self, method: str, path: str) -> Response:
        path = path.split("?", 1)[0]
        if path == "/metrics" and method == "GET":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz" and method == "GET":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz" and method == "GET":
            missing = [s.name for s in self.ctx.router.shards if not s.primary.usable]
            if missing:
                return json_response(503, {"ready": False, "reason": "shards without a reachable primary",
                                   "shards": missing})  # fmt: skip
            if self.ctx.draining:
                return json_response(503, {"ready": False, "reason": "draining"})
            return json_response(200, {"ready": True})
        if path == "/topology" and method == "GET":
            return json_response(200, self.ctx.topology_json())
        if path == "/reload":
            if method != "POST":
                return json_response(405, {"error": "use POST"})
            if self.reload is None:
                return json_response(
                    500, {"result": "failure", "errors": ["reload is not available"]}
                )
            result = await self.reload()
            return json_response(200 if result.get("result") == "success" else 400, result)
        if path in ("/metrics", "/healthz", "/readyz", "/topology"):
            return json_response(405, {"error": "use GET"})
        return json_response(404, {"error": f"no such endpoint {path}",
                           "endpoints": ["/metrics", "/healthz", "/readyz", "/topology", "/reload"]})  # fmt: skip

    # -- HTTP ----------------------------------------------------------------------------------

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
                status, ctype, body = json_response(400, {"error": "bad request line"})
            else:
                method, path = parts[0].upper(), parts[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length" and value.strip().isdigit():
                        length = min(int(value.strip()), MAX_REQUEST)
                if length:
                    await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
                try:
                    status, ctype, body = await self.route(method, path)
                except Exception as exc:  # an endpoint bug must not kill the listener
                    log.exception("admin endpoint %s failed", path)
                    status, ctype, body = json_response(500, {"error": str(exc)})
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
