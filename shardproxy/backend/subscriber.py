"""Subscriber connections: the proxy's own SUBSCRIBE connections to a node, shared by every
client interested in the same channels (session/pubsub.py decides what they subscribe to).

A :class:`SubscriberConnection` speaks RESP2 and is in Redis's subscribed state for its whole
life. It sends (un)subscribe commands without waiting for them (their confirmations are read
and dropped: the proxy's own bookkeeping is the truth), and PINGs as barriers: a PING's answer
says every command written before it is in effect, which is when a client's SUBSCRIBE may be
confirmed. Messages go to the :class:`SubscriberOwner` in batches, one per read.

States are those of ``connection.Connection``::

    CONNECTING ── handshake ok ──▶ READY: the owner's whole subscription set is written first
        ▲                            │
        └── backoff ◀── DOWN ◀───────┘  lost, refused, a PING unanswered for command_ms

While CONNECTING or DOWN, (un)subscribe commands are not queued: the owner's set at the next
READY includes them. A barrier asked for while DOWN fails at once (there is nothing to wait
for); one asked for while CONNECTING waits for READY.
"""

from __future__ import annotations

import asyncio
import logging

from mypy_extensions import mypyc_attr

from shardproxy.backend.connection import CLOSED, CONNECTING, DOWN, READY, NodeBase, Reconnecting
from shardproxy.backend.slots import Recipient, ReplySlot
from shardproxy.protocol import push

log = logging.getLogger("shardproxy.backend")

PING = b"*1\r\n$4\r\nPING\r\n"


@mypyc_attr(allow_interpreted_subclasses=True)
class SubscriberOwner:
    """Who decides what a subscriber connection subscribes to, and gets its messages."""

    __slots__ = ()

    def subscriptions(self, conn: SubscriberConnection) -> list[bytes]:
        """The (un)subscribe commands that make a fresh connection subscribed as it should."""
        raise NotImplementedError

    def messages(self, conn: SubscriberConnection, frames: list[bytes]) -> None:
        """Messages read (``message``, ``pmessage``, ``smessage`` arrays, RESP2)."""
        raise NotImplementedError

    def subscriber_down(self, conn: SubscriberConnection) -> None:
        """The connection went DOWN (its messages stop until it is READY again)."""


class SubscriberConnection(Reconnecting):
    """One subscribed RESP2 connection to a node; ``index`` is its place among the node's
    subscriber connections (a channel lives on exactly one of them)."""

    __slots__ = ("_timer", "confirmations", "index", "owner")

    def __init__(self, node: NodeBase, owner: SubscriberOwner, index: int = 0) -> None:
        super().__init__(node, 2)
        self.owner = owner
        self.index = index
        self.confirmations = 0  # (un)subscribe confirmations read
        self._timer: asyncio.TimerHandle | None = None  # the oldest PING's deadline
        node.subscribers.append(self)  # (so that the node's return reconnects it at once)

    # -- sending ---------------------------------------------------------------------------

    def command(self, frame: bytes) -> None:
        """Write an (un)subscribe command now (READY), or leave it to the next READY."""
        if self.state is READY:
            self.wbuf.append(frame)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)

    def barrier(self, slot: ReplySlot) -> None:
        """``slot`` completes once every command written so far is in effect (a PING's
        answer), or fails with the connection."""
        state = self.state
        if state is not READY and state is not CONNECTING:
            slot.fail(self._unavailable())
            return
        if not self.pending:
            self._arm_timer()
        self.pending.append(slot)
        self.wbuf.append(PING)
        if state is READY and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _on_ready(self) -> None:
        self._reset_backoff()
        # the whole subscription set first, then whatever waited for READY (barriers)
        self.wbuf[:0] = self.owner.subscriptions(self)
        super()._on_ready()

    # -- receiving -------------------------------------------------------------------------

    def _deliver(self, frames: list[bytes]) -> None:
        messages: list[bytes] = []
        touched: list[Recipient] = []
        for f in frames:
            kind = push.subscriber_frame(f)
            if kind <= push.SMESSAGE:
                messages.append(f)
            elif kind == push.CONFIRMATION:
                self.confirmations += 1
            elif kind == push.PONG:
                if not self.pending:
                    self._fail("PING answer without a PING", kind="protocol")
                    return
                s = self.pending.popleft().complete(f)
                if s is not None and not s.dirty:
                    s.dirty = True
                    touched.append(s)
                self._rearm()
            elif f[:1] == b"-":
                # an (un)subscribe refused (an ACL, a server without sharded pub/sub): the
                # channel stays silent; the client's own confirmation is already given
                log.warning(
                    "node %s refused a subscription: %s",
                    self.node.address,
                    f[1:-2].decode("utf-8", "replace"),
                )
            else:
                self._fail("unexpected frame on a subscriber connection", kind="protocol")
                return
        if messages:
            self.owner.messages(self, messages)
        for s in touched:
            s.flush()

    # -- failures --------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.node.settings.command_timeout, self._on_timer)

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pending:
            self._arm_timer()

    def _on_timer(self) -> None:
        self._timer = None
        if self.pending and self.state is not DOWN and self.state is not CLOSED:
            ms = int(self.node.settings.command_timeout * 1000)
            self._fail(f"PING unanswered within {ms} ms", kind="timeout")

    def _reset_state(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _after_failure(self, reason: str) -> None:
        self.owner.subscriber_down(self)
        self._schedule_reconnect()

    def close(self, detail: str = "no longer subscribed here") -> None:
        if self in self.node.subscribers:
            self.node.subscribers.remove(self)
        super().close(detail)
