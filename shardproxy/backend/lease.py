"""Leased connections: a backend connection that belongs to one client at a time.

A command that changes the connection's state or blocks it (MULTI ... EXEC, WATCH, BLPOP,
SUBSCRIBE) must not travel on a shared pipeline, where it would affect every other client's
commands. It goes on a :class:`Lease`: taken from the node's :class:`LeasePool` by one client
(its *holder*), used only by it, and given back with :meth:`Lease.release`.

Life of a lease::

                acquire()                 release(): once nothing is pending
    (new/idle) ───────────▶ LEASED ──────────────────────────────────────▶ RESETTING
        ▲                     │   │                                            │
        │                     │   │ release(clean=True), once nothing          │ +RESET and the
        │                     │   │ is pending (state known to be fresh)       │ handshake again
        │                     │   └───────────────────────────────────────┐    ▼
        │    failure, deadline│passed                                     │  (ok)
        │                     ▼                                           ▼    │
        │                   CLOSED ◀──────── any reset reply not as expected   │
        └──────────────────────────────── idle in the pool ◀───────────────────┘
                                            (closed after backend lease_idle)

A lease is reset (``RESET``, which also drops the authentication and the protocol, so the
handshake is sent again) before another client gets it, unless its holder releases it
``clean``: the holder vouches that what it sent leaves the connection as the handshake left
it (a transaction's ``MULTI ... EXEC``, once EXEC is answered, does), which saves the reset's
round trip. Released with replies still outstanding, a lease waits for them (the holder's
slots are still completed, their recipient may have gone) and is given back after the last.
A holder that wants what is outstanding cancelled (a blocked client that left) closes the
lease instead. It is closed whenever its state is not known: a failed reset, a lost
connection, a deadline passed. It is never handed out in an unknown state, and never reconnects by itself. Each request has its own
deadline (``timeouts.command_ms`` unless the caller gives one, as a blocking command does);
when it passes, the pending requests fail with a timeout error and the lease is closed. At
most ``backend.max_leases`` leases per node are open; beyond that ``acquire`` says no and the
caller answers the client with an error naming the shard.

Frames the holder did not ask for (RESP3 pushes; RESP2 pub/sub messages once
``resp2_messages`` is set) go to the holder, placed before the reply of its oldest unanswered
request.
"""

from __future__ import annotations

import asyncio

from shardproxy.backend import dial
from shardproxy.backend.connection import CONNECTING, READY, Connection, NodeBase
from shardproxy.backend.slots import PushConsumer, Recipient, ReplySlot
from shardproxy.protocol import encode, errors, push, replies
from shardproxy.protocol.fifo import Fifo

RESET_FRAME = encode.encode_command([b"RESET"])
#: a request timeout that never passes (a block of timeout 0, a WAIT without one)
NO_DEADLINE = 10.0 * 365 * 86400


