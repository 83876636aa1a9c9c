"""A shard that cannot serve: errors that name it, in time, and recovery when it returns."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy


def keys_by_shard(fleet: Fleet, n: int = 400) -> dict[str, list[str]]:
    ring = Ring.build([(s.name, 1) for s in fleet.shards])
    out: dict[str, list[str]] = {s.name: [] for s in fleet.shards}
    for i in range(n):
        k = f"{i:x}-{i * 7919 % 1000}"
        out[ring.shard_name(k.encode())].append(k)
    assert all(out.values())
    return out


def test_killed_primary_errors_name_the_shard_and_recover(
    own_fleet: Fleet, make_proxy: object
) -> None:
    topo = own_fleet.topology(timeouts={"connect_ms": 300, "command_ms": 500})
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    by_shard = keys_by_shard(own_fleet)
    victim = own_fleet.shards[0]
    with p.client(protocol=2) as c:
        for keys in by_shard.values():
            for k in keys[:20]:
                c.set(k, k)
        victim.primary.kill()
        t0 = time.monotonic()
        with pytest.raises(redis.ResponseError) as err:
            c.get(by_shard[victim.name][0])
        elapsed = time.monotonic() - t0
        print(f"error after kill: {elapsed * 1000:.0f} ms: {err.value}")
        assert f"shard {victim.name}" in str(err.value)
        assert elapsed < 0.5 + 0.3
        # other shards are not affected at all
        for name, keys in by_shard.items():
            if name != victim.name:
                for k in keys[:20]:
                    assert c.get(k) == k.encode()
        # a multi-shard command touching the dead shard fails as a whole, naming it
        with pytest.raises(redis.ResponseError, match=f"shard {victim.name}"):
            c.mget([keys[0] for keys in by_shard.values()])
        # the node comes back (empty: no persistence) and the proxy reconnects by itself
        victim.primary.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                c.set(by_shard[victim.name][0], "back")
                break
            except redis.ResponseError:
                assert time.monotonic() < deadline, "no recovery within 5 s"
                time.sleep(0.05)
        print(f"recovered {time.monotonic() - t0:.2f} s after the kill")
        assert c.get(by_shard[victim.name][0]) == b"back"


def test_stopped_primary_times_out_naming_the_shard(own_fleet: Fleet, make_proxy: object) -> None:
    command_ms = 400
    p: Proxy = make_proxy(own_fleet.topology(timeouts={"command_ms": command_ms}))  # type: ignore[operator]
    by_shard = keys_by_shard(own_fleet)
    victim = own_fleet.shards[1]
    with p.client(protocol=3) as c, p.client(protocol=3) as other:
        c.set(by_shard[victim.name][0], "v")
        victim.primary.signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(redis.ResponseError) as err:
                c.get(by_shard[victim.name][0])
            elapsed = time.monotonic() - t0
            print(
                f"timeout error after {elapsed * 1000:.0f} ms (command_ms={command_ms}): {err.value}"
            )
            assert f"shard {victim.name}" in str(err.value) and "did not answer" in str(err.value)
            assert command_ms / 1000 - 0.05 <= elapsed <= command_ms / 1000 + 0.2
            # meanwhile the other shards answer at once
            for name, keys in by_shard.items():
                if name != victim.name:
                    other.set(keys[0], "x")
                    assert other.get(keys[0]) == b"x"
        finally:
            victim.primary.signal(signal.SIGCONT)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert c.get(by_shard[victim.name][0]) == b"v"
                break
            except redis.ResponseError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_node_down_from_the_start(own_fleet: Fleet, make_proxy: object) -> None:
    victim = own_fleet.shards[2]
    victim.primary.kill()
    p: Proxy = make_proxy(own_fleet.topology(timeouts={"connect_ms": 200}))  # type: ignore[operator]
    by_shard = keys_by_shard(own_fleet)
    with p.client(protocol=2) as c:
        with pytest.raises(
            redis.ResponseError, match=f"^shard {victim.name}: node .* is unreachable"
        ):
            c.get(by_shard[victim.name][0])
        assert c.ping()
        with pytest.raises(redis.ResponseError, match=f"shard {victim.name}"):
            c.dbsize()
