"""Zero-miss resharding: keys that a reload gives to another shard move on first use.

When a reload changes which shard owns part of the keyspace, the previous rings are kept for a
migration window. During it, a command on a key whose owner changed first makes sure the key
lives on its new owner::

    DUMP + PTTL on the previous owner ──nil──▶ nothing to move
            │ value
            ▼
    RESTORE (no REPLACE) on the new owner, with the remaining TTL
            │ OK, or BUSYKEY (a newer value was already written there: it wins)
            ▼
    DEL on the previous owner (so no stale copy can be served or moved again)
            ▼
    the client's command is forwarded to the new owner, in its place in the reply order

Writes always go to the new owner; read-modify-write commands (INCR, HSET, APPEND, ...) also
move the key first, so they build on the old value. With ``migration.copy: background`` a
rate-limited task SCANs the previous owners and moves every key that changed shard, and the
window closes when it is done; otherwise it closes after ``migration.window_s``.

Window states::

    (reload moves keys) ──▶ ACTIVE ──window_s elapsed, or background copy done──▶ DONE
                              ▲  │
                 another reload  └── keeps a stack of previous rings; a key is looked for on
                                     each previous owner, newest first

Not covered: KEYS, SCAN, DBSIZE and RANDOMKEY see the shards as they are (a key not yet moved
is counted on its previous owner); a pipeline that reads and then writes the same moving key may
see its own later write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from shardproxy.backend.slots import CallSlot
from shardproxy.protocol import encode, replies

if TYPE_CHECKING:
    from shardproxy.backend.node import Node
    from shardproxy.routing.router import Router, ShardNodes

log = logging.getLogger("shardproxy.migration")

#: Keys remembered as already moved (or not needing a move); cleared when it grows past this.
DONE_LIMIT = 1_000_000

Send = Callable[["Node", bytes, Any], None]


def call(node: Node, argv: Sequence[bytes]) -> Awaitable[bytes]:
    """Send one command to ``node`` over its shared RESP2 connection; await the raw reply."""
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    node.connection(2, 0).send(encode.encode_command(argv), CallSlot(future))
    return future


class Migration:
    """The migration window after one or more reloads that moved keys."""

    def __init__(
        self,
        current: Router[Node],
        previous: list[Router[Node]],
        window: float,
        background: bool,
        rate: int,
        on_done: Callable[[Migration], None],
    ) -> None:
        self.current = current  # the topology keys move to
        self.previous = previous  # earlier topologies, newest first
        self.window = window
        self.background = background
        self.rate = rate
        self.on_done = on_done
        self.started = time.monotonic()
        self.inflight: dict[bytes, asyncio.Future[None]] = {}
        self.done_keys: set[bytes] = set()
        self.moved_on_access = 0  # keys moved because a client used them (misses served)
        self.moved_background = 0  # keys moved by the background copy
        self.scanned = 0  # keys the background copy looked at
        self.copy_done = not background
        self.finished = False
        self._tasks: list[asyncio.Task[None]] = []
        self.retiring: list[Node] = []  # nodes that left the topology: closed when done

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.background:
            self._tasks.append(loop.create_task(self._copy_all()))
        else:
            self._tasks.append(loop.create_task(self._timer()))

    async def _timer(self) -> None:
        await asyncio.sleep(self.window)
        self.finish("window elapsed")

    def finish(self, why: str) -> None:
        if self.finished:
            return
        self.finished = True
        log.info(
            "migration window closed (%s): %d keys moved on access, %d in the background",
            why,
            self.moved_on_access,
            self.moved_background,
        )
        for node in self.retiring:
            node.close()
        self.on_done(self)

    def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()

    def status(self) -> dict[str, Any]:
        return {
            "active": not self.finished,
            "seconds": round(time.monotonic() - self.started, 1),
            "background_copy": self.background,
            "background_copy_done": self.copy_done,
            "keys_moved_on_access": self.moved_on_access,
            "keys_moved_background": self.moved_background,
            "keys_scanned": self.scanned,
        }

    # -- per key ---------------------------------------------------------------------------

    def sources(self, key: bytes, owner: str) -> list[ShardNodes[Node]]:
        """Previous owners of ``key`` other than its current owner ``owner``, newest first."""
        if key in self.done_keys:
            return []
        out: list[ShardNodes[Node]] = []
        for router in self.previous:
            s = router.shards[router.shard_index(key)]
            if s.name != owner and all(o.name != s.name for o in out):
                out.append(s)
        return out

    def forward(
        self,
        keys: Sequence[bytes],
        target: ShardNodes[Node],
        send: Callable[[], None],
    ) -> bool:
        """Move whichever of ``keys`` still live on a previous owner to ``target``, then call
        ``send``. Returns False (and calls nothing) when no key needs moving."""
        todo = [(k, src) for k in keys for src in self.sources(k, target.name)]
        if not todo:
            return False
        asyncio.get_running_loop().create_task(self._forward(todo, target, send))
        return True

    async def _forward(
        self,
        todo: list[tuple[bytes, ShardNodes[Node]]],
        target: ShardNodes[Node],
        send: Callable[[], None],
    ) -> None:
        try:
            for key, src in todo:
                if await self.move(key, src, target):
                    self.moved_on_access += 1
        except Exception:  # never leave the client's slot unanswered
            log.exception("moving keys for a request failed")
        send()

    async def move(self, key: bytes, src: ShardNodes[Node], dst: ShardNodes[Node]) -> bool:
        """Move ``key`` from ``src`` to ``dst`` unless ``dst`` has a newer value.

        Returns True when a value was moved. One move per key at a time."""
        waiting = self.inflight.get(key)
        if waiting is not None:
            await waiting
            return False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = done
        try:
            return await self._move(key, src.primary, dst.primary)
        finally:
            del self.inflight[key]
            done.set_result(None)
            if len(self.done_keys) > DONE_LIMIT:
                self.done_keys.clear()
            self.done_keys.add(key)

    async def _move(self, key: bytes, src: Node, dst: Node) -> bool:
        dump_f = call(src, [b"DUMP", key])
        pttl_f = call(src, [b"PTTL", key])
        dump, pttl = await dump_f, await pttl_f
        if replies.is_error(dump):
            raise RuntimeError(f"DUMP on {src.address}: {dump[:100]!r}")
        payload = replies.parse_bulk(dump)
        if payload is None:
            return False  # not on the previous owner: nothing to move
        ttl = replies.parse_integer(pttl) if pttl[:1] == b":" else -1
        if ttl == -2:
            return False  # expired in between
        restored = await call(dst, [b"RESTORE", key, b"%d" % max(ttl, 0), payload])
        if replies.is_error(restored) and not restored.startswith(b"-BUSYKEY"):
            raise RuntimeError(f"RESTORE on {dst.address}: {restored[:100]!r}")
        await call(src, [b"DEL", key])
        return not restored.startswith(b"-BUSYKEY")

    # -- background copy -------------------------------------------------------------------

    async def _copy_all(self) -> None:
        try:
            seen: set[str] = set()
            for router in self.previous:
                for s in router.shards:
                    if s.name in seen:
                        continue
                    seen.add(s.name)
                    await self._copy_shard(router, s)
            self.copy_done = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background copy failed; keys still move on access until the window ends")
            await asyncio.sleep(self.window)
        self.finish("background copy finished")

    async def _copy_shard(self, router: Router[Node], src: ShardNodes[Node]) -> None:
        cursor = b"0"
        budget_start = time.monotonic()
        budget_used = 0
        cur = self.current
        while True:
            reply = await call(src.primary, [b"SCAN", cursor, b"COUNT", b"200"])
            if replies.is_error(reply):
                raise RuntimeError(f"SCAN on {src.primary.address}: {reply[:100]!r}")
            items = replies.split_aggregate(reply) or []
            cursor = replies.parse_bulk(items[0]) or b"0"
            keys = [replies.parse_bulk(k) or b"" for k in replies.split_aggregate(items[1]) or []]
            for key in keys:
                self.scanned += 1
                dst = cur.shards[cur.shard_index(key)]
                if dst.name == src.name:
                    continue
                if await self.move(key, src, dst):
                    self.moved_background += 1
                budget_used += 1
                if budget_used >= self.rate:
                    elapsed = time.monotonic() - budget_start
                    if elapsed < 1.0:
                        await asyncio.sleep(1.0 - elapsed)
                    budget_start, budget_used = time.monotonic(), 0
            if cursor == b"0":
                return
