"""Commands the proxy answers itself: the connection handshake, COMMAND, INFO and friends.

These are the commands client libraries send on connect (HELLO, AUTH, CLIENT SETNAME/SETINFO,
SELECT 0) and the ones whose answer must describe the whole fleet rather than one node (INFO's
keyspace, COMMAND from the proxy's own command table). Each handler is one entry of
:data:`HANDLERS`, keyed by the command table's name (``client|setname``).

Identity is never faked. Until client authentication is configured the proxy behaves like a
Redis whose only user is ``default`` with ``nopass``: ``AUTH default <anything>`` and
``HELLO ... AUTH default <anything>`` succeed, any other user is ``-WRONGPASS``, and
``AUTH <password>`` alone is refused as Redis refuses it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol

from shardproxy import __version__, compiled_modules
from shardproxy.commands import acl
from shardproxy.commands import table as commands
from shardproxy.commands.acl import User
from shardproxy.commands.table import CommandSpec
from shardproxy.protocol import encode, errors, replies
from shardproxy.session.fanout import Fanout, Gather, LegSender

#: What HELLO reports as the server version: the Redis command set the proxy implements.
REDIS_COMPAT_VERSION = b"7.0.0"


def _b(text: str) -> bytes:
    return text.encode()


class BuiltinClient(LegSender, Protocol):
    """What the handlers need of a client session."""

    proto: int  # HELLO sets it (switch_protocol)
    id: int
    name: bytes | None
    info: dict[bytes, bytes]
    peer: str

    def close_after_reply(self) -> None: ...

    def switch_protocol(self, proto: int) -> None:
        """HELLO: speak RESP ``proto`` from the next reply on."""
        ...

    @property
    def user(self) -> User: ...

    @property
    def auth_configured(self) -> bool:
        """Client authentication is configured (``auth``)."""
        ...

    def authenticate(self, name: bytes, password: bytes) -> bool:
        """AUTH as ``name``: True (and the session is that user now) or False."""
        ...

    def reset_connection(self) -> None:
        """RESET: back to RESP2, no name, normal mode."""
        ...


class InfoSource(Protocol):
    """The proxy's INFO sections (``observe.telemetry``)."""

    def info_sections(
        self, keyspace: dict[str, dict[str, int]]
    ) -> list[tuple[str, list[tuple[str, object]]]]: ...


Handler = Callable[["Builtin", BuiltinClient, list[bytes]], None]


