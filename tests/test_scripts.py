"""EVAL/EVALSHA/FCALL and the script and function commands through the proxy, against real
redis-server processes."""

from __future__ import annotations

import signal
import time

import pytest
import yaml
from redis.exceptions import NoScriptError, ResponseError

from tests.conftest import Fleet, Proxy, free_port, metric_key
from tests.test_transactions import RING, keys_on

SET_AND_GET = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
LIBRARY = """#!lua name=proxylib
redis.register_function('setget', function(keys, args)
  redis.call('SET', keys[1], args[1])
  return redis.call('GET', keys[1])
end)
redis.register_function{function_name='readit', callback=function(keys, args)
  return redis.call('GET', keys[1])
end, flags={'no-writes'}}
"""


def names(listing: list[object]) -> list[bytes]:
    """Library names of a FUNCTION LIST reply (RESP3 maps or RESP2 flat lists)."""
    out = []
    for lib in listing:
        if isinstance(lib, dict):
            out.append(lib[b"library_name"])
        else:
            assert isinstance(lib, list)
            out.append(lib[lib.index(b"library_name") + 1])
    return out


@pytest.fixture
def sproxy(clean: Fleet, proxy: Proxy) -> Proxy:
    for s in clean.shards:
        with s.primary.client() as c:
            c.script_flush()
            c.function_flush()
    return proxy


@pytest.mark.parametrize("protocol", [2, 3])
def test_eval_and_evalsha_on_keys_of_every_shard(
    sproxy: Proxy, clean: Fleet, protocol: int
) -> None:
    with sproxy.client(protocol=protocol) as c:
        sha = c.script_load(SET_AND_GET)
        for shard in ("s1", "s2", "s3"):
            k1, k2 = keys_on(shard, 2, "ev")
            assert c.eval(SET_AND_GET, 1, k1, "v1") == b"v1"
            assert c.evalsha(sha, 1, k2, "v2") == b"v2"
            assert clean.owner(k1).name == shard and clean.owner(k2).name == shard
        a = keys_on("s1", 1, "x")[0]
        b = keys_on("s2", 1, "x")[0]
        with pytest.raises(ResponseError, match="don't hash to the same shard"):
            c.eval("return 1", 2, a, b)
        # a script with no key always runs on the shard its body hashes to
        body = "return redis.call('DBSIZE')"
        owner = RING.shard_name(body.encode())
        for s in clean.shards:
            with s.primary.client() as direct:
                direct.set(f"{{{s.name}}}marker", 1) if s.name == owner else None
        sizes = {c.eval(body, 0) for _ in range(5)}
        assert len(sizes) == 1


def test_script_load_exists_and_flush_reach_every_node(sproxy: Proxy, clean: Fleet) -> None:
    with sproxy.client() as c:
        sha = c.script_load("return 'loaded'")
        for s in clean.shards:
            with s.primary.client() as direct:
                assert direct.script_exists(sha) == [True]
        missing = "0" * 40
        assert c.script_exists(sha, missing) == [True, False]
        with clean.shards[1].primary.client() as direct:
            direct.script_flush()
        # one primary lost it: SCRIPT EXISTS says so (every node must have it)
        assert c.script_exists(sha) == [False]
        c.script_flush()
        with pytest.raises(NoScriptError):
            c.evalsha(sha, 0)  # flushed through the proxy: the proxy forgets it too


def test_evalsha_survives_a_node_losing_its_scripts(fleet: Fleet, make_proxy: object) -> None:
    fleet.flushall()
    make = make_proxy  # type: ignore[assignment]
    p: Proxy = make(fleet.topology(admin=f"127.0.0.1:{free_port()}"))  # type: ignore[operator]
    with p.client() as c:
        sha = c.script_load(SET_AND_GET)
        keys = [keys_on(s, 1, "ns")[0] for s in ("s1", "s2", "s3")]
        for s in fleet.shards:
            with s.primary.client() as direct:
                direct.script_flush()  # as a restart or a failover to a replica would
        for k in keys:
            assert c.evalsha(sha, 1, k, "after") == b"after"
            assert c.evalsha(sha, 1, k, "again") == b"again"
        # redis-py's Script object (EVALSHA, then SCRIPT LOAD on NOSCRIPT) works too
        script = c.register_script("return ARGV[1] .. KEYS[1]")
        assert script(keys=[keys[0]], args=["x"]) == b"x" + keys[0].encode()
        m = p.scrape()
    assert m[metric_key("shardproxy_noscript_recoveries_total")] == 3
    assert m[metric_key("shardproxy_scripts_cached")] >= 1


