"""``shardproxy import-twemproxy``: a nutcracker pool converted to a topology.

Unit tests drive the command in-process (every mapped directive, every warning and refusal,
several pools) and check that ``shardproxy check`` accepts what it prints. The integration
tests run a real nutcracker over three real redis-servers, write keys through it, convert its
file with the CLI, start shardproxy from the converted file and find every key through it, on
the server nutcracker put it on.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from shardproxy.app import cli, twemproxy
from shardproxy.config import load, parse
from tests.conftest import REPO, Proxy, RedisServer, free_port, wait_port

NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardproxy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def convert(
    tmp_path: Path, text: str, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``import-twemproxy`` on a file holding ``text``."""
    path = tmp_path / "nutcracker.yml"
    path.write_text(text)
    code = cli.main(["import-twemproxy", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def converted(
    tmp_path: Path, text: str, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], list[str]]:
    """The topology data a successful conversion printed, and its warning lines."""
    code, out, err = convert(tmp_path, text, *args, capsys=capsys)
    assert code == 0, err
    warnings = err.splitlines()
    assert all(line.startswith("warning: ") for line in warnings), err
    data = yaml.safe_load(out)
    parse(data)  # shardproxy accepts it
    return data, warnings


POOL = """\
alpha:
  listen: 127.0.0.1:22121
  redis: true
  servers:
    - 127.0.0.1:7001:1 s1
    - 127.0.0.1:7003:1 s2
"""


# --- every mapped directive -----------------------------------------------------------------------


def test_every_mapped_directive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """\
cache:
  listen: 0.0.0.0:22121
  hash: murmur
  hash_tag: "{}"
  distribution: modula
  timeout: 400
  redis: true
  redis_db: 0
  server_connections: 4
  servers:
    - 10.0.0.3:6379:3 charlie
    - 10.0.0.1:6379:1 alpha
    - 10.0.0.2:6380:2 bravo
"""
    data, warnings = converted(tmp_path, text, capsys=capsys)
    assert warnings == []
    assert data == {
        "listen": "0.0.0.0:22121",
        "admin": "127.0.0.1:9121",
        "hash": {"function": "murmur", "distribution": "modula", "tag": "{}"},
        "read_policy": "primary",
        "timeouts": {"connect_ms": 400, "command_ms": 400},
        "backend": {"connections": 4},
        "shards": [
            {"name": "charlie", "weight": 3, "primary": "10.0.0.3:6379"},
            {"name": "alpha", "weight": 1, "primary": "10.0.0.1:6379"},
            {"name": "bravo", "weight": 2, "primary": "10.0.0.2:6380"},
        ],
    }


def test_nutcracker_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Absent directives take nutcracker's defaults, not shardproxy's: no hash tag above all."""
    data, warnings = converted(tmp_path, POOL, capsys=capsys)
    assert data["hash"] == {"function": "fnv1a_64", "distribution": "ketama", "tag": ""}
    assert data["backend"] == {"connections": 1}
    assert "timeouts" not in data and "failover" not in data
    assert len(warnings) == 1 and warnings[0].startswith("warning: timeout: not set")
    assert "indefinitely" in warnings[0] and "1000" in warnings[0]


def test_timeout_zero_is_no_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, warnings = converted(tmp_path, POOL + "  timeout: 0\n", capsys=capsys)
    assert "timeouts" not in data
    assert [w.split(":")[1:3] for w in warnings] == [[" timeout", " 0"]]


def test_the_output_passes_check(tmp_path: Path) -> None:
    source = tmp_path / "nutcracker.yml"
    source.write_text(POOL + '  hash_tag: "{}"\n  timeout: 250\n  redis_auth: s3cret\n')
    result = run_cli("import-twemproxy", str(source))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# shardproxy topology converted from nutcracker pool 'alpha'")
    target = tmp_path / "topology.yaml"
    target.write_text(result.stdout)
    check = run_cli("check", "-c", str(target))
    assert check.returncode == 0, check.stderr
    assert 'fnv1a_64, ketama, hash tag "{}"' in check.stdout
    assert load(str(target)).backend.password == "s3cret"


def test_notes_are_in_the_file_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = convert(tmp_path, POOL + "  backlog: 1024\n", capsys=capsys)
    assert code == 0
    header = " ".join(line[1:].strip() for line in out.splitlines() if line.startswith("#"))
    assert len(err.splitlines()) == 2
    for line in err.splitlines():
        assert line.removeprefix("warning: ") in header


# --- server names: the ring must hash what nutcracker hashes --------------------------------------


def test_unnamed_servers_are_named_as_nutcracker_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
p:
  listen: 127.0.0.1:22121
  redis: true
  servers:
    - 127.0.0.1:7001:1
    - redis-b.internal:7002:2
    - 10.0.0.9:11211:1
    - ::1:7003:1
    - /run/redis.sock:3
    - /run/other.sock:1 sock2
"""
    data, _ = converted(tmp_path, text, capsys=capsys)
    assert [(s["name"], s["weight"], s["primary"]) for s in data["shards"]] == [
        ("127.0.0.1:7001", 1, "127.0.0.1:7001"),
        ("redis-b.internal:7002", 2, "redis-b.internal:7002"),
        ("10.0.0.9", 1, "10.0.0.9:11211"),  # port 11211 is left out of the name
        ("::1:7003", 1, "[::1]:7003"),
        ("/run/redis.sock:", 3, "unix:/run/redis.sock"),  # the ':' counts, the weight not
        ("sock2", 1, "unix:/run/other.sock"),
    ]


@pytest.mark.parametrize(
    ("text", "name", "weight", "host", "port"),
    [
        ("127.0.0.1:7001:1", "127.0.0.1:7001", 1, "127.0.0.1", 7001),
        ("127.0.0.1:07001:1", "127.0.0.1:07001", 1, "127.0.0.1", 7001),  # as written
        ("127.0.0.1:7001:12 shard-a", "shard-a", 12, "127.0.0.1", 7001),
        ("host:11211:1", "host", 1, "host", 11211),
        ("/tmp/r.sock:2", "/tmp/r.sock:", 2, "/tmp/r.sock", None),
    ],
)
def test_parse_server(text: str, name: str, weight: int, host: str, port: int | None) -> None:
    server = twemproxy.parse_server(text)
    assert (server.name, server.weight, server.host, server.port) == (name, weight, host, port)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1:7001", "format string"),  # 7001 is read as the weight: no port
        ("127.0.0.1", "invalid"),
        ("127.0.0.1:7001:0 s1", "zero weight"),
        ("127.0.0.1:7001:-1", "invalid weight"),
        ("127.0.0.1:7001:1 a b", "invalid weight"),  # the name is the last word
        ("127.0.0.1:70000:1", "invalid port"),
        ("127.0.0.1:0:1", "invalid port"),
        ("/tmp/a:b.sock:1", "format string"),
        ("127.0.0.1:7001:1 ", "empty name"),
    ],
)
def test_parse_server_refuses_what_nutcracker_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        twemproxy.parse_server(text)


