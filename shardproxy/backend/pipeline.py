"""Shared pipelines: the connections every client's ordinary commands travel on.

A node keeps, per client protocol (RESP2 / RESP3), ``backend.connections`` pipelines shared by
every client; a client is pinned to one of them (``client_id % connections``) so its commands
to one node stay in order. A shared pipeline never carries a command that blocks or changes
the connection's state (those go on a lease, see ``lease.py``).

A :class:`Pipeline` is a FIFO: :meth:`Pipeline.send` appends the request's reply slot to
``pending`` and the request bytes to the write buffer; the buffer is written once per loop
tick (one ``write`` for everything many clients sent in that tick). Replies come back in
order, so the n-th reply completes the n-th pending slot, raw bytes untouched. A slot whose
client has gone is still completed (and its reply dropped), so the pipeline never desyncs.
A RESP3 push frame goes to the node's push consumer (or is counted and dropped).

States are those of ``connection.Connection``. In CONNECTING, requests are queued and written
once the handshake (AUTH, HELLO 3) succeeds. In DOWN, requests fail at once with an error
naming the shard (no hang, no queueing while the node is known to be gone), and the pipeline
reconnects after a backoff. The command timeout is one timer per pipeline, armed for the
oldest pending request: if the node has not answered it within ``command_ms``, every pending
request fails with a timeout error and the connection is dropped and re-established (a stuck
pipeline cannot be resynchronised).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter as clock
from typing import Any

from shardproxy.backend.connection import CLOSED, CONNECTING, DOWN, READY, NodeBase, Reconnecting
from shardproxy.backend.slots import Recipient, ReplySlot
from shardproxy.protocol import encode, errors, push

log = logging.getLogger("shardproxy.backend")


def _tracking(client_id: int) -> bytes:
    return encode.encode_command(
        [b"CLIENT", b"TRACKING", b"on", b"REDIRECT", b"%d" % client_id, b"OPTIN"]
    )


class TrackingSlot(ReplySlot):
    """The answer to a pipeline's CLIENT TRACKING: OK turns its reads trackable."""

    __slots__ = ("client_id", "pipeline")

    def __init__(self, pipeline: Pipeline, client_id: int) -> None:
        self.pipeline = pipeline
        self.client_id = client_id

    def complete(self, reply: bytes) -> Recipient | None:
        if reply.startswith(b"+OK"):
            self.pipeline.tracked_id = self.client_id
        else:
            log.warning(
                "node %s refused CLIENT TRACKING: %r; the near-cache fills nothing from it",
                self.pipeline.node.address,
                reply[:200],
            )
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        return None


class Pipeline(Reconnecting):
    """One shared, pipelined connection to a node."""

    __slots__ = (
        "_timer",
        "batches",
        "head_since",
        "tracked_id",
    )

    def __init__(self, node: NodeBase, proto: int) -> None:
        super().__init__(node, proto)
        # [requests, clock()] of each write not yet fully answered (latency metrics)
        self.batches: deque[list[Any]] = deque()
        self._timer: asyncio.TimerHandle | None = None  # command timeout for the oldest request
        self.head_since = 0.0  # loop time since which pending.head() has been the oldest request
        # the invalidation client its reads are tracked for (CLIENT TRACKING ... REDIRECT),
        # once the node said OK; 0: none (the near-cache fills nothing through it)
        self.tracked_id = 0

    # -- near-cache tracking ---------------------------------------------------------------

    def track(self, client_id: int) -> None:
        """Reads sent after ``CLIENT CACHING yes`` from now on are tracked, their keys'
        changes told to client ``client_id`` (the node's invalidation connection)."""
        self.tracked_id = 0
        if self.state is READY or self.state is CONNECTING:
            self.send(_tracking(client_id), TrackingSlot(self, client_id))

    def tracks(self) -> bool:
        """Whether a read sent now is tracked for the node's current invalidation client."""
        return self.tracked_id != 0 and self.tracked_id == self.node.tracking_id

    # -- sending ---------------------------------------------------------------------------

    def send(self, frame: bytes, slot: ReplySlot) -> None:
        """Queue ``frame``; ``slot`` completes with its reply (or with an error reply)."""
        state = self.state
        if state is READY or state is CONNECTING:
            pending = self.pending
            if not pending:
                self.head_since = self.loop.time()
                if self._timer is None:
                    self._arm_timer()
            pending.append(slot)
            self.wbuf.append(frame)
            if state is READY and not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        else:
            slot.fail(self._unavailable())

    def _written(self, requests: int) -> None:
        if self.node.latency is not None:
            self.batches.append([requests, clock()])

    def _on_ready(self) -> None:
        self._reset_backoff()
        self.node.connection_up()
        self.tracked_id = 0
        tid = self.node.tracking_id
        if tid:  # a new connection: tracking first, before whatever waited for READY
            slot = TrackingSlot(self, tid)
            head = self.pending.head() if self.pending else None
            if head is not None:
                self.pending.insert_before(head, slot)
            else:
                self.pending.append(slot)
            self.wbuf.insert(0, _tracking(tid))
        super()._on_ready()

    # -- receiving -------------------------------------------------------------------------

    def _deliver(self, frames: list[bytes]) -> None:
        pending = self.pending
        touched: list[Recipient] = []
        node = self.node
        done = 0
        for r in frames:
            if r[0] == push.PUSH:
                self._push(r, node.pushes, touched)  # out-of-band (RESP3): not a reply
                continue
            if not pending:
                self._fail("reply without a request", kind="protocol")
                break  # the replies before it are good: still flushed below
            done += 1
            if r[0] == 45 and r.startswith(b"-READONLY") and node.role == "primary":
                if node.listener is not None:
                    node.listener.readonly(node)
            s = pending.popleft().complete(r)
            if s is not None and not s.dirty:
                s.dirty = True
                touched.append(s)
        if done:  # a new oldest request: its timeout starts now (a push answers nothing)
            self.head_since = self.loop.time()
        now = clock()  # one reading for this batch of replies, its latency metrics too
        if node.latency is not None:
            self._observe(done, now)
        for s in touched:
            s.flush(now)

    def _observe(self, n: int, now: float) -> None:
        """Latency of ``n`` requests answered at ``now``: each write batch's requests share a
        send time."""
        batches = self.batches
        hist = self.node.latency
        series = self.node.latency_series
        while n and batches:
            batch = batches[0]
            k = batch[0] if batch[0] <= n else n
            hist.observe_many(series, now - batch[1], k)  # type: ignore[union-attr]
            n -= k
            if k == batch[0]:
                batches.popleft()
            else:
                batch[0] -= k

    # -- failures --------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(
            self.head_since + self.node.settings.command_timeout, self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        if not self.pending or self.state is DOWN or self.state is CLOSED:
            return
        timeout = self.node.settings.command_timeout
        if self.loop.time() >= self.head_since + timeout - 0.001:
            ms = int(timeout * 1000)
            err = errors.reply(
                "shard_timeout", shard=self.node.shard, node=self.node.address, ms=ms
            )
            self._fail(f"no reply within {ms} ms", err, kind="timeout")
        else:
            self._arm_timer()

    def _reset_state(self) -> None:
        self.tracked_id = 0  # a new connection is tracked again once it says OK
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.batches.clear()

    def _after_failure(self, reason: str) -> None:
        self.node.connection_failed(reason)
        self._schedule_reconnect()
