"""Failover and replica reads, against real redis-server processes and the proxy as a subprocess.

A primary or replica is SIGKILLed or SIGSTOPped under load; every timing is measured and printed
(run with ``-s`` to see them). Loads run in threads with their own redis-py clients and record
every acknowledged write and every error with timestamps, so the checks afterwards are exact.
"""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy, RedisServer, free_port

MakeProxy = Callable[[dict[str, object]], Proxy]

INTERVAL = 0.2  # health.interval_ms used below, in seconds


# -- helpers -------------------------------------------------------------------------------------


def ring_of(fleet: Fleet) -> Ring:
    return Ring.build([(s.name, 1) for s in fleet.shards])


def key(prefix: str, i: int) -> str:
    """Unique keys that spread over the ring (consecutive numbers alone cluster under fnv1a)."""
    return f"{prefix}:{hashlib.md5(str(i).encode()).hexdigest()[:10]}"


def keys_by_shard(ring: Ring, prefix: str, n: int = 600) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in ring.names}
    for i in range(n):
        k = key(prefix, i)
        out[ring.shard_name(k.encode())].append(k)
    assert all(out.values())
    return out


def client(p: Proxy, timeout: float = 5.0) -> redis.Redis:
    """A RESP2 client that never retries by itself (a hang or an error shows as it is)."""
    return p.client(protocol=2, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def topology(p: Proxy) -> dict[str, Any]:
    return p.topology_json()


def shard_view(p: Proxy, name: str) -> dict[str, Any]:
    for s in topology(p)["shards"]:
        if s["name"] == name:
            return s  # type: ignore[no-any-return]
    raise KeyError(name)


def scrape(p: Proxy) -> dict[str, float]:
    """/metrics as {'name{label="v",...}': value} with labels sorted by name."""
    return p.scrape()


def node_requests(p: Proxy, shard: str, node: RedisServer, role: str) -> float:
    key = (
        f'shardproxy_backend_requests_total{{node="{node.address}",role="{role}",shard="{shard}"}}'
    )
    return scrape(p).get(key, 0.0)


def failovers(p: Proxy, shard: str, result: str) -> float:
    return scrape(p).get(f'shardproxy_failovers_total{{result="{result}",shard="{shard}"}}', 0.0)


def wait_for(what: str, cond: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Poll ``cond`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - t0


def all_probed(p: Proxy) -> bool:
    return all(n["health"] != "unknown" for s in topology(p)["shards"] for n in s["nodes"])


def wait_all_up(p: Proxy, timeout: float = 10.0) -> None:
    """Every node probed up, every replica vetted for reads (linked, lag known)."""

    def ready() -> bool:
        return all(
            n["health"] == "up" and n["usable"] for s in topology(p)["shards"] for n in s["nodes"]
        )

    wait_for("all nodes up", ready, timeout, 0.05)


def replication(srv: RedisServer) -> dict[str, Any]:
    with srv.client(socket_timeout=2) as c:
        return c.info("replication")  # type: ignore[no-any-return]


def commandstat(srv: RedisServer, command: str) -> int:
    with srv.client(socket_timeout=2) as c:
        stats = c.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


def resetstat(servers: list[RedisServer]) -> None:
    for srv in servers:
        with srv.client() as c:
            c.config_resetstat()


def no_sync_delay(srv: RedisServer) -> None:
    """No 5 s wait before a diskless full sync (the Redis default): replicas link at once, and
    a primary stopped at teardown does not wait for a replica that is still waiting to sync."""
    with srv.client() as c:
        c.config_set("repl-diskless-sync-delay", 0)


def restart(srv: RedisServer) -> None:
    srv.start()
    no_sync_delay(srv)


@pytest.fixture
def own_fleet(own_fleet: Fleet) -> Fleet:
    """The conftest's fleet for one test, with every replica linked."""
    for srv in own_fleet.servers():
        no_sync_delay(srv)
    own_fleet.wait_replication()
    return own_fleet


def wait_replicated(fleet: Fleet, timeout: float = 10.0) -> None:
    """Every replica has everything its primary has. (WAIT would not do: it only waits for
    the writes of the connection that calls it, and the writes came through the proxy.)"""
    deadline = time.monotonic() + timeout
    for s in fleet.shards:
        with s.primary.client() as c:
            target = int(c.info("replication")["master_repl_offset"])
        for r in s.replicas:
            while int(replication(r).get("slave_repl_offset", -1)) < target:
                assert time.monotonic() < deadline, f"replica {r.address} did not catch up"
                time.sleep(0.02)


def missing_on(srv: RedisServer, keys: list[str]) -> list[str]:
    """Keys whose value (== the key) is not on ``srv``."""
    missing: list[str] = []
    with srv.client(socket_timeout=5) as c:
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for k, v in zip(chunk, c.mget(chunk), strict=True):
                if v != k.encode():
                    missing.append(k)
    return missing


@dataclass
class Op:
    t0: float  # monotonic() when sent
    t1: float  # monotonic() when answered
    key: str
    shard: str
    ok: bool
    error: str = ""


class Worker(threading.Thread):
    """A load thread with its own client; records every operation. Never raises."""

    def __init__(self, p: Proxy, ring: Ring, pause: float = 0.002, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.p = p
        self.timeout = timeout  # client socket timeout: a reply later than this is an error
        self.ring = ring
        self.pause = pause
        self.ops: list[Op] = []
        self.crash: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with client(self.p, self.timeout) as c:
                i = 0
                while not self.halt.is_set():
                    self.step(c, i)
                    i += 1
                    if self.pause:
                        time.sleep(self.pause)
        except BaseException as exc:  # reported by finish()
            self.crash = exc

    def step(self, c: redis.Redis, i: int) -> None:
        raise NotImplementedError

    def record(self, t0: float, key: str, ok: bool, error: str = "") -> None:
        shard = self.ring.shard_name(key.encode())
        self.ops.append(Op(t0, time.monotonic(), key, shard, ok, error))

    def finish(self) -> None:
        self.halt.set()
        self.join(15)
        assert not self.is_alive(), "load thread did not stop"
        assert self.crash is None, repr(self.crash)


class Writer(Worker):
    """SET of a unique key (value == key) per operation, keys spread over every shard."""

    def __init__(self, p: Proxy, ring: Ring, prefix: str, pause: float = 0.002) -> None:
        super().__init__(p, ring, pause)
        self.prefix = prefix

    def step(self, c: redis.Redis, i: int) -> None:
        k = key(self.prefix, i)
        t0 = time.monotonic()
        try:
            c.set(k, k)
        except redis.RedisError as exc:
            self.record(t0, k, False, f"{type(exc).__name__}: {exc}")
        else:
            self.record(t0, k, True)

    def acked(self, shard: str | None = None, after: float = 0.0) -> list[str]:
        return [
            o.key
            for o in self.ops
            if o.ok and o.t0 >= after and (shard is None or o.shard == shard)
        ]

    def errors(self, shard: str | None = None) -> list[Op]:
        return [o for o in self.ops if not o.ok and (shard is None or o.shard == shard)]


class Reader(Worker):
    """GET (or a multi-shard MGET) of keys whose values are known (value == key)."""

    def __init__(
        self,
        p: Proxy,
        ring: Ring,
        keys: list[str],
        mget: bool = False,
        pause: float = 0.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(p, ring, pause, timeout)
        self.keys = keys
        self.mget = mget
        self.wrong: list[tuple[str, bytes | None]] = []
        self.rng = random.Random(len(keys))

    def step(self, c: redis.Redis, i: int) -> None:
        keys = self.rng.sample(self.keys, 3) if self.mget else [self.rng.choice(self.keys)]
        t0 = time.monotonic()
        try:
            values = c.mget(keys) if self.mget else [c.get(keys[0])]
        except redis.RedisError as exc:
            self.record(t0, keys[0], False, f"{type(exc).__name__}: {exc}")
            return
        self.record(t0, keys[0], True)
        for k, v in zip(keys, values, strict=True):
            if v != k.encode():
                self.wrong.append((k, v))

    def errors(self) -> list[Op]:
        return [o for o in self.ops if not o.ok]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Load threads of a test: always stopped and joined, whatever the test did."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.halt.set()
    for w in started:
        w.join(15)


def start(workers: list[Worker], w: Worker) -> Worker:
    workers.append(w)
    w.start()
    return w


def summary(ops: list[Op], label: str) -> str:
    lat = sorted(o.t1 - o.t0 for o in ops) or [0.0]
    shards: dict[str, int] = {}
    for o in ops:
        shards[o.shard] = shards.get(o.shard, 0) + 1
    return (
        f"{label}: {len(ops)} ops {dict(sorted(shards.items()))}, "
        f"{sum(not o.ok for o in ops)} errors, max latency {lat[-1] * 1000:.0f} ms"
    )


# -- promote -------------------------------------------------------------------------------------


def promote_topology(fleet: Fleet) -> dict[str, object]:
    return fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        failover={"mode": "promote"},
        health={"interval_ms": 200, "failures": 2, "successes": 1},
        timeouts={"connect_ms": 300, "command_ms": 500},
    )


def other_listeners(topo: dict[str, object]) -> dict[str, object]:
    """The same topology file with its own listen and admin ports (a second proxy)."""
    return {**topo, "listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"}


def test_promote_under_write_load(
    own_fleet: Fleet, make_proxy: MakeProxy, workers: list[Worker]
) -> None:
    topo = promote_topology(own_fleet)
    p = make_proxy(topo)
    wait_all_up(p)
    ring = ring_of(own_fleet)
    victim = own_fleet.shards[0]
    old, new = victim.primary, victim.replicas[0]

    load = start(workers, Writer(p, ring, "w"))
    time.sleep(0.8)
    old.kill()
    t_kill = time.monotonic()

    def recovered() -> bool:
        return any(o.ok and o.shard == victim.name and o.t0 > t_kill for o in list(load.ops))

    wait_for("writes to the victim shard succeed again", recovered, 10)
    time.sleep(0.5)  # keep writing to the new primary for a while
    load.finish()

    victim_ops = [o for o in load.ops if o.shard == victim.name]
    first_ok = next(o for o in victim_ops if o.ok and o.t0 > t_kill)
    recovery = first_ok.t1 - t_kill
    errs = load.errors(victim.name)
    print(
        f"\n[promote] kill -> first acknowledged write to {victim.name}: {recovery * 1000:.0f} ms; "
        f"{len(errs)} errors on {victim.name} during the failover"
    )
    print(summary(load.ops, "[promote] writer"))
    assert recovery < 3.0
    assert all(f"shard {victim.name}" in o.error for o in errs), errs[:3]
    assert not [o for o in victim_ops if o.t0 >= first_ok.t0 and not o.ok], "errors after recovery"
    for s in own_fleet.shards[1:]:
        assert load.errors(s.name) == [], f"shard {s.name} saw errors: {load.errors(s.name)[:3]}"
        acked = load.acked(s.name)
        assert acked and missing_on(s.primary, acked) == []
    after = load.acked(victim.name, after=t_kill)
    assert missing_on(new, after) == [], "writes acknowledged by the new primary are lost"
    before = [o.key for o in victim_ops if o.ok and o.t0 < t_kill]
    print(
        f"[promote] {len(before) - len(missing_on(new, before))}/{len(before)} writes acknowledged "
        "by the old primary survived (asynchronous replication: not guaranteed)"
    )

    # the former replica is the primary now, and the proxy says so
    assert replication(new)["role"] == "master"
    view = shard_view(p, victim.name)
    assert view["primary"] == new.address and view["replicas"] == [old.address]
    assert failovers(p, victim.name, "success") == 1

    # the old primary returns (empty, as a master) and is made a replica of the new one
    restart(old)

    def follows_new() -> bool:
        r = replication(old)
        return (
            r["role"] == "slave"
            and r["master_port"] == new.port
            and r.get("master_link_status") == "up"
        )

    rejoin = wait_for("old primary replicates the new one", follows_new, 5, 0.05)
    print(f"[promote] old primary restarted -> replica of {new.address} in {rejoin:.2f} s")
    assert missing_on(old, after[-50:]) == []  # it has the new primary's data

    # a second proxy started with the ORIGINAL file agrees on the primary
    p2 = make_proxy(other_listeners(topo))
    t_p2 = time.monotonic()
    agreed = wait_for(
        "second proxy adopts the new primary",
        lambda: shard_view(p2, victim.name)["primary"] == new.address,
        5,
        0.05,
    )
    print(f"[promote] second proxy (original YAML) adopted {new.address} after {agreed:.2f} s")
    assert time.monotonic() - t_p2 < 5
    keys = keys_by_shard(ring, "both")[victim.name][:20]
    with client(p) as c1, client(p2) as c2:
        for i, k in enumerate(keys):
            (c1 if i % 2 else c2).set(k, k)
        for k in keys:
            assert c1.get(k) == k.encode() and c2.get(k) == k.encode()
    assert missing_on(new, keys) == []
    assert replication(new)["role"] == "master"
    assert replication(old)["role"] == "slave"
    assert shard_view(p, victim.name)["primary"] == new.address
    assert failovers(p2, victim.name, "adopted") == 1


def test_restarted_proxy_keeps_the_promoted_primary(
    own_fleet: Fleet, make_proxy: MakeProxy
) -> None:
    """After a promotion, the old primary comes back empty while no proxy runs; a proxy that
    starts with the ORIGINAL file must not make the promoted node (which holds the data) a
    replica of the empty old primary."""
    topo = promote_topology(own_fleet)
    p = make_proxy(topo)
    wait_all_up(p)
    ring = ring_of(own_fleet)
    victim = own_fleet.shards[0]
    old, new = victim.primary, victim.replicas[0]
    old.kill()
    took = wait_for(
        "promotion", lambda: shard_view(p, victim.name)["primary"] == new.address, 5, 0.05
    )
    print(f"\n[promote] promoted {new.address} {took:.2f} s after the kill")
    keys = keys_by_shard(ring, "kept")[victim.name][:100]
    with client(p) as c:
        for k in keys:
            c.set(k, k)
    assert p.stop() == 0
    restart(old)  # empty, and a master (a wrong sync from it would complete at once)
    p2 = make_proxy(other_listeners(topo))
    wait_for("second proxy probes every node", lambda: all_probed(p2), 5, 0.05)
    time.sleep(2.0)  # ten failover rounds, and time for a (wrong) full sync to complete
    roles = {srv.address: replication(srv)["role"] for srv in (old, new)}
    print(f"[promote] after the proxy restart: {roles}")
    assert missing_on(new, keys) == [], "acknowledged writes lost: the promoted node was demoted"
    assert roles == {new.address: "master", old.address: "slave"}
    assert shard_view(p2, victim.name)["primary"] == new.address


# -- a stopped primary, mode none ----------------------------------------------------------------


def test_stopped_primary_times_out_and_recovers(own_fleet: Fleet, make_proxy: MakeProxy) -> None:
    command_ms = 500
    p = make_proxy(
        own_fleet.topology(
            health={"interval_ms": 200}, timeouts={"connect_ms": 300, "command_ms": command_ms}
        )
    )
    ring = ring_of(own_fleet)
    by_shard = keys_by_shard(ring, "stop")
    victim = own_fleet.shards[1]
    key = by_shard[victim.name][0]
    with client(p) as c, client(p) as other:
        c.set(key, "v")
        victim.primary.signal(signal.SIGSTOP)
        try:
            for attempt in range(3):
                t0 = time.monotonic()
                with pytest.raises(redis.ResponseError) as err:
                    c.get(key)
                elapsed = time.monotonic() - t0
                print(
                    f"\n[sigstop] error #{attempt + 1} after {elapsed * 1000:.0f} ms: {err.value}"
                )
                assert f"shard {victim.name}" in str(err.value)
                assert elapsed <= command_ms / 1000 + 0.2
                if attempt == 0:
                    assert "did not answer within 500 ms" in str(err.value)
                    assert elapsed >= command_ms / 1000 - 0.05
            for name, keys in by_shard.items():
                if name != victim.name:
                    t0 = time.monotonic()
                    other.set(keys[0], "x")
                    assert other.get(keys[0]) == b"x"
                    assert time.monotonic() - t0 < 0.1
        finally:
            victim.primary.signal(signal.SIGCONT)
        t_cont = time.monotonic()

        def answers() -> bool:
            try:
                return c.get(key) == b"v"
            except redis.ResponseError:
                return False

        took = wait_for("commands succeed after SIGCONT", answers, 5)
        print(f"[sigstop] SIGCONT -> commands succeed again after {took * 1000:.0f} ms")
        assert time.monotonic() - t_cont < 5
        c.set(key, "w")
        assert c.get(key) == b"w"


# -- replica reads -------------------------------------------------------------------------------


def replica_read_topology(fleet: Fleet, **extra: object) -> dict[str, object]:
    topo: dict[str, object] = {
        "admin": f"127.0.0.1:{free_port()}",
        "read_policy": "prefer-replica",
        "read_your_writes_ms": 0,
        "health": {"interval_ms": 200, "failures": 2, "successes": 1},
        "timeouts": {"connect_ms": 300, "command_ms": 500},
    }
    topo.update(extra)
    return fleet.topology(**topo)


@pytest.mark.parametrize("command", ["get", "mget"])
def test_replica_killed_during_replica_reads(
    own_fleet: Fleet, make_proxy: MakeProxy, workers: list[Worker], command: str
) -> None:
    """GET goes through the single-key path; a multi-shard MGET is split into per-shard legs.
    Either way a read that a dying replica drops must be answered by the primary."""
    p = make_proxy(replica_read_topology(own_fleet))
    ring = ring_of(own_fleet)
    known = [k for ks in keys_by_shard(ring, "known", 300).values() for k in ks]
    with client(p) as c:
        c.mset({k: k for k in known})
    wait_replicated(own_fleet)
    wait_all_up(p)
    victim = own_fleet.shards[1]
    replica = victim.replicas[0]
    resetstat(own_fleet.servers())

    reader = start(workers, Reader(p, ring, known, mget=command == "mget"))
    writer = start(workers, Writer(p, ring, "rw", pause=0.005))
    time.sleep(0.8)
    served_before = commandstat(replica, command)
    assert served_before > 0, "the replica served no reads before the kill"
    replica.kill()
    t_kill = time.monotonic()
    unusable = wait_for(
        "replica taken out of reads",
        lambda: not shard_view(p, victim.name)["nodes"][1]["usable"],
        3,
        0.02,
    )
    print(
        f"\n[replica kill/{command}] replica {replica.address} served {served_before} reads; "
        f"marked unusable {unusable * 1000:.0f} ms after the kill"
    )
    assert unusable <= INTERVAL + 0.3
    time.sleep(INTERVAL + 0.3)
    r1 = node_requests(p, victim.name, replica, "replica")
    p1 = commandstat(victim.primary, command)
    time.sleep(1.0)
    r2 = node_requests(p, victim.name, replica, "replica")
    p2 = commandstat(victim.primary, command)
    reader.finish()
    writer.finish()
    print(summary(reader.ops, f"[replica kill/{command}] reader"))
    print(summary(writer.ops, f"[replica kill/{command}] writer"))
    print(
        f"[replica kill/{command}] over 1 s after detection: replica requests +{r2 - r1:.0f}, "
        f"primary {command} calls +{p2 - p1}"
    )
    assert reader.wrong == [], f"wrong values read: {reader.wrong[:5]}"
    assert r2 == r1, "reads still sent to the dead replica"
    assert p2 > p1, "the primary did not take over the reads"
    assert writer.errors() == []
    for s in own_fleet.shards:
        assert missing_on(s.primary, writer.acked(s.name)) == []
    errs = reader.errors()
    assert errs == [], (
        f"{len(errs)} of {len(reader.ops)} {command.upper()}s failed although the primary of "
        f"{victim.name} was up (after {(errs[0].t0 - t_kill) * 1000:.0f} ms): {errs[0].error}"
    )


def test_replica_reads_answered_when_primary_and_replica_die(
    own_fleet: Fleet, make_proxy: MakeProxy, workers: list[Worker]
) -> None:
    """A replica read that the replica drops is retried on the primary; when that primary is
    down too, the client must still get an answer (an error naming the shard) at once, not
    wait forever. The replica hangs first (SIGSTOP), so reads are in flight on it for sure."""
    p = make_proxy(replica_read_topology(own_fleet))
    ring = ring_of(own_fleet)
    victim = own_fleet.shards[2]
    primary, replica = victim.primary, victim.replicas[0]
    known = keys_by_shard(ring, "both", 900)[victim.name][:200]
    with client(p) as c:
        for k in known:
            c.set(k, k)
    wait_replicated(own_fleet)
    wait_all_up(p)
    readers = [start(workers, Reader(p, ring, known, timeout=2.0)) for _ in range(4)]
    time.sleep(0.5)
    replica.signal(signal.SIGSTOP)
    time.sleep(0.1)  # every reader now waits on a read sent to the replica
    primary.kill()
    time.sleep(0.08)  # the proxy's connection to the primary is down, between reconnects
    replica.signal(signal.SIGKILL)  # the stuck reads fail: each is retried on the primary
    t_kill = time.monotonic()
    replica.kill()
    time.sleep(1.5)
    for r in readers:
        r.finish()
    ops = [o for r in readers for o in r.ops]
    slow = [o for o in ops if o.t1 - o.t0 > 0.5 + 0.3]
    print("\n" + summary(ops, "[replica stopped+killed, primary killed] readers"))
    for o in slow[:5]:
        print(
            f"[both killed] read sent {(t_kill - o.t0) * 1000:.0f} ms before the kill: "
            f"answered after {(o.t1 - o.t0) * 1000:.0f} ms: {o.error or 'ok'}"
        )
    assert all(not r.wrong for r in readers)
    assert slow == [], (
        f"{len(slow)} reads were not answered within command_ms + 300 ms: {slow[0].error}"
    )
    assert all(victim.name in o.error for o in ops if not o.ok)


def test_read_your_writes(own_fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(
        replica_read_topology(own_fleet, read_policy="replica", read_your_writes_ms=1000)
    )
    ring = ring_of(own_fleet)
    wait_all_up(p)
    primaries = [s.primary for s in own_fleet.shards]
    replicas = [r for s in own_fleet.shards for r in s.replicas]
    resetstat(own_fleet.servers())
    keys = [key("ryw", i) for i in range(1000)]
    assert len({ring.shard_name(k.encode()) for k in keys}) == len(own_fleet.shards)
    wrong = []
    t0 = time.monotonic()
    with client(p) as c:
        for i, k in enumerate(keys):
            value = f"{k}={i}-{random.random()}"
            c.set(k, value)
            got = c.get(k)
            if got != value.encode():
                wrong.append((k, value, got))
    took = time.monotonic() - t0
    on_primaries = sum(commandstat(s, "get") for s in primaries)
    on_replicas = sum(commandstat(s, "get") for s in replicas)
    print(
        f"\n[ryw 1000 ms] 1000 SET+GET in {took:.2f} s: {len(wrong)} stale reads; "
        f"GETs on primaries {on_primaries}, on replicas {on_replicas}"
    )
    assert wrong == []
    assert (on_primaries, on_replicas) == (1000, 0)

    # once the window has passed, the same client's reads go to the replicas again
    time.sleep(1.1)
    wait_replicated(own_fleet)
    with client(p) as c:
        for k in keys[:30]:
            assert c.get(k) is not None
    assert sum(commandstat(s, "get") for s in replicas) == 30
    assert sum(commandstat(s, "get") for s in primaries) == 1000

    # read_your_writes_ms 0: every read goes to a replica, even right after a write
    p0 = make_proxy(replica_read_topology(own_fleet, read_policy="replica"))
    wait_all_up(p0)
    resetstat(own_fleet.servers())
    stale = 0
    with client(p0) as c:
        for k in keys[:300]:
            c.set(k, "new")
            stale += c.get(k) != b"new"
    on_primaries = sum(commandstat(s, "get") for s in primaries)
    on_replicas = sum(commandstat(s, "get") for s in replicas)
    print(
        f"[ryw 0] 300 SET+GET: GETs on replicas {on_replicas}, on primaries {on_primaries}; "
        f"{stale} reads did not see the write yet"
    )
    assert (on_primaries, on_replicas) == (0, 300)


# -- mode none -----------------------------------------------------------------------------------


def test_mode_none_killed_primary(
    own_fleet: Fleet, make_proxy: MakeProxy, workers: list[Worker]
) -> None:
    p = make_proxy(
        own_fleet.topology(
            health={"interval_ms": 200, "failures": 2, "successes": 1},
            timeouts={"connect_ms": 300, "command_ms": 500},
        )
    )
    ring = ring_of(own_fleet)
    victim = own_fleet.shards[2]
    load = start(workers, Writer(p, ring, "none"))
    time.sleep(0.5)
    victim.primary.kill()
    t_kill = time.monotonic()
    time.sleep(1.0)
    down = [o for o in load.ops if o.shard == victim.name and o.t0 > t_kill + 0.1]
    assert down and not any(o.ok for o in down), "writes to the dead shard succeeded"
    restart(victim.primary)
    t_back = time.monotonic()

    def recovered() -> bool:
        return any(o.ok and o.shard == victim.name and o.t0 > t_back for o in list(load.ops))

    took = wait_for("writes succeed after the restart", recovered, 5)
    time.sleep(0.3)
    load.finish()
    first_ok = next(o for o in load.ops if o.ok and o.shard == victim.name and o.t0 > t_back)
    errs = load.errors(victim.name)
    print(
        f"\n[none] {len(errs)} errors on {victim.name}, first after "
        f"{(errs[0].t1 - t_kill) * 1000:.0f} ms: {errs[0].error}"
    )
    print(f"[none] restart -> first acknowledged write after {took * 1000:.0f} ms")
    print(summary(load.ops, "[none] writer"))
    assert errs and all(f"shard {victim.name}" in o.error for o in errs), errs[:3]
    assert max(o.t1 - o.t0 for o in errs) < 0.5 + 0.2
    assert not [o for o in load.ops if o.shard == victim.name and o.t0 >= first_ok.t0 and not o.ok]
    for s in own_fleet.shards:
        if s is not victim:
            assert load.errors(s.name) == []
            assert missing_on(s.primary, load.acked(s.name)) == []
    assert missing_on(victim.primary, load.acked(victim.name, after=t_back)) == []


# -- eject ---------------------------------------------------------------------------------------


def test_eject_and_restore(own_fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(
        own_fleet.topology(
            admin=f"127.0.0.1:{free_port()}",
            failover={"mode": "eject"},
            health={"interval_ms": 200, "failures": 2, "successes": 1},
            timeouts={"connect_ms": 300, "command_ms": 500},
        )
    )
    wait_all_up(p)
    ring = ring_of(own_fleet)
    by_shard = keys_by_shard(ring, "ej", 1500)
    victim = own_fleet.shards[1]
    others = {s.name: s for s in own_fleet.shards if s is not victim}
    vkeys = iter(by_shard[victim.name])
    victim.primary.kill()
    victim.replicas[0].kill()
    t_kill = time.monotonic()
    errors_seen = 0
    with client(p) as c:
        while True:
            k = next(vkeys)
            try:
                c.set(k, k)
                break
            except redis.ResponseError as exc:
                assert f"shard {victim.name}" in str(exc)
                errors_seen += 1
                assert time.monotonic() - t_kill < 5, "shard never ejected"
                time.sleep(0.02)
        ejected = time.monotonic() - t_kill
        print(
            f"\n[eject] {victim.name} keys served elsewhere {ejected * 1000:.0f} ms after the "
            f"kill ({errors_seen} errors before)"
        )
        moved = [next(vkeys) for _ in range(100)]
        for k in moved:
            c.set(k, k)
        for k in moved:
            assert c.get(k) == k.encode()
        placed = {name: len(missing_on(s.primary, moved)) for name, s in others.items()}
        stored = {name: len(moved) - n for name, n in placed.items()}
        print(f"[eject] 100 writes of {victim.name} keys acknowledged, stored on {stored}")
        assert sum(stored.values()) == 100 and all(stored.values())
        # keys of the other shards did not move
        for name, s in others.items():
            ks = by_shard[name][:30]
            for k in ks:
                c.set(k, k)
            assert missing_on(s.primary, ks) == []
        assert failovers(p, victim.name, "ejected") == 1

        restart(victim.primary)
        restart(victim.replicas[0])
        t_back = time.monotonic()
        while True:
            k = next(vkeys)
            c.set(k, k)
            if not missing_on(victim.primary, [k]):
                break
            assert time.monotonic() - t_back < 5, "shard never restored"
            time.sleep(0.02)
        restored = time.monotonic() - t_back
        print(f"[eject] restart -> {victim.name} back on the ring after {restored * 1000:.0f} ms")
        fresh = [next(vkeys) for _ in range(50)]
        for k in fresh:
            c.set(k, k)
        assert missing_on(victim.primary, fresh) == []
        assert failovers(p, victim.name, "restored") == 1
