"""The nutcracker (twemproxy 0.5) configuration file, read as nutcracker reads it.

**Reading.** nutcracker reads every value as the raw text of a libyaml scalar (no YAML typing),
so the file is read with PyYAML's ``BaseLoader`` (every scalar a string; a key given twice is an
error, as nutcracker's "is a duplicate") and each value is parsed as nutcracker 0.5's ``conf_*``
functions do: numbers are digits only (``nc_atoi``), booleans exactly ``true`` or ``false``, hash
tags exactly two bytes, an unknown directive is an error. A file nutcracker would refuse is
refused here too, naming the directive.

**Placement.** nutcracker's ketama continuum hashes ``"<server name>-<j>"``; a server's name is
the word after the space in ``host:port:weight name`` or, for an unnamed server, ``host:port``
(just ``host`` when the port is 11211, for libmemcached compatibility; ``/path:`` for an unnamed
unix socket ``/path:weight``, the ``:`` included). :func:`parse_server` derives exactly that
string and it becomes the shard name, so ``Config.ring()``, which builds the ring from shard
names and weights, puts every key where nutcracker does; modula orders the servers by the same
names (:mod:`shardproxy.routing.ring`). nutcracker 0.5 truncates ``"<name>-<j>"`` to 272 bytes,
shardproxy does not: a name that long is refused.

:data:`DIRECTIVES` is the table of every nutcracker 0.5 pool directive and what becomes of it
(the README's "Moving from twemproxy" table is the same rows; a test checks they match).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from shardproxy.config import HASH_FUNCTION_NAMES

#: nutcracker's distributions; ``random`` has no shardproxy equivalent.
NUTCRACKER_DISTRIBUTIONS = ("ketama", "modula", "random")
#: nutcracker names an unnamed server on this port by its host alone (libmemcached's habit).
KETAMA_DEFAULT_PORT = 11211
#: nutcracker 0.5 formats ``"<name>-<j>"`` into a buffer of this size (KETAMA_MAX_HOSTLEN) and
#: hashes at most ``KETAMA_MAX_HOSTLEN - 1`` bytes of it.
KETAMA_MAX_HOSTLEN = 273
_INT_MAX = 2**31 - 1
_BAD_SERVER = (
    'has an invalid "hostname:port:weight [name]" or "/path/unix_socket:weight [name]" '
    "format string"
)


@dataclass(frozen=True)
class Directive:
    """A nutcracker pool directive: how nutcracker parses it and what the conversion does."""

    name: str
    kind: str  # listen | servers | hash | hash_tag | distribution | num | bool | string
    becomes: str  # what it becomes in the topology (the README's row says the same)


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "listen",
        "listen",
        "`listen` (`--listen` overrides it); a unix socket's permissions: warning",
    ),
    Directive("hash", "hash", "`hash.function` (absent: `fnv1a_64`, nutcracker's default)"),
    Directive(
        "hash_tag",
        "hash_tag",
        "`hash.tag` (absent: `\"\"`, no hash tags: nutcracker's default, not shardproxy's)",
    ),
    Directive(
        "distribution",
        "distribution",
        "`hash.distribution`: `ketama` (the default) or `modula`; `random` is refused: under it "
        "a key has no server of its own",
    ),
    Directive(
        "servers",
        "servers",
        "`shards`: `name` as nutcracker names the server on its ring (the name after the space; "
        "unnamed: `host:port`, `host` alone on port 11211), `weight`, `primary`",
    ),
    Directive(
        "timeout",
        "num",
        "`timeouts.connect_ms` and `timeouts.command_ms`; absent or 0 (nutcracker waits "
        "forever): warning, 1000 ms each",
    ),
    Directive(
        "redis", "bool", "must be `true`: a memcached pool (nutcracker's default) is refused"
    ),
    Directive(
        "redis_auth",
        "string",
        "`backend.password` and `auth.password`: nutcracker AUTHs to the servers and asks its "
        "clients for the same password, and so does the converted topology",
    ),
    Directive("redis_db", "num", "`0` only: another database is refused (shardproxy uses 0)"),
    Directive("server_connections", "num", "`backend.connections`"),
    Directive(
        "auto_eject_hosts",
        "bool",
        "`true`: warning (shardproxy keeps the shard on the ring and answers `-TRYAGAIN`); with "
        "`--eject`: `failover.mode: eject`",
    ),
    Directive(
        "server_failure_limit",
        "num",
        "with `--eject`: `health.failures`; otherwise warning",
    ),
    Directive(
        "server_retry_timeout",
        "num",
        "warning (an ejected shard returns after `health.successes` good probes)",
    ),
    Directive("preconnect", "bool", "`true`: warning (data connections open on first use)"),
    Directive("backlog", "num", "warning (shardproxy's backlog is fixed)"),
    Directive(
        "client_connections",
        "num",
        "warning (nutcracker 0.5 ignores it too; shardproxy's limit is `limits.max_clients`)",
    ),
    Directive("tcpkeepalive", "bool", "`true`: warning (not carried over)"),
    Directive("reuseport", "bool", "`true`: warning (twemproxy master only; see `workers`)"),
)
_DIRECTIVES = {d.name: d for d in DIRECTIVES}


class Unconvertible(Exception):
    """The file or pool cannot be expressed as a topology; ``reasons`` says why, one per line."""

    def __init__(self, *reasons: str) -> None:
        super().__init__("\n".join(reasons))
        self.reasons = list(reasons)


# --- reading a nutcracker file ----------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """One ``servers:`` entry as nutcracker 0.5 parses it."""

    text: str  # as written
    host: str  # the host, or the socket path when ``port`` is None
    port: int | None  # None for a unix socket
    weight: int
    name: str  # the name nutcracker hashes on the ring
    named: bool  # the name was written, not derived from the address

    @property
    def address(self) -> str:
        """The address in topology form: ``host:port``, ``[v6]:port`` or ``unix:/path``."""
        if self.port is None:
            return f"unix:{self.host}"
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class NutcrackerPool:
    """One pool: every directive that was written, parsed (bools as bool, numbers as int)."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    servers: tuple[Server, ...] = ()

    def get(self, directive: str, default: Any = None) -> Any:
        return self.values.get(directive, default)