def test_values_are_read_as_nutcracker_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No YAML typing: a password 0123 or yes stays as written; odd names are quoted back."""
    text = """\
p:
  listen: 127.0.0.1:22121
  redis: true
  redis_auth: 0123
  timeout: 0100
  servers:
    - 127.0.0.1:7001:1 yes
    - 127.0.0.1:7002:1 1:20
    - 127.0.0.1:7003:1 null
p2:
  listen: 127.0.0.1:22122
  redis: true
  redis_auth: "it's a #pass: word, {x} & ' \\" and ключ"
  servers:
    - 127.0.0.1:7009:1 s9
"""
    data, _ = converted(tmp_path, text, "--pool", "p", capsys=capsys)
    assert data["backend"]["password"] == "0123"
    assert data["timeouts"] == {"connect_ms": 100, "command_ms": 100}
    assert [s["name"] for s in data["shards"]] == ["yes", "1:20", "null"]
    data, _ = converted(tmp_path, text, "--pool", "p2", capsys=capsys)
    assert data["backend"]["password"] == "it's a #pass: word, {x} & ' \" and ключ"


# --- warnings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("server_retry_timeout: 2000", "server_retry_timeout", "no effect without auto_eject"),
        ("server_failure_limit: 3", "server_failure_limit", "no effect without auto_eject"),
        ("preconnect: true", "preconnect", "first use"),
        ("backlog: 2048", "backlog", "not carried over"),
        ("client_connections: 100", "client_connections", "limits.max_clients"),
        ("tcpkeepalive: true", "tcpkeepalive", "not carried over"),
        ("auto_eject_hosts: true", "auto_eject_hosts", "--eject"),
    ],
)
def test_what_cannot_carry_over_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, key: str, says: str
) -> None:
    data, warnings = converted(tmp_path, POOL + f"  timeout: 100\n  {extra}\n", capsys=capsys)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: {key}: ")
    assert says in warnings[0]
    assert "failover" not in data


def test_false_booleans_need_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = "".join(f"  {k}: false\n" for k in ("preconnect", "tcpkeepalive", "auto_eject_hosts"))
    _, warnings = converted(tmp_path, POOL + "  timeout: 100\n" + extra, capsys=capsys)
    assert warnings == []


def test_redis_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, warnings = converted(tmp_path, POOL + "  redis_auth: s3cret\n", capsys=capsys)
    # nutcracker's one password: the servers' (backend) and the clients' (auth), as there
    assert data["backend"] == {"connections": 1, "password": "s3cret"}
    assert data["auth"] == {"password": "s3cret"}
    assert not [w for w in warnings if "redis_auth" in w]


def test_eject_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = POOL + (
        "  timeout: 100\n  auto_eject_hosts: true\n"
        "  server_failure_limit: 4\n  server_retry_timeout: 30000\n"
    )
    data, warnings = converted(tmp_path, text, "--eject", capsys=capsys)
    assert data["failover"] == {"mode": "eject"}
    assert data["health"] == {"failures": 4}
    assert [w.split(":")[1].strip() for w in warnings] == [
        "auto_eject_hosts",
        "server_retry_timeout",
    ]
    # without --eject: warnings only, shardproxy's failover default
    data, warnings = converted(tmp_path, text, capsys=capsys)
    assert "failover" not in data and "health" not in data
    assert [w.split(":")[1].strip() for w in warnings] == [
        "auto_eject_hosts",
        "server_failure_limit",
        "server_retry_timeout",
    ]


def test_eject_default_failure_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = POOL + "  auto_eject_hosts: true\n"
    data, _ = converted(tmp_path, text, "--eject", capsys=capsys)
    assert data["health"] == {"failures": 2}  # nutcracker's default server_failure_limit
    data, _ = converted(tmp_path, text + "  server_failure_limit: 0\n", "--eject", capsys=capsys)
    assert data["health"] == {"failures": 1}  # 0 ejects at the first failure


def test_eject_without_auto_eject_is_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, warnings = converted(tmp_path, POOL + "  timeout: 100\n", "--eject", capsys=capsys)
    assert "failover" not in data
    assert warnings == ["warning: --eject ignored: the pool does not eject hosts "
                        "(auto_eject_hosts false)"]  # fmt: skip


def test_unix_listener(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = POOL.replace("127.0.0.1:22121", "/run/nutcracker.sock 0666") + "  timeout: 1\n"
    data, warnings = converted(tmp_path, text, capsys=capsys)
    assert data["listen"] == "unix:/run/nutcracker.sock"
    assert len(warnings) == 1 and "permissions 0666" in warnings[0]


def test_listen_and_admin_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = converted(
        tmp_path, POOL, "--listen", "127.0.0.1:6380", "--admin", "off", capsys=capsys
    )
    assert data["listen"] == "127.0.0.1:6380"
    assert data["admin"] == "off"


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (POOL.replace("  redis: true\n", ""), "memcached pool (no `redis: true`"),
        (POOL.replace("redis: true", "redis: false"), "memcached pool (redis: false)"),
        (POOL + "  distribution: random\n", "distribution: random cannot be expressed"),
        (POOL + "  redis_db: 2\n", "redis_db: 2 cannot be expressed"),
        (POOL + "  hash: sha1\n", "hash: 'sha1' is not a valid hash"),
        (POOL + "  hash_tag: '{'\n", "two characters"),
        (POOL + "  distribution: consistent\n", "is not a valid distribution"),
        (POOL + "  timeout: 1s\n", "timeout: '1s' is not a number"),
        (POOL + "  timeout: -1\n", "is not a number"),
        (POOL + "  preconnect: yes\n", 'preconnect: \'yes\' is not "true" or "false"'),
        (POOL + "  server_connections: 0\n", "server_connections: cannot be 0"),
        (POOL + "  timeout: 100\n  timeout: 200\n", "duplicate key 'timeout'"),
        (POOL + "  stats_port: 22222\n", "stats_port: not a nutcracker 0.5 directive"),
        (POOL + "  timeout: [1, 2]\n", "timeout: must be a single value"),
        (POOL.replace("  listen: 127.0.0.1:22121\n", ""), "listen: missing"),
        (POOL.replace("127.0.0.1:22121", "22121"), 'invalid "hostname:port"'),
        (POOL.split("  servers:")[0], "servers: missing"),
        (POOL.split("    - ")[0] + "    []\n", "the pool has no servers"),
        (POOL + "    - 127.0.0.1:7005:0 s3\n", "zero weight"),
        (POOL + "    - 127.0.0.1:7005:1 s1\n", "a second server named 's1'"),
        (POOL + "    - 127.0.0.1:7001:1 s3\n", "node 127.0.0.1:7001 is already listed"),
        (POOL.replace("127.0.0.1:22121", "127.0.0.1:7001"), "also a backend node"),
        (POOL + f"    - 127.0.0.1:7005:1 {'n' * 270}\n", "name too long"),
        ("", "no pools"),
        ("alpha: [1, 2]\n", "must be a mapping of directives"),
        ("alpha: {listen: [\n", "not valid YAML"),
    ],
)
def test_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    code, out, err = convert(tmp_path, text, capsys=capsys)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert reason in err, err


def test_every_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = POOL.replace("  redis: true\n", "") + "  distribution: random\n  redis_db: 1\n"
    code, _, err = convert(tmp_path, text, capsys=capsys)
    assert code == 1
    assert [line.split(":")[1].strip() for line in err.splitlines()] == [
        "redis",
        "distribution",
        "redis_db",
    ]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["import-twemproxy", str(tmp_path / "nope.yml")])
    assert code == 1
    assert "No such file" in capsys.readouterr().err


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["import-twemproxy"]) == 2
    assert "FILE" in capsys.readouterr().err


# --- several pools --------------------------------------------------------------------------------

POOLS = """\
sessions:
  listen: 127.0.0.1:22121
  redis: true
  timeout: 100
  servers:
    - 127.0.0.1:7001:1 s1
