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
        "server administration, the script debugger and other commands that cannot be proxied yet",
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
    "wrongpass": (
        "WRONGPASS invalid username-password pair or user is disabled.",
        "AUTH or HELLO ... AUTH with an unknown user, a wrong password or a user that is "
        "off (as Redis says it); counted in shardproxy_auth_failures_total",
    ),
    "hello_noauth": (
        "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
        "HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
        "the RESP protocol version at the same time",
        "HELLO without AUTH from a client that has not authenticated (as Redis says it)",
    ),
    "multi_nested": ("ERR MULTI calls can not be nested", "MULTI inside MULTI, as Redis says it"),
    "watch_in_multi": ("ERR WATCH inside MULTI is not allowed", "as Redis says it"),
    "exec_without_multi": ("ERR EXEC without MULTI", "as Redis says it"),
    "discard_without_multi": ("ERR DISCARD without MULTI", "as Redis says it"),
    "no_multi": (
        "ERR Command not allowed inside a transaction",
        "a command Redis refuses inside MULTI (as Redis says it); EXEC will answer -EXECABORT",
    ),
    "not_queueable": (
        "ERR command '{name}' cannot be queued in a transaction through shardproxy",
        "inside MULTI, a command the proxy answers itself or sends to every shard (INFO, "
        "CLIENT, DBSIZE, KEYS, SCRIPT ...); EXEC will answer -EXECABORT",
    ),
    "tx_too_large": (
        "ERR transaction too large: more than {limit} bytes queued (limits.max_request_bytes)",
        "the commands queued since MULTI add up to more than one request may be; EXEC will "
        "answer -EXECABORT",
    ),
    "execabort": (
        "EXECABORT Transaction discarded because of previous errors.",
        "EXEC after a command was refused while queueing (unknown, wrong arity, CROSSSLOT, "
        "not allowed in a transaction): none of them ran",
    ),
    "tx_primary_changed": (
        "TRYAGAIN shard {shard}: the primary changed (was {node}) while the transaction "
        "watched it; nothing was run",
        "a failover between WATCH and EXEC; the transaction is not sent, retry it",
    ),
    "per_shard_failed": (
        "ERR shardproxy: this shard's part of the per-shard transaction did not run",
        "`transactions.cross_shard: per-shard`: the shard holding this command answered EXEC "
        "with something other than its results; the other shards' parts may have run",
    ),
    "tx_shard_gone": (
        "TRYAGAIN shard {shard} left the topology during the transaction; nothing was run",
        "a reload removed the shard a transaction was pinned to",
    ),
    "lease_limit": (
        "TRYAGAIN shard {shard}: all {limit} dedicated connections to node {node} are in use",
        "a command that needs a connection of its own (a transaction, WATCH, a blocking "
        "command) found backend.max_leases of them open to the node",
    ),
    "invalid_cursor": ("ERR invalid cursor", "SCAN with a cursor the proxy did not hand out"),
    "pubsub_context": (
        "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
        "RESET are allowed in this context",
        "a RESP2 client with subscriptions sent another command (as Redis says it)",
    ),
    "pubsub_syntax": (
        "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try PUBSUB HELP.",
        "PUBSUB CHANNELS/SHARDCHANNELS with more than one pattern, NUMPAT with arguments "
        "(as Redis says it)",
    ),
    "subcommand": (
        "ERR unknown subcommand '{sub}'. Try {name} HELP.",
        "a subcommand the proxy does not answer",
    ),
    "not_integer": ("ERR value is not an integer or out of range", "as Redis says it"),
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


def quote_args(args: list[bytes]) -> str:
    """Arguments as Redis quotes them in 'unknown command' errors: each quoted, until 128
    bytes are shown (the last one cut to fit)."""
    out = b""
    for a in args:
        if len(out) >= 128:
            break
        out += b"'" + a[: 128 - len(out)] + b"' "
    return out.decode("utf-8", "replace")


def command_name(name: bytes) -> str:
    """A command name as Redis shows it in an error: at most 128 bytes."""
    return name[:128].decode("utf-8", "replace")


def reference_markdown() -> str:
    """The README's table of errors a user can meet."""
    rows = ["| reply | when |", "| --- | --- |"]
    for template, when in REPLIES.values():
        rows.append(f"| `-{template}` | {when} |")
    return "\n".join(rows)
