"""The near-cache against real redis-server processes: hits, every way a key is invalidated,
flushes, TTLs, the memory bound; and with the cache off, no tracking at all."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import yaml

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, free_port
from tests.test_failover import no_sync_delay, wait_all_up, wait_for

MakeProxy = Callable[[dict[str, object]], Proxy]
RING = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])


def cache_topology(fleet: Fleet, **cache: object) -> dict[str, object]:
    return fleet.topology(admin=f"127.0.0.1:{free_port()}", cache={"enabled": True, **cache})


def info(c: redis.Redis) -> dict[str, int]:
    return {k: v for k, v in c.info("cache").items() if isinstance(v, int)}


def tracked(p: Proxy, n: int = 6) -> None:
    with p.client() as c:
        wait_for("every node tracked", lambda: info(c)["cache_tracked_nodes"] == n, 5)


@pytest.fixture
def cproxy(fleet: Fleet, make_proxy: MakeProxy) -> Iterator[Proxy]:
    fleet.flushall()
    p = make_proxy(cache_topology(fleet))
    tracked(p)
    yield p


def primary_of(fleet: Fleet, key: str) -> redis.Redis:
    shard = next(s for s in fleet.shards if s.name == RING.shard_name(key.encode()))
    return shard.primary.client()


def served_until(c: redis.Redis, key: str, value: bytes | None, timeout: float = 2.0) -> float:
    """Seconds until GET key returns ``value`` (raises if it never does)."""
    t0 = time.monotonic()
    while c.get(key) != value:
        assert time.monotonic() - t0 < timeout, f"{key} still stale after {timeout} s"
    return time.monotonic() - t0


def test_a_second_get_is_a_hit(cproxy: Proxy) -> None:
    with cproxy.client(protocol=2) as c2, cproxy.client(protocol=3) as c3:
        c2.set("c:hit", "v")
        assert c2.get("c:hit") == b"v"  # the fill
        before = info(c2)["cache_hits"]
        for c in (c2, c3, c2):
            assert c.get("c:hit") == b"v"
        assert info(c2)["cache_hits"] == before + 3
        assert c3.get("c:missing") is None and c2.get("c:missing") is None  # nil: not kept
        assert info(c2)["cache_entries"] == 1


@pytest.mark.parametrize("proto", [2, 3])
def test_a_write_through_the_proxy_is_seen_by_the_next_read(cproxy: Proxy, proto: int) -> None:
    with cproxy.client(protocol=proto) as c:
        for i in range(50):  # read-your-writes, every time, never a stale hit
            c.set("c:ryw", f"v{i}")
            assert c.get("c:ryw") == f"v{i}".encode()
            assert c.get("c:ryw") == f"v{i}".encode()
        assert info(c)["cache_hits"] >= 50
        pipe = c.pipeline(transaction=False)  # also within one pipeline
        pipe.get("c:ryw").set("c:ryw", "piped").get("c:ryw")
        assert pipe.execute() == [b"v49", True, b"piped"]
        assert c.mset({"c:ryw": "mset"}) and c.get("c:ryw") == b"mset"
        tx = c.pipeline(transaction=True)
        tx.set("c:ryw", "tx")
        tx.execute()
        assert c.get("c:ryw") == b"tx"


@pytest.mark.parametrize("proto", [2, 3])
def test_mget_is_served_from_the_cache_key_by_key(cproxy: Proxy, fleet: Fleet, proto: int) -> None:
    keys = [f"{i}:c:mget:{proto}" for i in range(12)]
    assert len({RING.shard_name(k.encode()) for k in keys}) == 3  # every shard
    with cproxy.client(protocol=proto) as c:
        c.mset({k: f"v{i}" for i, k in enumerate(keys)})
        c.delete(keys[5], keys[7])
        c.hset(keys[5], "f", "hash")  # another type: MGET answers nil for it
        want = [f"v{i}".encode() if i not in (5, 7) else None for i in range(12)]
        assert c.mget(keys) == want  # asked once: the shards' MGETs, nothing kept
        assert info(c)["cache_entries"] == 0
        assert c.mget(keys) == want  # asked again: each key a fill of its own
        assert info(c)["cache_entries"] == 10
        before = info(c)
        assert c.mget(keys) == want  # from the cache, in the keys' order
        after = info(c)
        assert after["cache_hits"] - before["cache_hits"] == 10
        assert c.mget(list(reversed(keys))) == list(reversed(want))
        assert c.get(keys[0]) == b"v0" and info(c)["cache_hits"] == after["cache_hits"] + 11
        # a write through the proxy, and one directly on a primary, are seen by MGET too
        c.set(keys[1], "through")
        with primary_of(fleet, keys[2]) as d:
            d.set(keys[2], "direct")
        want[1], want[2] = b"through", b"direct"
        t0 = time.monotonic()
        while c.mget(keys) != want:
            assert time.monotonic() - t0 < 2, c.mget(keys)
        c.delete(keys[3])
        want[3] = None
        assert c.mget(keys) == want
        assert c.mget(keys[0], keys[0], keys[8]) == [b"v0", b"v0", b"v8"]  # repeats, all hits


def test_a_write_made_directly_on_the_primary_invalidates(cproxy: Proxy, fleet: Fleet) -> None:
    with cproxy.client() as c, primary_of(fleet, "c:direct") as d:
        worst = 0.0
        for i in range(20):
            d.set("c:direct", f"v{i}")
            worst = max(worst, served_until(c, "c:direct", f"v{i}".encode()))
            assert c.get("c:direct") == f"v{i}".encode()  # (cached again: a hit)
        print(f"\n[cache] a direct write is seen through the cache within {worst * 1000:.1f} ms")
        assert info(c)["cache_invalidations"] >= 19


@pytest.mark.parametrize("how", ["expire", "del", "flushall", "incr", "eval"])
def test_every_kind_of_change_invalidates(cproxy: Proxy, fleet: Fleet, how: str) -> None:
    key = f"c:change:{how}"
    with cproxy.client() as c, primary_of(fleet, key) as d:
        d.set(key, "1")
        assert c.get(key) == b"1" and c.get(key) == b"1"
        if how == "expire":
            d.pexpire(key, 1)
            time.sleep(0.05)
            d.get(key)  # (the node notices the expiry)
            served_until(c, key, None)
        elif how == "del":
            d.delete(key)
            served_until(c, key, None)
        elif how == "flushall":
            d.flushall()
            served_until(c, key, None)
        elif how == "incr":
            d.incr(key)
            served_until(c, key, b"2")
        else:
            c.eval("return redis.call('SET', KEYS[1], 'lua')", 1, key)  # through the proxy
            assert c.get(key) == b"lua"


def test_a_key_with_a_ttl_is_cached_no_longer_than_its_ttl(cproxy: Proxy) -> None:
    with cproxy.client() as c:
        c.set("c:ttl", "short", px=300)
        assert c.get("c:ttl") == b"short" and c.get("c:ttl") == b"short"
        time.sleep(0.35)
        assert c.get("c:ttl") is None  # even if the node had not noticed it expired


def test_the_memory_bound_holds_under_a_scan_of_cold_keys(
    fleet: Fleet, make_proxy: MakeProxy
) -> None:
    fleet.flushall()
    p = make_proxy(cache_topology(fleet, max_memory="256kb"))
    tracked(p)
    with p.client() as c:
        c.mset({f"c:cold:{i}": "x" * 1000 for i in range(2000)})
        c.set("c:hot", "hot")
        for _ in range(50):
            assert c.get("c:hot") == b"hot"
        for i in range(2000):  # a scan: 2 MB of keys read once each
            c.get(f"c:cold:{i}")
        after = info(c)
        assert after["cache_bytes"] <= 256 * 1024
        hits = after["cache_hits"]
        assert c.get("c:hot") == b"hot"
        assert info(c)["cache_hits"] == hits + 1, "the scan washed the hot key out"
        print(f"\n[cache] after a 2 MB scan: {after['cache_bytes']} bytes held, hot key kept")


def test_a_replica_filled_entry_is_invalidated_by_a_write_on_the_primary(
    fleet: Fleet, make_proxy: MakeProxy
) -> None:
    fleet.flushall()
    p = make_proxy(
        fleet.topology(
            admin=f"127.0.0.1:{free_port()}", read_policy="replica", cache={"enabled": True}
        )
    )
    tracked(p)
    wait_all_up(p)
    fleet.wait_replication()
    with p.client() as c, primary_of(fleet, "c:replica") as d:
        d.set("c:replica", "r1")
        served_until(c, "c:replica", b"r1")
        assert c.get("c:replica") == b"r1"  # from the replica's fill
        d.set("c:replica", "r2")  # the replica applies it and says so
        took = served_until(c, "c:replica", b"r2")
        print(
            f"\n[cache] a write on the primary reached a replica-filled entry in {took * 1000:.1f} ms"
        )


def test_losing_the_invalidation_connection_flushes(cproxy: Proxy, fleet: Fleet) -> None:
    with cproxy.client() as c, primary_of(fleet, "c:lost") as d:
        c.set("c:lost", "1")
        assert c.get("c:lost") == b"1" and c.get("c:lost") == b"1"
        entries = info(c)["cache_entries"]
        d.client_kill_filter(_type="pubsub")  # the proxy's invalidation connection with it
        wait_for("flushed", lambda: info(c)["cache_entries"] < entries, 3)
        tracked(cproxy)  # a new invalidation connection, the pipelines tracked for it again
        d.set("c:lost", "2")
        served_until(c, "c:lost", b"2")


def test_a_reload_and_a_failover_flush(own_fleet: Fleet, make_proxy: MakeProxy) -> None:
    for srv in own_fleet.servers():
        no_sync_delay(srv)
    own_fleet.wait_replication()
    topo = own_fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        failover={"mode": "promote"},
        health={"interval_ms": 100, "failures": 2, "successes": 1},
        timeouts={"connect_ms": 300, "command_ms": 500},
        cache={"enabled": True},
    )
    p = make_proxy(topo)
    wait_all_up(p)
    tracked(p)
    with p.client() as c:
        c.set("c:f", "1")
        assert c.get("c:f") == b"1" and c.get("c:f") == b"1"
        assert info(c)["cache_entries"] == 1
        p.path.write_text(yaml.safe_dump(topo))
        status, body = p.http("/reload", method="POST")
        assert status == 200 and json.loads(body)["result"] == "success"
        assert info(c)["cache_entries"] == 0  # a reload: everything forgotten
        assert c.get("c:f") == b"1" and info(c)["cache_entries"] == 1
        victim = next(s for s in own_fleet.shards if s.name == RING.shard_name(b"c:f"))
        victim.primary.kill()
        wait_for("failed over", lambda: c.info("cache")["cache_entries"] == 0, 10)
        wait_for("served again", lambda: _get(c, "c:f") is not None, 10)


def _get(c: redis.Redis, key: str) -> bytes | None:
    try:
        return c.get(key)  # type: ignore[return-value]
    except redis.RedisError:
        return None


def test_cache_off_tracks_nothing(proxy: Proxy, fleet: Fleet) -> None:
    for s in fleet.shards:
        with s.primary.client() as d:
            d.config_resetstat()
    with proxy.client() as c:
        c.set("c:off", "1")
        for _ in range(3):
            c.get("c:off")
        assert c.info("cache")["cache_enabled"] == 0
    for s in fleet.shards:
        with s.primary.client() as d:
            stats = d.info("commandstats")
            assert "cmdstat_client|tracking" not in stats
            assert "cmdstat_client|caching" not in stats
