"""Ring placement against the real nutcracker (twemproxy 0.5) binary and real redis-servers.

For each case: four redis-server processes on ephemeral loopback ports, a nutcracker pool over
them (`servers: - 127.0.0.1:PORT:WEIGHT name`, in an unsorted order), 2000+ keys written through
nutcracker, then every redis-server asked directly which keys it holds. Ring.build with the same
names, weights, hash function, distribution and hash tag must name the same server for every
key. A missing nutcracker or redis-server binary fails the tests (they are the point).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shardproxy.routing.hashing import HASH_FUNCTIONS
from shardproxy.routing.ring import Ring

pytestmark = pytest.mark.nutcracker

# Config order; the ring sorts them. nutcracker sorts them too, by length first (which decides
# the modula slot order): "charlie" must come after "delta".
NAMES = ("delta", "alpha", "charlie", "bravo")
# 25 equal shards get 156 points each, not 160 (float32 rounding in nutcracker).
MANY = tuple(f"node-{i}" for i in range(1, 26))
SERVERS = len(MANY)


def _binary(name: str, fallback: str) -> str:
    path = shutil.which(name) or fallback
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} binary not found (looked on PATH and at {fallback})")
    return path


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so the kernel cannot repeat one)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} does not listen on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _client(port: int) -> redis.Redis:
    # nutcracker speaks RESP2 only and closes the connection on CLIENT SETINFO, which redis-py
    # sends on connect unless driver_info is None.
    return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10, driver_info=None)


@pytest.fixture(scope="module")
def redis_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """SERVERS redis-server processes; yields their ports."""
    server = _binary("redis-server", "/usr/bin/redis-server")
    workdir = tmp_path_factory.mktemp("nc-redis")
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for port in _free_ports(SERVERS):
            args = [
                server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(workdir),
                "--logfile", str(workdir / f"redis-{port}.log"),
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            _wait_port(port, proc, "redis-server")
        yield ports
    finally:
        for proc in procs:
            _stop(proc)


@contextlib.contextmanager
def _nutcracker(pool: str, workdir: Path) -> Iterator[int]:
    """Run nutcracker with one pool (YAML body without `listen:`); yields its listen port."""
    binary = _binary("nutcracker", "/usr/sbin/nutcracker")
    port, stats_port = _free_ports(2)
    conf = workdir / "nutcracker.yml"
    conf.write_text(f"pool:\n  listen: 127.0.0.1:{port}\n{pool}")
    log = workdir / "nutcracker.log"
    args = [binary, "-c", str(conf), "-o", str(log), "-s", str(stats_port), "-a", "127.0.0.1"]
    with open(workdir / "nutcracker.err", "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    try:
        try:
            _wait_port(port, proc, "nutcracker")
        except (RuntimeError, TimeoutError) as exc:
            text = (workdir / "nutcracker.err").read_text(errors="replace")
            if log.exists():
                text += log.read_text(errors="replace")
            raise RuntimeError(f"{exc}\n{conf.read_text()}\n{text}") from exc
        yield port
    finally:
        _stop(proc)


def _keys() -> list[bytes]:
    """Deterministic keys: plain, random printable, random binary, and hash-tagged ones."""
    rng = random.Random(20240601)
    keys = [b"key:%d" % i for i in range(700)]
    keys += [b"user:%d:profile" % rng.randrange(10**9) for _ in range(200)]
    printable = bytes(range(0x21, 0x7F))
    keys += [bytes(rng.choices(printable, k=rng.randrange(1, 60))) for _ in range(300)]
    keys += [rng.randbytes(rng.randrange(1, 40)) for _ in range(300)]  # bytes >= 0x80, \r\n...
    keys += [rng.randbytes(rng.randrange(60, 300)) for _ in range(40)]
    keys += ["ключ-%d".encode() % i for i in range(60)]
    keys += [
        b"",
        b"{",
        b"}",
        b"{}",
        b"}{",
        b"{{}}",
        b"a}b{c}",
        b"x" * 1000,
        b"with space",
        b"with\r\nnewline",
    ]
    for i in range(50):
        keys += [
            b"{user%d}:profile" % i,
            b"{user%d}:friends" % i,
            b"order:{user%d}:%d" % (i, rng.randrange(1000)),
            b"{}x%d" % i,  # empty tag: the whole key is hashed
            b"x{}{y%d}" % i,  # only the first '{' counts
            b"{a%d" % i,  # no closing '}'
            b"a}%d{" % i,
            b"pre{%d}post{z}" % i,
            b"{{%d}}" % i,  # tag content is "{<i>"
        ]
    unique = list(dict.fromkeys(keys))
    assert len(unique) >= 2000
    return unique


KEYS = _keys()


def _shards(*weights: int, names: tuple[str, ...] = NAMES) -> tuple[tuple[str, int], ...]:
    return tuple(zip(names, weights, strict=False))


CASES = [
    pytest.param(function, "ketama", _shards(1, 1, 1, 1), id=f"ketama-{function}")
    for function in HASH_FUNCTIONS
] + [
    pytest.param("fnv1a_64", "ketama", _shards(1, 2, 3, 5), id="ketama-fnv1a_64-weights-1-2-3-5"),
    pytest.param("md5", "ketama", _shards(1, 1, 5), id="ketama-md5-weights-1-1-5"),
    pytest.param("murmur", "ketama", _shards(10, 1, 1, 3), id="ketama-murmur-weights-10-1-1-3"),
    pytest.param("one_at_a_time", "ketama", _shards(100, 7, 33), id="ketama-oaat-100-7-33"),
    pytest.param("fnv1a_64", "ketama", _shards(1, 1, 1), id="ketama-fnv1a_64-3-shards"),
    pytest.param("hsieh", "ketama", _shards(3, 1), id="ketama-hsieh-weights-3-1"),
    pytest.param("jenkins", "ketama", _shards(7, 5, 3, 2), id="ketama-jenkins-weights-7-5-3-2"),
    pytest.param(
        "fnv1a_64", "ketama", _shards(*[1] * 25, names=MANY), id="ketama-fnv1a_64-25-shards"
    ),
    pytest.param(
        "murmur",
        "ketama",
        _shards(*[i % 4 + 1 for i in range(25)], names=MANY),
        id="ketama-murmur-25-weighted-shards",
    ),
    pytest.param("fnv1a_64", "modula", _shards(1, 2, 1, 3), id="modula-fnv1a_64-weights-1-2-1-3"),
    pytest.param("md5", "modula", _shards(1, 1, 1, 1), id="modula-md5"),
    pytest.param(
        "crc32a",
        "modula",
        _shards(*[i % 3 + 1 for i in range(25)], names=MANY),
        id="modula-crc32a-25-weighted-shards",
    ),
]


@pytest.mark.parametrize(("function", "distribution", "shards"), CASES)
def test_ring_places_keys_like_nutcracker(
    redis_ports: list[int],
    tmp_path: Path,
    function: str,
    distribution: str,
    shards: tuple[tuple[str, int], ...],
) -> None:
    names = [name for name, _ in shards]
    port_of = dict(zip(names, redis_ports, strict=False))
    servers = "".join(
        f"   - 127.0.0.1:{port_of[name]}:{weight} {name}\n" for name, weight in shards
    )
    pool = (
        "  redis: true\n"
        f"  hash: {function}\n"
        f"  distribution: {distribution}\n"
        '  hash_tag: "{}"\n'
        "  auto_eject_hosts: false\n"
        "  timeout: 5000\n"
        "  servers:\n" + servers
    )
    for port in redis_ports:
        with _client(port) as direct:
            direct.flushall()

    with _nutcracker(pool, tmp_path) as nc_port, _client(nc_port) as proxy:
        for start in range(0, len(KEYS), 500):
            with proxy.pipeline(transaction=False) as pipe:
                for key in KEYS[start : start + 500]:
                    pipe.set(key, b"v")
                assert all(pipe.execute())

    landed: dict[bytes, str] = {}
    for name in names:
        with _client(port_of[name]) as direct:
            for key in direct.scan_iter(count=1000):
                assert key not in landed, f"{key!r} on {landed[key]} and {name}"
                landed[key] = name
    assert set(landed) == set(KEYS)

    ring = Ring.build(
        shards,
        function=function,
        distribution=distribution,
        tag="{}",
    )
    wrong = [(key, landed[key], ring.shard_name(key)) for key in KEYS]
    wrong = [entry for entry in wrong if entry[1] != entry[2]]
    assert not wrong, f"{len(wrong)} keys placed differently (key, nutcracker, ring): {wrong[:5]}"
    if function != "crc32":  # crc32 is 15 bits: under ketama nearly every key goes to one server
        assert len(set(landed.values())) == len(names)