memcache:
  listen: 127.0.0.1:22122
  servers:
    - 127.0.0.1:11211:1
cache:
  listen: 127.0.0.1:22123
  redis: true
  timeout: 100
  hash: md5
  servers:
    - 127.0.0.1:7003:1 c1
"""


def test_several_pools_need_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = convert(tmp_path, POOLS, capsys=capsys)
    assert code == 1 and out == ""
    assert "3 pools (sessions, memcache, cache)" in err
    assert "--pool NAME" in err


def test_pool_picks_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, warnings = converted(tmp_path, POOLS, "--pool", "cache", capsys=capsys)
    assert warnings == []
    assert data["listen"] == "127.0.0.1:22123"
    assert data["hash"]["function"] == "md5"
    assert data["shards"] == [{"name": "c1", "weight": 1, "primary": "127.0.0.1:7003"}]
    code, _, err = convert(tmp_path, POOLS, "--pool", "memcache", capsys=capsys)
    assert code == 1 and "memcached pool" in err


def test_unknown_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = convert(tmp_path, POOLS, "--pool", "nope", capsys=capsys)
    assert code == 1
    assert "no pool 'nope' in the file (pools: sessions, memcache, cache)" in err


def test_an_invalid_pool_spoils_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nutcracker refuses the whole file when one pool is invalid, and so does the converter."""
    text = POOLS + "broken:\n  listen: 127.0.0.1:22124\n  hash: sha1\n  servers: []\n"
    code, _, err = convert(tmp_path, text, "--pool", "cache", capsys=capsys)
    assert code == 1 and "pool 'broken': hash" in err
    code, _, err = convert(
        tmp_path, POOLS.replace("22123", "22121"), "--pool", "cache", capsys=capsys
    )
    assert code == 1 and "listen: pool 'sessions' listens on 127.0.0.1:22121 too" in err


