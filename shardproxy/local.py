"""Commands the proxy answers itself: the connection handshake, COMMAND, INFO and friends.

These are the commands client libraries send on connect (HELLO, AUTH, CLIENT SETNAME/SETINFO,
SELECT 0) and the ones whose answer must describe the whole fleet rather than one node (INFO's
keyspace, COMMAND from the proxy's own command table). Each handler is one entry of
:data:`LocalCommands.HANDLERS`, keyed by the command table's name (``client|setname``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardproxy import __version__, commands, compiled_modules, errors, resp
from shardproxy.commands import CommandSpec

if TYPE_CHECKING:
    from shardproxy.fanout import Gather
    from shardproxy.runtime import ProxyContext
    from shardproxy.session import ClientSession

Handler = Callable[["LocalCommands", "ClientSession", list[bytes]], None]

#: What HELLO reports as the server version: the Redis command set the proxy implements.
REDIS_COMPAT_VERSION = b"7.0.0"


def _b(text: str) -> bytes:
    return text.encode()


class LocalCommands:
    """Answers the KIND_LOCAL commands of the command table for one proxy."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    def handle(self, session: ClientSession, spec: CommandSpec, argv: list[bytes]) -> None:
        handler = self.HANDLERS.get(spec.name)
        if handler is None:
            session.reply_now(errors.reply("unsupported", name=spec.name.replace("|", " ")))
            return
        handler(self, session, argv)

    # -- connection ------------------------------------------------------------------------

    def ping(self, s: ClientSession, argv: list[bytes]) -> None:
        if len(argv) > 2:
            s.reply_now(errors.reply("arity", name="ping"))
        elif len(argv) == 2:
            s.reply_now(resp.bulk(argv[1]))
        else:
            s.reply_now(resp.PONG)

    def echo(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.bulk(argv[1]))

    def quit(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.OK)
        s.close_after_reply()

    def select(self, s: ClientSession, argv: list[bytes]) -> None:
        if argv[1] == b"0":
            s.reply_now(resp.OK)
        elif argv[1].lstrip(b"-").isdigit():
            s.reply_now(errors.reply("select"))
        else:
            s.reply_now(errors.reply("not_integer"))

    def auth(self, s: ClientSession, argv: list[bytes]) -> None:
        # The proxy has no client password: like a Redis whose default user is "nopass",
        # AUTH <user> <anything> succeeds and AUTH <password> alone is refused.
        if len(argv) == 2:
            s.reply_now(errors.reply("auth_nopass"))
        elif len(argv) == 3:
            s.reply_now(resp.OK)
        else:
            s.reply_now(errors.reply("syntax"))

    def hello(self, s: ClientSession, argv: list[bytes]) -> None:
        proto = s.proto
        name = s.name
        i = 1
        if len(argv) > 1:
            try:
                proto = int(argv[1])
            except ValueError:
                s.reply_now(errors.reply("not_integer"))
                return
            if proto not in (2, 3):
                s.reply_now(errors.reply("noproto"))
                return
            i = 2
        while i < len(argv):
            opt = argv[i].lower()
            if opt == b"auth" and i + 2 < len(argv):
                i += 3
            elif opt == b"setname" and i + 1 < len(argv):
                name = argv[i + 1]
                if not _valid_name(name):
                    s.reply_now(_bad_name())
                    return
                i += 2
            else:
                s.reply_now(
                    b"-ERR Syntax error in HELLO option '"
                    + argv[i].decode("utf-8", "replace").encode()[:64]
                    + b"'\r\n"
                )
                return
        s.proto = proto
        s.name = name
        fields = [
            (b"server", resp.bulk(b"redis")),
            (b"version", resp.bulk(REDIS_COMPAT_VERSION)),
            (b"proto", resp.integer(proto)),
            (b"id", resp.integer(s.id)),
            (b"mode", resp.bulk(b"standalone")),
            (b"role", resp.bulk(b"master")),
            (b"modules", resp.array([])),
            (b"proxy", resp.bulk(b"shardproxy " + _b(__version__))),
        ]
        s.reply_now(resp.map_reply([(resp.bulk(k), v) for k, v in fields], proto))

    def reset(self, s: ClientSession, argv: list[bytes]) -> None:
        s.proto = 2
        s.name = None
        s.reply_now(b"+RESET\r\n")

    # -- CLIENT ----------------------------------------------------------------------------

    def client_setname(self, s: ClientSession, argv: list[bytes]) -> None:
        name = argv[2]
        if not _valid_name(name):
            s.reply_now(_bad_name())
            return
        s.name = name or None
        s.reply_now(resp.OK)

    def client_getname(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.bulk(s.name, s.proto))

    def client_setinfo(self, s: ClientSession, argv: list[bytes]) -> None:
        attr = argv[2].lower()
        if attr not in (b"lib-name", b"lib-ver"):
            s.reply_now(
                b"-ERR Unrecognized option '"
                + argv[2][:64].replace(b"\r", b"").replace(b"\n", b"")
                + b"'\r\n"
            )
            return
        s.info[attr] = argv[3]
        s.reply_now(resp.OK)

    def client_id(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.integer(s.id))

    def client_ok(self, s: ClientSession, argv: list[bytes]) -> None:
        """CLIENT NO-EVICT / NO-TOUCH on|off: accepted; they only concern the proxy's client."""
        if argv[2].lower() not in (b"on", b"off"):
            s.reply_now(errors.reply("syntax"))
        else:
            s.reply_now(resp.OK)

    def client_info(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.verbatim(self.client_line(s), s.proto))

    def client_line(self, s: ClientSession) -> bytes:
        return b"id=%d addr=%s name=%s resp=%d lib-name=%s lib-ver=%s db=0\n" % (
            s.id,
            _b(s.peer),
            s.name or b"",
            s.proto,
            s.info.get(b"lib-name", b""),
            s.info.get(b"lib-ver", b""),
        )

    # -- COMMAND ---------------------------------------------------------------------------

    def command(self, s: ClientSession, argv: list[bytes]) -> None:
        """COMMAND with no subcommand: every command's info."""
        s.reply_now(resp.array([_command_info(spec, s.proto) for spec in _top_specs()]))

    def command_count(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.integer(len(commands.COMMANDS)))

    def command_list(self, s: ClientSession, argv: list[bytes]) -> None:
        s.reply_now(resp.array([resp.bulk(_b(spec.name)) for spec in _top_specs()]))

    def command_info(self, s: ClientSession, argv: list[bytes]) -> None:
        if len(argv) == 2:
            self.command(s, argv)
            return
        items = []
        for name in argv[2:]:
            spec = commands.resolve([name])
            items.append(_command_info(spec, s.proto) if spec else resp.null_array(s.proto))
        s.reply_now(resp.array(items))

    def command_docs(self, s: ClientSession, argv: list[bytes]) -> None:
        specs = (
            _top_specs()
            if len(argv) == 2
            else [sp for sp in (commands.resolve([n]) for n in argv[2:]) if sp is not None]
        )
        pairs = [(resp.bulk(_b(sp.name)), _command_doc(sp, s.proto)) for sp in specs]
        s.reply_now(resp.map_reply(pairs, s.proto))

    def command_getkeys(self, s: ClientSession, argv: list[bytes]) -> None:
        cmd = argv[2:]
        spec = commands.resolve(cmd)
        if spec is None:
            s.reply_now(b"-ERR Invalid command specified\r\n")
            return
        if not commands.arity_ok(spec, len(cmd)):
            s.reply_now(b"-ERR Invalid number of arguments specified for command\r\n")
            return
        keys = commands.get_keys(spec, cmd)
        if not keys:
            s.reply_now(b"-ERR The command has no key arguments\r\n")
            return
        s.reply_now(resp.array([resp.bulk(cmd[i]) for i in keys]))

    # -- INFO ------------------------------------------------------------------------------

    def info(self, s: ClientSession, argv: list[bytes]) -> None:
        wanted = {a.lower() for a in argv[1:]} or {b"default"}
        self.ctx.fanout.broadcast(
            s, resp.encode_command([b"INFO", b"keyspace"]), self._merge_info, wanted
        )

    def _merge_info(self, g: Gather) -> bytes:
        wanted: set[bytes] = g.data  # type: ignore[assignment]
        keyspace: dict[str, dict[str, int]] = {}
        for raw in g.results:
            if resp.is_error(raw):
                continue  # a down shard: its keys are simply not counted
            text = (resp.parse_bulk(raw) or b"").decode()
            for line in text.splitlines():
                if not line.startswith("db"):
                    continue
                db, _, fields = line.partition(":")
                acc = keyspace.setdefault(db, {})
                for field in fields.split(","):
                    k, _, v = field.partition("=")
                    if k in ("keys", "expires"):
                        acc[k] = acc.get(k, 0) + int(v)
        sections = self.ctx.info_sections(keyspace)
        everything = bool(wanted & {b"all", b"everything"})
        default = everything or b"default" in wanted
        parts = []
        for name, lines in sections:
            if everything or default or name.lower().encode() in wanted:
                parts.append(f"# {name}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in lines))
        return resp.verbatim("\r\n".join(parts).encode(), g.proto)

    HANDLERS: dict[str, Handler] = {
        "ping": ping,
        "echo": echo,
        "quit": quit,
        "select": select,
        "auth": auth,
        "hello": hello,
        "reset": reset,
        "client|setname": client_setname,
        "client|getname": client_getname,
        "client|setinfo": client_setinfo,
        "client|id": client_id,
        "client|no-evict": client_ok,
        "client|no-touch": client_ok,
        "client|info": client_info,
        "command": command,
        "command|count": command_count,
        "command|list": command_list,
        "command|info": command_info,
        "command|docs": command_docs,
        "command|getkeys": command_getkeys,
        "info": info,
    }


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


def _bad_name() -> bytes:
    return b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"


def _top_specs() -> list[CommandSpec]:
    return sorted(commands.COMMANDS.values(), key=lambda sp: sp.name)


def _command_info(spec: CommandSpec, proto: int) -> bytes:
    flags = resp.array([resp.simple(_b(f)) for f in spec.flag_list])
    subs = (
        [
            _command_info(sub, proto)
            for sub in sorted(spec.subcommands.values(), key=lambda x: x.name)
        ]
        if spec.subcommands
        else []
    )
    return resp.array(
        [
            resp.bulk(_b(spec.name)),
            resp.integer(spec.arity),
            flags,
            resp.integer(spec.first_key),
            resp.integer(spec.last_key),
            resp.integer(spec.key_step),
            resp.array([resp.simple(_b(c)) for c in spec.acl_categories]),
            resp.array([resp.bulk(_b(t)) for t in spec.tips]),
            resp.array([]),  # key specs: COMMAND GETKEYS answers from them
            resp.array(subs),
        ]
    )


def _command_doc(spec: CommandSpec, proto: int) -> bytes:
    fields = [
        (resp.bulk(b"summary"), resp.bulk(_b(spec.summary))),
        (resp.bulk(b"since"), resp.bulk(_b(spec.since))),
        (resp.bulk(b"group"), resp.bulk(_b(spec.group))),
    ]
    return resp.map_reply(fields, proto)


def process_info(start_time: float) -> list[tuple[str, object]]:
    """The ``server`` section lines common to every INFO reply."""
    return [
        ("redis_version", REDIS_COMPAT_VERSION.decode()),
        ("shardproxy_version", __version__),
        # "compiled" when the per-request modules run as the C extension (README: Development)
        ("shardproxy_build", "compiled" if compiled_modules() else "python"),
        ("redis_mode", "standalone"),
        ("process_id", os.getpid()),
        ("uptime_in_seconds", int(time.time() - start_time)),
    ]
