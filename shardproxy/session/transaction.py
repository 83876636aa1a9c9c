"""Transaction mode, as far as the proxy goes today: MULTI ... EXEC never runs anything.

Entered by MULTI (answered ``+OK``). Until transactions are executed on a leased connection,
no command after MULTI is run: each is answered with an error saying it was not queued, and
the transaction is marked, so EXEC answers ``-EXECABORT`` just as Redis does after a command
was refused while queueing. The application is never told a transaction failed while its
writes were applied. ::

    MULTI ─▶ TRANSACTION(clean) ── any other command ─▶ TRANSACTION(refused)
                  │   ▲                                        │
                  │   └ MULTI, WATCH: an error, nothing else ──┤
                  ▼                                            ▼
      EXEC: empty array; DISCARD: +OK          EXEC: -EXECABORT; DISCARD: +OK
                  └──────────── back to normal mode ───────────┘

QUIT and RESET run at once (RESET also leaves the mode).
"""

from __future__ import annotations

from shardproxy.commands.table import CommandSpec, arity_ok
from shardproxy.protocol import encode, errors
from shardproxy.session.modes import NORMAL, TRANSACTION, ClientMode, ModeClient, next_mode

_AT_ONCE = frozenset({"quit", "reset"})


class TransactionMode(ClientMode):
    """One client's MULTI, until EXEC, DISCARD or RESET."""

    __slots__ = ("refused",)

    name = TRANSACTION

    def __init__(self) -> None:
        self.refused = 0  # commands answered "not queued" since MULTI

    def handle(
        self, client: ModeClient, spec: CommandSpec | None, argv: list[bytes], frame: bytes
    ) -> bool:
        if spec is None:
            name = argv[0].decode("utf-8", "replace")
            self.refused += 1
            client.reply_now(
                errors.reply("unknown_command", name=name, args=errors.quote_args(argv[1:]))
            )
            return True
        name = spec.name
        if name in _AT_ONCE:
            return False
        if not arity_ok(spec, len(argv)):
            self.refused += 1
            client.reply_now(errors.reply("arity", name=name))
            return True
        if name == "exec":
            client.reply_now(errors.reply("execabort") if self.refused else encode.array([]))
        elif name == "discard":
            client.reply_now(encode.OK)
        elif name == "multi":
            client.reply_now(errors.reply("multi_nested"))
        elif name == "watch":
            client.reply_now(errors.reply("watch_in_multi"))
        else:
            self.refused += 1
            client.reply_now(errors.reply("not_queued", name=name))
        following = next_mode(TRANSACTION, name)
        if following == NORMAL:
            client.set_mode(NORMAL)
        return True
