"""One client connection: parse, dispatch, and send replies back strictly in request order.

Every request gets a :class:`~shardproxy.session.queue.QueuedReply` at the tail of the
session's ``queue`` as it is parsed. It is completed (its ``reply`` set to raw bytes) by a
backend reply, by a fan-out merge, or at once for commands the proxy answers itself.
:meth:`ClientSession.flush` writes out the completed replies at the head of the queue, and only
those, so replies leave in request order however the backends interleave. Replies completed
during one backend read are flushed with one write. Frames the client did not ask for (pushes
from a leased connection) enter the same queue, before the reply they preceded, so replies and
pushes never overtake each other.

A client is in one mode at a time (``modes.py`` is the table); normal mode is the code below,
every other mode is an object that sees each request first.

Life of a session::

    OPEN ── QUIT / protocol error / drain ──▶ CLOSING ── queue empty ──▶ closed
      │                                                                   ▲
      └──────────────────────── client hangs up ──────────────────────────┘

When the client hangs up, its outstanding replies are detached (``reply.session = None``); the
backends still read and drop them, so no pipeline desyncs; its mode gives back what it holds.

Backpressure: reading from the client pauses while more than ``limits.max_pending_per_client``
requests are outstanding, or while the client's own socket buffer is full; it resumes at half.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter as clock
from typing import cast

from shardproxy.commands.acl import User, Users
from shardproxy.commands.table import (
    KIND_ALL,
    KIND_ANY,
    KIND_BLOCKING,
    KIND_DENIED,
    KIND_KEYED,
    KIND_LOCAL,
    KIND_MODE,
    KIND_NODES,
    KIND_PUBSUB,
    KIND_SCRIPT,
    KIND_SPLIT,
    CommandSpec,
    get_keys,
)
from shardproxy.protocol import encode, errors, requests
from shardproxy.session import blocked, subscribed, wait
from shardproxy.session.blocked import BlockedMode
from shardproxy.session.host import SessionHost
from shardproxy.session.modes import (
    BLOCKED,
    BLOCKING,
    NORMAL,
    SUBSCRIBED,
    TRANSACTION,
    WATCHING,
    ClientMode,
    Request,
    next_mode,
)
from shardproxy.session.pubsub import Subscriptions
from shardproxy.session.queue import QueuedReply
from shardproxy.session.replyslots import ClientPushes, ReplicaRead
from shardproxy.session.sending import UNKNOWN, Sending
from shardproxy.session.subscribed import SubscribedMode
from shardproxy.session.transaction import TransactionMode
from shardproxy.session.watch import WatchMode

log = logging.getLogger("shardproxy.session")


class ClientSession(Sending):
    """The proxy side of one client connection (an asyncio protocol by its methods; its base
    makes the backends' calls to it direct when compiled).

    ``request_cmd`` and ``request_time`` describe the request being dispatched: every queued
    reply made while dispatching it is counted as that command, read at that time."""

    __slots__ = (
        "_pushes",
        "checked",
        "closing",
        "counters",
        "held",
        "info",
        "mode",
        "name",
        "parser",
        "peer",
        "reading_paused",
        "stats",
        "subs",
        "table",
        "user",
        "write_paused",
    )

    def __init__(self, host: SessionHost) -> None:
        super().__init__(host)
        # the process's counters (never replaced, so held here rather than looked up per read)
        self.stats = host.stats
        self.counters = host.command_counters
        self.name: bytes | None = None  # CLIENT SETNAME
        self.info: dict[bytes, bytes] = {}  # CLIENT SETINFO lib-name / lib-ver
        limits = host.limits
        self.parser = requests.RequestParser(limits.max_request_bytes, limits.max_inline_bytes)
        # who the client is (commands/acl.py): its command table, and whether requests are
        # checked at all (not for a user allowed everything: the fast path stays as it is)
        self.user = host.users.initial
        self.table = host.users.table(self.user)
        self.checked = not self.user.unrestricted
        if self.user.unauthenticated:
            self.parser.require_auth(True)
        self.mode: ClientMode | None = None  # None: normal mode (modes.py)
        self._pushes: ClientPushes | None = None  # made when the client first holds a lease
        self.subs: Subscriptions | None = None  # made when the client first subscribes
        self.closing = False  # close once the queue is flushed; read nothing more
        self.reading_paused = False
        self.held = False  # reading stopped by the mode (a blocked command's later requests)
        self.write_paused = False
        self.peer = ""

    # -- connection events -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.request_time = clock()  # (idle since)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        if not self.host.client_connected(self):
            transport.write(errors.reply("too_many_clients"))
            transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for slot in self.queue:
            slot.session = None  # replies still in flight are read and dropped
        self.queue.clear()
        if self.subs is not None:
            self.host.pubsub.hub.drop(self.subs)
        if self.mode is not None:
            self.set_mode(NORMAL)
        self.host.client_disconnected(self)

    def eof_received(self) -> bool | None:
        return None  # the client shut its side: close (what asyncio.Protocol does)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._maybe_resume_reading()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self.reading_paused
            and not self.write_paused
            and not self.held
            and not self.closing
            and self.transport is not None
            and len(self.queue) <= self.live.max_pending // 2
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def push_consumer(self) -> ClientPushes:
        """This client as the holder of a lease (made on first use: most clients never hold
        one, and an idle connection should cost as little memory as it can)."""
        if self._pushes is None:
            self._pushes = ClientPushes(self, self)
        return self._pushes

    def subscriptions(self) -> Subscriptions:
        """This client's pub/sub subscriptions (made on first use, like the above)."""
        if self.subs is None:
            self.subs = Subscriptions(self, self)
        return self.subs

    # -- modes -----------------------------------------------------------------------------

    def set_mode(self, name: str) -> None:
        """Leave the current mode for ``name`` (the transitions are in modes.py). A leased
        connection the old mode holds goes to the new one, or back to its pool."""
        old = self.mode
        pin = old.take_pin() if old is not None else None
        if name == TRANSACTION:
            self.mode = TransactionMode(self.stats, pin)
        elif name == BLOCKED:
            self.mode = BlockedMode(self.stats, pin)
        elif name == WATCHING:
            self.mode = WatchMode(pin)
        elif name == SUBSCRIBED:
            self.mode = SubscribedMode(pin)
        else:
            self.mode = None
            if pin is not None:
                pin.release()
        if old is not None:
            old.close()

    def hold_reading(self, hold: bool) -> None:
        """A mode stops (or resumes) reading the client: while a blocking command waits, its
        later requests are kept, and no more are read."""
        self.held = hold
        if hold:
            self._pause_reading()
        else:
            self._maybe_resume_reading()

    def block(self, spec: CommandSpec, argv: list[bytes], frame: bytes) -> None:
        """A blocking command: checked, then run in blocked mode (session/blocked.py)."""
        req = blocked.parse(spec, argv)
        if isinstance(req, bytes):
            self.reply_now(req)
            return
        if not req.keys:
            self.send_to_shard(0, True, encode.encode_command(argv))  # malformed: Redis says why
            return
        if self.live.router.shard_of_keys(req.keys) < 0:
            self.reply_now(errors.reply("crossslot"))
            return
        following = next_mode(self.mode.name if self.mode is not None else NORMAL, BLOCKING)
        self.set_mode(following)
        mode = self.mode
        if isinstance(mode, BlockedMode):
            mode.start(self, req, frame)

    def wrote_to(self, shard: int) -> None:
        """A write to ``shard`` (an index of the live router) that WAIT must cover."""
        self.wrote |= 1 << shard

    def wait(self, argv: list[bytes]) -> None:
        """WAIT: on the shards written to since the last WAIT (session/wait.py)."""
        n = len(self.live.router.shards)
        mask, self.wrote = self.wrote, 0
        shards = [i for i in range(n) if mask & (1 << i)] if mask > 0 else list(range(n))
        wait.wait(self, argv, shards)

    def end_block(self, back: str, deferred: list[Request]) -> None:
        """The blocking command's reply is in: back to ``back``; the requests read meanwhile
        run now, in order (one of them may block again and keep the rest)."""
        self.set_mode(back)
        self.held = False
        for i, (spec, argv, frame) in enumerate(deferred):
            self.request_cmd = UNKNOWN if spec is None else spec.index
            self.request_time = clock()
            try:
                self.dispatch(spec, argv, frame)
            except Exception as exc:  # a bug must not take the connection down
                log.exception("internal error on %r", argv[0][:64])
                self.reply_now(errors.reply("internal", detail=f"{type(exc).__name__}: {exc}"))
            mode = self.mode
            if isinstance(mode, BlockedMode):
                mode.deferred.extend(deferred[i + 1 :])
                break
            if self.closing:
                break
        if len(self.queue) > self.live.max_pending:
            self._pause_reading()
        else:
            self._maybe_resume_reading()

    def router_changed(self) -> None:
        """A new router was published (reload, ejection): a blocked command follows its keys;
        shard numbers may have changed, so the next WAIT asks every shard."""
        if self.wrote:
            self.wrote = -1
        if self.mode is not None:
            self.mode.router_changed()

    def blocked_shard(self) -> str | None:
        """The shard this client's blocking command waits on, if it is blocked."""
        mode = self.mode
        if isinstance(mode, BlockedMode) and mode.client is not None:
            return mode.shard
        return None

    def authenticate(self, name: bytes, password: bytes) -> bool:
        """AUTH / HELLO AUTH: become user ``name`` if ``password`` is one of its passwords.
        A failure is counted and logged, without the password."""
        user = self.host.users.check(name, password)
        if user is None:
            self.stats.auth_failures += 1
            log.warning(
                "AUTH failed for user %r from %s", name[:64].decode("utf-8", "replace"), self.peer
            )
            return False
        self.set_user(user)
        return True

    @property
    def auth_configured(self) -> bool:
        return self.host.users.required

    def users_changed(self, users: Users) -> bool:
        """A reload compiled the users again: act as this user's new self (False: it is gone
        or off, and the client must go)."""
        if self.user.unauthenticated:
            self.set_user(users.initial)
            return True
        new = users.by_name.get(self.user.name)
        if new is None or not new.enabled:
            log.warning(
                "client %s disconnected: its user %r was removed", self.peer, self.user.name
            )
            return False
        self.set_user(new)
        return True

    def idle_since(self) -> float:
        if self.queue or self.mode is not None or (self.subs is not None and self.subs.total()):
            return -1.0
        return self.request_time

    def close_idle(self) -> None:
        log.info("client %s closed: idle (limits.client_idle_timeout_s)", self.peer)
        if self.transport is not None:
            self.transport.close()

    def set_user(self, user: User) -> None:
        """Act as ``user`` from the next request on (AUTH, or a reload that changed it)."""
        self.user = user
        self.table = self.host.users.table(user)
        self.checked = not user.unrestricted
        self.parser.require_auth(user.unauthenticated)

    def switch_protocol(self, proto: int) -> None:
        """HELLO 2 or 3: a client with subscriptions enters or leaves subscribed mode, which
        RESP2 clients only have."""
        self.proto = proto
        if self.subs is not None and self.subs.total():
            subscribed.protocol_changed(self)

    def reset_connection(self) -> None:
        """RESET: RESP2, no name, normal mode, no subscriptions."""
        self.proto = 2
        self.name = None
        if self.subs is not None:
            self.host.pubsub.hub.drop(self.subs)
        if self.mode is not None:
            self.set_mode(NORMAL)

    # -- requests --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        parser = self.parser
        reqs = parser.feed(data)
        stats = self.stats
        stats.commands += len(reqs)
        stats.bytes_in += len(data)
        now = self.request_time = clock()
        table = self.table
        queue = self.queue
        proto = self.proto
        cid = self.id
        live = self.live
        router = live.router  # a reload swaps the router between reads, never during one
        ring = router.ring
        shards = router.shards
        direct = router.direct
        # replica reads, no migration: reads take the inline path too
        replica_fast = router.replica_reads and router.migration is None
        ryw = live.read_your_writes
        normal = self.mode is None
        wrote = 0
        hot = live.hotkeys
        countdown = hot.countdown  # one single-key request in hot.sample is counted
        cache = live.cache  # None unless cache.enabled
        for argv, frame in reqs:
            spec = table.get(argv[0])
            if spec is None:
                spec = table.get(argv[0].lower())
            # The hot path, inline: a command with one key at argv[1], in normal mode.
            if normal and spec is not None and spec.single_key:
                n = len(argv)
                arity = spec.arity
                if n == arity or (arity < 0 and n >= -arity):
                    i = ring.shard_index(argv[1])
                    countdown -= 1
                    if countdown == 0:
                        countdown = hot.sample
                        hot.record(shards[i].name, argv[1])
                    if cache is not None:
                        key = argv[1]
                        if spec.write:
                            cache.drop(key)  # before the write is sent (read-your-writes)
                        elif spec.name == "get" and cache.cacheable(key):
                            self.request_cmd = spec.index
                            self.cached_get(i, key, frame)
                            continue
                    if direct:
                        slot = QueuedReply(self, spec.index, now)
                        queue.append(slot)
                        if spec.write:
                            wrote |= 1 << i
                        shards[i].primary.connection(proto, cid).send(frame, slot)
                    elif replica_fast and not spec.write:
                        # a read under a replica read policy, inline as above (pick() and
                        # send_leg() without their attribute look-ups)
                        s = shards[i]
                        writes = self.writes
                        recent = bool(ryw and writes and now - writes.get(s.name, -1e18) < ryw)
                        node = router.node(i, False, recent)
                        if node is None:
                            self.request_cmd = spec.index
                            self.send_to_shard(i, False, frame, (argv[1],))
                            continue
                        if node is s.primary:
                            slot = QueuedReply(self, spec.index, now)
                        else:
                            slot = ReplicaRead(self, spec.index, now, frame, s.primary)
                        queue.append(slot)
                        node.connection(proto, cid).send(frame, slot)
                    else:
                        self.request_cmd = spec.index
                        self.send_to_shard(i, spec.write, frame, (argv[1],))
                    continue
            self.request_cmd = UNKNOWN if spec is None else spec.index
            try:
                self.dispatch(spec, argv, frame)
            except Exception as exc:  # a bug must not take the connection down
                log.exception("internal error on %r", argv[0][:64])
                self.reply_now(errors.reply("internal", detail=f"{type(exc).__name__}: {exc}"))
            if self.closing:
                break
            proto = self.proto  # HELLO may have switched it
            normal = self.mode is None  # MULTI, EXEC ... may have switched the mode
        hot.countdown = countdown
        if wrote:
            self.wrote |= wrote
        if parser.error is not None and not self.closing:
            self.request_cmd = UNKNOWN
            self.reply_now(errors.reply("protocol", detail=parser.error))
            self.closing = True
        if queue:
            if queue.head().reply is not None:
                self.flush()  # replies the proxy answered itself
            if len(queue) > live.max_pending:
                self._pause_reading()
        if self.closing:
            self.flush()
            self._pause_reading()

    def dispatch(self, spec: CommandSpec | None, argv: list[bytes], frame: bytes) -> None:
        """Every request that is not the single-key fast path."""
        if self.checked and spec is not None:
            refusal = self.user.refusal(spec, argv)  # NOAUTH, NOPERM (commands/acl.py)
            if refusal is not None:
                if self.mode is not None:
                    self.mode.refuse(self, refusal)  # (a transaction then aborts at EXEC)
                else:
                    self.reply_now(refusal)
                return
        cache = self.live.cache
        if spec is not None and spec.write and spec.has_keys and cache is not None:
            for i in get_keys(spec, argv):  # cached values of keys about to change go first
                cache.drop(argv[i])
        mode = self.mode
        if mode is not None and mode.handle(self, spec, argv, frame):
            return
        if spec is None:
            name = errors.command_name(argv[0])
            self.reply_now(
                errors.reply("unknown_command", name=name, args=errors.quote_args(argv[1:]))
            )
            return
        n = len(argv)
        arity = spec.arity
        if not (n == arity or (arity < 0 and n >= -arity)):
            self.reply_now(errors.reply("arity", name=spec.name))
            return
        if spec.subcommands and n >= 2:
            sub = spec.subcommands.get(argv[1].lower())
            if sub is None:
                self.reply_now(
                    errors.reply(
                        "subcommand",
                        sub=argv[1].decode("utf-8", "replace"),
                        name=spec.name.upper(),
                    )
                )
                return
            spec = self.host.resolve_sub(sub)
            self.request_cmd = spec.index
            arity = spec.arity
            if not (n == arity or (arity < 0 and n >= -arity)):
                self.reply_now(errors.reply("arity", name=spec.name))
                return
        kind = spec.kind
        if kind == KIND_KEYED:
            self.forward_keyed(spec, argv, frame)
        elif kind == KIND_LOCAL:
            self.host.builtin.handle(self, spec, argv)
        elif kind == KIND_SPLIT:
            self.split(spec, argv, frame)
        elif kind == KIND_ALL:
            self.host.fanout.all_shards(self, spec, argv, frame)
        elif kind == KIND_ANY:
            self.forward_any(spec, frame)
        elif kind == KIND_MODE:
            self.mode_command(spec, argv, frame)
        elif kind == KIND_SCRIPT:
            self.host.scripts.forward(self, spec, argv, frame)
        elif kind == KIND_NODES:
            self.host.scripts.all_nodes(self, spec, argv, frame)
        elif kind == KIND_PUBSUB:
            self.host.pubsub.handle(self, spec, argv, frame)
        elif kind == KIND_BLOCKING:
            if spec.name == "wait":
                self.wait(argv)
            else:
                self.block(spec, argv, frame)
        elif kind == KIND_DENIED:
            self.reply_now(errors.reply("denied", name=spec.name.replace("|", " ")))
        else:
            self.reply_now(errors.reply("unsupported", name=spec.name.replace("|", " ")))

    def mode_command(self, spec: CommandSpec, argv: list[bytes], frame: bytes) -> None:
        """MULTI, EXEC, DISCARD, WATCH, UNWATCH in normal mode (and EXEC, DISCARD handed back
        by watching mode); other modes answer them themselves."""
        name = spec.name
        following = next_mode(NORMAL, name)
        if following == WATCHING:
            self.set_mode(WATCHING)
            mode = self.mode
            if mode is not None:
                mode.handle(self, spec, argv, frame)
        elif following != NORMAL:
            self.reply_now(encode.OK)
            self.set_mode(following)
        elif name == "unwatch":
            self.reply_now(encode.OK)  # nothing watched: Redis says OK too
        else:
            self.reply_now(errors.reply(f"{name}_without_multi"))

    def close_after_reply(self) -> None:
        """QUIT: answer what was asked so far, then close."""
        self.closing = True

    # -- replies ---------------------------------------------------------------------------

    def flush(self, now: float = -1.0) -> None:
        """Write the completed replies at the head of the queue, in order, with one write.
        ``now``: clock() when the replies were read (latency metrics), -1 to read it here."""
        self.dirty = False
        q = self.queue
        # (the head is read into a local before each test: mypyc trusts mypy's narrowing of
        # an attribute of an expression, which the popleft() below would make stale)
        head = q.head() if q else None
        if head is not None and head.reply is not None:
            counters = self.counters
            if counters is not None and now < 0:
                now = clock()
            first = b""
            out: list[bytes] | None = None
            # metrics: each reply's latency by command (the histogram's count is the command
            # count), and errors by command. Replies of one read share t0, so runs of replies
            # with the same command and read time are counted at once.
            run_c = -1
            run_t0 = 0.0
            run_n = 0
            while q:
                slot = q.head()
                done: bytes | None = slot.reply
                if done is None:
                    break
                q.popleft()
                if out is not None:
                    out.append(done)
                elif first:
                    out = [first, done]
                else:
                    first = done
                if counters is not None:
                    c = slot.cmd
                    if c < 0:
                        continue  # a pushed frame, not a reply
                    if done[0] == 45:  # '-': an error reply
                        counters.errors[c] += 1
                    if c == run_c and slot.t0 == run_t0:
                        run_n += 1
                        continue
                    if run_n:
                        counters.latency.observe_many(run_c, now - run_t0, run_n)
                    run_c, run_t0, run_n = c, slot.t0, 1
            if counters is not None and run_n:
                counters.latency.observe_many(run_c, now - run_t0, run_n)
            data = first if out is None else b"".join(out)
            self.stats.bytes_out += len(data)
            t = self.transport
            if t is not None:
                t.write(data)
                if self.write_paused:
                    self._check_unread(t)
            if self.reading_paused:
                self._maybe_resume_reading()
        if self.closing and not q and self.transport is not None:
            self.transport.close()

    def _check_unread(self, t: asyncio.Transport) -> None:
        """A client that does not read: once more than limits.max_unread_bytes wait for it,
        it is disconnected (reading it has been paused since the buffer filled)."""
        limit = self.host.limits.max_unread_bytes
        size = t.get_write_buffer_size()
        if limit and size > limit:
            self.stats.client_disconnects["unread"] += 1
            log.warning(
                "client %s disconnected: %d bytes of replies unread (limits.max_unread_bytes)",
                self.peer,
                size,
            )
            self.closing = True
            self.transport = None  # nothing more is written or counted for it
            t.abort()

    def abort(self) -> None:
        """Drop the connection now (shutdown, after the drain timeout)."""
        if self.transport is not None:
            self.transport.abort()

    def begin_drain(self) -> None:
        """Shutdown: read nothing more; close once the outstanding replies are written."""
        self.closing = True
        self._pause_reading()
        self.flush()
