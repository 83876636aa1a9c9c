"""Scripts and functions: routed by their declared keys, and a script registry that follows
the fleet.

EVAL, EVALSHA, FCALL and their ``_RO`` forms declare their keys (``numkeys``); those must live
on one shard (``-CROSSSLOT`` otherwise), which runs the script. The ``_RO`` forms are reads
(replicas per ``read_policy``); the others go to the primary. A script that declares no key
runs on the shard its first argument (the body, the SHA or the function name) hashes to, as if
it were a key: the same script always runs on the same shard.

The registry remembers the scripts the proxy has seen (SCRIPT LOAD and EVAL bodies), by SHA1,
least recently used first out beyond ``scripts.cache_bytes``. Each node keeps its own script
cache, which a restart, a failover to a replica, a SCRIPT FLUSH on that node or a shard added
by a reload leave empty. When a node answers an EVALSHA with ``-NOSCRIPT`` and the registry
knows the script, the proxy loads it on the shard's nodes and sends the EVALSHA again —
safe, because NOSCRIPT means nothing ran. ::

    EVALSHA sha ─▶ node ─▶ -NOSCRIPT ─▶ known? ──no──▶ -NOSCRIPT to the client
                                         │yes
                                         ▼
                 SCRIPT LOAD body on every node of the shard, then EVALSHA again (once)
                 ─▶ its reply to the client

SCRIPT FLUSH through the proxy empties the registry too (after it, EVALSHA answers NOSCRIPT,
as Redis does). The script cache commands go to every node a script may run on
(:meth:`Fanout.all_nodes`); function libraries replicate, so FUNCTION LOAD and friends go to
the primaries only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from shardproxy.backend.node import Node
from shardproxy.backend.slots import IGNORE, Recipient, ReplySlot
from shardproxy.commands.table import CommandSpec, get_keys
from shardproxy.observe.metrics import Stats
from shardproxy.protocol import encode, errors
from shardproxy.routing.router import Router
from shardproxy.session.fanout import Fanout, LegSender
from shardproxy.session.queue import QueuedReply

_NOSCRIPT = b"-NOSCRIPT"


def sha1_hex(body: bytes) -> bytes:
    """The SHA1 Redis names a script by: lower-case hex."""
    return hashlib.sha1(body).hexdigest().encode()


class ScriptRegistry:
    """Script bodies by SHA1, bounded in bytes, least recently used evicted first."""

    __slots__ = ("limit", "scripts", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # bytes of script bodies kept at most
        self.scripts: dict[bytes, bytes] = {}  # sha -> body, least recently used first
        self.size = 0

    def __len__(self) -> int:
        return len(self.scripts)

    def remember(self, body: bytes) -> bytes:
        """Keep ``body`` (most recently used); its SHA1."""
        sha = sha1_hex(body)
        scripts = self.scripts
        old = scripts.pop(sha, None)
        if old is None:
            if len(body) > self.limit:
                return sha  # larger than the whole registry: not kept
            self.size += len(body)
        scripts[sha] = body
        while self.size > self.limit and scripts:
            first = next(iter(scripts))
            self.size -= len(scripts.pop(first))
        return sha

    def get(self, sha: bytes) -> bytes | None:
        """The body of ``sha`` (any case), marked most recently used; None if not known."""
        sha = sha.lower()
        body = self.scripts.pop(sha, None)
        if body is not None:
            self.scripts[sha] = body
        return body

    def clear(self) -> None:
        self.scripts.clear()
        self.size = 0


class ScriptHost(Protocol):
    @property
    def router(self) -> Router[Node]: ...

    @property
    def stats(self) -> Stats: ...


class ScriptSender(LegSender, Protocol):
    """What scripts need from the client session, besides a fan-out's."""

    @property
    def host(self) -> ScriptHost: ...

    def send_to_shard(
        self, shard: int, write: bool, frame: bytes, keys: Sequence[bytes] = ()
    ) -> None: ...

    def new_slot(self) -> QueuedReply: ...


