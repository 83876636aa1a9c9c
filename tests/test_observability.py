"""Metrics, admin HTTP and INFO, against a real proxy in front of real redis-servers."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis

from shardproxy.observe import metrics
from tests.conftest import Fleet, Proxy, free_port, metric_key
from tests.test_proxy import raw

K = metric_key


def scrape(p: Proxy) -> dict[str, float]:
    return p.scrape()


@pytest.fixture
def admin_proxy(fleet: Fleet, make_proxy: object) -> Proxy:
    return make_proxy(fleet.topology(admin=f"127.0.0.1:{free_port()}"))  # type: ignore[operator,no-any-return]


def test_every_metric_in_the_table_is_exported(admin_proxy: Proxy) -> None:
    with admin_proxy.client() as c:
        c.set("m", "1")
        c.get("m")
    status, body = admin_proxy.http("/metrics")
    assert status == 200
    for m in metrics.METRICS:
        base = m.name.removesuffix("_total")
        assert re.search(rf"^# TYPE {base}(_total)? {m.type}$", body, re.MULTILINE), m.name
    assert "shardproxy_build_info{python=" in body


def test_exact_counts_after_known_traffic(admin_proxy: Proxy, fleet: Fleet) -> None:
    before = scrape(admin_proxy)
    key = K("shardproxy_commands_total", command="get", status="ok")
    hist = K("shardproxy_command_duration_seconds_count", command="get")
    with admin_proxy.client(protocol=2) as c:
        c.set("known", "v")
        for _ in range(100):
            c.get("known")
        with pytest.raises(redis.ResponseError):
            c.incrby("known", 2)  # not an integer: one INCRBY error
    after = scrape(admin_proxy)
    assert after[key] - before.get(key, 0) == 100
    assert after[hist] - before.get(hist, 0) == 100
    total = K("shardproxy_command_duration_seconds_sum", command="get")
    assert 0 < after[total] - before.get(total, 0) < 5  # real, sub-second latencies
    assert after[K("shardproxy_commands_total", command="incrby", status="error")] == 1
    owner = fleet.owner("known")
    label = {"shard": owner.name, "node": owner.primary.address, "role": "primary"}
    sent = K("shardproxy_backend_requests_total", **label)
    assert after[sent] - before.get(sent, 0) == 102  # SET, 100 GET, INCR
    assert after[K("shardproxy_backend_up", **label)] == 1
    assert (
        after["shardproxy_client_received_bytes_total"]
        > before["shardproxy_client_received_bytes_total"]
    )


def test_health_readiness_topology(own_fleet: Fleet, make_proxy: object) -> None:
    p: Proxy = make_proxy(
        own_fleet.topology(admin=f"127.0.0.1:{free_port()}", timeouts={"connect_ms": 200})
    )  # type: ignore[operator]
    assert p.http("/healthz") == (200, "ok\n")
    deadline = time.monotonic() + 5
    while p.http("/readyz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    topo = json.loads(p.http("/topology")[1])
    assert [s["name"] for s in topo["shards"]] == ["s1", "s2", "s3"]
    s1 = topo["shards"][0]
    assert s1["primary"] == own_fleet.shards[0].primary.address
    assert [n["role"] for n in s1["nodes"]] == ["primary", "replica"]
    assert abs(sum(s["keyspace_share"] for s in topo["shards"]) - 1) < 1e-6
    victim = own_fleet.shards[1]
    victim.primary.kill()
    deadline = time.monotonic() + 5
    while (r := p.http("/readyz"))[0] != 503:
        assert time.monotonic() < deadline, "readyz never turned 503"
        time.sleep(0.05)
    body = json.loads(r[1])
    assert body["ready"] is False and body["shards"] == ["s2"]
    node = next(
        n
        for s in json.loads(p.http("/topology")[1])["shards"]
        if s["name"] == "s2"
        for n in s["nodes"]
        if n["role"] == "primary"
    )
    assert node["health"] == "down" and node["usable"] is False
    values = scrape(p)
    label = {"shard": "s2", "node": victim.primary.address, "role": "primary"}
    assert values[K("shardproxy_backend_up", **label)] == 0
    victim.primary.start()
    deadline = time.monotonic() + 5
    while p.http("/readyz")[0] != 200:
        assert time.monotonic() < deadline, "readyz never recovered"
        time.sleep(0.05)


def test_admin_errors(admin_proxy: Proxy) -> None:
    status, body = admin_proxy.http("/nope")
    assert status == 404 and "/metrics" in body
    assert admin_proxy.http("/metrics", method="POST")[0] == 405


def test_info_sections(admin_proxy: Proxy, clean: Fleet) -> None:
    with admin_proxy.client(protocol=3) as c:
        c.mset({"i1": 1, "i2": 2, "i3": 3})
        deadline = time.monotonic() + 10
        while not (info := c.info("everything"))["shard_s1"]["replica"].endswith(":up"):
            assert time.monotonic() < deadline, info["shard_s1"]  # health probes vet it
            time.sleep(0.1)
        assert info["connected_clients"] >= 1
        assert info["db0"]["keys"] == 3
        assert info["shards"] == 3
        assert info["shard_s1"]["primary"].endswith(":up")  # redis-py splits "role=addr:state,..."
        assert info["shard_s1"]["replica"].endswith(":up")
        stats = c.info("stats")
        assert stats["total_commands_processed"] >= 2 and "db0" not in stats
    out = raw(admin_proxy.port, b"HELLO 3\r\nINFO keyspace\r\n")
    assert b"txt:# Keyspace\r\ndb0:keys=3" in out  # a verbatim string in RESP3
