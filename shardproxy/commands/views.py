"""Views of the command table for people: the README's command table, by how each is handled."""

from __future__ import annotations

from typing import Final

from shardproxy.commands.table import (
    COMMANDS,
    KIND_ALL,
    KIND_ANY,
    KIND_BLOCKING,
    KIND_KEYED,
    KIND_LOCAL,
    KIND_MODE,
    KIND_NODES,
    KIND_PUBSUB,
    KIND_SCRIPT,
    KIND_SPLIT,
    KIND_UNSUPPORTED,
    KINDS,
    CommandSpec,
)


def specs_by_kind() -> dict[str, list[CommandSpec]]:
    """Leaf specs (commands without subcommands, and subcommands) grouped by kind.

    A container whose subcommands all share its kind is listed once, as the container.
    """
    out: dict[str, list[CommandSpec]] = {kind: [] for kind in KINDS}
    for spec in COMMANDS.values():
        subs = spec.subcommands
        if subs is None or all(sub.kind == spec.kind for sub in subs.values()):
            out[spec.kind].append(spec)
        else:
            for sub in subs.values():
                out[sub.kind].append(sub)
    return out


_TABLE_SECTIONS: Final = (
    ("Routed by key, read (replicas per `read_policy`)", KIND_KEYED, False),
    ("Routed by key, write (primary)", KIND_KEYED, True),
    ("Split per shard and merged in order", KIND_SPLIT, None),
    ("Sent to every shard's primary and merged", KIND_ALL, None),
    ("Sent to any one shard", KIND_ANY, None),
    ("Answered by the proxy", KIND_LOCAL, None),
    ("Change the client's mode (see Client modes)", KIND_MODE, None),
    ("Blocking, by key on a leased connection (see Client modes)", KIND_BLOCKING, None),
    ("Scripts and functions, routed by their declared keys", KIND_SCRIPT, None),
    ("Sent to every node a script may run on and merged", KIND_NODES, None),
    ("Pub/sub, over every shard (see Pub/sub)", KIND_PUBSUB, None),
    ("Refused (`not supported by shardproxy`)", KIND_UNSUPPORTED, None),
)


def markdown_table() -> str:
    """The README's supported-command table (derived; never edit the README copy by hand)."""
    by_kind = specs_by_kind()
    lines = ["| how | count | commands |", "|---|---:|---|"]
    for title, kind, write in _TABLE_SECTIONS:
        specs = [s for s in by_kind[kind] if write is None or s.write == write]
        names = []
        for spec in specs:
            label = f"`{spec.display_name}`"
            if spec.merge is not None:
                label += f" ({spec.merge})"
            if kind == KIND_KEYED and spec.blocking:
                label += " (with BLOCK: blocking)"
            names.append(label)
        lines.append(f"| {title} | {len(specs)} | {', '.join(names)} |")
    return "\n".join(lines) + "\n"
