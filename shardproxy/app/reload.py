"""Live reload: SIGHUP, ``POST /reload`` and (optionally) a watched file, through one path.

::

    trigger ─▶ load + validate the whole file ──invalid──▶ nothing changes; failure counted,
                        │                                  problems logged with key paths
                        valid
                        ▼
               copy_libraries   function libraries onto the shards it adds (libraries.py)
                        │
                        ▼
               Proxy.apply(new)   one swap: ring, routing, nodes; kept nodes keep their
                        │                connections; removed nodes close once drained
                        ▼
               keys that changed shard ─▶ Migration (migration.py) for migration.window_s

Reloads never overlap: a trigger that arrives during a reload waits for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Protocol

from shardproxy.app import security
from shardproxy.config import Config, ConfigError, load
from shardproxy.control.libraries import copy_libraries
from shardproxy.observe.metrics import Stats

log = logging.getLogger("shardproxy.reload")


class Proxy(Protocol):
    """What a reload needs of the proxy (app.proxy.Proxy)."""

    @property
    def stats(self) -> Stats: ...

    @property
    def config(self) -> Config:
        """The topology running now."""
        ...

    def apply(self, new: Config) -> dict[str, Any]: ...


class Reloader:
    """Applies the topology file at ``path`` to ``ctx`` on demand."""

    def __init__(self, ctx: Proxy, path: str) -> None:
        self.ctx = ctx
        self.path = path
        self._lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._digest = self._file_digest()

    def _file_digest(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        except OSError:
            return None

    async def reload(self, trigger: str = "request") -> dict[str, Any]:
        """Validate and apply the file; the JSON-able result says what happened."""
        async with self._lock:
            stats = self.ctx.stats
            self._digest = self._file_digest()
            try:
                new = load(self.path)
                found = security.problems(new)
                if found:
                    raise ConfigError(found, self.path)
            except ConfigError as exc:
                stats.reloads["failure"] += 1
                log.error(
                    "reload (%s) refused, the running topology is unchanged:\n  %s",
                    trigger,
                    "\n  ".join(exc.problems),
                )
                return {"result": "failure", "errors": exc.problems}
            libraries = await copy_libraries(self.ctx.config, new)
            try:
                changes = self.ctx.apply(new)
            except Exception as exc:  # a bug: refuse rather than half-apply
                stats.reloads["failure"] += 1
                log.exception("reload (%s) failed while applying", trigger)
                return {"result": "failure", "errors": [f"internal error: {exc}"]}
            stats.reloads["success"] += 1
            if libraries:
                changes["function_libraries"] = libraries
            log.info("reload (%s) applied: %s", trigger, changes)
            for path in changes["restart_required"]:
                log.warning("reload: %s changed but takes effect only after a restart", path)
            return {"result": "success", **changes}

    def start_watching(self, interval: float = 1.0) -> None:
        """``reload.watch: true``: reload when the file's contents change."""
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(interval))

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            digest = self._file_digest()
            if digest is not None and digest != self._digest:
                await self.reload("file changed")

    def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
