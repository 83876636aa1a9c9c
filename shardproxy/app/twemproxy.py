"""``shardproxy import-twemproxy``: a nutcracker (twemproxy 0.5) pool as a shardproxy topology.

    nutcracker.yml --read_pools--> {pool name: NutcrackerPool}     (parsed as nutcracker parses)
                   --convert-----> Conversion: topology data + notes, or Unconvertible(reasons)
                   --render------> topology YAML, checked with config.parse and Config.ring()

The file is read by :mod:`shardproxy.app.nutcracker`, which also says how shard names keep
nutcracker's placement.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from shardproxy.app.nutcracker import (
    DIRECTIVES,
    KETAMA_MAX_HOSTLEN,
    Directive,
    NutcrackerPool,
    Server,
    Unconvertible,
    parse_server,
    read_pools,
    select_pool,
)
from shardproxy.config import ConfigError, parse

__all__ = [
    "DIRECTIVES",
    "Conversion",
    "Directive",
    "NutcrackerPool",
    "Server",
    "Unconvertible",
    "convert",
    "main",
    "parse_server",
    "read_pools",
    "render",
    "select_pool",
]


# --- the conversion ---------------------------------------------------------------------------


@dataclass
class Conversion:
    """A pool as topology data, and what did not carry over (one ``directive: why`` per note)."""

    pool: str
    topology: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def convert(
    pool: NutcrackerPool,
    *,
    eject: bool = False,
    listen: str | None = None,
    admin: str | None = None,
) -> Conversion:
    """The topology equivalent to ``pool``: the same placement (hash, distribution, hash tag,
    server names and weights), auth, timeouts and connections. Unconvertible lists every reason
    the pool cannot be expressed; the notes list what is not carried over."""
    refusals: list[str] = []
    notes: list[str] = []
    v = pool.values

    if not v.get("redis", False):
        said = "redis: false" if "redis" in v else "no `redis: true` (nutcracker's default)"
        refusals.append(
            f"redis: the pool is a memcached pool ({said}); shardproxy speaks Redis only"
        )
    distribution = v.get("distribution", "ketama")
    if distribution == "random":
        refusals.append(
            "distribution: random cannot be expressed: nutcracker sends each request to a random "
            "server, so a key has no server of its own; shardproxy places every key on one shard "
            "(ketama or modula)"
        )
    if v.get("redis_db", 0) != 0:
        refusals.append(
            f"redis_db: {v['redis_db']} cannot be expressed: nutcracker selects database "
            f"{v['redis_db']} on every server, shardproxy uses database 0 only"
        )
    if distribution == "ketama":
        points = 40 * len(pool.servers)  # an upper bound of nutcracker's points / 4 per server
        for server in pool.servers:
            if len(server.name.encode()) + 1 + len(str(points)) >= KETAMA_MAX_HOSTLEN:
                refusals.append(
                    f"servers: {server.text!r}: name too long: nutcracker truncates "
                    f'"<name>-<n>" to {KETAMA_MAX_HOSTLEN - 1} bytes before hashing it, '
                    "shardproxy hashes it whole"
                )
    if refusals:
        raise Unconvertible(*refusals)

    topo: dict[str, Any] = {}
    listener, perm = v["listen"]
    topo["listen"] = listen or listener
    if perm is not None and listen is None:
        notes.append(
            f"listen: socket permissions {perm} not carried over: shardproxy creates the socket "
            "with its umask"
        )
    topo["admin"] = admin or "127.0.0.1:9121"
    topo["hash"] = {
        "function": v.get("hash", "fnv1a_64"),
        "distribution": distribution,
        "tag": v.get("hash_tag", ""),
    }
    topo["read_policy"] = "primary"

    timeout = v.get("timeout", 0)
    if timeout > 0:
        topo["timeouts"] = {"connect_ms": timeout, "command_ms": timeout}
    else:
        said = "timeout: 0" if "timeout" in v else "timeout: not set"
        notes.append(
            f"{said}: nutcracker waits for a server indefinitely; shardproxy always times out: "
            "timeouts.connect_ms and timeouts.command_ms stay 1000 (raise them for slow commands)"
        )

    backend: dict[str, Any] = {"connections": v.get("server_connections", 1)}
    password = v.get("redis_auth", "")
    if password:
        backend["password"] = password
        topo["auth"] = {"password": password}  # nutcracker made its clients AUTH with it too
    topo["backend"] = backend

    auto_eject = v.get("auto_eject_hosts", False)
    failure_limit = v.get("server_failure_limit")
    if auto_eject and eject:
        topo["failover"] = {"mode": "eject"}
        # nutcracker ejects at the limit-th consecutive failure, at the first when it is 0.
        topo["health"] = {"failures": max(1, 2 if failure_limit is None else failure_limit)}
        notes.append(
            "auto_eject_hosts: true became failover.mode: eject (a shard with no usable node "
            "leaves the ring and its keys rehash to the others: caches only), after "
            "health.failures = server_failure_limit consecutive failures; shardproxy also probes "
            "every node every health.interval_ms"
        )
        if "server_retry_timeout" in v:
            notes.append(
                f"server_retry_timeout: {v['server_retry_timeout']} not carried over: an ejected "
                "shard returns after health.successes (2) good probes, health.interval_ms "
                "(1000) apart"
            )
    elif auto_eject:
        notes.append(
            "auto_eject_hosts: true not carried over: nutcracker takes a failing server off the "
            "ring and moves its keys to the others; shardproxy keeps every shard on the ring and "
            "answers -TRYAGAIN naming the shard until it is back (failover.mode: none). Pass "
            "--eject for nutcracker's behaviour (failover.mode: eject, caches only), or add "
            "replicas and use failover.mode: promote to keep the keys in place"
        )
        for key in ("server_failure_limit", "server_retry_timeout"):
            if key in v:
                notes.append(f"{key}: {v[key]} not carried over (it belongs to ejection)")
    else:
        if eject:
            notes.append("--eject ignored: the pool does not eject hosts (auto_eject_hosts false)")
        for key in ("server_failure_limit", "server_retry_timeout"):
            if key in v:
                notes.append(
                    f"{key}: {v[key]} not carried over (no effect without auto_eject_hosts)"
                )

    if v.get("preconnect"):
        notes.append(
            "preconnect: true not carried over: shardproxy opens data connections on first use "
            "(its health probes connect to every node from the start)"
        )
    if "backlog" in v:
        notes.append(f"backlog: {v['backlog']} not carried over: shardproxy's backlog is fixed")
    if "client_connections" in v:
        notes.append(
            f"client_connections: {v['client_connections']} not carried over: nutcracker 0.5 "
            "ignores it (no limit); shardproxy's limit is limits.max_clients (10000 per worker)"
        )
    if v.get("tcpkeepalive"):
        notes.append(
            "tcpkeepalive: true not carried over: shardproxy sets no TCP keepalive (its health "
            "probes find a dead node within health.interval_ms x health.failures)"
        )
    if v.get("reuseport"):
        notes.append(
            "reuseport: true not carried over: for several processes on one port, use "
            "`workers: N` (shardproxy's workers share the port with SO_REUSEPORT)"
        )

    topo["shards"] = [
        {"name": s.name, "weight": s.weight, "primary": s.address} for s in pool.servers
    ]
    return Conversion(pool.name, topo, notes)


_WIDTH = 96


class _Dumper(yaml.SafeDumper):
    """Block style, list items indented under their key (as the repository's topologies)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def render(conversion: Conversion, source: str = "") -> str:
    """The topology YAML: a header saying where it came from and what did not carry over, then
    the keys. Unconvertible if shardproxy would refuse it (e.g. a node listed twice)."""
    where = f" in {source}" if source else ""
    lines = [
        f"# shardproxy topology converted from nutcracker pool {conversion.pool!r}{where}",
        "# by `shardproxy import-twemproxy`. Same placement: hash function, distribution, hash",
        "# tag, and each server's ring name and weight as a shard's name and weight (the ring",
        "# is built from names, never addresses: keep the names).",
    ]
    if conversion.notes:
        lines.append("# Not carried over:")
        for note in conversion.notes:
            lines += textwrap.wrap(
                note, width=_WIDTH, initial_indent="#   ", subsequent_indent="#     "
            )
    body = yaml.dump(
        conversion.topology,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=2**31,  # never fold a value over lines
    )
    text = "\n".join(lines) + "\n\n" + body
    try:
        config = parse(yaml.safe_load(text))
        config.ring()
    except ConfigError as exc:
        raise Unconvertible(
            *(f"the converted topology would be invalid: {p}" for p in exc.problems)
        ) from None
    except ValueError as exc:
        raise Unconvertible(f"the converted topology would be invalid: {exc}") from None
    return text


def main(
    path: str,
    pool: str | None = None,
    *,
    eject: bool = False,
    listen: str | None = None,
    admin: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The subcommand: the topology on ``out``, ``warning:`` notes and ``error:`` reasons on
    ``err``; 0, or 1 when the pool cannot be expressed."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        chosen = select_pool(read_pools(path), pool)
        conversion = convert(chosen, eject=eject, listen=listen, admin=admin)
        text = render(conversion, path)
    except Unconvertible as exc:
        for reason in exc.reasons:
            err.write(f"error: {reason}\n")
        return 1
    for note in conversion.notes:
        err.write(f"warning: {note}\n")
    out.write(text)
    return 0
