"""The command table: policy (unit) and key positions / table drift (against a live redis-server)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from shardproxy.app.gen_commands import query, temporary_redis
from shardproxy.backend.dial import Endpoint
from shardproxy.commands import data as commands_data
from shardproxy.commands import table as commands
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
    MERGES,
    POLICY,
    CommandSpec,
    arity_ok,
    command_count,
    get_keys,
    is_blocking,
    iter_specs,
    lookup,
    resolve,
)
from shardproxy.commands.views import markdown_table, specs_by_kind
from shardproxy.protocol.replies import RedisReplyError


def spec_of(*argv: str) -> CommandSpec:
    spec = resolve([a.encode() for a in argv])
    assert spec is not None, argv
    return spec


def keys_of(*argv: str) -> list[str]:
    args = [a.encode() for a in argv]
    spec = resolve(args)
    assert spec is not None
    return [argv[i] for i in get_keys(spec, args)]


# ---------------------------------------------------------------------------------------------
# policy


@pytest.mark.parametrize(
    ("name", "merge"),
    [("mget", "array"), ("mset", "ok"), ("del", "sum"), ("unlink", "sum"), ("exists", "sum"),
     ("touch", "sum")],
)  # fmt: skip
def test_split_commands(name: str, merge: str) -> None:
    spec = spec_of(name)
    assert (spec.kind, spec.merge) == (KIND_SPLIT, merge)


@pytest.mark.parametrize(
    ("name", "merge", "write"),
    [("dbsize", "sum", False), ("keys", "concat", False), ("scan", "scan", False),
     ("randomkey", "random", False), ("flushdb", "ok", True), ("flushall", "ok", True)],
)  # fmt: skip
def test_all_shard_commands(name: str, merge: str, write: bool) -> None:
    spec = spec_of(name)
    assert (spec.kind, spec.merge, spec.write) == (KIND_ALL, merge, write)


def test_any_shard_is_time_and_the_function_and_script_readers() -> None:
    assert sorted(s.name for s in iter_specs() if s.kind == KIND_ANY) == [
        "function|dump", "function|help", "function|list", "function|stats", "pubsub|help",
        "script|help", "time",
    ]  # fmt: skip
    assert spec_of("time").merge is None


@pytest.mark.parametrize(
    ("argv", "write"),
    [(["eval", "s", "0"], True), (["evalsha", "x", "0"], True), (["fcall", "f", "0"], True),
     (["eval_ro", "s", "0"], False), (["evalsha_ro", "x", "0"], False),
     (["fcall_ro", "f", "0"], False)],
)  # fmt: skip
def test_scripts_route_by_key_and_write_unless_read_only(argv: list[str], write: bool) -> None:
    spec = spec_of(*argv)
    assert (spec.kind, spec.write, spec.queueable) == (KIND_SCRIPT, write, True)


@pytest.mark.parametrize(
    ("argv", "kind", "merge"),
    [(["script", "load", "x"], KIND_NODES, "same"), (["script", "flush"], KIND_NODES, "same"),
     (["script", "exists", "x"], KIND_NODES, "and"), (["script", "kill"], KIND_NODES, "killed"),
     (["function", "kill"], KIND_NODES, "killed"), (["function", "load", "x"], KIND_ALL, "same"),
     (["function", "delete", "x"], KIND_ALL, "same"), (["function", "flush"], KIND_ALL, "same"),
     (["function", "restore", "x"], KIND_ALL, "same"), (["function", "list"], KIND_ANY, None)],
)  # fmt: skip
def test_script_cache_and_function_commands(argv: list[str], kind: str, merge: str | None) -> None:
    spec = spec_of(*argv)
    assert (spec.kind, spec.merge, spec.queueable) == (kind, merge, kind == KIND_ANY)


@pytest.mark.parametrize(
    "argv",
    [["blpop", "k", "0"], ["brpop", "k", "0"], ["brpoplpush", "a", "b", "0"],
     ["blmove", "a", "b", "left", "left", "0"], ["blmpop", "0", "1", "k", "left"],
     ["bzpopmin", "k", "0"], ["bzpopmax", "k", "0"], ["bzmpop", "0", "1", "k", "min"],
     ["wait", "0", "0"]],
)  # fmt: skip
def test_blocking_commands_run_on_a_lease(argv: list[str]) -> None:
    spec = spec_of(*argv)
    assert spec.kind == KIND_BLOCKING and spec.queueable == (spec.name != "wait")


def test_what_a_transaction_queues() -> None:
    queued = {s.name for s in iter_specs() if s.queueable}
    assert {"get", "set", "mget", "del", "time", "ping", "echo", "eval", "blpop"} <= queued
    assert not queued & {"info", "dbsize", "keys", "client|id", "multi", "watch", "hello",
                         "subscribe", "script|load", "function|load", "select", "auth"}  # fmt: skip
    for spec in iter_specs():
        if "no_multi" in spec.flags:
            assert not spec.queueable, spec.name


def test_local_commands() -> None:
    local = {s.name for s in iter_specs() if s.kind == KIND_LOCAL}
    assert local == {
        "ping", "echo", "quit", "select", "hello", "info", "auth", "reset",
        "client", "client|setname", "client|getname", "client|id", "client|no-evict",
        "client|info", "client|setinfo", "client|no-touch", "client|maint_notifications", "role",
        "command", "command|count", "command|info", "command|docs", "command|getkeys",
        "command|list", "acl|whoami", "acl|cat",
    }  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [["config", "get", "x"], ["debug", "sleep", "0"], ["shutdown"], ["replicaof", "h", "1"],
     ["monitor"], ["cluster", "info"], ["save"], ["bgsave"], ["lastsave"], ["acl", "list"],
     ["slowlog", "get"], ["latency", "latest"], ["swapdb", "0", "1"], ["move", "k", "1"],
     ["migrate", "h", "1", "k", "0", "5"], ["lolwut"],
     ["memory", "stats"], ["memory", "doctor"], ["object", "help"],
     ["script", "debug", "yes"], ["readonly"],
     ["readwrite"], ["asking"], ["pfselftest"], ["pfdebug", "getreg", "k"],
     ["client", "kill", "id", "1"], ["client", "list"], ["client", "pause", "1"],
     ["client", "tracking", "on"], ["xgroup", "help"], ["module", "list"], ["failover"]],
)  # fmt: skip
def test_refused(argv: list[str]) -> None:
    assert spec_of(*argv).kind == KIND_UNSUPPORTED


@pytest.mark.parametrize(
    "argv",
    [["subscribe", "c"], ["unsubscribe"], ["psubscribe", "c*"], ["punsubscribe"],
     ["ssubscribe", "c"], ["sunsubscribe"], ["publish", "c", "m"], ["spublish", "c", "m"],
     ["pubsub", "channels"], ["pubsub", "numsub"], ["pubsub", "numpat"],
     ["pubsub", "shardchannels"], ["pubsub", "shardnumsub"]],
)  # fmt: skip
def test_pubsub_commands_go_to_the_registry(argv: list[str]) -> None:
    spec = spec_of(*argv)
    assert spec.kind == KIND_PUBSUB
    assert spec.queueable == (spec.name == "publish")  # PUBLISH reaches subscribers from any shard


@pytest.mark.parametrize("name", ["multi", "exec", "discard", "watch", "unwatch"])
def test_mode_commands_change_the_client_mode(name: str) -> None:
    """MULTI, EXEC, DISCARD, WATCH, UNWATCH are the session's mode table's to answer."""
    assert spec_of(name).kind == KIND_MODE


@pytest.mark.parametrize(
    ("argv", "write"),
    [(["get", "k"], False), (["set", "k", "v"], True), (["hget", "h", "f"], False),
     (["zunionstore", "d", "1", "a"], True), (["xread", "streams", "s", "0"], False),
     (["xreadgroup", "group", "g", "c", "streams", "s", ">"], True),
     (["memory", "usage", "k"], False), (["object", "encoding", "k"], False),
     (["object", "freq", "k"], False), (["object", "idletime", "k"], False),
     (["object", "refcount", "k"], False), (["xinfo", "stream", "s"], False),
     (["xgroup", "create", "s", "g", "$"], True), (["sort", "k"], True),
     (["sort_ro", "k"], False), (["georadius", "g", "0", "0", "1", "km"], True)],
)  # fmt: skip
def test_keyed(argv: list[str], write: bool) -> None:
    spec = spec_of(*argv)
    assert (spec.kind, spec.write, spec.merge) == (KIND_KEYED, write, None)


def test_derivation_rules_hold_for_every_spec() -> None:
    for spec in iter_specs():
        assert spec.kind in KINDS
        assert (spec.merge is not None) == (spec.kind in (KIND_SPLIT, KIND_ALL, KIND_NODES)), (
            spec.name
        )
        assert spec.merge is None or spec.merge in MERGES
        script_write = spec.kind == KIND_SCRIPT and "readonly" not in spec.flags
        assert spec.write == ("write" in spec.flags or script_write)
        if spec.name not in POLICY:
            parent_refused = spec.parent is not None and POLICY.get(spec.parent, ("",))[0] == (
                KIND_UNSUPPORTED
            )
            expected = KIND_KEYED if spec.has_keys and not parent_refused else KIND_UNSUPPORTED
            assert spec.kind == expected, spec.name  # keyless and undeclared -> refused
        if spec.kind == KIND_KEYED:
            assert spec.has_keys, spec.name
        if spec.subcommands is not None:
            assert spec.kind in (KIND_LOCAL, KIND_UNSUPPORTED, KIND_PUBSUB), spec.name


def test_policy_names_exist_except_newer_redis_ones() -> None:
    assert frozenset({"waitaof"}) == commands.UNMATCHED_POLICY


def test_handshake_extras_are_local() -> None:
    """CLIENT SETINFO / NO-TOUCH (Redis 7.2), MAINT_NOTIFICATIONS (8.0) are answered by the
    proxy, with their arity."""
    for name, arity in (
        ("client|setinfo", 4), ("client|no-touch", 3), ("client|maint_notifications", -3),
    ):  # fmt: skip
        spec = resolve([part.encode() for part in name.split("|")])
        assert spec is not None and spec.name == name
        assert (spec.kind, spec.arity) == (KIND_LOCAL, arity)


def test_policy_table_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        commands._policy_from_table((("get", KIND_LOCAL, None), ("get", KIND_LOCAL, None)))
    with pytest.raises(ValueError, match="merge"):
        commands._policy_from_table((("mget", KIND_SPLIT, None),))


# ---------------------------------------------------------------------------------------------
# lookup / resolve / arity


def test_lookup_any_case_and_unknown() -> None:
    get = COMMANDS[b"get"]
    assert lookup(b"get") is get
    assert lookup(b"GET") is get
    assert lookup(b"gEt") is get
    assert lookup(b"nosuchcommand") is None
    assert lookup(b"") is None
    assert resolve([b"nosuchcommand", b"x"]) is None
    assert resolve([]) is None


def test_containers_resolve_into_subcommands() -> None:
    client = COMMANDS[b"client"]
    assert client.subcommands is not None
    assert all(name == name.lower() for name in client.subcommands)
    assert resolve([b"client", b"setname", b"x"]) is client.subcommands[b"setname"]
    assert resolve([b"CLIENT", b"SETNAME", b"x"]) is client.subcommands[b"setname"]
    assert resolve([b"Client", b"SetName", b"x"]) is client.subcommands[b"setname"]
    assert resolve([b"client"]) is client  # missing subcommand: the container itself
    assert resolve([b"client", b"bogus"]) is client  # unknown subcommand: likewise
    assert client.subcommands[b"kill"].kind == KIND_UNSUPPORTED
    assert client.subcommands[b"setname"].parent == "client"
    assert spec_of("object", "encoding", "k").name == "object|encoding"
    assert COMMANDS[b"get"].subcommands is None
    assert COMMANDS[b"config"].kind == KIND_UNSUPPORTED


def test_arity() -> None:
    get, mget, client_id = spec_of("get"), spec_of("mget"), spec_of("client", "id")
    assert (get.arity, mget.arity, client_id.arity) == (2, -2, 2)
    assert arity_ok(get, 2) and not arity_ok(get, 1) and not arity_ok(get, 3)
    assert arity_ok(mget, 2) and arity_ok(mget, 50) and not arity_ok(mget, 1)


def test_spec_fields() -> None:
    get = spec_of("get")
    assert (get.first_key, get.last_key, get.key_step) == (1, 1, 1)
    assert get.single_key and not get.movable and get.has_keys
    assert get.flags == {"readonly", "fast"} and get.group == "string" and get.since == "1.0.0"
    assert get.summary and get.acl_categories == ("@read", "@string", "@fast")
    assert not spec_of("mset").single_key and not spec_of("zunionstore").single_key
    assert spec_of("zunionstore").movable
    assert not spec_of("spublish").has_keys  # shard channels are not keys
    assert spec_of("georadius").doc_flags == ("deprecated",)
    assert command_count() == len(commands_data.COMMANDS) == len(COMMANDS)
    xread = spec_of("xread").key_specs[0]
    assert (xread.begin_search, xread.keyword, xread.startfrom) == ("keyword", "STREAMS", 1)
    assert (xread.find_keys, xread.lastkey, xread.keystep, xread.limit) == ("range", -1, 1, 2)


def test_is_blocking() -> None:
    def blocking(*argv: str) -> bool:
        args = [a.encode() for a in argv]
        spec = resolve(args)
        assert spec is not None
        return is_blocking(spec, args)

    assert not blocking("get", "k")
    assert blocking("blpop", "k", "0")
    assert not blocking("xread", "streams", "s", "0")
    assert not blocking("xread", "COUNT", "2", "STREAMS", "s", "0")
    assert blocking("xread", "COUNT", "2", "BLOCK", "0", "STREAMS", "s", "0")
    assert blocking("XREAD", "block", "100", "streams", "s", "$")
    assert not blocking("xread", "count", "block", "streams", "block", "0")  # values, not options
    assert not blocking("xreadgroup", "group", "block", "c", "streams", "s", ">")
    assert blocking("xreadgroup", "GROUP", "g", "c", "NOACK", "BLOCK", "0", "STREAMS", "s", ">")
    assert not blocking("xreadgroup", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s", ">")


def test_get_keys_special_cases() -> None:
    assert keys_of("get") == []
    assert keys_of("sort", "k", "store", "limit") == ["k", "limit"]
    assert keys_of("sort", "k", "LIMIT", "0", "5", "STORE", "d") == ["k", "d"]
    assert keys_of("migrate", "h", "1", "k", "0", "5", "AUTH", "keys") == ["k"]
    assert keys_of("migrate", "h", "1", "", "0", "5", "AUTH2", "u", "keys", "KEYS", "a") == ["a"]
    assert keys_of("migrate", "h", "1", "x", "0", "5", "KEYS", "a") == []
    assert keys_of("zunionstore", "d", "01", "a") == []  # string2ll refuses leading zeros
    assert keys_of("zunionstore", "d", "1_0", "a") == []
    assert keys_of("blpop", "a") == []
    assert keys_of("ping") == []


def test_markdown_table_lists_every_leaf_once() -> None:
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0] == "| how | count | commands |"
    assert len(lines) == 2 + 12
    for specs in specs_by_kind().values():
        for spec in specs:
            assert table.count(f"`{spec.display_name}`") == 1, spec.name
    assert "`MGET` (array)" in table and "`CLIENT SETNAME`" in table
    assert "`CLIENT KILL`" in table and "`CONFIG`" in table and "`CONFIG GET`" not in table
    assert "`OBJECT ENCODING`" in table and "`OBJECT`" not in table


# ---------------------------------------------------------------------------------------------
# against a live redis-server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Endpoint]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with temporary_redis(binary) as (host, port, _proc):
        yield Endpoint(host, port)


def call(server: Endpoint, *argv: str) -> Any:
    """One command's decoded reply (an error reply raises RedisReplyError)."""
    return query(server, argv)[0]