class Builtin:
    """Answers the KIND_LOCAL commands of the command table for one proxy."""

    def __init__(self, fanout: Fanout, telemetry: InfoSource) -> None:
        self.fanout = fanout
        self.telemetry = telemetry

    def handle(self, session: BuiltinClient, spec: CommandSpec, argv: list[bytes]) -> None:
        handler = HANDLERS.get(spec.name)
        if handler is None:
            session.reply_now(errors.reply("unsupported", name=spec.name.replace("|", " ")))
            return
        handler(self, session, argv)

    # -- connection ------------------------------------------------------------------------

    def ping(self, s: BuiltinClient, argv: list[bytes]) -> None:
        if len(argv) > 2:
            s.reply_now(errors.reply("arity", name="ping"))
        elif len(argv) == 2:
            s.reply_now(encode.bulk(argv[1]))
        else:
            s.reply_now(encode.PONG)

    def echo(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.bulk(argv[1]))

    def quit(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.OK)
        s.close_after_reply()

    def select(self, s: BuiltinClient, argv: list[bytes]) -> None:
        if argv[1] == b"0":
            s.reply_now(encode.OK)
        elif argv[1].lstrip(b"-").isdigit():
            s.reply_now(errors.reply("select"))
        else:
            s.reply_now(errors.reply("not_integer"))

    def auth(self, s: BuiltinClient, argv: list[bytes]) -> None:
        if len(argv) == 2:
            if not s.auth_configured:
                s.reply_now(errors.reply("auth_nopass"))
                return
            ok = s.authenticate(b"default", argv[1])
        elif len(argv) == 3:
            ok = s.authenticate(argv[1], argv[2])
        else:
            s.reply_now(errors.reply("syntax"))
            return
        s.reply_now(encode.OK if ok else errors.reply("wrongpass"))

    def hello(self, s: BuiltinClient, argv: list[bytes]) -> None:
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
        credentials: tuple[bytes, bytes] | None = None
        while i < len(argv):
            opt = argv[i].lower()
            if opt == b"auth" and i + 2 < len(argv):
                credentials = (argv[i + 1], argv[i + 2])
                i += 3
            elif opt == b"setname" and i + 1 < len(argv):
                name = argv[i + 1]
                i += 2
            else:
                s.reply_now(
                    b"-ERR Syntax error in HELLO option '"
                    + argv[i].decode("utf-8", "replace").encode()[:64]
                    + b"'\r\n"
                )
                return
        if credentials is not None and not s.authenticate(*credentials):
            s.reply_now(errors.reply("wrongpass"))
            return
        if s.user.unauthenticated:
            s.reply_now(errors.reply("hello_noauth"))
            return
        if name is not None and name != s.name and not _valid_name(name):
            s.reply_now(_bad_name())
            return
        s.switch_protocol(proto)
        s.name = name
        fields = [
            (b"server", encode.bulk(b"redis")),
            (b"version", encode.bulk(REDIS_COMPAT_VERSION)),
            (b"proto", encode.integer(proto)),
            (b"id", encode.integer(s.id)),
            (b"mode", encode.bulk(b"standalone")),
            (b"role", encode.bulk(b"master")),
            (b"modules", encode.array([])),
            (b"proxy", encode.bulk(b"shardproxy " + _b(__version__))),
        ]
        s.reply_now(encode.map_reply([(encode.bulk(k), v) for k, v in fields], proto))

    def reset(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reset_connection()
        s.reply_now(b"+RESET\r\n")

    def acl_whoami(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.bulk(s.user.name.encode()))

    def acl_cat(self, s: BuiltinClient, argv: list[bytes]) -> None:
        if len(argv) == 2:
            s.reply_now(encode.array([encode.bulk(c.encode()) for c in acl.CATEGORIES]))
            return
        names = acl.category_commands(argv[2].decode("utf-8", "replace").lower())
        if names is None:
            s.reply_now(
                b"-ERR Unknown category '" + argv[2][:128].replace(b"\r\n", b" ") + b"'\r\n"
            )
            return
        s.reply_now(encode.array([encode.bulk(n.encode()) for n in names]))

    # -- CLIENT ----------------------------------------------------------------------------

    def client_setname(self, s: BuiltinClient, argv: list[bytes]) -> None:
        name = argv[2]
        if not _valid_name(name):
            s.reply_now(_bad_name())
            return
        s.name = name or None
        s.reply_now(encode.OK)

    def client_getname(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.bulk(s.name, s.proto))

    def client_setinfo(self, s: BuiltinClient, argv: list[bytes]) -> None:
        attr = argv[2].lower()
        if attr not in (b"lib-name", b"lib-ver"):
            s.reply_now(
                b"-ERR Unrecognized option '"
                + argv[2][:64].replace(b"\r", b"").replace(b"\n", b"")
                + b"'\r\n"
            )
            return
        s.info[attr] = argv[3]
        s.reply_now(encode.OK)

    def client_id(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.integer(s.id))

    def client_ok(self, s: BuiltinClient, argv: list[bytes]) -> None:
        """CLIENT NO-EVICT / NO-TOUCH on|off: accepted; they only concern the proxy's client."""
        if argv[2].lower() not in (b"on", b"off"):
            s.reply_now(errors.reply("syntax"))
        else:
            s.reply_now(encode.OK)

    def client_info(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.verbatim(self.client_line(s), s.proto))

    def client_line(self, s: BuiltinClient) -> bytes:
        return b"id=%d addr=%s name=%s resp=%d lib-name=%s lib-ver=%s db=0\n" % (
            s.id,
            _b(s.peer),
            s.name or b"",
            s.proto,
            s.info.get(b"lib-name", b""),
            s.info.get(b"lib-ver", b""),
        )

    # -- COMMAND ---------------------------------------------------------------------------

    def command(self, s: BuiltinClient, argv: list[bytes]) -> None:
        """COMMAND with no subcommand: every command's info."""
        s.reply_now(encode.array([_command_info(spec, s.proto) for spec in _top_specs()]))

    def command_count(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.integer(commands.command_count()))

    def command_list(self, s: BuiltinClient, argv: list[bytes]) -> None:
        s.reply_now(encode.array([encode.bulk(_b(spec.name)) for spec in _top_specs()]))

    def command_info(self, s: BuiltinClient, argv: list[bytes]) -> None:
        if len(argv) == 2:
            self.command(s, argv)
            return
        items = []
        for name in argv[2:]:
            spec = commands.resolve([name])
            items.append(_command_info(spec, s.proto) if spec else encode.null_array(s.proto))
        s.reply_now(encode.array(items))

    def command_docs(self, s: BuiltinClient, argv: list[bytes]) -> None:
        specs = (
            _top_specs()
            if len(argv) == 2
            else [sp for sp in (commands.resolve([n]) for n in argv[2:]) if sp is not None]
        )
        pairs = [(encode.bulk(_b(sp.name)), _command_doc(sp, s.proto)) for sp in specs]
        s.reply_now(encode.map_reply(pairs, s.proto))

    def command_getkeys(self, s: BuiltinClient, argv: list[bytes]) -> None:
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
        s.reply_now(encode.array([encode.bulk(cmd[i]) for i in keys]))

    def role(self, s: BuiltinClient, argv: list[bytes]) -> None:
        """ROLE: to its clients the proxy is one primary with no replica of its own."""
        s.reply_now(encode.array([encode.bulk(b"master"), encode.integer(0), encode.array([])]))

    # -- INFO ------------------------------------------------------------------------------

    def info(self, s: BuiltinClient, argv: list[bytes]) -> None:
        wanted = {a.lower() for a in argv[1:]} or {b"default"}
        self.fanout.broadcast(
            s, encode.encode_command([b"INFO", b"keyspace"]), self._merge_info, wanted
        )

    def _merge_info(self, g: Gather) -> bytes:
        wanted: set[bytes] = g.data  # type: ignore[assignment]
        keyspace: dict[str, dict[str, int]] = {}
        for raw in g.results:
            if replies.is_error(raw):
                continue  # a down shard: its keys are simply not counted
            text = (replies.parse_bulk(raw) or b"").decode()
            for line in text.splitlines():
                if not line.startswith("db"):
                    continue
                db, _, fields = line.partition(":")
                acc = keyspace.setdefault(db, {})
                for field in fields.split(","):
                    k, _, v = field.partition("=")
                    if k in ("keys", "expires"):
                        acc[k] = acc.get(k, 0) + int(v)
        sections = self.telemetry.info_sections(keyspace)
        everything = bool(wanted & {b"all", b"everything"})
        default = everything or b"default" in wanted
        parts = []
        for name, lines in sections:
            if everything or default or name.lower().encode() in wanted:
                parts.append(f"# {name}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in lines))
        return encode.verbatim("\r\n".join(parts).encode(), g.proto)


#: command table name -> handler
HANDLERS: dict[str, Handler] = {
    "ping": Builtin.ping,
    "echo": Builtin.echo,
    "quit": Builtin.quit,
    "select": Builtin.select,
    "auth": Builtin.auth,
    "hello": Builtin.hello,
    "reset": Builtin.reset,
    "client|setname": Builtin.client_setname,
    "client|getname": Builtin.client_getname,
    "client|setinfo": Builtin.client_setinfo,
    "client|id": Builtin.client_id,
    "client|no-evict": Builtin.client_ok,
    "client|no-touch": Builtin.client_ok,
    # the proxy's own endpoint never moves for maintenance: nothing to notify, carry on
    "client|maint_notifications": Builtin.client_ok,
    "role": Builtin.role,
    "client|info": Builtin.client_info,
    "command": Builtin.command,
    "command|count": Builtin.command_count,
    "command|list": Builtin.command_list,
    "command|info": Builtin.command_info,
    "command|docs": Builtin.command_docs,
    "command|getkeys": Builtin.command_getkeys,
    "info": Builtin.info,
    "acl|whoami": Builtin.acl_whoami,
    "acl|cat": Builtin.acl_cat,
}


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


def _bad_name() -> bytes:
    return b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"


def _top_specs() -> list[CommandSpec]:
    return sorted(commands.COMMANDS.values(), key=lambda sp: sp.name)


def _command_info(spec: CommandSpec, proto: int) -> bytes:
    flags = encode.array([encode.simple(_b(f)) for f in spec.flag_list])
    subs = (
        [
            _command_info(sub, proto)
            for sub in sorted(spec.subcommands.values(), key=lambda x: x.name)
        ]
        if spec.subcommands
        else []
    )
    return encode.array(
        [
            encode.bulk(_b(spec.name)),
            encode.integer(spec.arity),
            flags,
            encode.integer(spec.first_key),
            encode.integer(spec.last_key),
            encode.integer(spec.key_step),
            encode.array([encode.simple(_b(c)) for c in spec.acl_categories]),
            encode.array([encode.bulk(_b(t)) for t in spec.tips]),
            encode.array([]),  # key specs: COMMAND GETKEYS answers from them
            encode.array(subs),
        ]
    )


def _command_doc(spec: CommandSpec, proto: int) -> bytes:
    fields = [
        (encode.bulk(b"summary"), encode.bulk(_b(spec.summary))),
        (encode.bulk(b"since"), encode.bulk(_b(spec.since))),
        (encode.bulk(b"group"), encode.bulk(_b(spec.group))),
    ]
    return encode.map_reply(fields, proto)


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
