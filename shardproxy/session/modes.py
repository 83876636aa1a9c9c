"""The client mode table: the modes a client connection can be in, what each allows, and the
transitions between them. Every mode change of a client goes through this module.

::

               ┌── WATCH (more keys, same shard) ──┐
               ▼                                   │
    NORMAL ── WATCH ──▶ WATCHING ──────────────────┘
      │  ▲                │  │
      │  └─ UNWATCH, RESET┘  └── MULTI ──┐       (the watched shard's lease goes along)
      │                                  ▼
      └────────── MULTI ─────────▶ TRANSACTION ── EXEC / DISCARD / RESET ──▶ NORMAL

    NORMAL or WATCHING ── BLPOP ... ──▶ BLOCKED ── its reply ──▶ back where it came from

    NORMAL or WATCHING ── SUBSCRIBE (RESP2) ──▶ SUBSCRIBED ── last UNSUBSCRIBE ──▶ back
                                                   └── RESET ──▶ NORMAL

Normal mode is no object at all (``ClientSession.mode is None``): the single-key fast path
tests one local boolean per request and nothing else. Any other mode is a
:class:`ClientMode`, whose :meth:`ClientMode.handle` sees every request the client sends while
in it; it answers the request, or returns False to let the session dispatch it as in normal
mode (QUIT and RESET, which Redis also runs at once inside a transaction). Each mode's state
machine lives in its own module, named in :data:`MODES`. A mode holding a leased connection
(a :class:`Pin`) hands it to the next mode with :meth:`take_pin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from shardproxy.backend.lease import Lease
from shardproxy.backend.node import Node
from shardproxy.backend.slots import PushConsumer
from shardproxy.commands.table import CommandSpec
from shardproxy.observe.metrics import Stats
from shardproxy.routing.router import Router
from shardproxy.session.queue import QueuedReply

NORMAL: Final = "normal"
WATCHING: Final = "watching"
TRANSACTION: Final = "transaction"
BLOCKED: Final = "blocked"
SUBSCRIBED: Final = "subscribed"
#: the transitions' pseudo-commands of blocked mode
BLOCKING: Final = "(a blocking command)"
UNBLOCKED: Final = "(its reply)"
#: ... and of subscribed mode (RESP2 clients only: a RESP3 client stays where it is)
SUBSCRIBING: Final = "(a first subscription, RESP2)"
UNSUBSCRIBED: Final = "(its last subscription ends)"

#: a request as the session parsed it: its spec (None if unknown), argv and raw frame
Request = tuple[CommandSpec | None, list[bytes], bytes]


@dataclass(frozen=True, slots=True)
class ModeRule:
    """One row of the mode table (the README's mode table is generated from it)."""

    name: str
    entered_by: str
    allows: str
    left_by: str
    module: str


MODES: Final[tuple[ModeRule, ...]] = (
    ModeRule(
        NORMAL,
        "connecting; leaving another mode",
        "every command, routed as the command table says",
        "-",
        "session.client",
    ),
    ModeRule(
        WATCHING,
        "WATCH (its keys on one shard)",
        "every command; those for the watched shard travel on the client's leased connection "
        "to its primary, the others as in normal mode; WATCH of keys on another shard is "
        "`-CROSSSLOT`",
        "UNWATCH, RESET (back to normal); MULTI (to transaction, keeping the lease)",
        "session.watch",
    ),
    ModeRule(
        BLOCKED,
        "a blocking command: BLPOP BRPOP BRPOPLPUSH BLMOVE BLMPOP BZPOPMIN BZPOPMAX BZMPOP, "
        "XREAD/XREADGROUP with BLOCK (keys on one shard)",
        "the command, on a leased connection to the shard's primary, with its own timeout; "
        "the client's later requests wait and run in order once it returns",
        "its reply (back to the mode it came from: normal, or watching)",
        "session.blocked",
    ),
    ModeRule(
        SUBSCRIBED,
        "SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE from a RESP2 client (a RESP3 client stays in its "
        "mode and gets messages as push frames between its replies)",
        "(P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PING (answered `pong` as an array), QUIT, RESET; "
        "anything else is `-ERR Can't execute ...`, as Redis says it; messages arrive between "
        "the replies",
        "the last UNSUBSCRIBE / PUNSUBSCRIBE / SUNSUBSCRIBE (back to normal, or watching), RESET",
        "session.subscribed",
    ),
    ModeRule(
        TRANSACTION,
        "MULTI",
        "commands are checked and queued in the proxy (`+QUEUED`); the first keyed one (or "
        "WATCH) decides the shard, a command for another shard is `-CROSSSLOT` (unless "
        "`transactions.cross_shard: per-shard`); QUIT and RESET run at once",
        "EXEC (MULTI + the queue + EXEC sent at once on a leased connection to the shard's "
        "primary; `-EXECABORT` after a refused command), DISCARD, RESET",
        "session.transaction",
    ),
)

#: (mode, command) -> the mode the client is in once the command is answered
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (NORMAL, "multi"): TRANSACTION,
    (NORMAL, "watch"): WATCHING,
    (WATCHING, "watch"): WATCHING,
    (WATCHING, "unwatch"): NORMAL,
    (WATCHING, "multi"): TRANSACTION,
    (WATCHING, "reset"): NORMAL,
    (NORMAL, BLOCKING): BLOCKED,
    (WATCHING, BLOCKING): BLOCKED,  # the watch is kept across the block
    (BLOCKED, UNBLOCKED): NORMAL,  # or WATCHING, when it came from there
    (NORMAL, SUBSCRIBING): SUBSCRIBED,
    (WATCHING, SUBSCRIBING): SUBSCRIBED,  # the watch is kept while subscribed
    (SUBSCRIBED, UNSUBSCRIBED): NORMAL,  # or WATCHING, when it came from there
    (SUBSCRIBED, "reset"): NORMAL,
    (TRANSACTION, "exec"): NORMAL,
    (TRANSACTION, "discard"): NORMAL,
    (TRANSACTION, "reset"): NORMAL,
}


