"""A node that comes back: the proxy serves it again within milliseconds, not seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, free_port
from tests.test_failover import wait_all_up

MakeProxy = Callable[[dict[str, object]], Proxy]
RING = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])


def key_on(shard: str) -> str:
    return next(f"rk{i}" for i in range(10000) if RING.shard_name(f"rk{i}".encode()) == shard)


def test_first_request_after_a_restart_succeeds_within_300_ms(
    own_fleet: Fleet, make_proxy: MakeProxy
) -> None:
    p = make_proxy(own_fleet.topology(admin=f"127.0.0.1:{free_port()}"))
    wait_all_up(p)
    node = own_fleet.shards[1].primary
    k = key_on("s2")
    results: list[tuple[float, bool]] = []
    stop = threading.Event()

    def hammer() -> None:  # a client running requests back to back through the restart
        c = redis.Redis(port=p.port, socket_timeout=2)
        while not stop.is_set():
            t = time.monotonic()
            try:
                c.get(k)
                results.append((t, True))
            except redis.RedisError:
                results.append((t, False))
                time.sleep(0.001)
        c.close()

    worker = threading.Thread(target=hammer, daemon=True)
    worker.start()
    try:
        time.sleep(0.3)
        node.kill()
        time.sleep(3.0)  # down long enough for every backoff to reach its longest
        node.start()  # returns once the node accepts connections
        t_up = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(5)
    first_ok = next(t for t, ok in results if ok and t >= t_up)
    errors_after = sum(1 for t, ok in results if not ok and t >= t_up)
    took = first_ok - t_up
    print(
        f"\n[recovery] node accepting -> first successful request: {took * 1000:.0f} ms; "
        f"{errors_after} errors after it accepted, "
        f"{sum(1 for t, ok in results if not ok)} during the outage"
    )
    assert took < 0.3
    assert all(ok for t, ok in results if t >= first_ok)  # and it stays served
