"""The proxy in front of real redis-server shards, driven by redis-py (RESP2 and RESP3, sync and
asyncio), redis-cli and raw sockets."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy


def K(i: int) -> str:
    """Key number i: hex names spread evenly under fnv1a_64 (sequential names like "user:1"
    do not: twemproxy's fnv1a_64 keeps only 32 bits and multiplies by a small prime)."""
    return hashlib.md5(str(i).encode()).hexdigest()[:10]


def ring_for(fleet: Fleet) -> Ring:
    return Ring.build([(s.name, 1) for s in fleet.shards], function="fnv1a_64", tag="{}")


def raw(port: int, payload: bytes, expect_close: bool = False, timeout: float = 5.0) -> bytes:
    """Send ``payload`` on a fresh connection and read until the proxy goes quiet (or closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(payload)
        chunks = []
        sock.settimeout(0.5 if not expect_close else timeout)
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, proxy: Proxy, clean: Fleet) -> Iterator[redis.Redis]:
    c = proxy.client(protocol=request.param)
    yield c
    c.close()


# -- handshake and local commands ---------------------------------------------------------------


def test_handshake_and_local_commands(client: redis.Redis) -> None:
    assert client.ping() is True
    assert client.echo("hi") == b"hi"
    assert client.execute_command("SELECT", 0) in (b"OK", "OK", True)
    with pytest.raises(redis.ResponseError, match="database 0 only"):
        client.execute_command("SELECT", 1)
    client.client_setname("worker-1")
    assert client.client_getname() in (b"worker-1", "worker-1")
    assert isinstance(client.client_id(), int)
    t = client.time()
    assert abs(t[0] - time.time()) < 5


def test_hello_switches_protocol_raw(proxy: Proxy) -> None:
    out = raw(proxy.port, b"HELLO 3\r\nPING\r\nHELLO 2\r\nHELLO 4\r\n")
    assert out.startswith(b"%8\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in out
    rest = out[out.index(b"+PONG\r\n") :]
    assert rest.startswith(b"+PONG\r\n*16\r\n")  # HELLO 2 answers with a flat array
    assert rest.endswith(b"-NOPROTO unsupported protocol version\r\n")


def test_resp3_replies_pass_through_untouched(proxy: Proxy, clean: Fleet) -> None:
    out = raw(proxy.port, b"HELLO 3\r\nHSET h a 1\r\nHGETALL h\r\nGET missing\r\nHGETALL h\r\n")
    tail = out[out.index(b":1\r\n") :]
    assert tail == b":1\r\n%1\r\n$1\r\na\r\n$1\r\n1\r\n_\r\n%1\r\n$1\r\na\r\n$1\r\n1\r\n"
    out = raw(proxy.port, b"HGETALL h\r\nGET missing\r\n")
    assert out == b"*2\r\n$1\r\na\r\n$1\r\n1\r\n$-1\r\n"


def test_command_introspection(client: redis.Redis) -> None:
    assert client.command_count() == 240  # every Redis 7.0 command
    keys = client.command_getkeys("ZUNIONSTORE", "dst", "2", "a", "b")
    assert [k if isinstance(k, bytes) else k.encode() for k in keys] == [b"dst", b"a", b"b"]
    table = client.command()  # redis-py parses COMMAND into {name: info}
    assert table["get"]["arity"] == 2 and table["mset"]["arity"] == -3
    assert "write" in {f if isinstance(f, str) else f.decode() for f in table["set"]["flags"]}
    docs = client.execute_command("COMMAND DOCS", "get")
    assert docs


# -- routing -----------------------------------------------------------------------------------


def test_keys_land_where_the_ring_says(client: redis.Redis, fleet: Fleet) -> None:
    ring = ring_for(fleet)
    keys = [K(i) for i in range(300)] + ["{tag}.a", "{tag}.b", "plain"]
    for k in keys:
        client.set(k, k)
    names = {s.name for s in fleet.shards}
    seen = set()
    for k in keys:
        owner = fleet.owner(k).name
        assert owner == ring.shard_name(k.encode()), k
        seen.add(owner)
        assert client.get(k) == k.encode()
    assert seen == names  # the keys really spread over every shard


def test_mget_mset_del_exists_across_shards(client: redis.Redis, fleet: Fleet) -> None:
    pairs = {K(i): f"v{i}" for i in range(200)}
    assert client.mset(pairs) is True
    owners = {fleet.owner(k).name for k in pairs}
    assert len(owners) == 3
    order = [K(i) for i in (7, 3, 149, 0, 999, 12, 77)]
    expected = [pairs.get(k, None) for k in order]
    assert client.mget(order) == [v.encode() if v else None for v in expected]
    assert client.exists(K(1), K(2), "nope", K(1)) == 3
    assert client.touch(K(1), K(2), "nope") == 2
    assert client.delete(K(1), K(2), K(3), "nope") == 3
    assert client.unlink(K(4), K(5)) == 2
    assert client.exists(K(1), K(4)) == 0


def test_crossslot_and_hash_tags(client: redis.Redis, fleet: Fleet) -> None:
    ring = ring_for(fleet)
    a = "x0"
    b = next(K(i) for i in range(999) if ring.shard_name(K(i).encode()) != ring.shard_name(b"x0"))
    client.set(a, "1")
    port = client.connection_pool.connection_kwargs["port"]
    out = raw(port, f"RENAME {a} {b}\r\nSMOVE {a} {b} m\r\n".encode())
    assert out == b"-CROSSSLOT Keys in request don't hash to the same shard\r\n" * 2
    with pytest.raises(redis.ResponseError, match="don't hash to the same shard"):
        client.sinterstore("dst", [a, b])
    client.set("{u1}.a", "1")
    assert client.rename("{u1}.a", "{u1}.b") is True
    assert client.get("{u1}.b") == b"1"
    client.sadd("{u1}.s1", "x", "y")
    client.sadd("{u1}.s2", "y")
    assert client.sinterstore("{u1}.d", ["{u1}.s1", "{u1}.s2"]) == 1
    client.zadd("{z}a", {"m": 1})
    client.zadd("{z}b", {"m": 2})
    assert client.zunionstore("{z}c", ["{z}a", "{z}b"]) == 1
    assert client.zscore("{z}c", "m") == 3.0


def test_all_shard_commands(client: redis.Redis, fleet: Fleet) -> None:
    keys = {f"scan:{i}" for i in range(500)}
    client.mset({k: "1" for k in keys})
    assert client.dbsize() == 500
    assert {k.decode() for k in client.keys("scan:*")} == keys
    walked = [k.decode() for k in client.scan_iter(match="scan:*", count=37)]
    assert len(walked) == len(keys) and set(walked) == keys  # every key exactly once
    assert client.randomkey().decode() in keys
    info = client.info("keyspace")
    assert info["db0"]["keys"] == 500
    assert client.flushdb() is True
    assert client.dbsize() == 0
    assert client.randomkey() is None


def test_scan_rejects_foreign_cursor(client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        client.scan(cursor=7)  # low bits name shard index 3 of a 3-shard fleet


def test_unknown_then_ping_same_connection(proxy: Proxy) -> None:
    out = raw(proxy.port, b"*2\r\n$6\r\nNOSUCH\r\n$1\r\na\r\nPING\r\n")
    assert out == (b"-ERR unknown command 'NOSUCH', with args beginning with: 'a' \r\n+PONG\r\n")


@pytest.mark.parametrize(
    "command,expected",
    [
        ("CONFIG GET maxmemory", b"-ERR command 'config get' is not supported by shardproxy\r\n"),
        ("MONITOR", b"-ERR command 'monitor' is not supported by shardproxy\r\n"),
        ("SCRIPT DEBUG YES", b"-ERR command 'script debug' is not supported by shardproxy\r\n"),
        ("BLPOP q soon", b"-ERR timeout is not a float or out of range\r\n"),
        ("XREAD BLOCK x STREAMS s $", b"-ERR timeout is not an integer or out of range\r\n"),
        ("SHUTDOWN", b"-ERR command 'shutdown' is not supported by shardproxy\r\n"),
        ("GET", b"-ERR wrong number of arguments for 'get' command\r\n"),
    ],
)
def test_refused_commands_keep_the_connection(proxy: Proxy, command: str, expected: bytes) -> None:
    out = raw(proxy.port, command.encode() + b"\r\nPING\r\n")
    assert out == expected + b"+PONG\r\n"


def test_malformed_input_closes_only_that_connection(proxy: Proxy) -> None:
    with proxy.client(protocol=2) as other:
        other.set("survivor", "1")
        out = raw(proxy.port, b"PING\r\n*1\r\n$x\r\nPING\r\n", expect_close=True)
        assert out == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        out = raw(proxy.port, b"*abc\r\n", expect_close=True)
        assert out == b"-ERR Protocol error: invalid multibulk length\r\n"
        assert other.get("survivor") == b"1"


def test_ten_thousand_command_pipeline_in_order(client: redis.Redis, fleet: Fleet) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(10_000):
        if i % 3 == 0:
            pipe.set(K(i), i)
        elif i % 3 == 1:
            pipe.incr(K(i - 1))
        else:
            pipe.get(K(i - 2))
    replies = pipe.execute()
    for i in range(0, 10_000 - 2, 3):
        assert replies[i] is True
        assert replies[i + 1] == i + 1
        assert replies[i + 2] == str(i + 1).encode()
    assert len({fleet.owner(K(i)).name for i in range(0, 60, 3)}) == 3


def test_client_leaving_mid_pipeline_does_not_desync(proxy: Proxy, clean: Fleet) -> None:
    with proxy.client(protocol=2) as c:
        c.set("marker", "m")
    burst = b"".join(b"*2\r\n$3\r\nGET\r\n$6\r\nmarker\r\n" for _ in range(20_000))
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(burst)
        s.close()  # gone before its replies
    with proxy.client(protocol=2) as c:
        for i in range(200):
            c.set(f"after{i}", i)
        assert [int(v) for v in c.mget([f"after{i}" for i in range(200)])] == list(range(200))
        assert c.get("marker") == b"m"


async def test_asyncio_clients_both_protocols(proxy: Proxy, clean: Fleet) -> None:
    for protocol in (2, 3):
        c = aioredis.Redis(host="127.0.0.1", port=proxy.port, protocol=protocol)
        try:
            assert await c.ping()
            await c.hset("ah", mapping={"a": "1", "b": "2"})
            assert await c.hgetall("ah") == {b"a": b"1", b"b": b"2"}
            await c.mset({f"am{i}": i for i in range(20)})
            assert await c.mget([f"am{i}" for i in range(20)]) == [
                str(i).encode() for i in range(20)
            ]
            pipe = c.pipeline(transaction=False)
            for _i in range(500):
                pipe.incr("actr")
            assert await pipe.execute() == list(range(1, 501))
            await c.delete("actr")
        finally:
            await c.aclose()


def test_redis_cli(proxy: Proxy, clean: Fleet) -> None:
    def cli(*args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(proxy.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    assert cli("set", "cli", "v") == "OK"
    assert cli("get", "cli") == "v"
    assert cli("-3", "get", "cli") == "v"
    cli("mset", "c1", "1", "c2", "2", "c3", "3")
    assert cli("mget", "c1", "c2", "c3").split() == ["1", "2", "3"]
    assert sorted(cli("--scan").split()) == ["c1", "c2", "c3", "cli"]
    assert cli("dbsize") == "4"
    assert "# Keyspace" in cli("info") and "db0:keys=4" in cli("info", "keyspace")


def test_deny_commands(fleet: Fleet, make_proxy: object) -> None:
    p: Proxy = make_proxy(fleet.topology(deny_commands=["flushall", "KEYS"]))  # type: ignore[operator]
    out = raw(p.port, b"FLUSHALL\r\nKEYS *\r\nPING\r\n")
    assert out == (
        b"-ERR command 'flushall' is denied by the proxy configuration (deny_commands)\r\n"
        b"-ERR command 'keys' is denied by the proxy configuration (deny_commands)\r\n+PONG\r\n"
    )


@pytest.mark.parametrize("policy", ["prefer-replica", "replica", "primary"])
def test_read_policy_routes_reads(fleet: Fleet, make_proxy: object, policy: str) -> None:
    fleet.flushall()
    topo = fleet.topology(
        read_policy=policy, read_your_writes_ms=0, health={"interval_ms": 100, "successes": 1}
    )
    p: Proxy = make_proxy(topo)  # type: ignore[operator]

    def calls(srv: object, cmd: str) -> int:
        with srv.client() as c:  # type: ignore[attr-defined]
            return int(c.info("commandstats").get(f"cmdstat_{cmd}", {}).get("calls", 0))

    with p.client(protocol=2) as c:
        c.set("rp", "1")
        fleet.wait_replication()
        shard = fleet.owner("rp")
        deadline = time.monotonic() + 5
        with shard.replicas[0].client() as r:
            while r.get("rp") is None and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(0.5)  # a few health rounds: the replica is vetted (link up, lag ok)
        before_p, before_r = calls(shard.primary, "get"), calls(shard.replicas[0], "get")
        for _ in range(20):
            assert c.get("rp") == b"1"
        after_p, after_r = calls(shard.primary, "get"), calls(shard.replicas[0], "get")
        c.set("rp", "2")  # a write sent to a replica would fail with -READONLY
    if policy == "primary":
        assert (after_p - before_p, after_r - before_r) == (20, 0)
    else:
        assert (after_p - before_p, after_r - before_r) == (0, 20)


def test_redis_benchmark_through_proxy(proxy: Proxy, clean: Fleet) -> None:
    tests = "set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange,mset"
    out = subprocess.run(
        ["redis-benchmark", "-p", str(proxy.port), "-n", "2000", "-c", "20", "-q", "-t", tests],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = [
        ln for ln in out.stdout.replace("\r", "\n").splitlines() if "requests per second" in ln
    ]
    names = {ln.split(":")[0].strip().split(" ")[0] for ln in lines}
    assert {"SET", "GET", "INCR", "LPUSH", "RPUSH", "LPOP", "RPOP", "SADD", "HSET", "SPOP", "ZADD",
            "ZPOPMIN", "LRANGE_100", "MSET"} <= names, out.stdout  # fmt: skip
    assert "error" not in (out.stdout + out.stderr).lower()


def test_client_handshake_subcommands_raw(proxy: Proxy) -> None:
    out = raw(
        proxy.port,
        b"CLIENT SETINFO LIB-NAME mylib\r\nCLIENT SETINFO lib-ver 1.2\r\nCLIENT SETINFO bad x\r\n"
        b"CLIENT NO-TOUCH on\r\nCLIENT SETNAME app\r\nCLIENT INFO\r\nCLIENT REPLY OFF\r\n",
    )
    lines = out.split(b"\r\n")
    assert lines[:4] == [b"+OK", b"+OK", b"-ERR Unrecognized option 'bad'", b"+OK"]
    assert lines[4] == b"+OK"
    assert b"name=app" in out and b"lib-name=mylib lib-ver=1.2" in out
    assert out.endswith(b"-ERR command 'client reply' is not supported by shardproxy\r\n")


@pytest.mark.parametrize("protocol", [2, 3])
def test_what_client_libraries_ask_on_connect(proxy: Proxy, protocol: int) -> None:
    """valkey-glide wants INFO REPLICATION to say role:master; redis-py 8 and node-redis 6
    send CLIENT MAINT_NOTIFICATIONS; ROLE is how others tell a primary."""
    with proxy.client(protocol=protocol) as c:
        replication = c.info("replication")
        assert replication["role"] == "master" and replication["connected_slaves"] == 0
        assert c.info()["role"] == "master"  # in the default sections too
        assert c.execute_command("ROLE") == [b"master", 0, []]
        reply = c.execute_command(
            "CLIENT", "MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none"
        )
        assert reply in (b"OK", "OK", True)
    out = raw(proxy.port, b"ROLE\r\nCLIENT MAINT_NOTIFICATIONS\r\nPING\r\n")
    assert out == (
        b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
        b"-ERR wrong number of arguments for 'client|maint_notifications' command\r\n+PONG\r\n"
    )
