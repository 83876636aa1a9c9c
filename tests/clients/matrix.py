"""The client compatibility matrix: which client libraries are tested through the proxy, how
each one is run, what it sends on connect, and what every check must return.

``tests/test_client_matrix.py`` runs every client of :data:`CLIENTS` against a proxy in front
of three shards and asserts the exact results :func:`expected` derives from this table and
from the proxy's own command table (a command the proxy refuses today is expected to be
refused, with the proxy's error, and the client's connection to stay usable). The README's
``Client compatibility`` section is rendered from the same declarations (:func:`markdown`);
``python -m tests.clients.matrix README.md`` rewrites it, and the test fails while it is stale.

Each client is a script that takes the :class:`Plan` as arguments (port, then the keys to use)
and prints one JSON line: ``library``, ``version`` and one entry per result key of
:data:`CHECKS`, normalised the same way in every language (strings for bulk strings, numbers,
``null``, lists; SET's success as ``"OK"`` whatever the library makes of it; an exception as
``{"error": its message}``).

Versions are the ones this repository pins, never what happens to be installed: the npm
lockfile (``tests/clients/node/package-lock.json``), the ``test`` extras of pyproject.toml,
and the Debian packages that ``deploy/setup.sh`` installs (their version is Debian 12's).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardproxy.commands import table
from shardproxy.protocol import errors

ROOT = Path(__file__).resolve().parent.parent.parent
CLIENTS_DIR = ROOT / "tests" / "clients"
NODE_DIR = CLIENTS_DIR / "node"

# ---------------------------------------------------------------------------------------------
# What every client does


@dataclass(frozen=True)
class Plan:
    """The keys one client run uses, passed to its script as arguments in this order."""

    port: int
    keys: tuple[str, str, str]  # one key on each shard: s1, s2, s3
    missing: str  # a key that does not exist
    tagged: tuple[str, str]  # two keys with the same hash tag: {...}.a and {...}.b
    script_key: str  # EVAL's key (INCRBY 5 of a fresh key)
    list_key: str  # the list BLPOP pops (RPUSHed first, so it never waits)
    channel: str  # the channel SUBSCRIBE and PUBLISH use

    def argv(self) -> list[str]:
        return [
            str(self.port), *self.keys, self.missing, *self.tagged, self.script_key,
            self.list_key, self.channel,
        ]  # fmt: skip


#: what SET/GET writes and reads back
SET_VALUE = "hello"
#: the values the pipeline writes to the keys of the three shards
VALUES = ("v1", "v2", "v3")
#: what the MULTI/EXEC check sends, and EXEC's reply
MULTI = "MULTI, SET {t}.a 1, INCR {t}.a, SET {t}.b x, GET {t}.b, EXEC"
MESSAGE = "hello"  # what PUBLISH sends to the channel
ELEMENT = "x"  # what is RPUSHed to the list BLPOP pops
EVAL_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@dataclass(frozen=True)
class Check:
    """One column of the matrix."""

    name: str
    title: str  # the README column
    does: str  # what the client does, for the README
    commands: tuple[str, ...]  # the commands it needs the proxy to support
    results: tuple[str, ...]  # the keys of the script's JSON line it fills
    #: result key -> the command whose refusal it shows when the proxy refuses that command
    refusals: Mapping[str, str] = field(default_factory=dict)


CHECKS: tuple[Check, ...] = (
    Check(
        "set_get", "SET/GET", f"SET of a key to `{SET_VALUE}`, then GET", ("set", "get"),
        ("set", "get"),
    ),
    Check(
        "pipeline", "pipeline",
        "one pipeline (no MULTI): SET of a key on each of the 3 shards, then a GET of each",
        ("set", "get"), ("pipeline",),
    ),
    Check(
        "mget", "MGET", "MGET of the 3 keys (one per shard) and a missing key, in one command",
        ("mget",), ("mget",),
    ),
    Check(
        "multi_exec", "MULTI/EXEC",
        f"the library's transaction on two hash-tagged keys: `{MULTI}`",
        ("multi", "exec", "set", "incr", "get"), ("multi_exec",),
    ),
    Check(
        "eval", "EVAL",
        "the library's script call with one key (`INCRBY KEYS[1] 5`): EVAL, or for glide "
        "EVALSHA, and on NOSCRIPT SCRIPT LOAD and EVALSHA again",
        ("eval",), ("eval",),
    ),
    Check(
        "pubsub", "SUBSCRIBE/PUBLISH",
        "the library's subscriber on a channel, a PUBLISH from another connection, the message; "
        "then a GET on the subscribing connection (where the library gives pub/sub a "
        "connection of its own, a PING on that one too)",
        ("subscribe", "publish"), ("subscribe", "publish", "subscribe_then"),
        {"subscribe": "subscribe", "publish": "publish"},
    ),
    Check(
        "blocking", "BLPOP",
        "RPUSH of an element, BLPOP with a 1 s timeout, then a GET on the same connection",
        ("blpop",), ("blpop", "blpop_then"), {"blpop": "blpop"},
    ),
)  # fmt: skip

OK = "ok"
REFUSED = "refused (not supported yet)"


def supported(command: str) -> bool:
    """Whether the proxy serves ``command`` (from its command table, not from a list here)."""
    return table.COMMANDS[command.encode()].kind != table.KIND_UNSUPPORTED


def refusal(command: str) -> tuple[str, str]:
    """(code, message) of the proxy's reply to a command it does not support."""
    code, _, message = errors.REPLIES["unsupported"][0].format(name=command).partition(" ")
    return code, message


