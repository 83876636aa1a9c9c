"""Blocked mode: BLPOP and friends on a leased connection, as one Redis connection would be.

A blocking command (BLPOP BRPOP BRPOPLPUSH BLMOVE BLMPOP BZPOPMIN BZPOPMAX BZMPOP, XREAD and
XREADGROUP with BLOCK) must never travel on a shared pipeline, where it would stall every
client behind it. Its keys must live on one shard (``-CROSSSLOT`` otherwise); it runs on a
lease to that shard's primary, with the block's own timeout (``0`` = forever) and a deadline
of that timeout plus ``timeouts.command_ms``. As on one Redis connection, the client's later
requests wait until it returns (they are kept, then run in order); the socket is still read,
so a client that hangs up is seen at once, until ``limits.max_pending_per_client`` requests
are kept, when reading pauses. ::

    NORMAL/WATCHING ── blocking command ─▶ lease on the shard's primary, command sent ─▶ BLOCKED
    BLOCKED ── later requests ─▶ kept, in order
            ── the reply (an element, a timeout's null, an error) ─▶ the client's; the lease
               goes back to the pool; back to the previous mode; the kept requests run
            ── the lease lost, or -UNBLOCKED (the node became a replica) ─▶ AWAITING
    AWAITING ── every 50 ms: the keys' shard has a usable primary ─▶ the command sent again,
               with the time left, on a lease to it ─▶ BLOCKED          (a block re-issued)
             ── the block's own time is up ─▶ its timeout's null reply
             ── 30 s without a usable primary ─▶ the error
    BLOCKED ── a reload moved the keys to another shard ─▶ CLIENT UNBLOCK (as a timeout) on
               the old node; its null reply ─▶ the command sent to the new owner
            ── the client leaves ─▶ CLIENT UNBLOCK at once, so a later push is not popped
               for nobody; a reply that still comes (the race) is logged with its key and
               counted, never dropped without a trace

Re-issuing is safe because no reply means nothing was popped. Inside MULTI a blocking
command is queued like any other and, as in Redis, does not block (transaction.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from time import perf_counter as clock

from shardproxy.backend.connection import READY
from shardproxy.backend.lease import NO_DEADLINE, Lease
from shardproxy.backend.node import Node
from shardproxy.backend.slots import Recipient, ReplySlot
from shardproxy.commands.table import CommandSpec, get_keys
from shardproxy.observe.metrics import Stats
from shardproxy.protocol import encode, errors, framing
from shardproxy.session.modes import (
    BLOCKED,
    UNBLOCKED,
    WATCHING,
    ClientMode,
    ModeClient,
    Pin,
    Request,
    next_mode,
)
from shardproxy.session.queue import QueuedReply

log = logging.getLogger("shardproxy.session")

RECOVERY_S = 30.0  # how long a block whose connection failed waits for a usable primary
POLL_S = 0.05
_UNBLOCK_GRACE_S = 0.2  # CLIENT UNBLOCK found nothing blocked: the reply may be on its way

_TIMEOUT_FIRST = frozenset({"blmpop", "bzmpop"})  # timeout numkeys key ...
_BULK_NULL = frozenset({"brpoplpush", "blmove"})  # time out with a null bulk, not array
_HEX = re.compile(rb"[+-]?0[xX]")
_LLONG_MAX = 2**63 - 1


class BlockRequest:
    """A blocking command, checked: its keys and its timeout (where it is in argv)."""

    __slots__ = ("argv", "index", "keys", "ms", "spec", "timeout")

    def __init__(
        self, spec: CommandSpec, argv: list[bytes], keys: list[bytes], index: int, timeout: float
    ) -> None:
        self.spec = spec
        self.argv = argv
        self.keys = keys
        self.index = index  # argv position of the timeout
        self.ms = spec.name in ("xread", "xreadgroup")  # BLOCK milliseconds, else seconds
        self.timeout = timeout  # seconds; 0 = forever

    def frame(self, left: float) -> bytes:
        """The command with ``left`` seconds as its timeout (0 keeps blocking forever)."""
        argv = list(self.argv)
        if self.timeout > 0:
            ms = max(1, math.floor(left * 1000))  # never more than is left
            argv[self.index] = b"%d" % ms if self.ms else b"%d.%03d" % divmod(ms, 1000)
        return encode.encode_command(argv)

    def null(self, proto: int) -> bytes:
        """What the command answers when its timeout passes."""
        if proto == 3:
            return b"_\r\n"
        return b"$-1\r\n" if self.spec.name in _BULK_NULL else b"*-1\r\n"


def parse(spec: CommandSpec, argv: list[bytes]) -> BlockRequest | bytes:
    """The request, or the error reply Redis gives for it (a bad timeout, keys of two shards
    are the caller's to check)."""
    name = spec.name
    if name in ("xread", "xreadgroup"):
        index = _block_option(argv, 1 if name == "xread" else 4) + 1
        text = argv[index] if index < len(argv) else b""
        if not framing.is_long(text):
            return b"-ERR timeout is not an integer or out of range\r\n"
        value = int(text) / 1000
    else:
        index = 1 if name in _TIMEOUT_FIRST else len(argv) - 1
        parsed = _long_double(argv[index])
        if parsed is None:
            return b"-ERR timeout is not a float or out of range\r\n"
        value = parsed
        if value * 1000 > _LLONG_MAX:
            return b"-ERR timeout is out of range\r\n"
    if value < 0:
        return b"-ERR timeout is negative\r\n"
    keys = [argv[i] for i in get_keys(spec, argv)]
    return BlockRequest(spec, argv, keys, index, value)


def _long_double(text: bytes) -> float | None:
    """The number strtold reads in ``text`` as Redis accepts it (all of it, no leading space,
    not NaN; decimal, exponent, hexadecimal, inf), or None."""
    if not text or text[:1].isspace() or b"_" in text:
        return None
    try:
        if _HEX.match(text):
            value = float.fromhex(text.decode("ascii"))
        else:
            value = float(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if math.isnan(value) or text[-1:].isspace():
        return None
    return value


def _block_option(argv: list[bytes], start: int) -> int:
    i = start
    while i < len(argv):
        option = argv[i].lower()
        if option == b"block":
            return i
        i += 2 if option == b"count" else 1
    return len(argv)


class LeaseAnswer(ReplySlot):
    """The lease's reply slot for one sending of the command."""

    __slots__ = ("mode", "turn")

    def __init__(self, mode: BlockedMode, turn: int) -> None:
        self.mode = mode
        self.turn = turn  # which sending this answers (a re-issue starts a new turn)

    def complete(self, reply: bytes) -> Recipient | None:
        return self.mode.answered(self.turn, reply, False)

    def fail(self, reply: bytes) -> Recipient | None:
        return self.mode.answered(self.turn, reply, True)


class ServerId(ReplySlot):
    """CLIENT ID of a lease, sent before its first block (what CLIENT UNBLOCK names) and
    before every re-issue: its answer says the re-issued block reached a node."""

    __slots__ = ("lease", "mode", "turn")

    def __init__(self, lease: Lease, mode: BlockedMode | None = None, turn: int = 0) -> None:
        self.lease = lease
        self.mode = mode  # a re-issue's: told when the node has it
        self.turn = turn

    def complete(self, reply: bytes) -> Recipient | None:
        if reply[:1] == b":":
            self.lease.server_id = int(reply[1:-2])
            mode = self.mode
            if mode is not None:
                mode.reissued(self.turn)
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        return None


class UnblockCheck(ReplySlot):
    """CLIENT UNBLOCK's answer: ``:0`` means the block had not started or already ended; if
    the lease still waits after a moment, it is closed (which ends any block on it)."""

    __slots__ = ("holder", "lease")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.holder = lease.holder  # the client that left (a lease given back has another)

    def complete(self, reply: bytes) -> Recipient | None:
        if reply != b":1\r\n":
            lease = self.lease
            lease.loop.call_later(_UNBLOCK_GRACE_S, _close_if_waiting, lease, self.holder)
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        self.lease.close("the blocked command could not be cancelled")
        return None


def _close_if_waiting(lease: Lease, holder: object) -> None:
    if lease.holder is holder and lease.pending:
        lease.close("the blocked command's client has gone")


class BlockedMode(ClientMode):
    """A client waiting for its blocking command's reply (see the module docstring)."""

    __slots__ = (
        "client",
        "counters",
        "deadline",
        "deferred",
        "demoted",
        "lease",
        "moving",
        "node",
        "pin",
        "poll",
        "recovering",
        "req",
        "shard",
        "slot",
        "started",
        "turn",
    )  # fmt: skip

    name = BLOCKED

    def __init__(self, counters: Stats, pin: Pin | None = None) -> None:
        self.counters = counters
        self.pin = pin  # a WATCH held across the block, given back afterwards
        self.client: ModeClient | None = None  # None once the mode has ended
        self.req: BlockRequest | None = None
        self.slot: QueuedReply | None = None  # the client's reply slot
        self.lease: Lease | None = None
        self.node: Node | None = None
        self.shard = ""
        self.deferred: list[Request] = []  # requests read while blocked, in order
        self.started = 0.0  # clock() when the command was first sent
        self.deadline = 0.0  # clock() when its own timeout passes (0: never)
        self.turn = 0
        self.recovering = 0.0  # clock() when the connection failed (0: not recovering)
        self.moving = False  # cancelled because a reload moved the keys: send it again
        self.demoted: Node | None = None  # a node that said it is no primary: not that one
        self.poll: asyncio.TimerHandle | None = None

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        self.deferred.append((spec, argv, frame))
        if len(self.deferred) >= client.host.limits.max_pending_per_client:
            client.hold_reading(True)  # enough kept: read no more until the block returns
        return True

    def start(self, client: ModeClient, req: BlockRequest, frame: bytes) -> None:
        """Send the command (the client has just entered this mode)."""
        self.client = client
        self.req = req
        self.slot = client.new_slot()
        self.started = clock()
        self.deadline = self.started + req.timeout if req.timeout > 0 else 0.0
        self.counters.blocks += 1
        self.send(frame)  # as the client wrote it; a re-issue says the time left

    def send(self, frame: bytes, reissue: bool = False) -> None:
        client = self.client
        req = self.req
        if client is None or req is None:
            return
        router = client.host.router
        index = router.shard_of_keys(req.keys)
        if index < 0:  # a reload put the keys on two shards
            self.finish_and_flush(errors.reply("crossslot"))
            return
        s = router.shards[index]
        node = s.primary
        lease = node.leases.acquire(client.proto, client.push_consumer())
        if lease is None:
            self.finish_and_flush(node.lease_limit_error())
            return
        self.shard = s.name
        self.node = node
        self.lease = lease
        if req.spec.write:
            client.wrote_to(index)
        self.turn += 1
        if reissue:
            lease.send(_CLIENT_ID, ServerId(lease, self, self.turn))
        elif lease.server_id < 0:
            lease.send(_CLIENT_ID, ServerId(lease))
        timeout = NO_DEADLINE
        if self.deadline:
            timeout = max(self.deadline - clock(), 0.0) + node.settings.command_timeout
        lease.send(frame, LeaseAnswer(self, self.turn), timeout)

    # -- the reply -------------------------------------------------------------------------

    def answered(self, turn: int, reply: bytes, failed: bool) -> Recipient | None:
        if turn != self.turn:
            return None  # a sending that was replaced
        lease, self.lease = self.lease, None
        if lease is not None and not failed:
            lease.release(clean=True)  # a blocking command leaves the connection as it was
        client = self.client
        req = self.req
        if req is None:
            return None
        if client is None:
            if not failed and not _is_null(reply) and reply[:1] != b"-":
                self.orphan(req, reply)  # the unavoidable race: popped as the client left
            return None
        if self.moving and not failed and _is_null(reply):
            self.moving = False  # unblocked because a reload moved the keys: go after them
            self.send(req.frame(self._left()), reissue=True)
            return None
        if failed and not _is_timeout(reply):
            self.recover(None)  # the node went away: a new primary, or the same one back
            return None
        if reply.startswith(_NOT_PRIMARY):
            self.recover(self.node)  # it stopped being a primary: wait for another
            return None
        return self.finish(reply)

    def orphan(self, req: BlockRequest, reply: bytes) -> None:
        self.counters.block_replies_orphaned += 1
        log.warning(
            "%s reply for a client that had left, read and dropped (key %r): %r",
            req.spec.name.upper(),
            (req.keys[0] if req.keys else b"")[:128],
            reply[:256],
        )

    # -- failover --------------------------------------------------------------------------

    def recover(self, demoted: Node | None) -> None:
        """The block's connection failed (``demoted`` None), or its node is no primary any
        more: wait for the keys' shard to have a usable primary (a new one after a failover,
        or, after a lost connection, the same one back), then send the command again."""
        if self.recovering == 0.0:
            self.recovering = clock()
        self.demoted = demoted
        self._schedule()

    def _schedule(self) -> None:
        node = self.node
        if node is None:
            return
        self.poll = node.loop.call_later(POLL_S, self._poll)

    def _poll(self) -> None:
        self.poll = None
        client = self.client
        req = self.req
        if client is None or req is None:
            return
        now = clock()
        if self.deadline and now >= self.deadline:
            self.finish_and_flush(req.null(client.proto))
            return
        router = client.host.router
        index = router.shard_of_keys(req.keys)
        if index < 0:
            self.finish_and_flush(errors.reply("crossslot"))
            return
        s = router.shards[index]
        if s.primary.usable and s.primary is not self.demoted:
            # (a primary not yet known to be dead refuses the connection: the next poll)
            self.send(req.frame(self._left()), reissue=True)
            return
        if now - self.recovering >= RECOVERY_S:
            node = s.primary
            self.finish_and_flush(
                errors.reply(
                    "shard_unavailable", shard=s.name, node=node.address, detail=node_detail(node)
                )
            )
            return
        self._schedule()

    def reissued(self, turn: int) -> None:
        """A re-issued block reached a node (it answered CLIENT ID): the recovery is over."""
        if turn == self.turn and self.client is not None:
            self.recovering = 0.0
            self.demoted = None
            self.counters.blocks_reissued += 1

    def _left(self) -> float:
        return max(self.deadline - clock(), 0.001) if self.deadline else 0.0

    # -- a reload moved the keys -----------------------------------------------------------

    def router_changed(self) -> None:
        client = self.client
        req = self.req
        lease = self.lease
        if client is None or req is None or lease is None:
            return
        router = client.host.router
        index = router.shard_of_keys(req.keys)
        if index >= 0 and router.shards[index].name == self.shard:
            return
        self.moving = True
        self.cancel(lease)

    def cancel(self, lease: Lease) -> None:
        """End the server-side block on ``lease`` at once (its reply, if any, still comes)."""
        node = self.node
        if lease.server_id >= 0 and lease.state is READY and node is not None:
            unblock = encode.encode_command([b"CLIENT", b"UNBLOCK", b"%d" % lease.server_id])
            node.connection(2, 0).send(unblock, UnblockCheck(lease))
        else:
            lease.close("the blocked command's client has gone")  # not started: nothing lost

    # -- ending ----------------------------------------------------------------------------

    def finish(self, reply: bytes) -> Recipient | None:
        """The client's reply is in: back to the previous mode; the kept requests run."""
        client = self.client
        slot = self.slot
        if client is None or slot is None:
            return None
        self.client = None
        slot.reply = reply
        deferred, self.deferred = self.deferred, []
        client.end_block(next_mode(BLOCKED, UNBLOCKED) if self.pin is None else WATCHING, deferred)
        return slot.session

    def finish_and_flush(self, reply: bytes) -> None:
        session = self.finish(reply)
        if session is not None:
            session.flush()

    def take_pin(self) -> Pin | None:
        pin, self.pin = self.pin, None
        return pin

    def close(self) -> None:
        """The mode ends: its reply came (nothing to do), or the client left (cancel)."""
        if self.poll is not None:
            self.poll.cancel()
            self.poll = None
        if self.client is None:
            return
        self.client = None  # the client has gone; a reply still to come is an orphan
        lease = self.lease
        if lease is not None:
            self.cancel(lease)


def node_detail(node: Node) -> str:
    error = node.last_error()
    return "no usable primary" if error in ("", "unknown") else error


#: replies of a node that is not (or not yet) a primary the command can block on
_NOT_PRIMARY = (b"-UNBLOCKED", b"-READONLY", b"-LOADING", b"-MASTERDOWN")


def _is_null(reply: bytes) -> bool:
    return reply in (b"*-1\r\n", b"$-1\r\n", b"_\r\n")


def _is_timeout(reply: bytes) -> bool:
    return b"did not answer within" in reply


_CLIENT_ID = encode.encode_command([b"CLIENT", b"ID"])
