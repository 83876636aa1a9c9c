"""One proxy process's admin endpoints: /metrics, /healthz, /readyz, /topology, POST /reload.

:class:`ProxyAdmin` answers them from the process's Proxy; :func:`proxy_routes` is its
route table, which http.HttpServer serves on the process's own event loop (server.py starts it
on the ``admin:`` address, or on a worker's private socket under the supervisor).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from shardproxy.app.http import Response, Routes, admin_routes, json_response
from shardproxy.backend.node import Node
from shardproxy.observe.metrics import Collector, Source
from shardproxy.routing.router import Router

ReloadHook = Callable[[], Awaitable[dict[str, Any]]]


class Proxy(Source, Protocol):
    """What the admin endpoints read of the proxy (app.proxy.Proxy)."""

    @property
    def router(self) -> Router[Node]: ...

    @property
    def draining(self) -> bool: ...

    def topology_json(self) -> dict[str, object]: ...

    def hotkeys_json(self) -> dict[str, object]: ...


class ProxyAdmin:
    """The admin endpoints of one proxy process; ``reload`` reloads its topology file (None:
    the process has no file to reload)."""

    def __init__(self, ctx: Proxy, reload: ReloadHook | None = None) -> None:
        self.ctx = ctx
        self.reload_hook = reload
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(ctx))

    def routes(self) -> Routes:
        return admin_routes(self)

    async def metrics(self) -> Response:
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))

    async def readyz(self) -> Response:
        missing = [s.name for s in self.ctx.router.shards if not s.primary.usable]
        if missing:
            return json_response(503, {"ready": False, "reason": "shards without a reachable primary",
                                       "shards": missing})  # fmt: skip
        if self.ctx.draining:
            return json_response(503, {"ready": False, "reason": "draining"})
        return json_response(200, {"ready": True})

    async def topology(self) -> Response:
        return json_response(200, self.ctx.topology_json())

    async def hotkeys(self) -> Response:
        return json_response(200, self.ctx.hotkeys_json())

    async def reload(self) -> Response:
        if self.reload_hook is None:
            return json_response(500, {"result": "failure", "errors": ["reload is not available"]})
        result = await self.reload_hook()
        return json_response(200 if result.get("result") == "success" else 400, result)


def proxy_routes(ctx: Proxy, reload: ReloadHook | None = None) -> Routes:
    """The route table of one proxy process's admin HTTP."""
    return ProxyAdmin(ctx, reload).routes()