def _number(text: str) -> int:
    """nutcracker's ``nc_atoi``: digits only, no sign, fits in an int; else -1."""
    if not text or not text.isascii() or not text.isdigit() or int(text) > _INT_MAX:
        return -1
    return int(text)


def parse_server(text: str) -> Server:
    """``host:port:weight [name]`` or ``/path/unix_socket:weight [name]``, parsed from the end as
    nutcracker's ``conf_add_server`` does; ValueError with nutcracker's complaint otherwise."""
    rest, space, name = text.rpartition(" ")
    if not space:
        rest, name = text, ""
    elif not name:
        raise ValueError("has an empty name after its last space")
    unix = text.startswith("/")
    rest, colon, weight_text = rest.rpartition(":")
    if not colon:
        raise ValueError(_BAD_SERVER)
    port: int | None = None
    port_text = ""
    if unix:
        addr = rest
        if ":" in addr:
            raise ValueError(_BAD_SERVER)
    else:
        addr, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(_BAD_SERVER)
    weight = _number(weight_text)
    if weight < 0:
        raise ValueError('has an invalid weight in "hostname:port:weight [name]" format string')
    if weight == 0:
        raise ValueError('has a zero weight in "hostname:port:weight [name]" format string')
    if not unix:
        port = _number(port_text)
        if not 0 < port < 65536:
            raise ValueError('has an invalid port in "hostname:port:weight [name]" format string')
    named = bool(name)
    if not named:
        # nutcracker: addr, plus ":port" unless the port is 11211; for a unix socket the port is
        # empty and the length still counts its ":" ("/path:").
        name = addr if port == KETAMA_DEFAULT_PORT else f"{addr}:{port_text}"
    if not addr:
        raise ValueError("has no host")
    return Server(text, addr, port, weight, name, named)


class _Loader(yaml.BaseLoader):
    """Every scalar a string, as libyaml hands them to nutcracker; a repeated key is an error."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found a non-scalar key",
                key_node.start_mark,
            )  # fmt: skip
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (nutcracker: is a duplicate)", key_node.start_mark,
            )  # fmt: skip
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _parse_pool(name: str, body: object) -> NutcrackerPool:
    """One pool's mapping, every directive parsed; Unconvertible lists every problem."""
    where = f"pool {name!r}"
    if not isinstance(body, Mapping):
        raise Unconvertible(f"{where}: must be a mapping of directives")
    problems: list[str] = []
    values: dict[str, Any] = {}
    servers: list[Server] = []
    for key, value in body.items():
        directive = _DIRECTIVES.get(key)
        if directive is None:
            problems.append(f"{where}: {key}: not a nutcracker 0.5 directive")
            continue
        if directive.kind == "servers":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{where}: servers: must be a list of servers")
                continue
            for i, text in enumerate(value):
                try:
                    servers.append(parse_server(text))
                except ValueError as exc:
                    problems.append(f"{where}: servers[{i}]: {text!r} {exc}")
            continue
        if not isinstance(value, str):
            problems.append(f"{where}: {key}: must be a single value")
            continue
        problem = _parse_value(directive, value, values)
        if problem:
            problems.append(f"{where}: {key}: {value!r} {problem}")
    if "listen" not in body:
        problems.append(f'{where}: listen: missing (nutcracker: directive "listen:" is missing)')
    if body.get("servers") == []:
        problems.append(f"{where}: servers: the pool has no servers")
    if "servers" not in body:
        problems.append(f"{where}: servers: missing (nutcracker: the pool has no servers)")
    names: dict[str, int] = {}
    for i, server in enumerate(servers):
        if server.name in names:
            problems.append(
                f"{where}: servers[{i}]: {server.text!r}: a second server named {server.name!r} "
                "(nutcracker: has servers with same name)"
            )
        names.setdefault(server.name, i)
    if values.get("server_connections") == 0:
        problems.append(f"{where}: server_connections: cannot be 0 (as nutcracker says)")
    if problems:
        raise Unconvertible(*problems)
    return NutcrackerPool(name, values, tuple(servers))