# --- the documentation ----------------------------------------------------------------------------


def test_readme_documents_the_command_and_every_directive() -> None:
    readme = (REPO / "README.md").read_text()
    commands = readme[readme.index("## Command line") :].split("\n## ", 1)[0]
    assert "| `shardproxy import-twemproxy FILE [--pool NAME]" in commands
    section = re.split(r"\n##+ ", readme[readme.index("### Moving from twemproxy") :])[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{d.name}` | {d.becomes} |" for d in twemproxy.DIRECTIVES]


# --- against a real nutcracker --------------------------------------------------------------------


def _keys() -> list[bytes]:
    rng = random.Random(4242)
    keys = [b"user:%d" % i for i in range(1000)]
    keys += [b"{user%d}.cart" % i for i in range(200)] + [b"{user%d}.seen" % i for i in range(200)]
    keys += [rng.randbytes(rng.randrange(1, 40)) for _ in range(400)]
    keys += [b"session:%032x" % rng.getrandbits(128) for _ in range(200)]
    keys += [b"x{}y%d" % i for i in range(20)] + ["ключ-%d".encode() % i for i in range(20)]
    return list(dict.fromkeys(keys))


KEYS = _keys()


def _nc_client(port: int) -> redis.Redis:
    # nutcracker speaks RESP2 and drops the connection on CLIENT SETINFO (driver_info=None).
    return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10, driver_info=None)


@contextlib.contextmanager
def _nutcracker(conf: Path, port: int) -> Iterator[None]:
    if not Path(NUTCRACKER).exists():
        pytest.fail(f"nutcracker binary not found at {NUTCRACKER}")
    log = conf.with_suffix(".log")
    args = [NUTCRACKER, "-c", str(conf), "-o", str(log), "-s", str(free_port()), "-a", "127.0.0.1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_port(port, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')}") from exc
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    try:
        for _ in range(3):
            started.append(RedisServer(tmp_path / "redis").start())
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.mark.nutcracker
@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_keys_written_through_nutcracker_are_found_through_shardproxy(
    tmp_path: Path, servers: list[RedisServer], named: bool
) -> None:
    weights = [3, 1, 2]
    names = ["delta", "alpha", "charlie"]  # unsorted: nutcracker sorts them, the ring too
    lines = [
        f"    - {s.address}:{w}" + (f" {n}" if named else "")
        for s, w, n in zip(servers, weights, names, strict=True)
    ]
    nc_port = free_port()
    conf = tmp_path / "nutcracker.yml"
    conf.write_text(
        "sessions:\n"
        f"  listen: 127.0.0.1:{nc_port}\n"
        "  hash: fnv1a_64\n"
        "  distribution: ketama\n"
        '  hash_tag: "{}"\n'
        "  redis: true\n"
        "  timeout: 3000\n"
        "  server_connections: 2\n"
        "  auto_eject_hosts: false\n"
        "  servers:\n" + "\n".join(lines) + "\n"
    )
    with _nutcracker(conf, nc_port), _nc_client(nc_port) as nc:
        for start in range(0, len(KEYS), 500):
            with nc.pipeline(transaction=False) as pipe:
                for key in KEYS[start : start + 500]:
                    pipe.set(key, b"v:" + key)
                assert all(pipe.execute())

        # Where nutcracker put each key, asked of the servers themselves.
        holder: dict[bytes, str] = {}
        for server in servers:
            with server.client() as direct:
                for key in direct.scan_iter(count=1000):
                    assert key not in holder
                    holder[key] = server.address
        assert set(holder) == set(KEYS)
        assert len(set(holder.values())) == 3

        # Convert with the CLI, check, and run shardproxy from the converted file.
        port = free_port()
        result = run_cli(
            "import-twemproxy", str(conf), "--listen", f"127.0.0.1:{port}", "--admin", "off"
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        topology = tmp_path / "topology.yaml"
        topology.write_text(result.stdout)
        check = run_cli("check", "-c", str(topology))
        assert check.returncode == 0, check.stderr
        config = load(str(topology))
        expected = names if named else [s.address for s in servers]
        assert sorted(s.name for s in config.shards) == sorted(expected)
        assert config.backend.connections == 2
        assert config.timeouts.command_ms == 3000

        # The converted placement names the server nutcracker used, for every key.
        ring = config.ring()
        for key in KEYS:
            assert str(config.shard(ring.shard_name(key)).primary) == holder[key], key

        proxy = Proxy(yaml.safe_load(result.stdout), tmp_path)
        proxy.path.write_text(result.stdout)  # the converted file, as the CLI printed it
        proxy.start()
        try:
            with proxy.client(protocol=2) as sp:
                for start in range(0, len(KEYS), 250):
                    batch = KEYS[start : start + 250]
                    assert sp.mget(batch) == [b"v:" + key for key in batch]
                for key in KEYS[:300]:
                    assert sp.get(key) == b"v:" + key
                # Side by side: what shardproxy writes, nutcracker reads, and the other way.
                fresh = [b"fresh:%d" % i for i in range(300)] + [b"{user7}.new"]
                for key in fresh:
                    assert sp.set(key, b"sp")
                with nc.pipeline(transaction=False) as pipe:
                    for key in fresh:
                        pipe.get(key)
                    assert pipe.execute() == [b"sp"] * len(fresh)
                assert nc.set(b"from-nutcracker", b"nc")
                assert sp.get(b"from-nutcracker") == b"nc"
        finally:
            assert proxy.stop() == 0, proxy.output()
