"""The ``shardproxy`` command line (the operator contract in CONTRACT.md).

    shardproxy run -c FILE [--workers N] [--log-level L]   serve (shardproxy.app.launch)
    shardproxy check -c FILE                               validate, show shards and the ring
    shardproxy locate -c FILE [--json] KEY...              which shard and nodes serve each key
    shardproxy diff [--json] OLD NEW                       what changing the topology moves
    shardproxy import-twemproxy FILE [--pool NAME] [--eject] [--listen A] [--admin A]
                                                           a nutcracker pool as a topology
    shardproxy --version

Every command that reads a topology file exits 1 with ``key.path: problem`` lines on stderr
when the file is invalid, the same file ``run`` would refuse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import shardproxy
from shardproxy.config import Config, ConfigError, ShardConfig, changed_settings, load
from shardproxy.observe.log import LEVELS
from shardproxy.routing.ring import moved_share

# --- output helpers ---------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], out: TextIO, indent: str = "") -> None:
    """Rows (the first one is the header) as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write(indent + line.rstrip() + "\n")


def _percent(share: float) -> str:
    return f"{share * 100:.2f}%"


def _replicas(shard: ShardConfig) -> str:
    return ", ".join(map(str, shard.replicas)) or "-"


def _shard_json(shard: ShardConfig) -> dict[str, Any]:
    return {
        "name": shard.name,
        "weight": shard.weight,
        "primary": str(shard.primary),
        "replicas": [str(r) for r in shard.replicas],
    }


def _text(key: bytes) -> str:
    """Key bytes for display: UTF-8 where it is, backslash escapes elsewhere."""
    return key.decode("utf-8", "backslashreplace")


def _load(path: str, label: str = "") -> Config | None:
    """Load ``path``; on failure print its problems on stderr (prefixed with ``label``)."""
    try:
        config = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{label}{problem}\n")
        return None
    from shardproxy.app.security import problems  # (the command table: not for every use)

    found = problems(config)
    for problem in found:
        sys.stderr.write(f"{label}{path}: {problem}\n")
    return None if found else config


# --- subcommands ------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    # Imported here so check/locate/diff do not load the serving stack (asyncio, uvloop, ...).
    from shardproxy.app.launch import serve

    return serve(config, config_path=args.config, workers=args.workers, log_level=args.log_level)


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    out = sys.stdout
    shares = config.ring().shares()
    total_weight = sum(shard.weight for shard in config.shards)
    out.write(f"{args.config}: OK\n")
    out.write(f"listen:      {', '.join(map(str, config.listen))}\n")
    out.write(f"admin:       {config.admin if config.admin is not None else 'off'}\n")
    tag = f'"{config.hash.tag}"' if config.hash.tag else "off"
    out.write(f"hash:        {config.hash.function}, {config.hash.distribution}, hash tag {tag}\n")
    out.write(f"read policy: {config.read_policy}\n")
    out.write(f"shards:      {len(config.shards)}\n")
    rows = [["name", "weight", "primary", "replicas", "keyspace", "by weight"]]
    for shard in sorted(config.shards, key=lambda s: s.name):
        rows.append(
            [
                shard.name,
                str(shard.weight),
                str(shard.primary),
                _replicas(shard),
                _percent(shares.get(shard.name, 0.0)),
                _percent(shard.weight / total_weight),
            ]
        )
    _table(rows, out, indent="  ")
    return 0


def _locate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    ring = config.ring()
    found = []
    for key_text in args.keys:
        key = os.fsencode(key_text)  # the bytes the shell passed, even if not UTF-8
        shard = config.shard(ring.shard_name(key))
        found.append((key, ring.hashed_part(key), shard))
    if args.json:
        result = [
            {
                "key": _text(key),
                "hashed": _text(hashed),
                "shard": shard.name,
                "primary": str(shard.primary),
                "replicas": [str(r) for r in shard.replicas],
            }
            for key, hashed, shard in found
        ]
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [["key", "hashed", "shard", "primary", "replicas"]]
    for key, hashed, shard in found:
        rows.append([_text(key), _text(hashed), shard.name, str(shard.primary), _replicas(shard)])
    _table(rows, sys.stdout)
    return 0