class ScriptRetry(ReplySlot):
    """An EVALSHA's reply slot: on ``-NOSCRIPT`` for a script the registry knows, the script
    is loaded on the shard's nodes and the EVALSHA sent once more (see the module doc)."""

    __slots__ = ("body", "flushed", "frame", "inner", "session", "shard", "write")

    def __init__(
        self,
        inner: QueuedReply,
        session: ScriptSender,
        shard: str,
        write: bool,
        frame: bytes,
        body: bytes,
    ) -> None:
        self.inner = inner  # the client's queued reply
        self.session = session
        self.shard = shard  # by name: a reload may renumber the shards meanwhile
        self.write = write
        self.frame: bytes | None = frame  # None once sent again
        self.body = body
        self.flushed: Recipient | None = None  # set when the retry failed at once

    def complete(self, reply: bytes) -> Recipient | None:
        frame = self.frame
        if frame is None or not reply.startswith(_NOSCRIPT) or self.inner.session is None:
            return self.inner.complete(reply)  # (a client that has gone needs no retry)
        host = self.session.host
        router = host.router
        index = router.index_of(self.shard)
        if index < 0:
            return self.inner.complete(reply)
        self.frame = None
        host.stats.noscript_recoveries += 1
        load = encode.encode_command([b"SCRIPT", b"LOAD", self.body])
        proto, cid = self.session.proto, self.session.id
        for node in router.shards[index].nodes():
            node.connection(proto, cid).send(load, IGNORE)
        self.flushed = None
        self.session.send_leg(index, self.write, frame, self)
        return self._flushed()

    def fail(self, reply: bytes) -> Recipient | None:
        self.flushed = self.inner.fail(reply)
        return self.flushed

    def _flushed(self) -> Recipient | None:
        # read through a method: compiled code would trust mypy's narrowing to None above
        return self.flushed


class Scripts:
    """Routes scripts and the script cache commands for every session (one per proxy)."""

    __slots__ = ("fanout", "registry")

    def __init__(self, fanout: Fanout, cache_bytes: int) -> None:
        self.fanout = fanout
        self.registry = ScriptRegistry(cache_bytes)

    def forward(
        self, session: ScriptSender, spec: CommandSpec, argv: list[bytes], frame: bytes
    ) -> None:
        """EVAL, EVALSHA, FCALL (and _RO): to the shard of the declared keys."""
        name = spec.name
        if name == "eval" or name == "eval_ro":
            self.registry.remember(argv[1])
        router = session.host.router
        positions = get_keys(spec, argv)
        keys: Sequence[bytes] = ()
        if positions:
            keys = [argv[i] for i in positions]
            shard = router.shard_of_keys(keys)
            if shard < 0:
                session.reply_now(errors.reply("crossslot"))
                return
        else:
            shard = router.shard_index(argv[1])  # no key: where the script itself hashes
        if name == "evalsha" or name == "evalsha_ro":
            body = self.registry.get(argv[1])
            if body is not None:
                inner = session.new_slot()
                retry = ScriptRetry(
                    inner, session, router.shards[shard].name, spec.write, frame, body
                )
                session.send_leg(shard, spec.write, frame, retry, keys)
                return
        session.send_to_shard(shard, spec.write, frame, keys)

    def all_nodes(
        self, session: ScriptSender, spec: CommandSpec, argv: list[bytes], frame: bytes
    ) -> None:
        """SCRIPT LOAD / EXISTS / FLUSH / KILL, FUNCTION KILL: every node a script may run
        on; the registry learns what SCRIPT LOAD loads and forgets all on SCRIPT FLUSH."""
        if spec.name == "script|load":
            self.registry.remember(argv[2])
        elif spec.name == "script|flush":
            self.registry.clear()
        self.fanout.all_nodes(session, spec, frame)