def check_supported(check: Check) -> bool:
    return all(supported(c) for c in check.commands)


# ---------------------------------------------------------------------------------------------
# The clients


@dataclass(frozen=True)
class Tool:
    """Something a client needs on the machine: a check and how to install it."""

    what: str
    check: tuple[str, ...]  # a command that exits 0 when it is there ("file:PATH": a file)
    install: str


@dataclass(frozen=True)
class Seen:
    """What a client shows for a refused command when it is not the proxy's error."""

    result: Any  # the script's result for that key
    note: str  # for the README


PY = "{python}"  # the test's own interpreter
NODE_TOOLS = (
    Tool("node", ("node", "--version"), "apt-get install nodejs npm"),
)  # fmt: skip
PY_INSTALL = ".venv/bin/python -m pip install -e '.[test]'"


def _npm(alias: str) -> Tool:
    return Tool(
        f"npm package {alias}", (f"file:{NODE_DIR / 'node_modules' / alias / 'package.json'}",),
        "cd tests/clients/node && npm ci",
    )  # fmt: skip


def _pymod(module: str, pin: str) -> Tool:
    return Tool(
        f"Python module {module} ({pin})", (PY, "-c", f"import {module}"),
        f"{PY_INSTALL} (or .venv/bin/python -m pip install '{pin}')",
    )  # fmt: skip


@dataclass(frozen=True)
class Client:
    id: str  # the pytest id
    name: str  # the README's name for it
    language: str
    package: str  # what is installed: PyPI / npm / Debian package name
    version: str  # the version this repository pins (see the module docstring)
    pinned_by: str  # "pyproject", "package-lock.json" or "Debian 12"
    protocol: int  # 2 or 3, as the library negotiates it by default (or as this run asks)
    run: tuple[str, ...]  # the script's command line before the plan's arguments
    tools: tuple[Tool, ...]
    #: what the library sends on connect, before its first command (the relay records it):
    #: each command as NAME, or NAME SUB for CLIENT and INFO, or HELLO with its version
    handshake: tuple[str, ...]
    #: how the library shows the proxy's error reply (``{code}``, ``{message}``)
    error: str = "{code} {message}"
    #: per result key, what the client shows for a refusal when it is not ``error``
    seen: Mapping[str, Seen] = field(default_factory=dict)
    compiled: bool = False  # run is (compiler, C source): the test compiles it, runs the binary

    @property
    def npm_alias(self) -> str | None:
        return self.package if self.pinned_by == "package-lock.json" else None