def markdown_table() -> str:
    """The README's mode table (derived; never edit the README copy by hand)."""
    rows = ["| mode | entered by | what runs | left by | state machine |", "|---|---|---|---|---|"]
    for m in MODES:
        rows.append(
            f"| {m.name} | {m.entered_by} | {m.allows} | {m.left_by} | `shardproxy.{m.module}` |"
        )
    return "\n".join(rows) + "\n"


def next_mode(mode: str, command: str) -> str:
    """The mode after ``command`` (a command table name) is answered in ``mode``."""
    return TRANSITIONS.get((mode, command), mode)


class Limits(Protocol):
    @property
    def max_request_bytes(self) -> int: ...

    @property
    def max_pending_per_client(self) -> int: ...


class ModeHost(Protocol):
    """What a mode needs of the proxy (the session's host satisfies it)."""

    @property
    def router(self) -> Router[Node]: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def per_shard_transactions(self) -> bool:
        """``transactions.cross_shard: per-shard``."""
        ...

    def resolve_sub(self, spec: CommandSpec) -> CommandSpec: ...


class ModeClient(Protocol):
    """What a mode needs of the client session."""

    @property
    def host(self) -> ModeHost: ...

    @property
    def proto(self) -> int: ...

    def reply_now(self, reply: bytes) -> None: ...

    def new_slot(self) -> QueuedReply:
        """A reply slot for the request being dispatched, at the tail of the queue."""
        ...

    def add_slot(self, slot: QueuedReply) -> None:
        """Put a slot made elsewhere (a fan-out's) at the tail of the queue."""
        ...

    def push_consumer(self) -> PushConsumer:
        """The client as the holder of a lease."""
        ...

    def set_mode(self, name: str) -> None:
        """Leave the current mode for ``name`` (:data:`NORMAL` drops the mode object)."""
        ...

    def wrote_to(self, shard: int) -> None:
        """A write to ``shard`` (an index of the live router) that a later WAIT must cover."""
        ...

    def hold_reading(self, hold: bool) -> None:
        """Stop reading the client's socket (True) or read again (False)."""
        ...

    def end_block(self, back: str, deferred: list[Request]) -> None:
        """A blocking command's reply is in: back to mode ``back``, run ``deferred``."""
        ...


class Pin:
    """A client pinned to one shard: a leased connection to the shard's primary, held from
    WATCH until EXEC, DISCARD, UNWATCH or RESET (and across MULTI)."""

    __slots__ = ("lease", "node", "shard", "watching")

    def __init__(self, shard: str, node: Node, lease: Lease) -> None:
        self.shard = shard  # the shard's name (indexes change with a reload; names do not)
        self.node = node  # the primary the lease is connected to
        self.lease = lease
        self.watching = False  # a WATCH on it was answered +OK

    def release(self, clean: bool = False) -> None:
        self.lease.release(clean)


class ClientMode:
    """A mode other than normal: sees every request while the client is in it."""

    __slots__ = ()

    name: ClassVar[str] = NORMAL

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        """Answer one request (True), or leave it to normal dispatch (False)."""
        raise NotImplementedError

    def refuse(self, client: ModeClient, reply: bytes) -> None:
        """A request refused before the mode saw it (NOPERM): answered; a transaction also
        remembers it, so that EXEC aborts."""
        client.reply_now(reply)

    def take_pin(self) -> Pin | None:
        """Hand the leased connection this mode holds to the next mode: this mode forgets it,
        so :meth:`close` no longer gives it back. None if it holds none."""
        return None

    def router_changed(self) -> None:
        """A reload or an ejection published a new router (blocked mode follows its keys)."""

    def close(self) -> None:
        """The client left, or the mode ends: give back what the mode holds."""