def test_lua_lock_release_through_the_registry(sproxy: Proxy, clean: Fleet) -> None:
    with sproxy.client() as c:
        lock = c.lock("{res}.lock", timeout=10)
        assert lock.acquire(blocking=False)
        for s in clean.shards:
            with s.primary.client() as direct:
                direct.script_flush()
        lock.release()  # EVALSHA of redis-py's release script: NOSCRIPT recovered
        assert c.get("{res}.lock") is None


def test_functions_on_every_shard(sproxy: Proxy, clean: Fleet) -> None:
    with sproxy.client() as c:
        assert c.function_load(LIBRARY) == b"proxylib"
        for s in clean.shards:
            with s.primary.client() as direct:
                assert names(direct.function_list()) == [b"proxylib"]
        for shard in ("s1", "s2", "s3"):
            (k,) = keys_on(shard, 1, "fn")
            assert c.fcall("setget", 1, k, shard) == shard.encode()
            assert c.fcall_ro("readit", 1, k) == shard.encode()
            assert clean.owner(k).name == shard
        listed = c.function_list()
        assert names(listed) == [b"proxylib"]
        with pytest.raises(ResponseError, match="already exists"):
            c.function_load(LIBRARY)
        assert c.function_delete("proxylib") is True
        for s in clean.shards:
            with s.primary.client() as direct:
                assert direct.function_list() == []


def test_script_kill_when_nothing_runs(sproxy: Proxy) -> None:
    with sproxy.client() as c:
        with pytest.raises(ResponseError, match="NOTBUSY"):
            c.script_kill()


def test_ro_scripts_may_read_from_replicas(fleet: Fleet, make_proxy: object) -> None:
    fleet.flushall()
    make = make_proxy  # type: ignore[assignment]
    topo = fleet.topology(
        read_policy="prefer-replica",
        read_your_writes_ms=0,
        health={"interval_ms": 100, "successes": 1},
    )
    p: Proxy = make(topo)  # type: ignore[operator]
    (k,) = keys_on("s1", 1, "ro")
    s1 = next(s for s in fleet.shards if s.name == "s1")
    with p.client() as c:
        c.set(k, "v")
        fleet.wait_replication()
        time.sleep(0.5)  # a few health rounds: the replica is vetted (link up, lag ok)
        with s1.replicas[0].client() as rep:
            rep.config_resetstat()
            for _ in range(5):
                assert c.eval_ro("return redis.call('GET', KEYS[1])", 1, k) == b"v"
            stats = rep.info("commandstats")
            assert stats["cmdstat_eval_ro"]["calls"] == 5
            # a script that may write goes to the primary
            assert c.eval("return redis.call('GET', KEYS[1])", 1, k) == b"v"
            assert "cmdstat_eval" not in rep.info("commandstats")


def test_reload_adding_a_shard_copies_function_libraries(fleet: Fleet, make_proxy: object) -> None:
    fleet.flushall()
    for s in fleet.shards:
        with s.primary.client() as c:
            c.function_flush()
    make = make_proxy  # type: ignore[assignment]
    topo = fleet.topology()
    two = dict(topo, shards=topo["shards"][:2])  # type: ignore[index]
    p: Proxy = make(two)  # type: ignore[operator]
    with p.client() as c:
        assert c.function_load(LIBRARY) == b"proxylib"
    s3 = fleet.shards[2]
    with s3.primary.client() as direct:
        assert direct.function_list() == []
    p.path.write_text(yaml.safe_dump(topo))
    assert p.proc is not None
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload (SIGHUP) applied" not in p.output():
        assert time.monotonic() < deadline, p.output()
        time.sleep(0.05)
    assert "'s3': 'copied'" in p.output()
    with s3.primary.client() as direct:
        assert names(direct.function_list()) == [b"proxylib"]
    with p.client() as c:
        (k,) = keys_on("s3", 1, "newshard")
        assert c.fcall("setget", 1, k, "ok") == b"ok"
