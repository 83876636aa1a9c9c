"""Generate ``shardproxy/commands/data.py`` from a live redis-server.

Usage::

    python -m shardproxy.app.gen_commands [--host H --port P | --unix PATH] > shardproxy/commands/data.py

Without ``--port``/``--unix`` a throw-away ``redis-server`` (``--redis-server``, default
``redis-server`` on PATH) is started on an ephemeral loopback port with persistence off, and
stopped by its PID when the generator is done.

The generator reads ``COMMAND INFO`` (every command, subcommands included) and ``COMMAND DOCS``
and writes one compact tuple literal per command.  ``shardproxy.commands.table`` turns the rows into
``CommandSpec`` objects at import time and adds the proxy's own routing policy; nothing in the
data module says how the proxy treats a command.

This module also holds the two small tools the generator needs, which the command-table tests
reuse: ``query`` (commands pipelined on a :class:`~shardproxy.backend.dial.ControlConnection`,
under ``asyncio.run``) and ``temporary_redis`` (start and stop a redis-server).  It is a
development tool: nothing on the proxy's data path imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from shardproxy.backend.dial import ControlConnection, Endpoint
from shardproxy.protocol import replies

Value = Any  # a decoded reply (replies.RespValue), walked here without narrowing


def query(
    endpoint: Endpoint, *commands: Sequence[bytes | str | int], timeout: float = 5.0
) -> list[Value]:
    """The decoded replies to ``commands``, sent pipelined on a new connection to ``endpoint``
    (closed before returning). An error reply raises ``replies.RedisReplyError``; a refused
    connection or a silent server raises OSError. Synchronous: it runs its own event loop."""

    async def run() -> list[replies.RespValue]:
        conn = await ControlConnection.open(endpoint, timeout=timeout)
        try:
            return [replies.value(raw) for raw in await conn.call_many(commands)]
        finally:
            conn.close()

    return asyncio.run(run())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def temporary_redis(
    binary: str = "redis-server", *, startup_timeout: float = 10.0
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """Start ``binary`` on an ephemeral loopback port, yield ``(host, port, process)``.

    Persistence is off (``--save ""``, no AOF) and the working directory is a temporary one.
    On exit the server is stopped by its PID (SIGTERM, then SIGKILL after 5 s).
    """
    with tempfile.TemporaryDirectory(prefix="shardproxy-redis-") as workdir:
        for _attempt in range(5):
            port = _free_port()
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
                 "--loglevel", "warning", "--logfile", os.path.join(workdir, "redis.log")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                if _wait_ready(proc, port, startup_timeout):
                    yield "127.0.0.1", port, proc
                    return
            finally:
                _stop(proc)
        raise RuntimeError(f"could not start {binary} on an ephemeral port")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False  # exited, e.g. the port was taken meanwhile: caller retries
        try:
            if query(Endpoint("127.0.0.1", port), ["PING"], timeout=1.0) == [b"PONG"]:
                return True
        except (OSError, replies.RedisReplyError):
            time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# Reading the server's command table


def _text(value: Value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _pairs(flat: Sequence[Value]) -> dict[str, Value]:
    """A RESP2 flattened map ``[k1, v1, k2, v2, ...]`` as a dict with str keys."""
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _begin_search(raw: Sequence[Value]) -> tuple[Any, ...]:
    info = _pairs(raw)
    kind = _text(info["type"])
    spec = _pairs(info["spec"] or [])
    if kind == "index":
        return ("index", int(spec["index"]))
    if kind == "keyword":
        return ("keyword", _text(spec["keyword"]), int(spec["startfrom"]))
    return (kind,)


def _find_keys(raw: Sequence[Value]) -> tuple[Any, ...]:
    info = _pairs(raw)
    kind = _text(info["type"])
    spec = _pairs(info["spec"] or [])
    if kind == "range":
        return ("range", int(spec["lastkey"]), int(spec["keystep"]), int(spec["limit"]))
    if kind == "keynum":
        return ("keynum", int(spec["keynumidx"]), int(spec["firstkey"]), int(spec["keystep"]))
    return (kind,)


def _key_spec(raw: Sequence[Value]) -> tuple[Any, ...]:
    info = _pairs(raw)
    return (
        tuple(_text(f) for f in info.get("flags") or ()),
        _begin_search(info["begin_search"]),
        _find_keys(info["find_keys"]),
        _text(info["notes"]) if "notes" in info else "",
    )


_EMPTY_DOCS: dict[str, Value] = {}


def _row(info: Sequence[Value], docs: dict[str, Value]) -> tuple[Any, ...]:
    """One command (recursively with its subcommands) as a row of ``FIELDS``."""
    name = _text(info[0])
    doc = docs.get(name, _EMPTY_DOCS)
    sub_docs: dict[str, Value] = {}
    if "subcommands" in doc:
        sub_flat = doc["subcommands"]
        sub_docs = {_text(sub_flat[i]): _pairs(sub_flat[i + 1]) for i in range(0, len(sub_flat), 2)}
    subs = sorted((_row(sub, sub_docs) for sub in info[9] or ()), key=lambda r: str(r[0]))
    return (
        name,
        int(info[1]),
        tuple(_text(f) for f in info[2]),
        int(info[3]),
        int(info[4]),
        int(info[5]),
        tuple(_text(c) for c in info[6]),
        tuple(_text(t) for t in info[7]),
        tuple(_key_spec(ks) for ks in info[8]),
        _text(doc.get("group", "")),
        _text(doc.get("summary", "")),
        _text(doc.get("since", "")),
        _text(doc.get("complexity", "")),
        tuple(_text(f) for f in doc.get("doc_flags") or ()),
        _text(doc.get("deprecated_since", "")),
        _text(doc.get("replaced_by", "")),
        tuple(subs),
    )


def read_rows(endpoint: Endpoint) -> tuple[str, list[tuple[Any, ...]]]:
    """``(redis_version, rows)`` read from the server, rows sorted by command name."""
    info, infos, docs_flat = query(
        endpoint, ["INFO", "server"], ["COMMAND", "INFO"], ["COMMAND", "DOCS"]
    )
    server = _pairs_from_info(_text(info))
    docs = {_text(docs_flat[i]): _pairs(docs_flat[i + 1]) for i in range(0, len(docs_flat), 2)}
    rows = [_row(info, docs) for info in infos if info is not None]
    rows.sort(key=lambda r: str(r[0]))
    return server.get("redis_version", "?"), rows


def _pairs_from_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key] = value
    return out


FIELDS = (
    "name", "arity", "flags", "first_key", "last_key", "key_step", "acl_categories", "tips",
    "key_specs", "group", "summary", "since", "complexity", "doc_flags", "deprecated_since",
    "replaced_by", "subcommands",
)  # fmt: skip
"""Column names of a row in ``commands_data.COMMANDS`` (the order the generator writes)."""


def render(version: str, rows: Sequence[tuple[Any, ...]], invocation: str) -> str:
    """The text of the data module."""
    out = [
        f"# GENERATED FILE, do not edit. Regenerate with:\n#     {invocation}\n"
        f"# from redis-server {version} (COMMAND INFO + COMMAND DOCS).\n"
        "# fmt: off\n"
        '"""Redis command table data (generated by ``shardproxy.app.gen_commands``).\n\n'
        "Each row of COMMANDS follows FIELDS. A key spec is\n"
        "``(flags, begin_search, find_keys, notes)`` where begin_search is\n"
        '``("index", pos)`` | ``("keyword", keyword, startfrom)`` | ``("unknown",)`` and\n'
        'find_keys is ``("range", lastkey, keystep, limit)`` |\n'
        '``("keynum", keynumidx, firstkey, keystep)`` | ``("unknown",)``.\n'
        "Subcommands are rows of the same shape (names like ``client|setname``).\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"REDIS_VERSION = {version!r}\n\n"
        f"FIELDS = {FIELDS!r}\n\n"
        "COMMANDS: tuple[Any, ...] = (\n"
    ]
    for row in rows:
        out.append(_compact(row) + ",\n")
    out.append(")\n")
    return "".join(out)


def _compact(value: object) -> str:
    """``repr`` without the spaces after commas (rows stay one line each)."""
    if isinstance(value, tuple):
        inner = ",".join(_compact(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shardproxy.app.gen_commands",
        description="Write shardproxy/commands/data.py (to stdout) from a live redis-server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="use this running server (default: start one)")
    parser.add_argument("--unix", help="use the running server on this unix socket")
    parser.add_argument("--redis-server", default="redis-server", help="binary to start")
    args = parser.parse_args(argv)
    invocation = "python -m shardproxy.app.gen_commands > shardproxy/commands/data.py"
    if args.port is not None or args.unix is not None:
        version, rows = read_rows(Endpoint(args.host, args.port or 0, args.unix))
    else:
        with temporary_redis(args.redis_server) as (host, port, _proc):
            version, rows = read_rows(Endpoint(host, port))
    sys.stdout.write(render(version, rows, invocation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