def _parse_value(directive: Directive, value: str, values: dict[str, Any]) -> str | None:
    """Parse one scalar directive into ``values``; nutcracker's complaint when it is invalid."""
    kind = directive.kind
    if kind == "num":
        number = _number(value)
        if number < 0:
            return "is not a number"
        values[directive.name] = number
    elif kind == "bool":
        if value not in ("true", "false"):
            return 'is not "true" or "false"'
        values[directive.name] = value == "true"
    elif kind == "hash":
        if value not in HASH_FUNCTION_NAMES:
            return "is not a valid hash"
        values[directive.name] = value
    elif kind == "distribution":
        if value not in NUTCRACKER_DISTRIBUTIONS:
            return "is not a valid distribution"
        values[directive.name] = value
    elif kind == "hash_tag":
        if len(value.encode()) != 2:
            return "is not a valid hash tag string with two characters"
        values[directive.name] = value
    elif kind == "listen":
        try:
            values[directive.name] = _listen(value)
        except ValueError as exc:
            return str(exc)
    else:  # string
        values[directive.name] = value
    return None


def _listen(text: str) -> tuple[str, str | None]:
    """(listener in topology form, unix socket permissions or None), as conf_set_listen."""
    if text.startswith("/"):
        path, space, perm = text.rpartition(" ")
        if not space:
            return f"unix:{text}", None
        try:
            mode = int(perm, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o777:
            raise ValueError('has an invalid file permission in "socket_path permission" format')
        return f"unix:{path}", perm
    host, colon, port_text = text.rpartition(":")
    port = _number(port_text)
    if not colon or not host:
        raise ValueError('has an invalid "hostname:port" format string')
    if not 0 < port < 65536:
        raise ValueError('has an invalid port in "hostname:port" format string')
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}", None


def read_pools(path: str) -> dict[str, NutcrackerPool]:
    """Every pool of the nutcracker file at ``path``, in file order; Unconvertible if the file
    is unreadable or nutcracker would refuse it."""
    try:
        with open(path, "rb") as f:
            data = yaml.load(f, Loader=_Loader)  # BaseLoader builds only str, list and dict
    except OSError as exc:
        raise Unconvertible(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise Unconvertible(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, Mapping) or not data:
        raise Unconvertible(f"{path}: no pools (a nutcracker file is a mapping of pool names)")
    pools: dict[str, NutcrackerPool] = {}
    problems: list[str] = []
    for name, body in data.items():
        try:
            pools[name] = _parse_pool(name, body)
        except Unconvertible as exc:
            problems.extend(exc.reasons)
    listens: dict[str, str] = {}
    for pool in pools.values():
        listen = pool.get("listen", (None, None))[0]
        if listen in listens:
            problems.append(
                f"pool {pool.name!r}: listen: pool {listens[listen]!r} listens on {listen} too "
                "(nutcracker refuses it too)"
            )
        listens.setdefault(listen, pool.name)
    if problems:
        raise Unconvertible(*(f"{path}: {p}" for p in problems))
    return pools


def select_pool(pools: Mapping[str, NutcrackerPool], name: str | None) -> NutcrackerPool:
    """The pool called ``name``, or the only one when ``name`` is None."""
    names = ", ".join(pools)
    if name is None:
        if len(pools) == 1:
            return next(iter(pools.values()))
        raise Unconvertible(
            f"the file has {len(pools)} pools ({names}); choose one with --pool NAME "
            "(one shardproxy topology, and one shardproxy process, per pool)"
        )
    if name not in pools:
        raise Unconvertible(f"no pool {name!r} in the file (pools: {names})")
    return pools[name]
