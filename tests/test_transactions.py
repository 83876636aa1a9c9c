"""MULTI/EXEC/WATCH through the proxy, against real redis-server processes and real clients."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError, WatchError

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, free_port, metric_key

RING = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])
EXECABORT = "Transaction discarded because of previous errors."


def keys_on(shard: str, n: int = 1, prefix: str = "k") -> list[str]:
    out = []
    for i in itertools.count():
        key = f"{prefix}{i}"
        if RING.shard_name(key.encode()) == shard:
            out.append(key)
            if len(out) == n:
                return out
    raise AssertionError("unreachable")


def connections_received(fleet: Fleet) -> int:
    total = 0
    for s in fleet.shards:
        with s.primary.client() as c:
            total += int(c.info("stats")["total_connections_received"])
    return total - len(fleet.shards)  # the INFO connections themselves


@pytest.fixture
def txproxy(clean: Fleet, proxy: Proxy) -> Proxy:
    return proxy


@pytest.mark.parametrize("protocol", [2, 3])
def test_pipeline_transaction_on_tagged_keys(txproxy: Proxy, clean: Fleet, protocol: int) -> None:
    with txproxy.client(protocol=protocol) as c:
        pipe = c.pipeline()  # transaction=True: MULTI ... EXEC
        pipe.set("{user42}.cart", "3").incr("{user42}.cart").hset("{user42}.profile", "n", "ann")
        pipe.get("{user42}.cart").ping().echo("hi").hgetall("{user42}.profile")
        result = pipe.execute()
        assert result == [True, 4, 1, b"4", True, b"hi", {b"n": b"ann"}]
        owner = clean.owner("{user42}.cart")
        assert owner.name == RING.shard_name(b"{user42}.cart")
        with owner.primary.client() as direct:
            assert direct.hgetall("{user42}.profile") == {b"n": b"ann"}
        # the connection is back in normal sharded mode: keys of every shard work
        for shard in ("s1", "s2", "s3"):
            (k,) = keys_on(shard)
            c.set(k, shard)
            assert c.get(k) == shard.encode()
            assert clean.owner(k).name == shard


@pytest.mark.parametrize("protocol", [2, 3])
async def test_asyncio_pipeline_transaction(txproxy: Proxy, protocol: int) -> None:
    c = aredis.Redis(host="127.0.0.1", port=txproxy.port, protocol=protocol)
    try:
        async with c.pipeline(transaction=True) as pipe:
            pipe.set("{a}1", "x").append("{a}1", "y").get("{a}1").delete("{a}1")
            assert await pipe.execute() == [True, 2, b"xy", 1]
    finally:
        await c.aclose()


def test_watch_loop_from_eight_threads_counts_exactly(txproxy: Proxy) -> None:
    key = "{counter}.n"
    with txproxy.client() as c:
        c.set(key, 0)
    retries = [0]
    lock = threading.Lock()

    def work() -> None:
        with txproxy.client(protocol=2) as c:
            for _ in range(50):
                while True:
                    with c.pipeline() as pipe:
                        try:
                            pipe.watch(key)
                            value = int(pipe.get(key) or 0)
                            pipe.multi()
                            pipe.set(key, value + 1)
                            pipe.execute()
                            break
                        except WatchError:
                            with lock:
                                retries[0] += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with txproxy.client() as c:
        assert c.get(key) == b"400"
    print(f"8 threads x 50 increments: 400, after {retries[0]} WATCH retries")


@pytest.mark.parametrize("protocol", [2, 3])
def test_watch_aborted_by_another_clients_write(txproxy: Proxy, protocol: int) -> None:
    key = "{w}.k"
    with txproxy.client(protocol=protocol) as c, txproxy.client() as other:
        c.set(key, "1")
        with c.pipeline() as pipe:
            pipe.watch(key)
            assert pipe.get(key) == b"1"
            other.set(key, "2")  # a conflicting write from another client
            pipe.multi()
            pipe.set(key, "3")
            with pytest.raises(WatchError):
                pipe.execute()
        assert c.get(key) == b"2"
        # raw: EXEC answers the null reply of the client's protocol
        s = raw(txproxy.port)
        send(s, b"HELLO", str(protocol).encode())
        read_until_quiet(s)
        send(s, b"WATCH", key.encode())
        assert read(s) == b"+OK\r\n"
        other.set(key, "4")
        send(s, b"MULTI")
        send(s, b"INCR", key.encode())
        send(s, b"EXEC")
        assert read(s, 3) == b"+OK\r\n+QUEUED\r\n" + (b"*-1\r\n" if protocol == 2 else b"_\r\n")
        s.close()
        assert c.get(key) == b"4"


def test_multi_with_keys_on_two_shards_is_crossslot_then_execabort(
    txproxy: Proxy, clean: Fleet
) -> None:
    (a,) = keys_on("s1")
    (b,) = keys_on("s2")
    with txproxy.client() as c:
        pipe = c.pipeline()
        pipe.set(a, 1).set(b, 2)
        # redis-py raises the queue-time error (its EXEC then got EXECABORT)
        with pytest.raises(ResponseError, match="don't hash to the same shard"):
            pipe.execute()
        assert c.get(a) is None and c.get(b) is None  # nothing was written
    s = raw(txproxy.port)
    send(s, b"MULTI")
    send(s, b"SET", a.encode(), b"1")
    send(s, b"SET", b, b"2")
    send(s, b"EXEC")
    assert read(s, 4) == (
        b"+OK\r\n+QUEUED\r\n-CROSSSLOT Keys in request don't hash to the same shard\r\n"
        b"-EXECABORT " + EXECABORT.encode() + b"\r\n"
    )
    s.close()
    for shard in clean.shards:
        with shard.primary.client() as direct:
            assert direct.dbsize() == 0


def test_queue_time_errors_abort_exec(txproxy: Proxy) -> None:
    s = raw(txproxy.port)
    for argv in ([b"MULTI"], [b"SET", b"{q}x", b"1"], [b"NOSUCHCMD", b"a"], [b"GET"], [b"EXEC"]):
        send(s, *argv)
    assert read(s, 5) == (
        b"+OK\r\n+QUEUED\r\n"
        b"-ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' \r\n"
        b"-ERR wrong number of arguments for 'get' command\r\n"
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    )
    send(s, b"MULTI")
    send(s, b"INFO")
    send(s, b"EXEC")
    assert read(s, 3) == (
        b"+OK\r\n-ERR command 'info' cannot be queued in a transaction through shardproxy\r\n"
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    )
    send(s, b"EXEC")
    send(s, b"DISCARD")
    assert read(s, 2) == b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n"
    s.close()
    with txproxy.client() as c:
        assert c.get("{q}x") is None


def test_discard_then_normal_sharded_commands(txproxy: Proxy, clean: Fleet) -> None:
    with txproxy.client() as c:
        s = raw(txproxy.port)
        send(s, b"MULTI")
        send(s, b"SET", b"{d}k", b"1")
        send(s, b"DISCARD")
        assert read(s, 3) == b"+OK\r\n+QUEUED\r\n+OK\r\n"
        keys = [k for shard in ("s1", "s2", "s3") for k in keys_on(shard, 2, "disc")]
        for k in keys:
            send(s, b"SET", k.encode(), k.encode())
        send(s, b"MGET", *(k.encode() for k in keys))
        expected = (
            b"+OK\r\n" * len(keys)
            + b"*6\r\n"
            + b"".join(b"$%d\r\n%s\r\n" % (len(k), k.encode()) for k in keys)
        )
        assert read(s, len(keys) + 1) == expected
        s.close()
        assert c.get("{d}k") is None


def test_client_gone_mid_transaction_runs_nothing_and_the_lease_is_reused(
    txproxy: Proxy, clean: Fleet
) -> None:
    (k,) = keys_on("s2", prefix="gone")
    s = raw(txproxy.port)
    send(s, b"WATCH", k.encode())
    send(s, b"MULTI")
    send(s, b"SET", k.encode(), b"never")
    assert read(s, 3) == b"+OK\r\n+OK\r\n+QUEUED\r\n"
    s.close()  # hangs up before EXEC
    time.sleep(0.3)
    with txproxy.client() as c:
        assert c.get(k) is None
        for _ in range(20):  # the lease was reset and is handed out again, cleanly
            pipe = c.pipeline()
            pipe.incr(k).get(k)
            n, v = pipe.execute()
            assert v == str(n).encode()
        assert c.get(k) == b"20"


def test_many_transactions_reuse_leased_connections(fleet: Fleet, make_proxy: object) -> None:
    make = make_proxy  # type: ignore[assignment]
    p: Proxy = make(fleet.topology(backend={"max_leases": 16}))  # type: ignore[operator]
    with p.client() as c:
        c.ping()
    before = connections_received(fleet)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with p.client(protocol=2 + i % 2) as c:
                key = f"{{tx{i}}}.n"
                for _ in range(100):
                    pipe = c.pipeline()
                    pipe.incr(key).incr(key)
                    pipe.execute()
                assert c.get(key) == b"200"
        except BaseException as exc:  # reported below
            errors.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    took = time.monotonic() - start
    assert not errors, errors[:3]
    after = connections_received(fleet)
    opened = after - before
    print(f"2,000 transactions from 20 clients in {took:.2f} s: {opened} backend connections")
    # at most max_leases per primary for each protocol spoken, however many transactions
    assert opened <= 3 * 16
    assert "Traceback" not in p.output()


def test_redis_py_lock_from_four_threads(txproxy: Proxy) -> None:
    counter = {"held": 0, "max": 0, "done": 0}
    guard = threading.Lock()

    def work() -> None:
        with txproxy.client() as c:
            for _ in range(10):
                with c.lock("{locks}.job", timeout=10, blocking_timeout=30, sleep=0.005):
                    with guard:
                        counter["held"] += 1
                        counter["max"] = max(counter["max"], counter["held"])
                    time.sleep(0.002)
                    with guard:
                        counter["held"] -= 1
                        counter["done"] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert counter == {"held": 0, "max": 1, "done": 40}


def test_keyless_transaction_runs_on_a_shard(txproxy: Proxy) -> None:
    with txproxy.client() as c:
        pipe = c.pipeline()
        pipe.ping().echo("e").time()
        pong, echo, now = pipe.execute()
        assert pong is True and echo == b"e"
        assert abs(now[0] - time.time()) < 5


def test_per_shard_mode_merges_exec_in_order(fleet: Fleet, make_proxy: object) -> None:
    fleet.flushall()
    make = make_proxy  # type: ignore[assignment]
    p: Proxy = make(fleet.topology(transactions={"cross_shard": "per-shard"}))  # type: ignore[operator]
    a1, a2 = keys_on("s1", 2, "ps")
    (b,) = keys_on("s2", 1, "ps")
    (c3,) = keys_on("s3", 1, "ps")
    with p.client() as c:
        pipe = c.pipeline()
        pipe.set(a1, "1").set(b, "2").incr(a1).set(c3, "3").ping().get(b).set(a2, "x")
        assert pipe.execute() == [True, True, 2, True, True, b"2", True]
        for key, value in ((a1, b"2"), (b, b"2"), (c3, b"3"), (a2, b"x")):
            assert c.get(key) == value
            assert fleet.owner(key).name == RING.shard_name(key.encode())
        # WATCH across shards stays refused in this mode
        s = raw(p.port)
        send(s, b"WATCH", a1.encode())
        send(s, b"MULTI")
        send(s, b"SET", b.encode(), b"9")
        send(s, b"EXEC")
        assert read(s, 4) == (
            b"+OK\r\n+OK\r\n-CROSSSLOT Keys in request don't hash to the same shard\r\n"
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        )
        s.close()
        assert c.get(b) == b"2"


def test_transaction_metrics(fleet: Fleet, make_proxy: object) -> None:
    fleet.flushall()
    make = make_proxy  # type: ignore[assignment]

    p: Proxy = make(fleet.topology(admin=f"127.0.0.1:{free_port()}"))  # type: ignore[operator]
    (a,) = keys_on("s1")
    (b,) = keys_on("s2")
    with p.client() as c, p.client() as other:
        pipe = c.pipeline()
        pipe.set(a, 1)
        pipe.execute()  # committed
        pipe = c.pipeline()
        pipe.set(a, 1).set(b, 1)
        with pytest.raises(ResponseError, match="same shard"):
            pipe.execute()  # cross-shard refused
        with c.pipeline() as pipe:
            pipe.watch(a)
            other.set(a, 5)
            pipe.multi()
            pipe.incr(a)
            with pytest.raises(WatchError):
                pipe.execute()  # watch aborted
        with pytest.raises(ResponseError):
            c.execute_command("EXEC")
        m = p.scrape()
    assert m[metric_key("shardproxy_transactions_started_total")] == 3
    assert m[metric_key("shardproxy_transactions_total", result="committed")] == 1
    assert m[metric_key("shardproxy_transactions_total", result="cross_shard_refused")] == 1
    assert m[metric_key("shardproxy_transactions_total", result="watch_aborted")] == 1
    in_use = sum(
        v
        for k, v in m.items()
        if k.startswith("shardproxy_backend_leased_connections") and "in_use" in k
    )
    idle = sum(
        v
        for k, v in m.items()
        if k.startswith("shardproxy_backend_leased_connections") and "idle" in k
    )
    assert in_use == 0 and idle >= 1


# -- raw sockets -----------------------------------------------------------------------------


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def send(s: socket.socket, *argv: bytes | str) -> None:
    parts = [a.encode() if isinstance(a, str) else a for a in argv]
    s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in parts))


def read(s: socket.socket, replies: int = 1) -> bytes:
    """Exactly ``replies`` RESP replies (scalar or flat arrays of scalars)."""
    import hiredis

    reader = hiredis.Reader()
    data = b""
    got = 0
    while got < replies:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
        reader.feed(chunk)
        while reader.gets() is not False:
            got += 1
    return data


def read_until_quiet(s: socket.socket) -> bytes:
    s.settimeout(0.3)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    s.settimeout(5)
    return data


def test_ioredis_multi_watch_and_eval(txproxy: Proxy) -> None:
    """ioredis (npm) through the proxy: multi(), a WATCH conflict, eval, defineCommand."""
    script = Path(__file__).parent / "clients" / "node" / "ioredis_transactions.js"
    (a,) = keys_on("s1", 1, "io")
    (b,) = keys_on("s2", 1, "io")
    out = subprocess.run(
        ["node", str(script), str(txproxy.port), a, b],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["multi"] == [[None, "OK"], [None, 1], [None, 2], [None, ["a", "b"]]]
    assert result["watched"] is None  # the other client's write aborted it
    assert result["state"] == "taken"
    assert result["eval"] == 5
    assert result["bump"] == [6, 7]
    # ioredis reports EXEC's -EXECABORT (the queued SET got -CROSSSLOT), and nothing ran
    assert result["crossslot"] == EXECABORT.join(["EXECABORT ", ""])
    with txproxy.client() as c:
        assert c.get(a) is None and c.get(b) is None
