"""Hot-key detection: the sketch itself, and /hotkeys, INFO and the metric on a skewed load."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import redis

from shardproxy.observe.hotkeys import CAPACITY, DECAY_AT, HotKeys, ShardSketch
from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, free_port

MakeProxy = Callable[[dict[str, object]], Proxy]
RING = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])


def test_space_saving_keeps_the_heavy_hitters_among_a_flood_of_cold_keys() -> None:
    sketch = ShardSketch()
    rng = random.Random(3)
    for i in range(50_000):
        if i % 4 == 0:
            sketch.add(b"celebrity")
        elif i % 10 == 1:
            sketch.add(b"warm")
        else:
            sketch.add(b"cold:%d" % rng.randrange(1_000_000))
    top = sketch.top(3)
    assert [k for k, _ in top[:2]] == [b"celebrity", b"warm"]
    assert top[0][1] >= 12_500  # never under-counted
    assert len(sketch.counts) <= CAPACITY


def test_counts_decay_so_the_sketch_follows_what_is_hot_now() -> None:
    sketch = ShardSketch()
    for _ in range(DECAY_AT - 1):
        sketch.add(b"yesterday")
    for _ in range(DECAY_AT):
        sketch.add(b"today")
    assert sketch.top(1)[0][0] == b"today"


def test_top_scales_by_the_sample_and_orders_over_shards() -> None:
    hk = HotKeys(sample=16)
    for _ in range(10):
        hk.record("s1", b"a")
    for _ in range(20):
        hk.record("s2", b"b")
    assert hk.top(2) == [(b"b", "s2", 320), (b"a", "s1", 160)]
    assert hk.top_share() == {"s1": 1.0, "s2": 1.0}


def test_the_hottest_keys_of_a_skewed_load_come_first_with_their_shard(
    fleet: Fleet, make_proxy: MakeProxy
) -> None:
    p = make_proxy(fleet.topology(admin=f"127.0.0.1:{free_port()}"))
    rng = random.Random(11)
    hot = {"celebrity": 6000, "homepage": 3000, "trending": 1500}
    plan = [k for k, n in hot.items() for _ in range(n)]
    plan += [f"profile:{rng.randrange(100_000)}" for _ in range(15_000)]
    rng.shuffle(plan)
    with redis.Redis(port=p.port) as c:
        pipe = c.pipeline(transaction=False)
        for i, k in enumerate(plan):
            pipe.get(k)
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
        info = c.info("hotkeys")
    status, body = p.http("/hotkeys")
    assert status == 200
    keys = json.loads(body)["keys"]
    assert [k["key"] for k in keys[:3]] == ["celebrity", "homepage", "trending"]
    for k in keys[:3]:
        assert k["shard"] == RING.shard_name(k["key"].encode())
        assert 0.7 * hot[k["key"]] < k["count"] < 1.5 * hot[k["key"]] + 16 * 64
    first = info["hotkey_0"]  # (redis-py reads "key=...,shard=...,count=..." as a dict)
    assert first["key"] == "celebrity" and first["shard"] == RING.shard_name(b"celebrity")
    shares = {k: v for k, v in p.scrape().items() if k.startswith("shardproxy_hotkeys_top_share")}
    celebrity_shard = RING.shard_name(b"celebrity")
    assert shares[f'shardproxy_hotkeys_top_share{{shard="{celebrity_shard}"}}'] > 0.3
    print(f"\n[hotkeys] {keys[:3]}; top-10 share per shard {shares}")