def _diff(args: argparse.Namespace) -> int:
    old = _load(args.old, f"{args.old}: ")
    new = _load(args.new, f"{args.new}: ")
    if old is None or new is None:
        return 1
    old_shards = {s.name: s for s in old.shards}
    new_shards = {s.name: s for s in new.shards}
    added = [new_shards[n] for n in sorted(new_shards.keys() - old_shards.keys())]
    removed = [old_shards[n] for n in sorted(old_shards.keys() - new_shards.keys())]
    kept = sorted(old_shards.keys() & new_shards.keys())
    weights = {
        n: (old_shards[n].weight, new_shards[n].weight)
        for n in kept
        if old_shards[n].weight != new_shards[n].weight
    }
    nodes: dict[str, dict[str, Any]] = {}
    for n in kept:
        before, after = old_shards[n], new_shards[n]
        change: dict[str, Any] = {}
        if before.primary != after.primary:
            change["primary"] = [str(before.primary), str(after.primary)]
        replicas_added = [str(r) for r in after.replicas if r not in before.replicas]
        replicas_removed = [str(r) for r in before.replicas if r not in after.replicas]
        if replicas_added:
            change["replicas_added"] = replicas_added
        if replicas_removed:
            change["replicas_removed"] = replicas_removed
        if change:
            nodes[n] = change
    settings = changed_settings(old, new)
    old_ring = old.ring()
    total, by_shard = moved_share(old_ring, new.ring())
    old_shares = old_ring.shares()
    moved = {name: by_shard.get(name, 0.0) for name in sorted(old_shards)}

    if args.json:
        result = {
            "old": args.old,
            "new": args.new,
            "shards_added": [_shard_json(s) for s in added],
            "shards_removed": [_shard_json(s) for s in removed],
            "weight_changes": {n: {"old": a, "new": b} for n, (a, b) in weights.items()},
            "node_changes": nodes,
            "setting_changes": {p: {"old": a, "new": b} for p, a, b in settings},
            "moved_share": {"total": total, "by_shard": moved},
        }
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    out = sys.stdout
    out.write(f"--- {args.old}\n+++ {args.new}\n")
    for label, shards in (("shards added", added), ("shards removed", removed)):
        out.write(f"{label}: {', '.join(s.name for s in shards) or 'none'}\n")
        for s in shards:
            out.write(f"  {s.name}: weight {s.weight}, primary {s.primary}, ")
            out.write(f"replicas {_replicas(s)}\n")
    out.write("weight changes:" + ("\n" if weights else " none\n"))
    for n, (w_old, w_new) in weights.items():
        out.write(f"  {n}: {w_old} -> {w_new}\n")
    out.write("node changes:" + ("\n" if nodes else " none\n"))
    for n, change in nodes.items():
        if "primary" in change:
            out.write(f"  {n}: primary {change['primary'][0]} -> {change['primary'][1]}\n")
        for r in change.get("replicas_added", []):
            out.write(f"  {n}: replica added {r}\n")
        for r in change.get("replicas_removed", []):
            out.write(f"  {n}: replica removed {r}\n")
    if settings:
        out.write("setting changes:\n")
        for path, a, b in settings:
            out.write(f"  {path}: {a} -> {b}\n")
    out.write("keyspace that changes shard (share of all keys, and of the old shard's keys):\n")
    rows = [["from shard", "of all keys", "of its keys"]]
    for name, share in moved.items():
        owned = old_shares.get(name, 0.0)
        rows.append([name, _percent(share), _percent(share / owned) if owned else "-"])
    rows.append(["total", _percent(total), ""])
    _table(rows, out, indent="  ")
    return 0


def _import_twemproxy(args: argparse.Namespace) -> int:
    from shardproxy.app import twemproxy

    return twemproxy.main(
        args.file, args.pool, eject=args.eject, listen=args.listen, admin=args.admin
    )


def _metrics(args: argparse.Namespace) -> int:
    from shardproxy.observe import metrics

    print(metrics.markdown_table() if args.markdown else metrics.text_table())
    return 0


# --- argument parsing -------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; subcommands carry their handler in ``func``."""
    parser = argparse.ArgumentParser(
        prog="shardproxy",
        description="A RESP proxy that makes a fleet of primary/replica Redis shards look like "
        "one Redis.",
    )
    parser.add_argument(
        "--version", action="version", version=f"shardproxy {shardproxy.__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, metavar="FILE", help="topology file")

    run = command("run", _run, "serve until SIGTERM/SIGINT (drain); SIGHUP reloads FILE")
    config_option(run)
    run.add_argument("--workers", type=_positive, metavar="N", help="worker processes (default: 1)")
    run.add_argument(
        "--log-level", choices=LEVELS, default="info", metavar="L", help="one of %(choices)s"
    )

    check = command("check", _check, "validate FILE; print shards, nodes and ring summary")
    config_option(check)

    locate = command("locate", _locate, "per key: hash-tag part, shard, primary, replicas")
    config_option(locate)
    locate.add_argument("--json", action="store_true", help="machine-readable output")
    locate.add_argument("keys", nargs="+", metavar="KEY")

    diff = command("diff", _diff, "what changes between two topologies: shards, nodes, keyspace")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")

    imp = command(
        "import-twemproxy",
        _import_twemproxy,
        "print the topology equivalent to a nutcracker (twemproxy) pool: same placement, names, "
        "weights, hash, tag, auth, timeouts; what cannot carry over is listed on stderr",
    )
    imp.add_argument("file", metavar="FILE", help="nutcracker YAML configuration")
    imp.add_argument("--pool", metavar="NAME", help="the pool to convert (needed if several)")
    imp.add_argument(
        "--eject",
        action="store_true",
        help="auto_eject_hosts: true becomes failover.mode: eject (caches only)",
    )
    imp.add_argument("--listen", metavar="ADDR", help="listen here instead of the pool's listen")
    imp.add_argument(
        "--admin", metavar="ADDR", help='admin listener (default 127.0.0.1:9121; "off")'
    )

    metrics = command("metrics", _metrics, "list every metric the proxy exports")
    metrics.add_argument("--markdown", action="store_true", help="as a Markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``shardproxy`` and ``python -m shardproxy``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
