"""Listeners, signals and the shutdown sequence of one proxy process.

Shutdown is a sequence, never work inside a signal handler (handlers only set an event):

    SIGTERM/SIGINT ─▶ stop accepting ─▶ each client: read nothing more, close once its
    outstanding replies are written ─▶ wait up to shutdown.drain_timeout_ms ─▶ close the
    rest and the backend connections ─▶ exit 0
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from shardproxy.app import security
from shardproxy.app.admin import proxy_routes
from shardproxy.app.http import HttpServer
from shardproxy.app.proxy import Proxy
from shardproxy.app.reload import Reloader
from shardproxy.config import Address, Config
from shardproxy.session.client import ClientSession

log = logging.getLogger("shardproxy.server")

GC_YOUNG = 20_000  # the cyclic GC's first threshold in a serving process (see serve_worker)


async def start_listener(
    ctx: Proxy,
    address: Address,
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    tls: ssl.SSLContext | None = None,
) -> asyncio.AbstractServer:
    """Listen on ``address`` (or on an already bound ``sock`` inherited from a supervisor);
    with ``tls``, clients speak TLS."""

    def factory() -> asyncio.Protocol:
        # a protocol by its methods (its base class is the backends' view of it, see session)
        return cast(asyncio.Protocol, ClientSession(ctx))

    if sock is not None:
        if sock.family == socket.AF_UNIX:
            return await loop.create_unix_server(factory, sock=sock, backlog=1024)
        return await loop.create_server(factory, sock=sock, backlog=1024, ssl=tls)
    if address.unix:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.unix)
        return await loop.create_unix_server(factory, address.unix, backlog=1024)
    return await loop.create_server(
        factory,
        address.host,
        address.port,
        reuse_address=True,
        reuse_port=reuse_port or None,
        backlog=1024,
        ssl=tls,
    )


async def run_proxy(
    config: Config,
    stop: asyncio.Event,
    config_path: str | None = None,
    hup: asyncio.Event | None = None,
    *,
    sockets: dict[str, socket.socket] | None = None,
    reuse_port: bool = False,
    admin_address: Address | bool | None = True,
    worker: int = 0,
) -> int:
    """Serve ``config`` until ``stop`` is set, then drain and close. Returns the exit code.

    With ``config_path``, setting ``hup`` (SIGHUP) or ``POST /reload`` reloads that file.
    A worker under the supervisor gets its listening ``sockets`` (by address, for unix
    listeners) or ``reuse_port``, and a private ``admin_address`` the supervisor asks;
    ``admin_address=True`` means the config's admin listener."""
    loop = asyncio.get_running_loop()
    ctx = Proxy(config, loop, worker=worker)
    reloader = Reloader(ctx, config_path) if config_path else None
    ctx.warm_up()
    ctx.health.start()
    ready = getattr(ctx.health.failover, "ready", None)
    if isinstance(ready, asyncio.Event):
        # Sentinel: learn the current primaries before taking traffic (bounded wait)
        cap = (config.timeouts.connect_ms + config.timeouts.command_ms) / 1000
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), cap)
    servers = []
    try:
        for address in config.listen:
            sock = (sockets or {}).get(str(address))
            servers.append(await start_listener(ctx, address, loop, sock, reuse_port))
            log.info("listening on %s", address)
        for address in config.tls.listen:
            sock = (sockets or {}).get(str(address))
            servers.append(
                await start_listener(ctx, address, loop, sock, reuse_port, ctx.server_tls)
            )
            log.info(
                "listening on %s (TLS, client certificates %s)", address, config.tls.client_certs
            )
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        for srv in servers:
            srv.close()
        await ctx.health.stop()
        ctx.close()
        return 1
    admin = None
    admin_at = config.admin if admin_address is True else admin_address
    if isinstance(admin_at, Address):
        admin = HttpServer(
            proxy_routes(ctx, reloader.reload if reloader is not None else None),
            config.admin_token,
            config.admin_token_everywhere,
        )
        warning = security.admin_warning(config)
        if warning is not None and worker == 0:
            log.warning("%s", warning)
        try:
            await admin.start(admin_at)
            log.info("admin HTTP on %s", admin_at)
        except OSError as exc:
            log.error("cannot listen for admin HTTP on %s: %s", admin_at, exc)
            for srv in servers:
                srv.close()
            await ctx.health.stop()
            ctx.close()
            return 1
    idle_task = loop.create_task(_close_idle(ctx))
    hup_task = None
    if reloader is not None:
        if config.reload.watch:
            reloader.start_watching()
        if hup is not None:
            hup_task = loop.create_task(_reload_on(hup, reloader))
    await stop.wait()
    idle_task.cancel()
    if hup_task is not None:
        hup_task.cancel()
    if reloader is not None:
        reloader.stop()
    await ctx.health.stop()
    if admin is not None:
        admin.close()
    log.info("shutting down: draining %d client connections", len(ctx.clients))
    for srv in servers:
        srv.close()
    ctx.registry.drain()
    deadline = loop.time() + ctx.config.shutdown.drain_timeout_ms / 1000
    while ctx.clients and loop.time() < deadline:
        await asyncio.sleep(0.01)
    ctx.registry.abort_all()
    ctx.close()
    for srv in servers:
        await srv.wait_closed()
    log.info("stopped")
    return 0


async def _close_idle(ctx: Proxy) -> None:
    """limits.client_idle_timeout_s: once a second, close the clients idle for longer."""
    while True:
        await asyncio.sleep(1.0)
        timeout = ctx.config.limits.client_idle_timeout_s
        if timeout:
            ctx.registry.close_idle(time.perf_counter(), timeout)


async def _reload_on(hup: asyncio.Event, reloader: Reloader) -> None:
    while True:
        await hup.wait()
        hup.clear()
        await reloader.reload("SIGHUP")


def _loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable without it
        return asyncio.run


def serve_worker(
    config: Config,
    config_path: str | None,
    *,
    sockets: dict[str, socket.socket] | None = None,
    reuse_port: bool = False,
    admin_address: Address | bool | None = True,
    worker: int = 0,
) -> int:
    """One serving process: its own event loop (uvloop), signal handlers that only set events.

    launch.serve runs it when there is one process; supervisor.py runs it in each worker."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        hup = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        return await run_proxy(
            config,
            stop,
            config_path,
            hup,
            sockets=sockets,
            reuse_port=reuse_port,
            admin_address=admin_address,
            worker=worker,
        )

    # The youngest generation collected every GC_YOUNG allocations instead of Python's 700:
    # requests allocate many short-lived containers, and collecting them 30 times less often
    # saves about 5% of the CPU of a fan-out request (bench/run.py, MGET of 10 keys).
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    return int(_loop_runner()(main()))
