"""Every RESP error reply the proxy itself produces, in one table.

Each entry of :data:`REPLIES` is a template; :func:`reply` fills it and returns the wire bytes
(``-CODE message\\r\\n``). The README's error reference is generated from the same table, so a
new error is added here once and documented everywhere.
"""

from __future__ import annotations

#: name -> (template, when a user meets it). The template's first word is the error code.
REPLIES: dict[str, tuple[str, str]] = {
    "unknown_command": (
        "ERR unknown command '{name}', with args beginning with: {args}",
        "the command does not exist in Redis 7.0",
    ),
    "unsupported": (
        "ERR command '{name}' is not supported by shardproxy",
        "server administration, transactions, pub/sub, scripting and other commands "
        "that cannot be proxied yet",
    ),
    "blocking": (
        "ERR blocking command '{name}' is not supported by shardproxy",
        "BLPOP and friends, and XREAD/XREADGROUP with BLOCK",
    ),
    "denied": (
        "ERR command '{name}' is denied by the proxy configuration (deny_commands)",
        "the operator listed the command in deny_commands",
    ),
    "arity": (
        "ERR wrong number of arguments for '{name}' command",
        "as Redis says it",
    ),
    "syntax": ("ERR syntax error", "as Redis says it"),
    "crossslot": (
        "CROSSSLOT Keys in request don't hash to the same shard",
        "a multi-key command that cannot be split has keys on different shards; "
        "use a hash tag such as {user1}.a and {user1}.b",
    ),
    "shard_unavailable": (
        "TRYAGAIN shard {shard}: node {node} is unreachable ({detail})",
        "the node that should serve the shard is down or refuses connections",
    ),
    "shard_timeout": (
        "TRYAGAIN shard {shard}: node {node} did not answer within {ms} ms",
        "the node accepted the command but did not reply within timeouts.command_ms",
    ),
    "shard_closed": (
        "TRYAGAIN shard {shard}: connection to node {node} lost before the reply ({detail})",
        "the node closed the connection with the command in flight; it may or may not have "
        "been applied, and the proxy never retries a write",
    ),
    "no_replica": (
        "TRYAGAIN shard {shard}: no replica is available (read_policy replica)",
        "read_policy is replica and every replica of the shard is down",
    ),
    "protocol": (
        "ERR Protocol error: {detail}",
        "malformed RESP or an oversized request; the connection is closed afterwards",
    ),
    "select": (
        "ERR DB index is out of range (shardproxy serves database 0 only)",
        "SELECT with a database other than 0",
    ),
    "noproto": ("NOPROTO unsupported protocol version", "HELLO with a version other than 2 or 3"),
    "auth_nopass": (
        "ERR AUTH <password> called without any password configured for the default user. "
        "Are you sure your configuration is correct?",
        "AUTH with a password while the proxy has no client password",
    ),
    "invalid_cursor": ("ERR invalid cursor", "SCAN with a cursor the proxy did not hand out"),
    "subcommand": (
        "ERR unknown subcommand '{sub}'. Try {name} HELP.",
        "a subcommand the proxy does not answer",
    ),
    "not_integer": ("ERR value is not an integer or out of range", "as Redis says it"),
    "shutting_down": (
        "TRYAGAIN shardproxy is shutting down",
        "a request arrived while the proxy drains before exit",
    ),
    "internal": (
        "ERR shardproxy internal error: {detail}",
        "a bug in the proxy; it is logged with a traceback and the connection stays usable",
    ),
    "too_many_clients": (
        "ERR max number of clients reached",
        "limits.max_clients connections are already open",
    ),
}


def _clean(text: str) -> str:
    """Error lines cannot carry CR or LF; replace them so a reply stays one frame."""
    return text.replace("\r", " ").replace("\n", " ")


def message(which: str, /, **fields: object) -> str:
    """The error text (without the leading ``-`` and the CRLF)."""
    return _clean(REPLIES[which][0].format(**fields))


def reply(which: str, /, **fields: object) -> bytes:
    """The RESP error reply bytes for table entry ``which``."""
    return b"-" + message(which, **fields).encode("utf-8", "replace") + b"\r\n"


def quote_args(args: list[bytes], limit: int = 8) -> str:
    """Arguments as Redis quotes them in 'unknown command' errors."""
    shown = []
    for a in args[:limit]:
        text = a[:128].decode("utf-8", "replace")
        shown.append("'" + text + "'")
    return " ".join(shown) + (" " if shown else "")


def reference_markdown() -> str:
    """The README's table of errors a user can meet."""
    rows = ["| reply | when |", "| --- | --- |"]
    for template, when in REPLIES.values():
        rows.append(f"| `-{template}` | {when} |")
    return "\n".join(rows)
