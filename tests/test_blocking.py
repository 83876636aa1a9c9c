"""Blocking commands through the proxy, against real redis-server processes and real clients."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
import yaml
from redis.exceptions import ResponseError

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, free_port, metric_key
from tests.test_failover import wait_all_up, wait_for
from tests.test_transactions import keys_on, raw, read, send


@pytest.fixture
def bproxy(clean: Fleet, proxy: Proxy) -> Proxy:
    return proxy


def later(seconds: float, fn: object) -> threading.Timer:
    t = threading.Timer(seconds, fn)  # type: ignore[arg-type]
    t.start()
    return t


def test_blpop_woken_by_a_push_and_wake_up_latency(bproxy: Proxy, clean: Fleet) -> None:
    (q,) = keys_on("s2", 1, "wake")
    direct = next(s for s in clean.shards if s.name == "s2").primary
    timings: dict[str, list[float]] = {"proxy": [], "direct": []}
    with bproxy.client() as c, bproxy.client() as pusher, direct.client() as dc:
        for _ in range(20):
            for name, waiter in (("proxy", c), ("direct", dc)):
                pushed = [0.0]

                def push(pushed: list[float] = pushed) -> None:
                    pushed[0] = time.perf_counter()
                    pusher.rpush(q, "job")

                t = later(0.05, push)
                got = waiter.blpop(q, 5)
                woke = time.perf_counter()
                t.join()
                assert got == (q.encode(), b"job") or got == [q.encode(), b"job"]
                timings[name].append(woke - pushed[0])
    for name, values in timings.items():
        values.sort()
        print(
            f"push -> wake-up ({name}): median {statistics.median(values) * 1000:.2f} ms, "
            f"p99 {values[int(len(values) * 0.99) - 1] * 1000:.2f} ms over {len(values)}"
        )
    assert max(timings["proxy"]) < 0.5


def test_block_longer_than_the_command_timeout_returns_nil(
    fleet: Fleet, make_proxy: object
) -> None:
    fleet.flushall()
    p: Proxy = make_proxy(fleet.topology(timeouts={"command_ms": 500}))  # type: ignore[operator]
    with p.client() as c:
        t0 = time.monotonic()
        assert c.blpop("never", 2) is None
        took = time.monotonic() - t0
        assert 1.9 < took < 4.0, took  # the block's own 2 s, not command_ms (0.5 s)
        # a 0 timeout blocks for good: still waiting after 3 s, then a push wakes it
        box: list[object] = []
        waiter = threading.Thread(target=lambda: box.append(c.blpop("forever", 0)))
        waiter.start()
        time.sleep(3.0)
        assert waiter.is_alive() and not box
        with p.client() as other:
            other.lpush("forever", "finally")
        waiter.join(5)
        assert box == [[b"forever", b"finally"]] or box == [(b"forever", b"finally")]


def test_many_blocked_clients_all_woken_and_connections_come_back(
    fleet: Fleet, make_proxy: object
) -> None:
    fleet.flushall()
    topo = fleet.topology(
        admin=f"127.0.0.1:{free_port()}", backend={"max_leases": 200, "lease_idle_ms": 500}
    )
    p: Proxy = make_proxy(topo)  # type: ignore[operator]

    def connected() -> int:
        total = 0
        for s in fleet.shards:
            with s.primary.client() as c:
                total += int(c.info("clients")["connected_clients"]) - 1
        return total

    with p.client() as c:
        for i in range(30):
            c.exists(f"queue:{i}")  # the shared pipelines the pushes will use are open
    baseline = connected()
    n = 300
    results: list[object] = [None] * n
    clients = [redis.Redis(host="127.0.0.1", port=p.port, protocol=2) for _ in range(n)]

    def wait(i: int) -> None:
        got = clients[i].blpop(f"queue:{i}", 20)
        results[i] = None if got is None else list(got)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    with p.client() as c:
        wait_for("300 blocked", lambda: int(c.info("clients")["blocked_clients"]) == n, 20)
        during = connected()
        for i in range(n):
            c.rpush(f"queue:{i}", f"v{i}")
    for t in threads:
        t.join(20)
    assert results == [[f"queue:{i}".encode(), f"v{i}".encode()] for i in range(n)]
    for cl in clients:
        cl.close()

    def leases_open() -> float:
        return sum(v for k, v in p.scrape().items() if "leased_connections" in k)

    # every lease closes once idle for lease_idle_ms; the backends' connection counts come back
    # to the baseline (give or take a shared pipeline the pushes opened)
    wait_for("leases closed", lambda: leases_open() == 0, 10, 0.1)
    after = connected()
    assert after <= baseline + len(fleet.shards), (baseline, during, after)
    print(
        f"{n} blocked clients: {during - baseline} backend connections while blocked, "
        f"{after - baseline} after"
    )
    assert during - baseline >= n  # one lease each while blocked (they block at once)


def test_blocked_client_that_leaves_loses_no_element(bproxy: Proxy, clean: Fleet) -> None:
    (q,) = keys_on("s3", 1, "leave")
    s = raw(bproxy.port)
    send(s, b"BLPOP", q.encode(), b"0")
    with bproxy.client() as c:
        wait_for("blocked", lambda: int(c.info("clients")["blocked_clients"]) == 1, 5)
        s.close()
        wait_for("unblocked", lambda: int(c.info("clients")["blocked_clients"]) == 0, 5)
        time.sleep(0.2)
        c.rpush(q, "precious")
        time.sleep(0.3)
        assert c.lrange(q, 0, -1) == [b"precious"]  # not popped for a client that is gone


def test_keys_on_two_shards_are_crossslot(bproxy: Proxy) -> None:
    (a,) = keys_on("s1", 1, "x")
    (b,) = keys_on("s2", 1, "x")
    with bproxy.client() as c:
        with pytest.raises(ResponseError, match="don't hash to the same shard"):
            c.blpop([a, b], 1)
        with pytest.raises(ResponseError, match="don't hash to the same shard"):
            c.blmove(a, b, 1, "LEFT", "RIGHT")
        with pytest.raises(ResponseError, match="timeout is not a float or out of range"):
            c.execute_command("BLPOP", a, "soon")
        with pytest.raises(ResponseError, match="timeout is negative"):
            c.execute_command("BRPOP", a, "-1")
        with pytest.raises(ResponseError, match="timeout is not an integer or out of range"):
            c.execute_command("XREAD", "BLOCK", "1.5", "STREAMS", a, "$")
        assert c.ping()


@pytest.mark.parametrize("protocol", [2, 3])
def test_every_blocking_command(bproxy: Proxy, protocol: int) -> None:
    with bproxy.client(protocol=protocol) as c, bproxy.client() as other:
        other.rpush("{b}l", "a", "b", "c")
        assert c.blpop("{b}l", 1) in ([b"{b}l", b"a"], (b"{b}l", b"a"))
        assert c.brpop("{b}l", 1) in ([b"{b}l", b"c"], (b"{b}l", b"c"))
        assert c.brpoplpush("{b}l", "{b}m", 1) == b"b"
        assert c.blmove("{b}m", "{b}l", 1, "LEFT", "LEFT") == b"b"
        assert c.blmpop(1, 2, "{b}x", "{b}l", direction="LEFT") == [b"{b}l", [b"b"]]
        other.zadd("{b}z", {"m1": 1, "m2": 2, "m3": 3})
        assert c.bzpopmin("{b}z", 1) in ([b"{b}z", b"m1", 1.0], (b"{b}z", b"m1", 1.0))
        assert c.bzpopmax("{b}z", 1) in ([b"{b}z", b"m3", 3.0], (b"{b}z", b"m3", 3.0))
        got = c.bzmpop(1, 1, ["{b}z"], min=True)
        assert got in ([b"{b}z", [[b"m2", 2.0]]], [b"{b}z", [[b"m2", b"2"]]])  # RESP3, RESP2
        # timeouts: the null of the client's protocol
        assert c.blpop("{b}empty", 0.1) is None
        assert c.blmove("{b}empty", "{b}m", 0.1, "LEFT", "LEFT") is None
        assert c.bzpopmin("{b}empty", 0.1) is None
        sid = other.xadd("{b}s", {"f": "v"})
        got = c.xread({"{b}s": "0"}, block=100)
        assert got in ({b"{b}s": [[(sid, {b"f": b"v"})]]}, [[b"{b}s", [(sid, {b"f": b"v"})]]])
        assert c.xread({"{b}s": "$"}, block=100) in (None, {}, [])
        other.xgroup_create("{b}s", "g", id="0")
        got = c.xreadgroup("g", "worker", {"{b}s": ">"}, block=100)
        assert got in ({b"{b}s": [[(sid, {b"f": b"v"})]]}, [[b"{b}s", [(sid, {b"f": b"v"})]]])
        t = later(0.2, lambda: other.xadd("{b}s", {"f": "w"}))
        got = c.xreadgroup("g", "worker", {"{b}s": ">"}, block=3000)
        t.join()
        assert got is not None and b"w" in repr(got).encode()


def test_pipelined_replies_keep_their_order(bproxy: Proxy) -> None:
    (a,) = keys_on("s1", 1, "ord")
    (q,) = keys_on("s2", 1, "ord")
    (b,) = keys_on("s3", 1, "ord")
    with bproxy.client() as c:
        c.set(a, "A")
        c.set(b, "B")
        s = raw(bproxy.port)
        send(s, b"GET", a.encode())
        send(s, b"BLPOP", q.encode(), b"1")
        send(s, b"GET", b.encode())
        time.sleep(0.3)
        c.rpush(q, "Q")  # wakes the BLPOP; GET b ran only after it, as on one Redis
        got = read(s, 3)
        assert got == (
            b"$1\r\nA\r\n*2\r\n$%d\r\n%s\r\n$1\r\nQ\r\n$1\r\nB\r\n" % (len(q), q.encode())
        )
        # the connection is back in normal sharded mode
        send(s, b"SET", a.encode(), b"A2")
        send(s, b"GET", a.encode())
        assert read(s, 2) == b"+OK\r\n$2\r\nA2\r\n"
        s.close()


def test_inside_multi_a_blocking_command_does_not_block(bproxy: Proxy) -> None:
    with bproxy.client() as c:
        pipe = c.pipeline()
        pipe.blpop("{m}q", 0).rpush("{m}q", "x").blpop("{m}q", 0)
        t0 = time.monotonic()
        assert pipe.execute() == [None, 1, [b"{m}q", b"x"]]
        assert time.monotonic() - t0 < 2


async def test_asyncio_blpop(bproxy: Proxy) -> None:
    c = aredis.Redis(host="127.0.0.1", port=bproxy.port)
    other = aredis.Redis(host="127.0.0.1", port=bproxy.port)
    try:
        import asyncio

        task = asyncio.ensure_future(c.blpop("{aio}q", 5))
        await asyncio.sleep(0.2)
        await other.rpush("{aio}q", "v")
        assert await task in ([b"{aio}q", b"v"], (b"{aio}q", b"v"))
    finally:
        await c.aclose()
        await other.aclose()


def test_blocked_client_survives_a_promote_failover(own_fleet: Fleet, make_proxy: object) -> None:
    topo = own_fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        failover={"mode": "promote"},
        health={"interval_ms": 200, "failures": 2, "successes": 1},
        timeouts={"connect_ms": 300, "command_ms": 500},
    )
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    wait_all_up(p)
    (q,) = keys_on("s1", 1, "fo")
    victim = next(s for s in own_fleet.shards if s.name == "s1")
    box: list[object] = []
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with p.client() as c:
                box.append(c.blpop(q, 30))
        except BaseException as exc:  # reported below
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    with p.client() as c:
        wait_for("blocked", lambda: int(c.info("clients")["blocked_clients"]) == 1, 5)
    victim.primary.kill()
    t_kill = time.monotonic()
    new = victim.replicas[0]
    with new.client() as direct:
        wait_for("promoted", lambda: direct.info("replication")["role"] == "master", 15)
    promoted = time.monotonic() - t_kill
    with p.client() as c:
        wait_for(
            "re-issued",
            lambda: p.scrape().get(metric_key("shardproxy_blocks_reissued_total"), 0) >= 1,
            10,
        )
        reissued = time.monotonic() - t_kill
        assert waiter.is_alive()  # still waiting, with no error
        c.rpush(q, "after-failover")
    waiter.join(10)
    assert not errors, errors
    assert box == [[q.encode(), b"after-failover"]]
    print(f"[failover] kill -> promoted {promoted:.2f} s, block re-issued {reissued:.2f} s")


def test_blocking_metrics_and_info(fleet: Fleet, make_proxy: object) -> None:
    fleet.flushall()
    p: Proxy = make_proxy(fleet.topology(admin=f"127.0.0.1:{free_port()}"))  # type: ignore[operator]
    (q,) = keys_on("s2", 1, "met")
    s = raw(p.port)
    send(s, b"BLPOP", q.encode(), b"0")
    with p.client() as c:
        wait_for("blocked", lambda: int(c.info("clients")["blocked_clients"]) == 1, 5)
        m = p.scrape()
        assert m[metric_key("shardproxy_blocked_clients", shard="s2")] == 1
        assert m[metric_key("shardproxy_blocking_commands_total")] >= 1
        s2 = next(x for x in fleet.shards if x.name == "s2")
        key = metric_key(
            "shardproxy_backend_leased_connections",
            shard="s2",
            node=s2.primary.address,
            state="in_use",
        )
        assert m[key] == 1
        c.rpush(q, "v")
        assert read(s) == b"*2\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(q), q.encode())
        wait_for("unblocked", lambda: int(c.info("clients")["blocked_clients"]) == 0, 5)
    s.close()


def test_ioredis_blocking_calls(bproxy: Proxy) -> None:
    script = Path(__file__).parent / "clients" / "node" / "ioredis_blocking.js"
    out = subprocess.run(
        ["node", str(script), str(bproxy.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["blpop"] == ["{io}q", "job"]
    assert result["timeout"] is None
    assert result["blmove"] == "m"
    assert result["after"] == "PONG"


def test_wait_counts_the_replicas_of_the_shards_written_to(
    own_fleet: Fleet, make_proxy: object
) -> None:
    own_fleet.wait_replication()
    p: Proxy = make_proxy(own_fleet.topology())  # type: ignore[operator]
    (a,) = keys_on("s1", 1, "wait")
    (b,) = keys_on("s2", 1, "wait")
    s3 = next(s for s in own_fleet.shards if s.name == "s3")
    with p.client() as c:
        c.set(a, "1")
        c.set(b, "2")
        t0 = time.monotonic()
        assert c.wait(1, 2000) == 1  # each written shard's one replica has the write
        assert time.monotonic() - t0 < 1.95  # answered once acknowledged, not at the timeout
        with s3.replicas[0].client() as r:
            assert r.get(a) is None  # (the key lives elsewhere)
        # a stopped replica on a shard the client did not write to does not matter...
        s3.replicas[0].signal(signal.SIGSTOP)
        try:
            c.set(a, "3")
            assert c.wait(1, 1000) == 1
            # ...but one on a shard it wrote to does: 0 after the timeout
            (k3,) = keys_on("s3", 1, "wait")
            c.set(k3, "x")
            t0 = time.monotonic()
            assert c.wait(1, 300) == 0
            assert 0.25 < time.monotonic() - t0 < 2
        finally:
            s3.replicas[0].signal(signal.SIGCONT)
        with pytest.raises(ResponseError, match="timeout is negative"):
            c.wait(1, -1)


def test_a_reload_that_moves_the_key_follows_the_blocked_client(
    fleet: Fleet, make_proxy: object
) -> None:
    """The key a client is blocked on moves to a shard the reload adds: the block is
    cancelled on the old owner and sent to the new one, and a push through the proxy (which
    goes to the new owner) wakes it."""
    fleet.flushall()
    topo = fleet.topology(admin=f"127.0.0.1:{free_port()}")
    shards = topo["shards"]  # type: ignore[index]
    two = dict(topo, shards=shards[:2])
    p: Proxy = make_proxy(two)  # type: ignore[operator]
    before = Ring.build([("s1", 1), ("s2", 1)])
    after = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])
    q = next(
        k
        for k in (f"moving{i}" for i in range(10_000))
        if after.shard_name(k.encode()) == "s3" and before.shard_name(k.encode()) != "s3"
    )
    box: list[object] = []

    def wait() -> None:
        with p.client() as c:
            box.append(c.blpop(q, 20))

    waiter = threading.Thread(target=wait)
    waiter.start()
    with p.client() as c:
        wait_for("blocked", lambda: int(c.info("clients")["blocked_clients"]) == 1, 5)
    p.path.write_text(yaml.safe_dump(topo))
    assert p.proc is not None
    p.proc.send_signal(signal.SIGHUP)
    wait_for("reloaded", lambda: "reload (SIGHUP) applied" in p.output(), 10)
    wait_for(
        "re-issued",
        lambda: p.scrape().get(metric_key("shardproxy_blocks_reissued_total"), 0) >= 1,
        10,
    )
    with p.client() as c:
        c.rpush(q, "moved")
    waiter.join(10)
    assert box == [[q.encode(), b"moved"]] or box == [(q.encode(), b"moved")]
    s3 = next(s for s in fleet.shards if s.name == "s3")
    with s3.primary.client() as direct:
        assert direct.exists(q) == 0  # popped from the new owner


def test_blocked_client_survives_a_sentinel_failover(tmp_path: Path) -> None:
    from tests.test_sentinel import Sentinels, proxy_topology, start_fleet

    fleet = Fleet(tmp_path / "fleet", shards=3, replicas=1)
    sentinels = Sentinels(tmp_path, fleet)
    p: Proxy | None = None
    try:
        start_fleet(fleet)
        sentinels.start()
        sentinels.wait_ready()
        p = Proxy(proxy_topology(fleet, sentinels, poll_ms=60000), tmp_path).start()
        proxy = p
        (q,) = keys_on("s1", 1, "sfo")
        victim = next(s for s in fleet.shards if s.name == "s1")
        box: list[object] = []
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                with proxy.client() as c:
                    box.append(c.blpop(q, 40))
            except BaseException as exc:  # reported below
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        with proxy.client() as c:
            wait_for("blocked", lambda: int(c.info("clients")["blocked_clients"]) == 1, 5)
        victim.primary.kill()
        t_kill = time.monotonic()
        wait_for(
            "re-issued",
            lambda: proxy.scrape().get(metric_key("shardproxy_blocks_reissued_total"), 0) >= 1,
            30,
        )
        reissued = time.monotonic() - t_kill
        assert waiter.is_alive() and not errors, (errors, proxy.output()[-3000:])
        with proxy.client() as c:
            c.rpush(q, "after-sentinel-failover")
        waiter.join(10)
        assert not errors, errors
        assert [list(x) for x in box] == [[q.encode(), b"after-sentinel-failover"]]  # type: ignore[call-overload]
        print(f"[sentinel] kill -> block re-issued on the new primary {reissued:.2f} s")
    finally:
        if p is not None:
            p.stop()
        sentinels.stop()
        fleet.stop()
