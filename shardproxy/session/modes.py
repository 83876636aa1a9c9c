"""The client mode table: the modes a client connection can be in, what each allows, and the
transitions between them. Every mode change of a client goes through this module.

::

    NORMAL ── MULTI ──▶ TRANSACTION ── EXEC / DISCARD / RESET ──▶ NORMAL

(The blocking and pub/sub modes join this table when they are built.)

Normal mode is no object at all (``ClientSession.mode is None``): the single-key fast path
tests one local boolean per request and nothing else. Any other mode is a
:class:`ClientMode`, whose :meth:`ClientMode.handle` sees every request the client sends while
in it; it answers the request, or returns False to let the session dispatch it as in normal
mode (QUIT and RESET, which Redis also runs at once inside a transaction). Each mode's state
machine lives in its own module, named in :data:`MODES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from shardproxy.commands.table import CommandSpec

NORMAL: Final = "normal"
TRANSACTION: Final = "transaction"


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
        TRANSACTION,
        "MULTI",
        "EXEC, DISCARD, QUIT and RESET run at once; every other command is answered "
        "`-ERR ... was not queued` and nothing runs (transactions are not executed yet); "
        "MULTI and WATCH are errors, as in Redis",
        "EXEC (`-EXECABORT`, or an empty array if nothing was sent), DISCARD, RESET",
        "session.transaction",
    ),
)

#: (mode, command) -> the mode the client is in once the command is answered
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (NORMAL, "multi"): TRANSACTION,
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


class ModeClient(Protocol):
    """What a mode needs of the client session."""

    def reply_now(self, reply: bytes) -> None: ...

    def set_mode(self, name: str) -> None:
        """Leave the current mode for ``name`` (:data:`NORMAL` drops the mode object)."""
        ...


class ClientMode:
    """A mode other than normal: sees every request while the client is in it."""

    __slots__ = ()

    name: ClassVar[str] = NORMAL

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        """Answer one request (True), or leave it to normal dispatch (False)."""
        raise NotImplementedError

    def close(self) -> None:
        """The client left, or the mode ends: give back what the mode holds."""