SAMPLES: list[list[str]] = [
    # one key at argv[1]
    ["get", "k"], ["set", "k", "v"], ["set", "k", "v", "GET", "EX", "10"], ["incr", "k"],
    ["hget", "h", "f"], ["hset", "h", "f", "v", "f2", "v2"], ["lpush", "l", "a", "b"],
    ["sadd", "s", "m"], ["zadd", "z", "1", "m"], ["expire", "k", "10"], ["ttl", "k"],
    ["type", "k"], ["append", "k", "v"], ["getrange", "k", "0", "1"],
    ["setex", "k", "10", "v"], ["bitfield", "k", "GET", "u8", "0"], ["xadd", "st", "*", "f", "v"],
    ["xlen", "st"], ["pfadd", "p", "a"], ["geoadd", "g", "1", "2", "m"], ["dump", "k"],
    ["lpos", "l", "a", "RANK", "1"], ["getex", "k", "PERSIST"], ["spop", "s", "2"],
    # several fixed keys
    ["rename", "a", "b"], ["renamenx", "a", "b"], ["rpoplpush", "a", "b"],
    ["lmove", "a", "b", "LEFT", "RIGHT"], ["smove", "a", "b", "m"], ["copy", "a", "b", "REPLACE"],
    ["sinterstore", "d", "a", "b", "c"], ["sunion", "a", "b", "c"], ["sdiff", "a", "b"],
    ["pfmerge", "d", "a", "b"], ["pfcount", "a", "b"], ["bitop", "AND", "d", "a", "b", "c"],
    ["geosearchstore", "d", "src", "FROMMEMBER", "m", "BYRADIUS", "1", "km"],
    ["zrangestore", "d", "src", "0", "-1"], ["msetnx", "a", "1", "b", "2"],
    ["mset", "a", "1", "b", "2", "c", "3"], ["mget", "a", "b", "c"], ["del", "a", "b", "c"],
    ["exists", "a", "b"], ["touch", "a", "b"], ["unlink", "a"], ["blpop", "a", "b", "0"],
    ["brpop", "a", "0"], ["watch", "a", "b"], ["lcs", "a", "b", "LEN"],
    # numkeys
    ["zunionstore", "d", "2", "a", "b", "WEIGHTS", "1", "2"], ["zinterstore", "d", "3", "a", "b", "c"],
    ["zdiffstore", "d", "1", "a"], ["zunion", "2", "a", "b"], ["zinter", "2", "a", "b", "WITHSCORES"],
    ["zdiff", "2", "a", "b"], ["sintercard", "2", "a", "b", "LIMIT", "1"],
    ["zintercard", "3", "a", "b", "c"], ["lmpop", "2", "a", "b", "LEFT", "COUNT", "1"],
    ["zmpop", "1", "a", "MIN"], ["blmpop", "0", "2", "a", "b", "LEFT"],
    ["bzmpop", "1", "2", "a", "b", "MAX"], ["eval", "return 1", "2", "a", "b", "x", "y"],
    ["evalsha", "0123456789012345678901234567890123456789", "1", "a"],
    ["fcall", "f", "2", "a", "b", "arg"], ["eval_ro", "return 1", "1", "a"],
    ["zunionstore", "d", "0", "a"], ["zunion", "5", "a", "b"], ["lmpop", "2", "a"],
    # keywords
    ["xread", "COUNT", "2", "STREAMS", "a", "b", "0", "0"], ["xread", "STREAMS", "a", "0"],
    ["xread", "BLOCK", "0", "STREAMS", "s1", "s2", "s3", "0", "0", "0"],
    ["xreadgroup", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "a", "b", ">", ">"],
    ["xread", "streams", "a", "b", "0"],
    ["georadius", "g", "1", "2", "3", "km", "STORE", "d"],
    ["georadius", "g", "1", "2", "3", "km", "STOREDIST", "d2"],
    ["georadius", "g", "1", "2", "3", "km", "WITHDIST"],
    ["georadius", "g", "1", "2", "3", "km", "store", "d", "STOREDIST", "d2"],
    ["georadius", "g", "1", "2", "3", "km", "STORE"],
    ["georadiusbymember", "g", "m", "3", "km", "STORE", "d"],
    ["sort", "k"], ["sort", "k", "STORE", "d"],
    ["sort", "k", "BY", "w_*", "LIMIT", "0", "10", "GET", "o_*", "ALPHA", "STORE", "d"],
    ["sort", "k", "STORE", "d1", "STORE", "d2"], ["sort_ro", "k", "BY", "x"],
    ["migrate", "h", "1", "k", "0", "5"],
    ["migrate", "h", "1", "", "0", "5", "COPY", "REPLACE", "KEYS", "a", "b", "c"],
    ["migrate", "h", "1", "", "0", "5", "AUTH", "pw", "KEYS", "a", "b"],
    ["migrate", "h", "1", "", "0", "5", "AUTH2", "u", "p", "KEYS", "a"],
    # subcommands
    ["object", "encoding", "k"], ["object", "freq", "k"], ["memory", "usage", "k", "SAMPLES", "5"],
    ["xinfo", "stream", "s"], ["xinfo", "groups", "s"], ["xinfo", "consumers", "s", "g"],
    ["xgroup", "create", "s", "g", "$", "MKSTREAM"], ["xgroup", "setid", "s", "g", "0"],
    ["xgroup", "delconsumer", "s", "g", "c"],
    # no keys
    ["ping"], ["dbsize"], ["keys", "*"], ["scan", "0"], ["time"], ["config", "get", "x"],
    ["spublish", "c", "m"], ["ssubscribe", "a", "b"], ["publish", "c", "m"], ["client", "id"],
]  # fmt: skip


