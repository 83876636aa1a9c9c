"""The reply slots a client session makes besides its plain queue entries: a replica read
retried on the primary (around any slot, or as the queue entry itself), and the client as the
holder of a lease (the frames pushed to it)."""

from __future__ import annotations

from typing import Final, Protocol, cast

from shardproxy.backend.node import Node
from shardproxy.backend.slots import PushConsumer, Recipient, ReplySlot
from shardproxy.protocol.fifo import Fifo
from shardproxy.session.queue import QueuedReply

PUSHED: Final = -1  # the command index of a pushed frame: not a reply, not counted


class RetrySession(Protocol):
    """What a retried read needs of its client."""

    @property
    def transport(self) -> object | None: ...

    @property
    def proto(self) -> int: ...

    @property
    def id(self) -> int: ...


class PushTarget(Protocol):
    """What a pushed frame needs of its client."""

    @property
    def transport(self) -> object | None: ...

    @property
    def queue(self) -> Fifo[QueuedReply]: ...


class ReplicaRetry(ReplySlot):
    """Wraps the reply slot of a read sent to a replica: if the replica fails before answering
    (down, connection lost, timeout), the read is sent once more, to the shard's primary.
    Reads only: a write is never retried."""

    __slots__ = ("flushed", "frame", "inner", "primary", "session")

    def __init__(
        self, inner: ReplySlot, frame: bytes, primary: Node, session: RetrySession
    ) -> None:
        self.inner = inner  # the client's QueuedReply, or a fan-out Leg
        self.frame: bytes | None = frame  # None once retried
        self.primary = primary
        self.session = session
        # what the inner slot returned when failed during the retry
        self.flushed: Recipient | None = None

    def complete(self, reply: bytes) -> Recipient | None:
        return self.inner.complete(reply)

    def fail(self, reply: bytes) -> Recipient | None:
        if self.frame is None or self.session.transport is None:
            self.flushed = self.inner.fail(reply)
            return self.flushed
        frame, self.frame = self.frame, None
        self.flushed = None
        self.primary.connection(self.session.proto, self.session.id).send(frame, self)
        return self._flushed()  # set if the primary failed it at once: flush now, not later

    def _flushed(self) -> Recipient | None:
        # Read through a method: after ``self.flushed = None`` mypy takes the attribute to
        # stay None across the send() above, and compiled code would trust that.
        return self.flushed


class ReplicaRead(QueuedReply):
    """The client's reply slot of a single-key read the inline fast path sent to a replica:
    a queue entry that retries itself, like :class:`ReplicaRetry`, once on the shard's
    primary if the replica fails before answering (one object per read instead of two)."""

    __slots__ = ("client", "frame", "primary")

    def __init__(
        self, client: RetrySession, cmd: int, t0: float, frame: bytes, primary: Node
    ) -> None:
        super().__init__(cast(Recipient, client), cmd, t0)
        self.client = client
        self.frame: bytes | None = frame  # None once retried
        self.primary = primary

    def fail(self, reply: bytes) -> Recipient | None:
        frame = self.frame
        client = self.client
        if frame is None or self.session is None or client.transport is None:
            return super().fail(reply)
        self.frame = None
        self.primary.connection(client.proto, client.id).send(frame, self)
        # the primary may have failed it at once (its pipeline down): then flush now
        return self.session if self._answered() else None

    def _answered(self) -> bool:
        # (read through a method: compiled code would trust mypy's view that the send()
        # above left ``reply`` as it was)
        return self.reply is not None


class ClientPushes(PushConsumer):
    """A client as the holder of a leased connection: frames it did not ask for go into its
    reply queue, before the reply of the request they preceded."""

    __slots__ = ("session", "target")

    def __init__(self, session: Recipient, target: PushTarget) -> None:
        self.session = session  # the client, as whom its queue's replies are flushed for
        self.target = target  # the same client, as the owner of the queue

    def push(self, frame: bytes, before: ReplySlot | None) -> Recipient | None:
        t = self.target
        if t.transport is None:
            return None  # the client has gone: dropped, like its replies
        slot = QueuedReply(self.session, PUSHED, 0.0, frame)
        if isinstance(before, QueuedReply):
            t.queue.insert_before(before, slot)
        else:
            t.queue.append(slot)
        return self.session
