"""Invalidation connections: where a node tells the near-cache which keys changed.

One per node while the near-cache is on (``session/cache.py``). It asks ``CLIENT ID``, then
subscribes to ``__redis__:invalidate``; the node's data pipelines then run ``CLIENT TRACKING
on REDIRECT <that id> OPTIN`` (``Node.tracking_id``), so a read sent after ``CLIENT CACHING
yes`` is tracked and any later change of its key arrives here as a message whose payload is
the array of keys (or null: the whole database was flushed).

::

    CONNECTING ── ready ──▶ CLIENT ID, SUBSCRIBE ── :id ──▶ TRACKING (owner.tracking(node, id))
        ▲                                                         │
        └─ backoff ◀── DOWN ◀── lost / garbage ───────────────────┘  (owner.untracked(node))

While it is down the node's keys may change unseen: the owner forgets what it cached from the
node and caches nothing from it until a new connection is TRACKING again.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from shardproxy.backend.connection import NodeBase, Reconnecting
from shardproxy.protocol import encode, replies

CLIENT_ID = encode.encode_command([b"CLIENT", b"ID"])
SUBSCRIBE = encode.encode_command([b"SUBSCRIBE", b"__redis__:invalidate"])
_MESSAGE = b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"


@mypyc_attr(allow_interpreted_subclasses=True)
class InvalidationOwner:
    """Who is told of a node's invalidations (the near-cache)."""

    __slots__ = ()

    def tracking(self, node: NodeBase, client_id: int) -> None:
        """Invalidations of ``node`` arrive from now on, to client ``client_id``."""

    def invalidate(self, node: NodeBase, keys: list[bytes] | None) -> None:
        """``keys`` changed on ``node`` (None: all of them)."""

    def untracked(self, node: NodeBase) -> None:
        """Invalidations of ``node`` may be lost from now on."""


class InvalidationConnection(Reconnecting):
    """The one connection a node's invalidation messages come in on."""

    __slots__ = ("client_id", "owner")

    def __init__(self, node: NodeBase, owner: InvalidationOwner) -> None:
        super().__init__(node, 2)
        self.owner = owner
        self.client_id = 0  # 0 until CLIENT ID is answered on this connection

    def _on_ready(self) -> None:
        self._reset_backoff()
        self.client_id = 0
        self.wbuf[:0] = [CLIENT_ID, SUBSCRIBE]
        super()._on_ready()

    def _deliver(self, frames: list[bytes]) -> None:
        for f in frames:
            if f.startswith(_MESSAGE):
                payload = f[len(_MESSAGE) :]
                if payload[:1] == b"*" and not payload.startswith(b"*-1"):
                    keys = [
                        replies.parse_bulk(k) or b"" for k in replies.split_strings(payload) or []
                    ]
                    self.owner.invalidate(self.node, keys)
                else:
                    self.owner.invalidate(self.node, None)  # FLUSHALL / FLUSHDB, or a null
            elif f[:1] == b":" and not self.client_id:
                self.client_id = int(f[1:-2])
                self.owner.tracking(self.node, self.client_id)
            elif f.startswith(b"*3\r\n$9\r\nsubscribe\r\n"):
                continue
            else:
                self._fail("unexpected frame on the invalidation connection", kind="protocol")
                return

    def _reset_state(self) -> None:
        pass

    def _after_failure(self, reason: str) -> None:
        self.client_id = 0
        self.owner.untracked(self.node)
        self._schedule_reconnect()

    def close(self, detail: str = "near-cache off") -> None:
        was = self.client_id
        self.client_id = 0
        super().close(detail)
        if was:
            self.owner.untracked(self.node)
