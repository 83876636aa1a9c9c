"""A client's reply queue entries: one per request, completed in any order, sent in order."""

from __future__ import annotations

from shardproxy.backend.slots import Recipient, ReplySlot


class QueuedReply(ReplySlot):
    """The place of one request's reply in its client's queue.

    Completed (``reply`` set to raw bytes) by a backend reply, a fan-out merge, or at once for
    what the proxy answers itself; a frame the client did not ask for (a push) is a queued
    reply completed when it is placed. ``session`` is None once the client has gone: the
    reply is then dropped."""

    __slots__ = ("cmd", "reply", "session", "t0")

    def __init__(
        self, session: Recipient | None, cmd: int, t0: float, reply: bytes | None = None
    ) -> None:
        self.session = session
        self.reply = reply  # raw reply bytes; None until completed
        self.cmd = cmd  # command table index (metrics); SPEC_COUNT for unknown commands
        self.t0 = t0  # clock() when the request was read (latency metrics)

    def complete(self, reply: bytes) -> Recipient | None:
        self.reply = reply
        return self.session

    def fail(self, reply: bytes) -> Recipient | None:
        """The proxy could not get a reply (node down, connection lost, timeout)."""
        self.reply = reply
        return self.session