def test_enough_samples() -> None:
    assert len({spec_of(*argv).name for argv in SAMPLES}) >= 60


@pytest.mark.parametrize("argv", SAMPLES, ids=lambda argv: " ".join(argv)[:60])
def test_get_keys_matches_command_getkeys(redis_server: Endpoint, argv: list[str]) -> None:
    try:
        server_keys = [k.decode() for k in call(redis_server, "COMMAND", "GETKEYS", *argv)]
    except RedisReplyError:
        server_keys = []  # "Invalid arguments" / "no key arguments": no key to route by
    assert keys_of(*argv) == server_keys


def _flat_map(flat: list[Any]) -> dict[str, Any]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def test_table_matches_live_server(redis_server: Endpoint) -> None:
    """Every command the server has is in the table with the same arity, flags and keys."""
    listed = {name.decode() for name in call(redis_server, "COMMAND", "LIST")}
    extras = {row[0] for row in commands.HANDSHAKE_EXTRAS}  # newer than 7.0, declared by hand
    ours = {spec.name: spec for spec in iter_specs() if spec.name not in extras}
    assert listed == set(ours)
    assert call(redis_server, "COMMAND", "COUNT") == command_count()
    infos = call(redis_server, "COMMAND", "INFO")
    checked = 0
    pending = list(infos)
    while pending:
        info = pending.pop()
        name, arity, flags, first, last, step = info[:6]
        spec = ours[name.decode()]
        assert spec.arity == arity, spec.name
        assert spec.flags == {f.decode() for f in flags}, spec.name
        assert (spec.first_key, spec.last_key, spec.key_step) == (first, last, step), spec.name
        assert len(spec.key_specs) == len(info[8]), spec.name
        for ks, raw in zip(spec.key_specs, info[8], strict=True):
            begin = _flat_map(_flat_map(raw)["begin_search"])
            assert ks.begin_search == begin["type"].decode()
        subs = [n for n in spec.subcommands or () if f"{spec.name}|{n.decode()}" not in extras]
        assert len(subs) == len(info[9]), spec.name
        pending.extend(info[9])
        checked += 1
    assert checked == len(ours)


def test_docs_match_live_server(redis_server: Endpoint) -> None:
    docs = _flat_map(call(redis_server, "COMMAND", "DOCS", "get", "client"))
    get = _flat_map(docs["get"])
    assert get["summary"] == spec_of("get").summary.encode()
    assert get["since"] == b"1.0.0" and get["group"] == b"string"
    client_subs = _flat_map(_flat_map(docs["client"])["subcommands"])
    setname = _flat_map(client_subs["client|setname"])
    assert setname["summary"] == spec_of("client", "setname").summary.encode()