class Lease(Connection):
    """One leased connection (see the module docstring)."""

    __slots__ = (
        "_deadlines",
        "_release_when_idle",
        "_resetting",
        "_timeouts",
        "_timer",
        "holder",
        "idle_since",
        "pool",
        "resp2_messages",
        "server_id",
    )

    def __init__(self, node: NodeBase, proto: int, pool: LeasePool) -> None:
        super().__init__(node, proto)
        self.pool = pool
        self.holder: PushConsumer | None = None
        self.resp2_messages = False  # RESP2 pub/sub arrays are pushes, not replies
        self.server_id = -1  # its CLIENT ID on the node, once a holder has asked (CLIENT UNBLOCK)
        self.idle_since = 0.0
        self._deadlines: Fifo[float] = Fifo()  # loop time by which each pending reply is due
        self._timeouts: Fifo[float] = Fifo()  # and the timeout each was sent with (errors)
        self._timer: asyncio.TimerHandle | None = None
        self._resetting = False
        self._release_when_idle = 0  # 1: reset, 2: clean, once nothing is pending

    @property
    def leased(self) -> bool:
        """Lent out now (not idle in the pool, not closed)."""
        return self in self.pool.leased

    # -- sending ---------------------------------------------------------------------------

    def send(self, frame: bytes, slot: ReplySlot, timeout: float = -1.0) -> None:
        """Queue ``frame``; ``slot`` completes with its reply, or with an error if none comes
        within ``timeout`` seconds (default: the command timeout)."""
        state = self.state
        if state is not READY and state is not CONNECTING:
            slot.fail(self._unavailable())
            return
        if timeout < 0:
            timeout = self.node.settings.command_timeout
        self.pending.append(slot)
        self._deadlines.append(self.loop.time() + timeout)
        self._timeouts.append(timeout)
        self.wbuf.append(frame)
        if self._timer is None:
            self._arm_timer()
        if state is READY and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _on_ready(self) -> None:
        super()._on_ready()
        if self._release_when_idle and not self.pending and not self.wbuf:
            clean = self._release_when_idle == 2
            self._release_when_idle = 0
            self._give_back(clean)

    # -- receiving -------------------------------------------------------------------------

    def _deliver(self, frames: list[bytes]) -> None:
        pending = self.pending
        touched: list[Recipient] = []
        for r in frames:
            if r[0] == push.PUSH or (self.resp2_messages and push.is_message(r)):
                self._push(r, self.holder, touched)
                continue
            if not pending:
                self._fail("reply without a request", kind="protocol")
                break  # the replies before it are good: still flushed below
            self._deadlines.popleft()
            self._timeouts.popleft()
            s = pending.popleft().complete(r)
            if s is not None and not s.dirty:
                s.dirty = True
                touched.append(s)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._deadlines:
            self._arm_timer()
        for s in touched:
            s.flush()
        if self._release_when_idle and not pending and self.state is READY:
            clean = self._release_when_idle == 2
            self._release_when_idle = 0
            self._give_back(clean)

    # -- deadlines and failures ------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(self._deadlines.head(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._deadlines:
            return
        if self.loop.time() < self._deadlines.head() - 0.001:
            self._arm_timer()
            return
        ms = int(self._timeouts.head() * 1000)
        err = errors.reply("shard_timeout", shard=self.node.shard, node=self.node.address, ms=ms)
        self._fail("no reply before the request's deadline", err, kind="timeout")

    def _reset_state(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        self._timeouts.clear()

    def _after_failure(self, reason: str) -> None:
        self._release_when_idle = 0
        self.pool.discard(self)  # a lease never reconnects: its state went with it

    def close(self, detail: str = "leased connection closed") -> None:
        super().close(detail)
        self.pool.discard(self)

    # -- giving it back --------------------------------------------------------------------

    def release(self, clean: bool = False) -> None:
        """The holder is done with the lease. It is reset (or, ``clean``, not) and put back
        in the pool once the replies still outstanding have come; closed if it is not
        connected. ``clean``: the holder vouches the connection is as the handshake left it."""
        self.holder = None
        self.resp2_messages = False
        if self._resetting or (self.state is not READY and self.state is not CONNECTING):
            self.close("given back in an unknown state")
            return
        if self.pending or self.wbuf or self.state is not READY:
            self._release_when_idle = 2 if clean else 1
            return
        self._give_back(clean)

    def _give_back(self, clean: bool) -> None:
        if clean:
            self.pool.put_back(self)
            return
        frames = [RESET_FRAME, *dial.handshake(self.proto, self.node.settings.credentials)]
        self._resetting = True
        check = ResetCheck(self, len(frames))
        for frame in frames:
            self.send(frame, check)

    def reset_done(self, ok: bool) -> None:
        self._resetting = False
        if ok and self.state is READY and not self.pending:
            self.pool.put_back(self)
        else:
            self.close()


class ResetCheck(ReplySlot):
    """The replies to a lease's reset: ``+RESET``, then the handshake's, none an error."""

    __slots__ = ("first", "lease", "left", "ok")

    def __init__(self, lease: Lease, replies_due: int) -> None:
        self.lease = lease
        self.left = replies_due
        self.first = True
        self.ok = True

    def complete(self, reply: bytes) -> Recipient | None:
        if self.first:
            self.ok = reply == b"+RESET\r\n"
            self.first = False
        elif replies.is_error(reply):
            self.ok = False
        self.left -= 1
        if self.left == 0:
            self.lease.loop.call_soon(self.lease.reset_done, self.ok)
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        self.ok = False
        return self.complete(reply)


class LeasePool:
    """The leased connections of one node: those lent out and those idle, both protocols."""

    __slots__ = ("_sweep_handle", "idle", "leased", "node", "refused")

    def __init__(self, node: NodeBase) -> None:
        self.node = node
        self.refused = 0  # acquire() calls turned down at backend.max_leases
        self.leased: set[Lease] = set()
        self.idle: list[Lease] = []  # reset and ready, most recently returned last
        self._sweep_handle: asyncio.TimerHandle | None = None

    def open_count(self) -> int:
        return len(self.leased) + len(self.idle)

    def acquire(self, proto: int, holder: PushConsumer | None) -> Lease | None:
        """A lease for ``holder`` speaking RESP ``proto``: an idle one, or a new one (still
        connecting: requests sent now are written once it is ready). None at the cap."""
        idle = self.idle
        for i in range(len(idle) - 1, -1, -1):
            if idle[i].proto == proto:
                lease = idle.pop(i)
                break
        else:
            if self.open_count() >= self.node.settings.max_leases:
                self.refused += 1
                return None
            lease = Lease(self.node, proto, self)
            lease.start()
        lease.holder = holder
        self.leased.add(lease)
        return lease

    def put_back(self, lease: Lease) -> None:
        self.leased.discard(lease)
        lease.idle_since = lease.loop.time()
        self.idle.append(lease)
        if self._sweep_handle is None:
            self._sweep_handle = lease.loop.call_later(self.node.settings.lease_idle, self._sweep)

    def discard(self, lease: Lease) -> None:
        """Forget a lease that closed."""
        self.leased.discard(lease)
        if lease in self.idle:
            self.idle.remove(lease)

    def _sweep(self) -> None:
        """Close the leases idle for longer than ``lease_idle``."""
        self._sweep_handle = None
        loop = self.node.loop
        limit = self.node.settings.lease_idle
        now = loop.time()
        for lease in [x for x in self.idle if now - x.idle_since >= limit - 0.001]:
            lease.close()
        if self.idle:
            oldest = min(x.idle_since for x in self.idle)
            self._sweep_handle = loop.call_at(oldest + limit, self._sweep)

    def close(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for lease in [*self.leased, *self.idle]:
            lease.close()
