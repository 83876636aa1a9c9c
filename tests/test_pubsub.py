"""Pub/sub through the proxy, against real redis-server processes and real clients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio as aredis
import yaml

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, free_port
from tests.test_failover import no_sync_delay, wait_all_up, wait_for
from tests.test_transactions import raw, read, read_until_quiet, send

RING = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])
NODE_DIR = Path(__file__).parent / "clients" / "node"

MakeProxy = Callable[[dict[str, object]], Proxy]


def names_on(ring: Ring, shard: str, n: int, prefix: str) -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        name = f"{prefix}{i}"
        if ring.shard_name(name.encode()) == shard:
            out.append(name)
        i += 1
    return out


def parse_all(data: bytes) -> list[Any]:
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


class Collector(threading.Thread):
    """Reads a redis-py PubSub in the background: (time read, message) for every message."""

    def __init__(self, ps: Any) -> None:
        super().__init__(daemon=True)
        self.ps = ps
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            m = self.ps.get_message(timeout=0.05)
            if m is not None and m["type"] in ("message", "pmessage", "smessage"):
                self.got.append((time.monotonic(), m))

    def stop(self) -> None:
        self.stopping = True
        self.join(5)

    def data(self, channel: str | None = None) -> list[bytes]:
        return [
            m["data"] for _, m in self.got if channel is None or m["channel"] == channel.encode()
        ]


@pytest.fixture
def psproxy(fleet: Fleet, proxy: Proxy) -> Iterator[Proxy]:
    yield proxy


# -- replies, byte for byte -------------------------------------------------------------------


SCRIPT: list[tuple[str, ...]] = [
    ("SUBSCRIBE", "a", "b", "a"),
    ("PSUBSCRIBE", "p.*"),
    ("SSUBSCRIBE", "s.1"),
    ("PING",),
    ("PING", "hi"),
    ("GET", "pubsub-never-set"),
    ("CLIENT", "ID"),
    ("HELLO", "3"),
    ("NOSUCHCOMMAND",),
    ("GET",),
    ("UNSUBSCRIBE", "a", "zz"),
    ("PUNSUBSCRIBE",),
    ("SUNSUBSCRIBE", "s.1"),
    ("UNSUBSCRIBE",),
    ("PING",),
]
# (P|S)UNSUBSCRIBE without a subscription: Redis 7 confirms with a count of 0; Valkey 8 says
# -NOSUB instead. The proxy answers as Redis does, so these are compared with Redis only.
NOT_SUBSCRIBED: list[tuple[str, ...]] = [
    ("UNSUBSCRIBE",),
    ("UNSUBSCRIBE", "never"),
    ("PUNSUBSCRIBE",),
    ("SUNSUBSCRIBE",),
]
if os.environ.get("SHARDPROXY_TEST_SERVER") != "valkey":
    SCRIPT += NOT_SUBSCRIBED


def script(proto: int) -> list[tuple[str, ...]]:
    if proto == 2:
        return SCRIPT
    # RESP3: no CLIENT ID (the ids differ) and no second HELLO
    return [a for a in SCRIPT if a[0] != "CLIENT" and a != ("HELLO", "3")]


def run_script(port: int, proto: int) -> list[Any]:
    s = raw(port)
    try:
        if proto == 3:
            send(s, "HELLO", "3")
            read(s)  # the server's HELLO map differs (the proxy says what it is)
        out = []
        for argv in script(proto):
            send(s, *argv)
            out.append(read_until_quiet(s))
        return out
    finally:
        s.close()


@pytest.mark.parametrize("proto", [2, 3])
def test_replies_are_redis_byte_for_byte(psproxy: Proxy, fleet: Fleet, proto: int) -> None:
    direct = run_script(fleet.shards[0].primary.port, proto)
    through = run_script(psproxy.port, proto)
    for argv, d, p in zip(script(proto), direct, through, strict=True):
        assert p == d, f"{argv}: proxy {p!r} != redis {d!r}"
    if proto == 2:  # the subscribed-mode refusal, as Redis words it
        assert any(b"only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE" in r for r in through)


# -- delivery -----------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", [2, 3])
def test_twenty_channels_five_messages_each(psproxy: Proxy, proto: int) -> None:
    # channels published on every shard
    channels = [*names_on(RING, "s1", 7, "room"), *names_on(RING, "s2", 7, "room")]
    channels += names_on(RING, "s3", 6, "room")
    with psproxy.client(protocol=proto) as sub, psproxy.client() as pub:
        ps = sub.pubsub()
        ps.subscribe(*channels)
        confirmed = [ps.get_message(timeout=2) for _ in channels]
        assert [m["type"] for m in confirmed] == ["subscribe"] * 20
        assert [m["data"] for m in confirmed] == list(range(1, 21))
        for n in range(5):
            for c in channels:
                assert pub.publish(c, f"{c}:{n}") == 1
        got: dict[str, list[bytes]] = {c: [] for c in channels}
        for _ in range(100):
            m = ps.get_message(timeout=2)
            assert m is not None and m["type"] == "message", m
            got[m["channel"].decode()].append(m["data"])
        assert ps.get_message(timeout=0.3) is None  # nothing twice
        for c in channels:
            assert got[c] == [f"{c}:{n}".encode() for n in range(5)]
        ps.close()


async def test_asyncio_clients_both_protocols(psproxy: Proxy) -> None:
    for proto in (2, 3):
        sub = aredis.Redis(port=psproxy.port, protocol=proto)
        pub = aredis.Redis(port=psproxy.port, protocol=proto)
        ps = sub.pubsub()
        channels = [f"async{proto}.{i}" for i in range(20)]
        await ps.subscribe(*channels)
        for _ in channels:
            assert (await ps.get_message(timeout=2))["type"] == "subscribe"
        for n in range(5):
            for c in channels:
                await pub.publish(c, str(n))
        seen: dict[bytes, list[bytes]] = {}
        for _ in range(100):
            m = await ps.get_message(timeout=2)
            assert m is not None, f"RESP{proto}: only {sum(map(len, seen.values()))} of 100"
            seen.setdefault(m["channel"], []).append(m["data"])
        assert all(v == [b"0", b"1", b"2", b"3", b"4"] for v in seen.values())
        assert len(seen) == 20
        await ps.aclose()
        await sub.aclose()
        await pub.aclose()


def test_psubscribe_hears_every_shard_and_direct_publishes(psproxy: Proxy, fleet: Fleet) -> None:
    on = {s: names_on(RING, s, 1, "news.")[0] for s in ("s1", "s2", "s3")}
    with psproxy.client() as sub, psproxy.client() as pub:
        ps = sub.pubsub()
        ps.psubscribe("news.*")
        assert ps.get_message(timeout=2)["type"] == "psubscribe"
        col = Collector(ps)
        col.start()
        for shard, channel in on.items():
            assert pub.publish(channel, f"via proxy to {shard}") == 1
        for s in fleet.shards:  # published on a node directly, by another application
            with s.primary.client() as d:
                assert d.publish("news.direct", f"on {s.name}") == 1  # the proxy's connection
        wait_for("6 messages", lambda: len(col.got) >= 6, 3)
        time.sleep(0.2)
        col.stop()
        got = sorted(col.data())
        assert got == sorted(
            [f"via proxy to {s}".encode() for s in on] + [f"on s{i}".encode() for i in (1, 2, 3)]
        )
        assert {m["pattern"] for _, m in col.got} == {b"news.*"}
        ps.close()


def test_keyspace_notifications_from_every_shard(psproxy: Proxy, fleet: Fleet) -> None:
    keys = {s: names_on(RING, s, 1, "ks:")[0] for s in ("s1", "s2", "s3")}
    for s in fleet.shards:
        with s.primary.client() as d:
            d.config_set("notify-keyspace-events", "KA")
    try:
        with psproxy.client() as sub, psproxy.client() as c:
            ps = sub.pubsub()
            ps.psubscribe("__keyspace@0__:ks:*")
            assert ps.get_message(timeout=2)["type"] == "psubscribe"
            for k in keys.values():
                c.set(k, "v")
            got = []
            for _ in keys:
                m = ps.get_message(timeout=2)
                assert m is not None
                got.append((m["channel"], m["data"]))
            assert sorted(got) == sorted(
                (f"__keyspace@0__:{k}".encode(), b"set") for k in keys.values()
            )
            assert ps.get_message(timeout=0.3) is None
            c.delete(*keys.values())
            ps.close()
    finally:
        for s in fleet.shards:
            with s.primary.client() as d:
                d.config_set("notify-keyspace-events", "")


def test_resp3_commands_while_subscribed_in_order(psproxy: Proxy) -> None:
    s = raw(psproxy.port)
    try:
        send(s, "HELLO", "3")
        read(s)
        send(s, "SUBSCRIBE", "live")
        assert read(s) == b">3\r\n$9\r\nsubscribe\r\n$4\r\nlive\r\n:1\r\n"
        with psproxy.client() as pub:
            send(s, "SET", "live:k", "v1")
            assert read(s) == b"+OK\r\n"
            pub.publish("live", "m1")
            assert read(s) == b">3\r\n$7\r\nmessage\r\n$4\r\nlive\r\n$2\r\nm1\r\n"
            # a pipeline of commands with messages published around it: whole frames, the
            # replies in order, every message once
            for i in range(50):
                send(s, "INCR", "live:n")
                if i % 10 == 0:
                    pub.publish("live", f"m{i}")
            data = b""
            while len(parse_all(data)) < 55:
                data += s.recv(65536)
            items = parse_all(data)
            replies = [x for x in items if isinstance(x, int)]
            pushes = [x for x in items if isinstance(x, list)]
            assert replies == list(range(1, 51))
            assert pushes == [[b"message", b"live", f"m{i}".encode()] for i in range(0, 50, 10)]
            pub.delete("live:k", "live:n")
    finally:
        s.close()


def test_sharded_pubsub(psproxy: Proxy, fleet: Fleet) -> None:
    channel = names_on(RING, "s2", 1, "orders.")[0]
    owner = next(s for s in fleet.shards if s.name == "s2")
    other = next(s for s in fleet.shards if s.name == "s3")
    with psproxy.client() as sub, psproxy.client() as pub:
        ps = sub.pubsub()
        ps.ssubscribe(channel)
        m = ps.get_sharded_message(timeout=2)
        assert m["type"] == "ssubscribe" and m["data"] == 1
        assert pub.spublish(channel, "one") == 1
        with owner.primary.client() as d:
            assert d.spublish(channel, "two") == 1  # the proxy's connection on its shard
        with other.primary.client() as d:
            assert d.spublish(channel, "elsewhere") == 0  # not its shard: nobody there
        got = [ps.get_sharded_message(timeout=2) for _ in range(2)]
        assert [(g["type"], g["data"]) for g in got] == [("smessage", b"one"), ("smessage", b"two")]
        assert ps.get_sharded_message(timeout=0.3) is None
        assert pub.execute_command("PUBSUB", "SHARDNUMSUB", channel) == [channel.encode(), 1]
        assert channel.encode() in pub.execute_command("PUBSUB", "SHARDCHANNELS", "orders.*")
        ps.close()


def test_pubsub_counts_the_proxy_clients(psproxy: Proxy, fleet: Fleet) -> None:
    owner = next(s for s in fleet.shards if s.name == RING.shard_name(b"cnt"))
    subs = [psproxy.client() for _ in range(3)]
    pss = [c.pubsub() for c in subs]
    direct = owner.primary.client()
    dps = direct.pubsub()
    try:
        for ps in pss:
            ps.subscribe("cnt")
        pss[0].psubscribe("cnt*")
        dps.subscribe("cnt")
        for ps in pss:
            assert ps.get_message(timeout=2)["type"] == "subscribe"
        assert pss[0].get_message(timeout=2)["type"] == "psubscribe"
        assert dps.get_message(timeout=2)["type"] == "subscribe"
        with psproxy.client() as c:
            # 3 clients of the proxy + 1 subscriber directly on the node
            assert c.pubsub_numsub("cnt", "nobody") == [(b"cnt", 4), (b"nobody", 0)]
            assert c.pubsub_numpat() == 1
            assert b"cnt" in c.pubsub_channels("cnt*")
            assert c.pubsub_channels("nomatch*") == []
            # as one Redis would count: 3 channel subscribers, 1 pattern, 1 direct
            assert c.publish("cnt", "x") == 5
            for p in (*pss, dps):
                p.unsubscribe("cnt")
            pss[0].punsubscribe("cnt*")
            time.sleep(0.1)
            assert c.pubsub_numsub("cnt") == [(b"cnt", 0)]
            assert c.pubsub_numpat() == 0
            assert c.publish("cnt", "y") == 0
    finally:
        for ps in (*pss, dps):
            ps.close()
        for c in (*subs, direct):
            c.close()


def connected_clients(fleet: Fleet) -> list[int]:
    out = []
    for s in fleet.shards:
        with s.primary.client() as d:
            out.append(int(d.info("clients")["connected_clients"]) - 1)  # less this one
    return out


def test_500_subscribers_on_50_channels_share_a_connection_per_primary(
    psproxy: Proxy, fleet: Fleet
) -> None:
    channels = [f"fan{i}" for i in range(50)]
    with psproxy.client() as warm:
        warm.ping()
    before = connected_clients(fleet)
    socks = []
    try:
        for i in range(500):
            s = raw(psproxy.port)
            send(s, "SUBSCRIBE", channels[i % 50])
            socks.append(s)
        for s in socks:
            assert read(s).startswith(b"*3\r\n$9\r\nsubscribe\r\n")
        during = connected_clients(fleet)
        with psproxy.client() as pub:
            for c in channels:
                assert pub.publish(c, c) == 10
        for i, s in enumerate(socks):
            c = channels[i % 50].encode()
            assert read(s) == b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(c), c, len(c), c,
            )  # fmt: skip
        print(f"\nbackend connections per primary: before {before}, with 500 subscribers {during}")
        assert [d - b for d, b in zip(during, before, strict=True)] == [1, 1, 1]
    finally:
        for s in socks:
            s.close()
    wait_for("subscriber connections closed", lambda: connected_clients(fleet) == before, 3)


def test_node_client_twenty_channels(psproxy: Proxy) -> None:
    script = NODE_DIR / "pubsub_ioredis.js"
    out = subprocess.run(
        ["node", str(script), str(psproxy.port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=NODE_DIR,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["subscribed"] == 20
    assert result["received"] == 100
    assert result["in_order"] is True
    assert result["published_counts"] == [1] * 100


# -- topology changes ---------------------------------------------------------------------------


def promote_topology(fleet: Fleet, **extra: object) -> dict[str, object]:
    return fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        failover={"mode": "promote"},
        health={"interval_ms": 100, "failures": 2, "successes": 1},
        timeouts={"connect_ms": 300, "command_ms": 500},
        **extra,
    )


class Publisher(threading.Thread):
    """PUBLISH seq numbers on ``channel`` every ``pause`` s; records what was acknowledged."""

    def __init__(self, p: Proxy, channel: str, pause: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=p.port, socket_timeout=3)
        self.channel = channel
        self.pause = pause
        self.acked: list[tuple[float, int]] = []
        self.errors = 0
        self.stopping = False

    def run(self) -> None:
        i = 0
        while not self.stopping:
            try:
                self.client.publish(self.channel, str(i))
                self.acked.append((time.monotonic(), i))
            except redis.RedisError:
                self.errors += 1
            i += 1
            time.sleep(self.pause)

    def stop(self) -> None:
        self.stopping = True
        self.join(5)
        self.client.close()


def test_promote_failover_keeps_the_subscriber(own_fleet: Fleet, make_proxy: MakeProxy) -> None:
    for srv in own_fleet.servers():
        no_sync_delay(srv)
    own_fleet.wait_replication()
    p = make_proxy(promote_topology(own_fleet))
    wait_all_up(p)
    victim = own_fleet.shards[0]
    hit = names_on(RING, victim.name, 1, "fo.")[0]  # published on the victim shard
    calm = names_on(RING, "s2", 1, "fo.")[0]  # published on a shard that stays up
    sub = p.client()
    ps = sub.pubsub()
    ps.subscribe(hit, calm)
    for _ in range(2):
        assert ps.get_message(timeout=2)["type"] == "subscribe"
    col = Collector(ps)
    col.start()
    pubs = [Publisher(p, hit), Publisher(p, calm)]
    for w in pubs:
        w.start()
    try:
        time.sleep(0.5)
        victim.primary.kill()
        t_kill = time.monotonic()
        wait_for(
            "messages of the victim shard arrive again",
            lambda: any(t > t_kill + 0.05 and m["channel"] == hit.encode() for t, m in col.got),
            10,
        )
        time.sleep(0.5)
    finally:
        for w in pubs:
            w.stop()
        time.sleep(0.3)
        col.stop()
    hit_times = [t for t, m in col.got if m["channel"] == hit.encode()]
    after = [t for t in hit_times if t > t_kill]
    before = [t for t in hit_times if t <= t_kill]
    gap = after[0] - before[-1]
    seqs = [int(d) for d in col.data(hit)]
    assert seqs == sorted(set(seqs)), "a message twice or out of order"
    acked_after = [i for t, i in pubs[0].acked if t > t_kill]
    lost = sorted(set(acked_after) - set(seqs))
    first_ok = next(t for t, _ in pubs[0].acked if t > t_kill)
    print(
        f"\n[pubsub failover] delivery gap {gap * 1000:.0f} ms (kill -> first message after: "
        f"{(after[0] - t_kill) * 1000:.0f} ms; kill -> first acknowledged PUBLISH: "
        f"{(first_ok - t_kill) * 1000:.0f} ms); {pubs[0].errors} PUBLISH errors, "
        f"{len(lost)} acknowledged after the kill and not delivered"
    )
    assert gap < 5.0
    last = [i for t, i in pubs[0].acked if t > after[0] + 0.1]
    assert last and set(last) <= set(seqs), "messages published after recovery were lost"
    calm_seqs = [int(d) for d in col.data(calm)]
    assert calm_seqs == [i for _, i in pubs[1].acked], "the other shard lost messages"
    assert pubs[1].errors == 0
    assert sub.ping()
    ps.close()
    sub.close()


def test_reload_adding_a_shard_keeps_the_subscriber(
    own_fleet: Fleet, make_proxy: MakeProxy
) -> None:
    full = own_fleet.topology(admin=f"127.0.0.1:{free_port()}")
    two = dict(full, shards=list(full["shards"])[:2])  # type: ignore[call-overload]
    p = make_proxy(two)
    ring2 = Ring.build([("s1", 1), ("s2", 1)])
    # a shard channel that the new shard takes over
    moved = next(
        f"sc{i}" for i in range(10000)
        if ring2.shard_name(f"sc{i}".encode()) != "s3" and RING.shard_name(f"sc{i}".encode()) == "s3"
    )  # fmt: skip
    steady = names_on(RING, "s1", 1, "steady.")[0]
    sub = p.client()
    ps = sub.pubsub()
    ps.subscribe(steady, "direct.here")
    ps.ssubscribe(moved)
    for _ in range(3):
        assert ps.get_message(timeout=2) is not None
    col = Collector(ps)
    col.start()
    pub = Publisher(p, steady)
    pub.start()
    try:
        time.sleep(0.3)
        p.path.write_text(yaml.safe_dump(full))
        status, body = p.http("/reload", method="POST")
        assert status == 200, body
        assert json.loads(body)["shards_added"] == ["s3"]
        time.sleep(0.3)
        new = own_fleet.shards[2].primary
        with new.client() as d:
            wait_for("s3 subscribed", lambda: d.publish("direct.here", "on s3") == 1, 3)
        with p.client() as c:
            assert c.spublish(moved, "moved") == 1
        wait_for("both messages", lambda: len(col.data("direct.here")) and col.data(moved), 3)
        time.sleep(0.3)
    finally:
        pub.stop()
        time.sleep(0.2)
        col.stop()
    assert col.data("direct.here") == [b"on s3"]
    assert col.data(moved) == [b"moved"]
    assert [int(d) for d in col.data(steady)] == [i for _, i in pub.acked], "lost in the reload"
    assert pub.errors == 0
    ps.close()
    sub.close()


# -- slow subscribers ---------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_subscriber_that_never_reads_is_disconnected(fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(
        fleet.topology(
            admin=f"127.0.0.1:{free_port()}",
            pubsub={
                "output_hard_limit": "8mb",
                "output_soft_limit": "4mb",
                "output_soft_seconds": 5,
            },
        )
    )
    assert p.proc is not None
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", p.port))
    send(slow, "SUBSCRIBE", "firehose")
    assert read(slow).startswith(b"*3\r\n$9\r\nsubscribe")
    reader = p.client(protocol=2)
    ps = reader.pubsub()
    ps.subscribe("firehose")
    assert ps.get_message(timeout=2)["type"] == "subscribe"
    received = [0]
    done = threading.Event()

    def read_all() -> None:
        while received[0] < 1000:
            m = ps.get_message(timeout=5)
            if m is None:
                break
            received[0] += 1
        done.set()

    t = threading.Thread(target=read_all, daemon=True)
    t.start()
    base = rss_kb(p.proc.pid)
    peak = base
    payload = b"x" * 100_000
    with p.client() as pub:
        for i in range(1000):  # 100 MB
            pub.publish("firehose", payload)
            if i % 50 == 0:
                peak = max(peak, rss_kb(p.proc.pid))
    done.wait(30)
    peak = max(peak, rss_kb(p.proc.pid))
    t.join(5)
    slow.settimeout(5)
    tail = b""
    try:
        while chunk := slow.recv(1 << 20):
            tail += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    info = reader.info("stats")
    print(
        f"\n[slow subscriber] 100 MB published: proxy RSS {base // 1024} MB before, "
        f"peak {peak // 1024} MB; the reading subscriber got {received[0]}/1000; "
        f"slow disconnects {info['pubsub_slow_disconnects']}"
    )
    assert received[0] == 1000
    assert info["pubsub_slow_disconnects"] == 1
    assert peak - base < 64 * 1024, "proxy memory grew with the unread messages"
    assert "pub/sub messages unread (hard limit)" in p.output()
    ps.close()
    reader.close()
    slow.close()


def test_metrics_and_info(psproxy: Proxy, fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(fleet.topology(admin=f"127.0.0.1:{free_port()}"))
    with p.client() as sub, p.client() as pub:
        ps = sub.pubsub()
        ps.subscribe("m1", "m2")
        ps.psubscribe("m*")
        for _ in range(3):
            ps.get_message(timeout=2)
        pub.publish("m1", "x")
        for _ in range(2):
            assert ps.get_message(timeout=2) is not None
        values = p.scrape()
        assert values['shardproxy_pubsub_channels{type="channel"}'] == 2
        assert values['shardproxy_pubsub_channels{type="pattern"}'] == 1
        assert values["shardproxy_pubsub_clients"] == 1
        assert values["shardproxy_pubsub_messages_total"] == 2
        ups = [k for k in values if k.startswith("shardproxy_pubsub_upstream_connections")]
        assert len(ups) == 3 and all(values[k] == 1 for k in ups)
        info = pub.info("stats")
        assert info["pubsub_channels"] == 2 and info["pubsub_patterns"] == 1
        assert info["pubsub_upstream_connections"] == 3
        ps.close()


def test_subscribe_inside_multi_is_refused_publish_is_queued(psproxy: Proxy) -> None:
    with psproxy.client(protocol=2) as sub, psproxy.client() as c:
        ps = sub.pubsub()
        ps.subscribe("txch")
        assert ps.get_message(timeout=2)["type"] == "subscribe"
        pipe = c.pipeline(transaction=True)
        pipe.set("tx:k", "1")
        pipe.publish("txch", "from a transaction")
        assert pipe.execute() == [True, 1]
        m = ps.get_message(timeout=2)
        assert m["data"] == b"from a transaction"
        s = raw(psproxy.port)
        send(s, "MULTI")
        send(s, "SUBSCRIBE", "x")
        send(s, "EXEC")
        assert read(s, 3) == (
            b"+OK\r\n-ERR command 'subscribe' cannot be queued in a transaction through "
            b"shardproxy\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
        )
        s.close()
        c.delete("tx:k")
        ps.close()


def test_client_leaving_mid_subscription_unsubscribes_upstream(
    psproxy: Proxy, fleet: Fleet
) -> None:
    with psproxy.client() as c:
        s = raw(psproxy.port)
        send(s, "SUBSCRIBE", "leaving")
        read(s)
        assert c.pubsub_numsub("leaving") == [(b"leaving", 1)]
        s.close()

        def gone() -> bool:
            for srv in fleet.shards:
                with srv.primary.client() as d:
                    if d.pubsub_numsub("leaving") != [(b"leaving", 0)]:
                        return False
            return True

        wait_for("upstream unsubscribed on every primary", gone, 3)
        assert c.pubsub_numsub("leaving") == [(b"leaving", 0)]


def test_subscriber_survives_a_node_restart(own_fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(
        own_fleet.topology(
            admin=f"127.0.0.1:{free_port()}",
            health={"interval_ms": 100, "failures": 2, "successes": 1},
            timeouts={"connect_ms": 300, "command_ms": 500},
        )
    )
    wait_all_up(p)
    node = own_fleet.shards[1].primary
    sub = p.client()
    ps = sub.pubsub()
    ps.subscribe("restart")
    assert ps.get_message(timeout=2)["type"] == "subscribe"
    node.kill()
    time.sleep(0.3)
    node.start()
    t_up = time.monotonic()
    with node.client() as d:
        wait_for("subscribed again", lambda: d.publish("restart", "back") == 1, 5)
    took = time.monotonic() - t_up
    m = ps.get_message(timeout=2)
    assert m is not None and m["data"] == b"back"
    print(f"\n[pubsub restart] node back -> proxy subscribed again within {took * 1000:.0f} ms")
    ps.close()
    sub.close()


def test_glob_matches_as_redis_does(fleet: Fleet) -> None:
    """protocol/glob.py against Redis's own matcher (KEYS uses the same one as PSUBSCRIBE)."""
    from shardproxy.protocol import glob

    strings = [
        "hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "a[", "bx", "zx", "ax", "xyz",
        "xaybz", "h]llo", "-", "ab\\c", "a", "",
    ]  # fmt: skip
    patterns = [
        "h?llo", "h*llo", "h[ae]llo", "h[^e]llo", "h[a-b]llo", "h\\*llo", "*", "a[", "[z-a]x",
        "x*y*z", "h[]]llo", "[-]", "ab\\\\c", "a*", "?", "[a-", "\\a", "**", "*?*",
    ]  # fmt: skip
    srv = fleet.shards[0].primary
    with srv.client() as d:
        d.flushall()
        for s in strings:
            if s:
                d.set("glob:" + s, 1)
        for p in patterns:
            expected = sorted(k.decode()[5:] for k in d.keys("glob:" + p))
            got = sorted(
                s
                for s in strings
                if s and glob.match(("glob:" + p).encode(), ("glob:" + s).encode())
            )
            assert got == expected, p
        d.flushall()
