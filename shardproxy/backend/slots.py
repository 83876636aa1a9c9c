"""What backends complete: reply slots, and the client a slot belongs to.

A backend connection never knows a client session's class. It completes :class:`ReplySlot`
objects in the order it sent their requests, and each completion may return the
:class:`Recipient` (the client) that now has a reply ready; the connection gathers those and
tells each one, once per batch of replies, to write out what is ready. Frames nobody asked for
(RESP3 pushes, pub/sub messages on a leased connection) go to the connection's
:class:`PushConsumer`, which places them in order among the replies.

These are base classes, not protocols, so that compiled code calls them directly; session and
fan-out classes derive from them across the sub-package boundary (both sides are compiled, so
no interpreted class may derive from :class:`Recipient` or :class:`ReplySlot`; tests use the
real ones). :class:`PushConsumer` allows interpreted subclasses.
"""

from __future__ import annotations

import asyncio
from typing import Final

from mypy_extensions import mypyc_attr


class Recipient:
    """A client, as backends see it: told to write out whatever replies are now ready, once
    per batch of replies (``dirty`` says it is already in the batch)."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty = False

    def flush(self, now: float = -1.0) -> None:
        """``now``: clock() when the replies were read, if the caller has it (else -1)."""
        raise NotImplementedError


class ReplySlot:
    """Where a reply goes. ``complete`` returns the recipient to flush, or None."""

    __slots__ = ()

    def complete(self, reply: bytes) -> Recipient | None:
        raise NotImplementedError

    def fail(self, reply: bytes) -> Recipient | None:
        """Completed by the proxy with an error (no reply from the node)."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class PushConsumer:
    """Who gets the frames a connection did not ask for.

    ``before`` is the slot of the oldest request still unanswered on that connection (None
    when there is none): the frame came before that request's reply, so it must reach the
    client before it too. Returns the recipient to flush, like a completed slot."""

    __slots__ = ()

    def push(self, frame: bytes, before: ReplySlot | None) -> Recipient | None:
        raise NotImplementedError


class CallSlot(ReplySlot):
    """A reply slot for the proxy's own commands on a data connection: resolves a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def complete(self, reply: bytes) -> Recipient | None:
        if not self.future.done():
            self.future.set_result(reply)
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        return self.complete(reply)


class Ignore(ReplySlot):
    """The slot of a reply nobody waits for (the +OK and +QUEUED inside a transaction, a
    SCRIPT LOAD before a retried EVALSHA, a lease's HELLO): what follows it says how it went."""

    __slots__ = ()

    def complete(self, reply: bytes) -> Recipient | None:
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        return None


IGNORE: Final = Ignore()