REDIS_PY_HANDSHAKE_3 = (
    "HELLO 3", "CLIENT MAINT_NOTIFICATIONS", "CLIENT SETINFO", "CLIENT SETINFO",
)  # fmt: skip
PYCLIENTS = CLIENTS_DIR / "python"

CLIENTS: tuple[Client, ...] = (
    # -- Python
    Client(
        "redis-py-resp3", "redis-py 8 (RESP3, the default)", "Python", "redis", "redis>=8.0",
        "pyproject", 3, (PY, str(PYCLIENTS / "redis_py.py"), "redis", "3"),
        (_pymod("redis", "redis>=8.0"),), REDIS_PY_HANDSHAKE_3, error="{message}",
    ),
    Client(
        "redis-py-resp2", "redis-py 8 (RESP2, `protocol=2`)", "Python", "redis", "redis>=8.0",
        "pyproject", 2, (PY, str(PYCLIENTS / "redis_py.py"), "redis", "2"),
        (_pymod("redis", "redis>=8.0"),), ("CLIENT SETINFO", "CLIENT SETINFO"),
        error="{message}",
    ),
    Client(
        "redis-py-asyncio", "redis-py 8 asyncio (`redis.asyncio`)", "Python", "redis",
        "redis>=8.0", "pyproject", 3, (PY, str(PYCLIENTS / "redis_py_asyncio.py")),
        (_pymod("redis", "redis>=8.0"),), REDIS_PY_HANDSHAKE_3, error="{message}",
    ),
    Client(
        "valkey-py", "valkey-py", "Python", "valkey", "valkey>=6.2,<7", "pyproject", 2,
        (PY, str(PYCLIENTS / "redis_py.py"), "valkey", "default"),
        (_pymod("valkey", "valkey>=6.2,<7"),), ("CLIENT SETINFO", "CLIENT SETINFO"),
        error="{message}",
    ),
    Client(
        "coredis", "coredis", "Python", "coredis", "coredis>=6.9,<7", "pyproject", 3,
        (PY, str(PYCLIENTS / "coredis_client.py")), (_pymod("coredis", "coredis>=6.9,<7"),),
        ("HELLO 3",), error="{message}",
        seen={
            "subscribe": Seen(
                {"error": "Failed to receive acknowledgement of subscription within 1 seconds"},
                "coredis does not surface the error: it waits for the subscription's "
                "confirmation and raises `TimeoutError` (after `subscription_timeout`, 1 s)",
            ),
        },
    ),
    Client(
        "valkey-glide", "valkey-glide (Python, asyncio)", "Python", "valkey-glide",
        "valkey-glide>=2.6,<3", "pyproject", 3, (PY, str(PYCLIENTS / "glide_client.py")),
        (_pymod("glide", "valkey-glide>=2.6,<3"),),
        ("HELLO 3", "CLIENT SETINFO", "CLIENT SETINFO", "INFO REPLICATION"),
        error="An error was signalled by the server: - ResponseError: {message}",
        seen={
            "subscribe": Seen(
                {"error": "timed out"},
                "glide logs the error and its subscription synchronizer sends SUBSCRIBE again "
                "in a tight loop; `subscribe(timeout_ms=...)` raises `TimeoutError` and "
                "`unsubscribe` stops the retries",
            ),
        },
    ),
    # -- Node
    Client(
        "ioredis5", "ioredis 5", "Node", "ioredis", "5.11.1", "package-lock.json", 2,
        ("node", str(NODE_DIR / "matrix_ioredis.js"), "ioredis"), (*NODE_TOOLS, _npm("ioredis")),
        ("CLIENT SETINFO", "CLIENT SETINFO", "INFO"),
    ),
    Client(
        "ioredis6", "ioredis 6 (RESP3, its default)", "Node", "ioredis6", "6.0.0",
        "package-lock.json", 3, ("node", str(NODE_DIR / "matrix_ioredis.js"), "ioredis6"),
        (*NODE_TOOLS, _npm("ioredis6")), ("HELLO 3", "CLIENT SETINFO", "CLIENT SETINFO", "INFO"),
    ),
    Client(
        "node-redis4", "node-redis 4", "Node", "redis4", "4.7.1", "package-lock.json", 2,
        ("node", str(NODE_DIR / "matrix_node_redis.js"), "redis4"),
        (*NODE_TOOLS, _npm("redis4")), ("CLIENT SETINFO", "CLIENT SETINFO"),
    ),
    Client(
        "node-redis5", "node-redis 5", "Node", "redis5", "5.12.1", "package-lock.json", 2,
        ("node", str(NODE_DIR / "matrix_node_redis.js"), "redis5"),
        (*NODE_TOOLS, _npm("redis5")), ("CLIENT SETINFO", "CLIENT SETINFO"),
    ),
    Client(
        "node-redis6", "node-redis 6 (RESP3, its default)", "Node", "redis6", "6.3.1",
        "package-lock.json", 3, ("node", str(NODE_DIR / "matrix_node_redis.js"), "redis6"),
        (*NODE_TOOLS, _npm("redis6")),
        ("HELLO 3", "CLIENT SETINFO", "CLIENT SETINFO", "CLIENT MAINT_NOTIFICATIONS"),
    ),
    # -- Ruby, PHP, C
    Client(
        "ruby-redis", "redis-rb", "Ruby", "ruby-redis", "4.8.0", "Debian 12", 2,
        ("ruby", str(CLIENTS_DIR / "ruby" / "matrix.rb")),
        (
            Tool("ruby", ("ruby", "--version"), "apt-get install ruby"),
            Tool("ruby-redis", ("ruby", "-e", 'require "redis"'), "apt-get install ruby-redis"),
        ),
        (),
    ),
    Client(
        "phpredis", "phpredis", "PHP", "php-redis", "5.3.7", "Debian 12", 2,
        ("php", str(CLIENTS_DIR / "php" / "matrix.php")),
        (
            Tool("php", ("php", "--version"), "apt-get install php-cli"),
            Tool(
                "php-redis", ("php", "-r", 'exit(extension_loaded("redis") ? 0 : 1);'),
                "apt-get install php-redis",
            ),
            Tool("php pcntl", ("php", "-r", 'exit(function_exists("pcntl_fork") ? 0 : 1);'),
                 "apt-get install php-cli (Debian's CLI has pcntl built in)"),
        ),
        (),
        error="{code} {message}\x00",  # phpredis 5's getLastError() keeps a trailing NUL
        seen={
            "subscribe": Seen(
                None,
                "phpredis does not surface the error: `subscribe()` returns null, "
                "`getLastError()` stays null",
            ),
        },
    ),
    Client(
        "hiredis", "hiredis (C)", "C", "libhiredis-dev", "0.14.1", "Debian 12", 2,
        ("gcc", str(CLIENTS_DIR / "c" / "matrix.c")),
        (
            Tool("gcc", ("gcc", "--version"), "apt-get install gcc"),
            Tool("hiredis headers", ("file:/usr/include/hiredis/hiredis.h",),
                 "apt-get install libhiredis-dev"),
        ),
        (), compiled=True,
    ),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Expected results


def refused_as(client: Client, key: str, command: str) -> Any:
    """What ``client``'s script reports for result ``key`` when the proxy refuses ``command``."""
    if key in client.seen:
        return client.seen[key].result
    code, message = refusal(command)
    return {"error": client.error.format(code=code, message=message)}


def expected(client: Client, plan: Plan) -> dict[str, Any]:
    """Every result key of ``client``'s JSON line, exactly."""
    out: dict[str, Any] = {
        "set": "OK",
        "get": SET_VALUE,
        "pipeline": ["OK", "OK", "OK", *VALUES],
        "mget": [*VALUES, None],
        "multi_exec": ["OK", 2, "OK", "x"],
        "eval": 5,
        "subscribe": MESSAGE,
        "publish": 1,
        "subscribe_then": VALUES[0],
        "blpop": [plan.list_key, ELEMENT],
        "blpop_then": VALUES[0],
    }
    for check in CHECKS:
        for key, command in check.refusals.items():
            if not supported(command):
                out[key] = refused_as(client, key, command)
    return out


def outcome(client: Client, check: Check) -> tuple[str, str | None]:
    """(the README's cell, a note about this client) for ``check``."""
    if check_supported(check):
        return OK, None
    notes = [client.seen[k].note for k in check.refusals if k in client.seen]
    return REFUSED, "; ".join(notes) or None


def describe(command: list[bytes]) -> str:
    """A command as :attr:`Client.handshake` writes it."""
    name = command[0].decode(errors="replace").upper()
    if name == "HELLO" and len(command) > 1:
        return f"HELLO {command[1].decode()}"
    if name in ("CLIENT", "INFO", "CONFIG", "COMMAND") and len(command) > 1:
        return f"{name} {command[1].decode(errors='replace').upper()}"
    return name


# ---------------------------------------------------------------------------------------------
# The README section

SECTION = "client-matrix"  # <!-- generated:client-matrix -->: a name docs.py does not claim
_BLOCK = re.compile(
    rf"(<!-- generated:{SECTION} -->\n)(.*?)(<!-- /generated:{SECTION} -->)", re.DOTALL
)


def _pinned(client: Client) -> str:
    if client.pinned_by == "pyproject":
        return f"`{client.version}` (pyproject `test` extras)"
    if client.pinned_by == "package-lock.json":
        real = "ioredis" if client.package.startswith("ioredis") else "redis"
        alias = "" if client.package == real else f" as `{client.package}`"
        return f"{client.version} (`{real}`{alias}, package-lock.json)"
    return f"{client.version} (Debian 12 `{client.package}`)"


def markdown() -> str:
    """The README's ``Client compatibility`` tables, from :data:`CLIENTS` and :data:`CHECKS`."""
    lines = [
        "| client | language | version (pinned by) | protocol | sends on connect |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in CLIENTS:
        shake = ", ".join(c.handshake) if c.handshake else "nothing"
        lines.append(f"| {c.name} | {c.language} | {_pinned(c)} | RESP{c.protocol} | {shake} |")
    lines += [
        "",
        "| client | " + " | ".join(ch.title for ch in CHECKS) + " |",
        "| --- |" + " --- |" * len(CHECKS),
    ]
    notes: list[str] = []
    for c in CLIENTS:
        cells = []
        for ch in CHECKS:
            cell, note = outcome(c, ch)
            if note is not None:
                notes.append(note)
                cell += f" [{len(notes)}]"
            cells.append(cell)
        lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
    lines.append("")
    for i, note in enumerate(notes, 1):
        lines.append(f"[{i}] {note}.")
        lines.append("")
    lines.append("What each check does:")
    lines.append("")
    for ch in CHECKS:
        lines.append(f"- **{ch.title}**: {ch.does}.")
    refused = [ch.title for ch in CHECKS if not check_supported(ch)]
    if refused:
        lines += [
            "",
            f"A refused check ({', '.join(refused)}) passes when the client gets the proxy's "
            "`-ERR command '...' is not supported by shardproxy` (shown as the library shows "
            "errors, or as the note says) and its connection still answers afterwards; the "
            "proxy closes no connection for it.",
        ]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` (the README) with the client matrix section filled in."""
    if not _BLOCK.search(text):
        raise KeyError(f"no <!-- generated:{SECTION} --> block")
    return _BLOCK.sub(lambda m: m.group(1) + markdown() + m.group(3), text)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else ROOT / "README.md")
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
