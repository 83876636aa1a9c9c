"""Listeners, signals and the shutdown sequence of one proxy process.

Shutdown is a sequence, never work inside a signal handler (handlers only set an event):

    SIGTERM/SIGINT ─▶ stop accepting ─▶ each client: read nothing more, close once its
    outstanding replies are written ─▶ wait up to shutdown.drain_timeout_ms ─▶ close the
    rest and the backend connections ─▶ exit 0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from shardproxy import log as logsetup
from shardproxy.admin import AdminServer
from shardproxy.config import Address, Config
from shardproxy.reload import Reloader
from shardproxy.runtime import ProxyContext
from shardproxy.session import ClientSession

log = logging.getLogger("shardproxy.server")


async def start_listener(
    ctx: ProxyContext, address: Address, loop: asyncio.AbstractEventLoop
) -> asyncio.AbstractServer:
    def factory() -> ClientSession:
        return ClientSession(ctx)

    if address.unix:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.unix)
        return await loop.create_unix_server(factory, address.unix, backlog=1024)
    return await loop.create_server(
        factory, address.host, address.port, reuse_address=True, backlog=1024
    )


async def run_proxy(
    config: Config,
    stop: asyncio.Event,
    config_path: str | None = None,
    hup: asyncio.Event | None = None,
) -> int:
    """Serve ``config`` until ``stop`` is set, then drain and close. Returns the exit code.

    With ``config_path``, setting ``hup`` (SIGHUP) or ``POST /reload`` reloads that file."""
    loop = asyncio.get_running_loop()
    ctx = ProxyContext(config, loop)
    reloader = Reloader(ctx, config_path) if config_path else None
    servers = []
    try:
        for address in config.listen:
            servers.append(await start_listener(ctx, address, loop))
            log.info("listening on %s", address)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        for srv in servers:
            srv.close()
        ctx.close()
        return 1
    admin = None
    if config.admin is not None:
        admin = AdminServer(ctx, reloader.reload if reloader is not None else None)
        try:
            await admin.start(config.admin)
            log.info("admin HTTP on %s", config.admin)
        except OSError as exc:
            log.error("cannot listen for admin HTTP on %s: %s", config.admin, exc)
            for srv in servers:
                srv.close()
            ctx.close()
            return 1
    ctx.warm_up()
    ctx.health.start()
    hup_task = None
    if reloader is not None:
        if config.reload.watch:
            reloader.start_watching()
        if hup is not None:
            hup_task = loop.create_task(_reload_on(hup, reloader))
    await stop.wait()
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
    ctx.draining = True
    for session in list(ctx.clients):
        session.begin_drain()
    deadline = loop.time() + ctx.config.shutdown.drain_timeout_ms / 1000
    while ctx.clients and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for session in list(ctx.clients):
        if session.transport is not None:
            session.transport.abort()
    ctx.close()
    for srv in servers:
        await srv.wait_closed()
    log.info("stopped")
    return 0


async def _reload_on(hup: asyncio.Event, reloader: Reloader) -> None:
    while True:
        await hup.wait()
        hup.clear()
        await reloader.reload("SIGHUP")


def serve(
    config: Config,
    config_path: str | None = None,
    workers: int | None = None,
    log_level: str = "info",
) -> int:
    """Run the proxy in this process until SIGTERM/SIGINT. Returns the exit code."""
    logsetup.setup(log_level)
    if workers not in (None, 1):
        log.warning("workers=%s requested; this build runs one worker process", workers)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable without it
        run = asyncio.run  # type: ignore[assignment]

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        hup = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        return await run_proxy(config, stop, config_path, hup)

    return int(run(main()))
