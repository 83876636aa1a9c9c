"""Topology file parsing: defaults, every error with its key path, address forms, shipped files."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest

from shardproxy import config
from shardproxy.config import (
    Address,
    BackendConfig,
    Config,
    ConfigError,
    HashConfig,
    LimitsConfig,
    ShardConfig,
    ShutdownConfig,
    TimeoutsConfig,
    load,
    parse,
)
from shardproxy.routing.hashing import HASH_FUNCTIONS

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "config").glob("*.yaml"))


def minimal(**extra: Any) -> dict[str, Any]:
    """The smallest valid document, plus ``extra`` top-level keys."""
    data: dict[str, Any] = {"shards": [{"name": "s1", "primary": "127.0.0.1:7001"}]}
    data.update(extra)
    return data


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- defaults -------------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse(minimal())
    assert cfg.listen == (Address("127.0.0.1", 6380),)
    assert cfg.admin == Address("127.0.0.1", 9121)
    assert cfg.hash == HashConfig("fnv1a_64", "ketama", "{}")
    assert cfg.read_policy == "primary"
    assert cfg.shards == (
        ShardConfig(name="s1", weight=1, primary=Address("127.0.0.1", 7001), replicas=()),
    )
    assert cfg.timeouts == TimeoutsConfig(connect_ms=1000, command_ms=1000)
    assert cfg.backend == BackendConfig(connections=1, username=None, password=None)
    assert cfg.limits == LimitsConfig(
        max_pending_per_client=1024,
        max_request_bytes=512 * 1024 * 1024,
        max_inline_bytes=64 * 1024,
        max_clients=10000,
    )
    assert cfg.shutdown == ShutdownConfig(drain_timeout_ms=5000)
    assert cfg.deny_commands == frozenset()
    assert cfg.source is None


def test_empty_sections_mean_defaults() -> None:
    cfg = parse(minimal(timeouts=None, limits={}, hash=None))
    assert cfg.timeouts == TimeoutsConfig()
    assert cfg.limits == LimitsConfig()
    assert cfg.hash == HashConfig()


def test_config_is_frozen() -> None:
    cfg = parse(minimal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.read_policy = "replica"  # type: ignore[misc]


def test_full_document() -> None:
    cfg = parse(
        {
            "listen": ["0.0.0.0:6380", "unix:/run/shardproxy.sock"],
            "admin": "off",
            "hash": {"function": "murmur", "distribution": "modula", "tag": ""},
            "read_policy": "prefer-replica",
            "shards": [
                {
                    "name": "b",
                    "weight": 3,
                    "primary": "10.0.0.1:6379",
                    "replicas": ["10.0.0.2:6379", "[fd00::3]:6379"],
                },
                {"name": "a", "primary": "unix:/run/redis-a.sock"},
            ],
            "timeouts": {"connect_ms": 50, "command_ms": 250},
            "backend": {"connections": 4, "username": "proxy", "password": "secret"},
            "limits": {"max_request_bytes": "1mb", "max_inline_bytes": 4096},
            "shutdown": {"drain_timeout_ms": 0},
            "deny_commands": ["FLUSHALL", "Keys"],
        },
        source="x.yaml",
    )
    assert cfg.listen == (Address("0.0.0.0", 6380), Address(unix="/run/shardproxy.sock"))
    assert cfg.admin is None
    assert cfg.hash == HashConfig("murmur", "modula", "")
    assert cfg.read_policy == "prefer-replica"
    assert [s.name for s in cfg.shards] == ["b", "a"]  # file order kept
    assert cfg.shard("b").weight == 3
    assert cfg.shard("b").replicas == (Address("10.0.0.2", 6379), Address("fd00::3", 6379))
    assert cfg.shard("b").nodes[0] == Address("10.0.0.1", 6379)
    assert cfg.shard("a").primary == Address(unix="/run/redis-a.sock")
    assert cfg.timeouts == TimeoutsConfig(50, 250)
    assert cfg.backend == BackendConfig(4, "proxy", "secret")
    assert cfg.limits.max_request_bytes == 1024 * 1024
    assert cfg.limits.max_inline_bytes == 4096
    assert cfg.shutdown.drain_timeout_ms == 0
    assert cfg.deny_commands == {"flushall", "keys"}
    assert cfg.source == "x.yaml"
    with pytest.raises(KeyError):
        cfg.shard("zz")


def test_admin_off_as_yaml_boolean(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("admin: off\nshards: [{name: s1, primary: '127.0.0.1:7001'}]\n")
    assert load(str(path)).admin is None


@pytest.mark.parametrize("name", list(HASH_FUNCTIONS))
def test_every_hash_function_accepted(name: str) -> None:
    assert parse(minimal(hash={"function": name})).hash.function == name


def test_hash_function_names_come_from_hashing() -> None:
    assert config.HASH_FUNCTION_NAMES == tuple(HASH_FUNCTIONS)
    assert config.HASH_FUNCTION.choices == tuple(HASH_FUNCTIONS)


# --- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:6380", Address("127.0.0.1", 6380)),
        ("localhost:1", Address("localhost", 1)),
        ("redis-1.example.com:65535", Address("redis-1.example.com", 65535)),
        ("[::1]:6380", Address("::1", 6380)),
        ("[fe80::1%eth0]:7000", Address("fe80::1%eth0", 7000)),
        ("unix:/tmp/redis.sock", Address(unix="/tmp/redis.sock")),
        ("0.0.0.0:0", Address("0.0.0.0", 0)),
    ],
)
def test_address_forms(text: str, address: Address) -> None:
    assert Address.parse(text) == address
    assert str(address) == text
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize(
    "text",
    ["", "6380", "host", "host:", ":6380", "host:port", "host:65536", "host:-1", "::1:6380",
     "[::1]6380", "[::1]", "unix:"],
)  # fmt: skip
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        Address.parse(text)


def test_listen_forms() -> None:
    assert parse(minimal(listen="[::1]:6380")).listen == (Address("::1", 6380),)
    assert parse(minimal(listen=["unix:/tmp/p.sock"])).listen == (Address(unix="/tmp/p.sock"),)
    assert parse(minimal(listen="127.0.0.1:0")).listen == (Address("127.0.0.1", 0),)


# --- errors, each with its key path ---------------------------------------------------------------


def shard(name: str = "s1", primary: str = "127.0.0.1:7001", **extra: Any) -> dict[str, Any]:
    return {"name": name, "primary": primary, **extra}


ERROR_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", minimal(lisen="x:1"), "lisen: unknown key"),
    ("unknown section key", minimal(limits={"foo": 1}), "limits.foo: unknown key"),
    (
        "unknown shard key",
        {"shards": [shard(), shard("s2", "127.0.0.1:7003", replica="x:1")]},
        "shards[1].replica: unknown key",
    ),
    (
        "unknown hash function",
        minimal(hash={"function": "x"}),
        "hash.function: unknown hash function 'x' (one of one_at_a_time, md5, crc16, crc32, "
        "crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins)",
    ),
    (
        "unknown distribution",
        minimal(hash={"distribution": "random"}),
        "hash.distribution: unknown distribution 'random' (one of ketama, modula)",
    ),
    ("tag too long", minimal(hash={"tag": "{{}"}), "hash.tag: must be"),
    ("tag of one char", minimal(hash={"tag": "{"}), "hash.tag: must be"),
    ("tag unquoted {} is a YAML mapping", minimal(hash={"tag": {}}), "hash.tag: must be a string"),
    (
        "read policy",
        minimal(read_policy="replicas"),
        "read_policy: unknown read policy 'replicas' (one of primary, prefer-replica, replica)",
    ),
    (
        "negative timeout",
        minimal(timeouts={"command_ms": -1}),
        "timeouts.command_ms: must be a positive integer",
    ),
    (
        "zero timeout",
        minimal(timeouts={"connect_ms": 0}),
        "timeouts.connect_ms: must be a positive integer",
    ),
    (
        "string number",
        minimal(backend={"connections": "2"}),
        "backend.connections: must be a positive integer",
    ),
    (
        "boolean is not a number",
        minimal(backend={"connections": True}),
        "backend.connections: must be a positive integer",
    ),
    (
        "password must be a string",
        minimal(backend={"password": 1234}),
        "backend.password: must be a string",
    ),
    (
        "username without password",
        minimal(backend={"username": "proxy"}),
        "backend.username: needs backend.password as well",
    ),
    ("bad size", minimal(limits={"max_request_bytes": "1tb"}), "limits.max_request_bytes: must be"),
    (
        "negative drain",
        minimal(shutdown={"drain_timeout_ms": -1}),
        "shutdown.drain_timeout_ms: must be an integer >= 0",
    ),
    ("section not a mapping", minimal(timeouts=[1]), "timeouts: must be a mapping"),
    ("missing shards", {"listen": "127.0.0.1:6380"}, "shards: required key is missing"),
    ("empty shards", {"shards": []}, "shards: must list at least one shard"),
    ("shards not a list", {"shards": {"s1": {}}}, "shards: must be a list"),
    ("shard not a mapping", {"shards": [shard(), "s2"]}, "shards[1]: must be a mapping"),
    (
        "missing primary",
        {"shards": [shard(), {"name": "s2"}]},
        "shards[1].primary: required key is missing",
    ),
    ("missing name", {"shards": [{"primary": "h:1"}]}, "shards[0].name: required key is missing"),
    ("bad primary", {"shards": [shard(), shard("s2", "nope")]}, "shards[1].primary: bad address"),
    ("primary port 0", {"shards": [shard(primary="h:0")]}, "shards[0].primary: bad address 'h:0'"),
    (
        "bad replica",
        {"shards": [shard(replicas=["h:2", "h:x"])]},
        "shards[0].replicas[1]: bad address 'h:x'",
    ),
    (
        "replicas not a list",
        {"shards": [shard(replicas="h:2")]},
        "shards[0].replicas: must be a list",
    ),
    ("zero weight", {"shards": [shard(weight=0)]}, "shards[0].weight: must be a positive integer"),
    ("name with space", {"shards": [shard(name="s 1")]}, "shards[0].name: must be a non-empty"),
    ("empty name", {"shards": [shard(name="")]}, "shards[0].name: must be a non-empty"),
    ("number name", {"shards": [shard(name=1)]}, "shards[0].name: must be a string"),
    (
        "duplicate shard name",
        {"shards": [shard(), shard("s1", "127.0.0.1:7003")]},
        "shards[1].name: duplicate shard name 's1'",
    ),
    (
        "node in two shards",
        {"shards": [shard(), shard("s2", "127.0.0.1:7003", replicas=["127.0.0.1:7001"])]},
        "shards[1].replicas[0]: node 127.0.0.1:7001 is already listed at shards[0].primary",
    ),
    (
        "node twice in one shard",
        {"shards": [shard(replicas=["127.0.0.1:7002", "127.0.0.1:7002"])]},
        "shards[0].replicas[1]: node 127.0.0.1:7002 is already listed at shards[0].replicas[0]",
    ),
    (
        "replica equal to its primary",
        {"shards": [shard(replicas=["127.0.0.1:7001"])]},
        "shards[0].replicas[0]: node 127.0.0.1:7001 is already listed at shards[0].primary",
    ),
    ("bad listen", minimal(listen="6380"), "listen: bad address '6380'"),
    ("bad listen item", minimal(listen=["h:1", "h"]), "listen[1]: bad address 'h'"),
    ("empty listen", minimal(listen=[]), "listen: must name at least one address"),
    (
        "listen twice",
        minimal(listen=["h:1", "h:1"]),
        "listen[1]: h:1 is already listed at listen[0]",
    ),
    (
        "listen on a backend node",
        minimal(listen="127.0.0.1:7001"),
        "listen: 127.0.0.1:7001 is also a backend node (shards[0].primary)",
    ),
    ("bad admin", minimal(admin="nowhere"), "admin: bad address 'nowhere'"),
    ("admin null", minimal(admin=None), 'admin: write "off" to disable'),
    (
        "admin on the RESP port",
        minimal(admin="127.0.0.1:6380"),
        "admin: 127.0.0.1:6380 is also a RESP listener (listen)",
    ),
    ("deny not a list", minimal(deny_commands="keys"), "deny_commands: must be a list"),
    ("deny item", minimal(deny_commands=["keys", 5]), "deny_commands[1]: must be a string"),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_names_its_key_path(data: dict[str, Any], expected: str) -> None:
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("data", [None, [], "shards", 5])
def test_top_level_must_be_a_mapping(data: object) -> None:
    found = problems(data)
    assert found == (
        ["shards: required key is missing"]
        if data is None
        else ["(top level): must be a mapping of keys"]
    )


def test_all_problems_reported_at_once() -> None:
    found = problems(
        {
            "listen": "bad",
            "hash": {"function": "x", "tag": "{"},
            "read_policy": "nope",
            "timeouts": {"command_ms": 0},
            "limits": {"foo": 1},
            "shards": [
                shard(),
                shard("s1", "127.0.0.1:7001", weight=-2),
                shard("s3", "nope"),
            ],
            "deny_commands": [1, 2],
        }
    )
    paths = [p.split(": ", 1)[0] for p in found]
    assert sorted(paths) == sorted(
        [
            "listen",
            "hash.function",
            "hash.tag",
            "read_policy",
            "timeouts.command_ms",
            "limits.foo",
            "shards[1].weight",
            "shards[1].name",  # duplicate
            "shards[1].primary",  # node listed twice
            "shards[2].primary",
            "deny_commands[0]",
            "deny_commands[1]",
        ]
    ), found


def test_error_carries_problems_and_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"shards": []}, source="topo.yaml")
    assert info.value.problems == ["shards: must list at least one shard"]
    assert info.value.source == "topo.yaml"


# --- load() ---------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_load_yaml_syntax_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("shards:\n  - name: s1\n    primary: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:")
    assert "invalid YAML" in problem


def test_load_duplicate_yaml_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("shards: []\nlisten: 127.0.0.1:1\nshards: []\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    (problem,) = info.value.problems
    assert problem == f"{path}:3:1: invalid YAML: found duplicate key 'shards'"


def test_load_reports_key_paths(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    weigth: 2\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.problems == ["shards[0].weigth: unknown key"]
    assert info.value.source == str(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_examples_load(path: pathlib.Path) -> None:
    cfg = load(str(path))
    assert cfg.shards
    assert cfg.source == str(path)


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"shardproxy.yaml", "twemproxy-compat.yaml"} <= names


def test_demo_topology() -> None:
    cfg = load(str(REPO / "config" / "shardproxy.yaml"))
    assert cfg.listen == (Address("127.0.0.1", 6380),)
    assert cfg.admin == Address("127.0.0.1", 9121)
    assert cfg.hash == HashConfig("fnv1a_64", "ketama", "{}")
    assert [(s.name, s.primary.port, [r.port for r in s.replicas]) for s in cfg.shards] == [
        ("s1", 7001, [7002]),
        ("s2", 7003, [7004]),
        ("s3", 7005, [7006]),
    ]
    # The sections written out in the demo are exactly the defaults.
    defaults = parse(minimal())
    for section in ("timeouts", "backend", "limits", "shutdown", "read_policy", "deny_commands"):
        assert getattr(cfg, section) == getattr(defaults, section), section


# --- derived views --------------------------------------------------------------------------------


def test_reference_markdown_lists_every_key() -> None:
    text = config.reference_markdown()
    lines = text.splitlines()
    assert lines[0] == "| key | type | default | meaning |"
    keys = [line.split("|")[1].strip().strip("`") for line in lines[2:]]
    assert keys == [
        "listen",
        "admin",
        "admin_token",
        "admin_token_everywhere",
        "auth.password",
        "auth.users[].name",
        "auth.users[].passwords",
        "auth.users[].rules",
        "tls.listen",
        "tls.cert_file",
        "tls.key_file",
        "tls.ca_file",
        "tls.client_certs",
        "hash.function",
        "hash.distribution",
        "hash.tag",
        "read_policy",
        "shards[].name",
        "shards[].weight",
        "shards[].primary",
        "shards[].replicas",
        "shards[].sentinel_name",
        "max_replica_lag",
        "read_your_writes_ms",
        "health.interval_ms",
        "health.timeout_ms",
        "health.failures",
        "health.successes",
        "failover.mode",
        "sentinel.addresses",
        "sentinel.poll_interval_ms",
        "sentinel.password",
        "timeouts.connect_ms",
        "timeouts.command_ms",
        "backend.connections",
        "backend.username",
        "backend.password",
        "backend.max_leases",
        "backend.lease_idle_ms",
        "backend.tls.enabled",
        "backend.tls.ca_file",
        "backend.tls.cert_file",
        "backend.tls.key_file",
        "backend.tls.server_name",
        "backend.tls.verify",
        "limits.max_pending_per_client",
        "limits.max_request_bytes",
        "limits.max_inline_bytes",
        "limits.max_clients",
        "limits.client_idle_timeout_s",
        "limits.max_unread_bytes",
        "shutdown.drain_timeout_ms",
        "workers",
        "reload.watch",
        "migration.window_s",
        "migration.copy",
        "migration.rate",
        "metrics.commands",
        "transactions.cross_shard",
        "scripts.cache_bytes",
        "pubsub.connections",
        "pubsub.output_hard_limit",
        "pubsub.output_soft_limit",
        "pubsub.output_soft_seconds",
        "cache.enabled",
        "cache.keys",
        "cache.max_memory",
        "cache.max_age_ms",
        "deny_commands",
    ]
    assert "| `timeouts.command_ms` | positive integer | `1000` |" in text
    assert "| `shards[].primary` | address | required |" in text
    assert "| `limits.max_request_bytes` | size in bytes (65536, 64kb, 512mb) | `512mb` |" in text
    assert '| `hash.tag` | "" or two characters | `"{}"` |' in text


def test_reference_defaults_parse_back() -> None:
    """Every default the reference shows is a value the parser accepts and maps to the default."""
    for line in config.reference_markdown().splitlines()[2:]:
        key, _type, default = (cell.strip() for cell in line.split("|")[1:4])
        key = key.strip("`")
        if default == "required" or "[]" in key:
            continue
        *sections, name = key.split(".")
        value: object = {name: _yaml(default.strip("`"))}
        for section in reversed(sections):
            value = {section: value}
        assert isinstance(value, dict)
        data = minimal(**value)
        assert parse(data) == parse(minimal()), key


def _yaml(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


def test_changed_settings() -> None:
    old = parse(minimal())
    new = parse(
        minimal(timeouts={"command_ms": 20}, backend={"password": "pw"}, deny_commands=["KEYS"])
    )
    assert config.changed_settings(old, new) == [
        ("timeouts.command_ms", "1000", "20"),
        ("backend.password", "null", "(hidden)"),
        ("deny_commands", "[]", "[keys]"),
    ]
    assert config.changed_settings(old, old) == []
    assert isinstance(old, Config)
