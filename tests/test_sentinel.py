"""failover.mode sentinel: the proxy follows Redis Sentinel.

Integration tests run real redis-server and redis-sentinel processes on loopback ports; one
in-process test drives the subscriber against a scripted Sentinel (reconnect, AUTH, events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from shardproxy import config as configmod
from shardproxy.app import proxy as proxy_root
from shardproxy.control import sentinel
from shardproxy.control.health import HealthMonitor, HealthSettings
from shardproxy.control.sentinel import CHANNELS, SentinelFailover, parse_answer, parse_event
from shardproxy.protocol import encode, requests
from shardproxy.routing.ring import Ring
from tests.conftest import REDIS_SENTINEL, Fleet, Proxy, free_port, wait_port

# -- helpers ------------------------------------------------------------------------------------


def wait_for(what: str, cond: Callable[[], object], timeout: float, step: float = 0.05) -> float:
    """Poll ``cond`` until it is true; returns the time it took."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if cond():
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(step)


class Sentinels:
    """``n`` redis-sentinel processes monitoring every shard of ``fleet`` (master name = shard
    name). Each writes its own config file in ``workdir``: Sentinel rewrites it."""

    def __init__(
        self,
        workdir: Path,
        fleet: Fleet,
        n: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.workdir = workdir
        self.fleet = fleet
        self.ports = [free_port() for _ in range(n)]
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def start(self) -> Sentinels:
        for port in self.ports:
            d = self.workdir / f"sentinel-{port}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                "daemonize no",
                f'logfile "{d / "sentinel.log"}"',
                f'dir "{d}"',
                "sentinel resolve-hostnames no",
            ]
            for s in self.fleet.shards:
                lines += [
                    f"sentinel monitor {s.name} 127.0.0.1 {s.primary.port} {self.quorum}",
                    f"sentinel down-after-milliseconds {s.name} {self.down_after_ms}",
                    f"sentinel failover-timeout {s.name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {s.name} 1",
                ]
            conf.write_text("\n".join(lines) + "\n")
            self.start_one(port)
        return self

    def start_one(self, port: int) -> None:
        conf = self.workdir / f"sentinel-{port}" / "sentinel.conf"
        proc = subprocess.Popen(
            [REDIS_SENTINEL, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs[port] = proc
        wait_port(port, proc=proc)

    def stop(self) -> None:
        for port, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            del self.procs[port]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=2)

    def master(self, port: int, name: str) -> dict[str, object]:
        with self.client(port) as c:
            return dict(c.sentinel_master(name))

    def primary_of(self, port: int, name: str) -> str:
        with self.client(port) as c:
            host, p = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
            return f"{host.decode()}:{int(p)}"

    def wait_ready(self, peers: bool = True, timeout: float = 15.0) -> float:
        """Until every Sentinel knows every shard's replicas (and, with ``peers``, the other
        Sentinels: a failover needs a quorum and a majority)."""

        def ready() -> bool:
            for port in self.ports:
                for s in self.fleet.shards:
                    m = self.master(port, s.name)
                    if int(str(m["num-slaves"])) < len(s.replicas):
                        return False
                    if peers and int(str(m["num-other-sentinels"])) < len(self.ports) - 1:
                        return False
            return True

        return wait_for("sentinels ready", ready, timeout, 0.1)

    def subscribers(self, port: int) -> int:
        """Connections subscribed to several channels (the proxy's subscriptions)."""
        with self.client(port) as c:
            return sum(1 for cl in c.client_list() if int(cl.get("sub", 0)) >= len(CHANNELS))


def start_fleet(fleet: Fleet) -> None:
    """Fleet.start, without the 5 s a primary waits by default before a diskless full sync."""
    for s in fleet.shards:
        s.primary.start()
        with s.primary.client() as c:
            c.config_set("repl-diskless-sync-delay", 0)
    for s in fleet.shards:
        for r in s.replicas:
            r.start()
    fleet.wait_replication()


def keys_by_shard(names: list[str], per_shard: int = 2) -> dict[str, list[str]]:
    """Hash tags that land on each shard (ring built as the proxy builds it)."""
    ring = Ring.build([(n, 1) for n in names])
    out: dict[str, list[str]] = {n: [] for n in names}
    i = 0
    while any(len(v) < per_shard for v in out.values()):
        tag = f"t{i}"
        shard = ring.shard_name(tag.encode())
        if len(out[shard]) < per_shard:
            out[shard].append(tag)
        i += 1
    return out


@dataclass
class WriteLog:
    shard: str
    tags: list[str]
    acked: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, key); value=key
    errors: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, error)


def writer(port: int, wl: WriteLog, stop: threading.Event) -> None:
    """SET a new key (value = key) through the proxy every few ms, logging acks and errors."""
    with redis.Redis(
        host="127.0.0.1", port=port, protocol=2, socket_timeout=3, retry=Retry(NoBackoff(), 0)
    ) as c:
        n = 0
        while not stop.is_set():
            key = f"{{{wl.tags[n % len(wl.tags)]}}}:{n}"
            n += 1
            try:
                c.set(key, key)
                wl.acked.append((time.monotonic(), key))
            except redis.RedisError as exc:
                wl.errors.append((time.monotonic(), str(exc)))
            time.sleep(0.004)


def switch_events(ports: list[int], seen: dict[str, float], stop: threading.Event) -> None:
    """Record when each master name's first +switch-master arrives from any Sentinel."""
    clients = [redis.Redis(host="127.0.0.1", port=p, protocol=2) for p in ports]
    subs = [c.pubsub() for c in clients]
    try:
        for ps in subs:
            ps.subscribe("+switch-master")
        while not stop.is_set():
            for ps in subs:
                msg = ps.get_message(timeout=0.01)
                if msg and msg["type"] == "message":
                    name = msg["data"].decode().split()[0]
                    seen.setdefault(name, time.monotonic())
    finally:
        for ps in subs:
            ps.close()
        for c in clients:
            c.close()


def topology_of(p: Proxy, shard: str) -> dict[str, object]:
    status, body = p.http("/topology")
    assert status == 200
    for s in json.loads(body)["shards"]:
        if s["name"] == shard:
            return dict(s)
    raise KeyError(shard)


def proxy_topology(fleet: Fleet, sentinels: Sentinels, poll_ms: int) -> dict[str, object]:
    return fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        failover={"mode": "sentinel"},
        sentinel={"addresses": sentinels.addresses, "poll_interval_ms": poll_ms},
        health={"interval_ms": 200},
        timeouts={"connect_ms": 300, "command_ms": 500},
    )


def readable(p: Proxy, keys: list[str]) -> list[str]:
    """The keys whose value (through the proxy) is not the key itself."""
    bad = []
    with p.client(protocol=2) as c:
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for k, v in zip(chunk, c.mget(chunk), strict=True):
                if v != k.encode():
                    bad.append(k)
    return bad


# -- integration: a primary is killed under write load --------------------------------------


def test_killed_primary_sentinel_failover_under_load(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet", shards=3, replicas=1)
    sentinels = Sentinels(tmp_path, fleet)
    proxies: list[Proxy] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        start_fleet(fleet)
        sentinels.start()
        print(f"\nsentinels ready after {sentinels.wait_ready():.1f} s")
        # a long poll interval: the subscription (and -READONLY/health hints) must do the work
        p = Proxy(proxy_topology(fleet, sentinels, poll_ms=60000), tmp_path).start()
        proxies.append(p)
        wait_for(
            "proxy subscribed to every Sentinel",
            lambda: all(sentinels.subscribers(port) >= 1 for port in sentinels.ports),
            5,
        )

        names = [s.name for s in fleet.shards]
        logs = {n: WriteLog(n, tags) for n, tags in keys_by_shard(names).items()}
        switched: dict[str, float] = {}
        threads = [threading.Thread(target=writer, args=(p.port, wl, stop)) for wl in logs.values()]
        threads.append(
            threading.Thread(target=switch_events, args=(sentinels.ports, switched, stop))
        )
        for t in threads:
            t.start()
        time.sleep(1.0)

        victim = fleet.shards[0]
        old_primary, new_primary = victim.primary.address, victim.replicas[0].address
        vlog = logs[victim.name]
        t_kill = time.monotonic()
        victim.primary.kill()

        def recovered() -> bool:
            errs = [t for t, _ in vlog.errors if t > t_kill]
            return bool(errs) and any(t > errs[0] for t, _ in vlog.acked)

        wait_for("writes to the victim shard succeed again", recovered, 20)
        first_err = next(t for t, _ in vlog.errors if t > t_kill)
        t_back = next(t for t, _ in vlog.acked if t > first_err)
        time.sleep(1.0)  # more writes after the failover
        stop.set()
        for t in threads:
            t.join(10)

        t_switch = switched.get(victim.name)
        print(
            f"kill -> writes ok again: {t_back - t_kill:.2f} s; "
            f"kill -> first +switch-master: "
            f"{(t_switch - t_kill) if t_switch else float('nan'):.2f} s; "
            f"+switch-master -> writes ok: "
            f"{(t_back - t_switch) if t_switch else float('nan'):.3f} s; "
            f"victim errors: {len(vlog.errors)}; "
            f"acked writes: { {n: len(wl.acked) for n, wl in logs.items()} }"
        )
        assert t_back - t_kill < 5.0
        assert t_switch is not None, "no +switch-master seen"
        assert t_back - t_switch < 1.0
        late = [e for e in vlog.errors if e[0] > t_back]
        assert not late, f"errors after the failover: {late[:5]}"
        for n, wl in logs.items():
            if n != victim.name:
                assert not wl.errors, f"shard {n} saw errors: {wl.errors[:5]}"
                assert wl.acked
                assert readable(p, [k for _, k in wl.acked]) == []
        after = [k for t, k in vlog.acked if t >= t_back]
        assert after and readable(p, after) == []

        # the proxy's view: the former replica is the primary; the dead one leaves the replicas
        topo = topology_of(p, victim.name)
        assert topo["primary"] == new_primary
        wait_for(
            "old primary leaves the replica list",
            lambda: old_primary not in str(topology_of(p, victim.name)["replicas"]),
            5,
        )
        status, metrics = p.http("/metrics")
        assert status == 200
        line = next(
            ln
            for ln in metrics.splitlines()
            if ln.startswith("shardproxy_failovers_total{")
            and f'shard="{victim.name}"' in ln
            and 'result="success"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == 1.0
        with redis.Redis(host="127.0.0.1", port=victim.replicas[0].port, protocol=2) as c:
            assert c.info("replication")["role"] == "master"

        # a proxy started now, from the same file (old primary still listed, and dead),
        # follows the current primary at once
        p2 = Proxy(proxy_topology(fleet, sentinels, poll_ms=60000), tmp_path).start()
        proxies.append(p2)
        took = wait_for(
            "restarted proxy adopts the primary",
            lambda: topology_of(p2, victim.name)["primary"] == new_primary,
            3,
            0.01,
        )
        print(f"restarted proxy adopted {new_primary} {took * 1000:.0f} ms after listening")
        with p2.client(protocol=2) as c:
            c.set(f"{{{vlog.tags[0]}}}:restarted", "yes")
        with redis.Redis(host="127.0.0.1", port=victim.replicas[0].port, protocol=2) as c:
            assert c.get(f"{{{vlog.tags[0]}}}:restarted") == b"yes"
        for px in proxies:
            assert px.stop() == 0, px.output()
            assert "Traceback" not in px.output(), px.output()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for px in proxies:
            px.stop()
        sentinels.stop()
        fleet.stop()


# -- integration: a proxy started after a failover -----------------------------------------


def test_proxy_started_after_failover_follows_current_primary(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet", shards=2, replicas=1)
    sentinels = Sentinels(tmp_path, fleet)
    p: Proxy | None = None
    try:
        start_fleet(fleet)
        sentinels.start()
        sentinels.wait_ready(peers=False)
        victim = fleet.shards[1]
        old_primary, new_primary = victim.primary.address, victim.replicas[0].address
        asker = sentinels.ports[0]

        def failover() -> bool:
            with sentinels.client(asker) as c:
                try:
                    c.execute_command("SENTINEL", "FAILOVER", victim.name)
                    return True
                except redis.ResponseError as exc:  # NOGOODSLAVE until its INFO is fresh
                    if "NOGOODSLAVE" not in str(exc):
                        raise
                    return False

        wait_for("SENTINEL FAILOVER accepted", failover, 10, 0.2)
        took = wait_for(
            "failover done", lambda: sentinels.primary_of(asker, victim.name) == new_primary, 15
        )
        print(f"\nmanual failover took {took:.1f} s")
        # the file still names the old primary (alive, about to become a replica)
        topo = proxy_topology(fleet, sentinels, poll_ms=60000)
        assert f"primary: {old_primary}" in yaml.safe_dump(topo)
        p = px = Proxy(topo, tmp_path).start()
        took = wait_for(
            "proxy adopts the primary",
            lambda: topology_of(px, victim.name)["primary"] == new_primary,
            3,
            0.01,
        )
        print(f"proxy adopted {new_primary} {took * 1000:.0f} ms after listening")
        tag = keys_by_shard([s.name for s in fleet.shards], 1)[victim.name][0]
        keys = [f"{{{tag}}}:{i}" for i in range(50)]
        with p.client(protocol=2) as c:
            for k in keys:
                c.set(k, k)
            assert c.mget(keys) == [k.encode() for k in keys]
        with redis.Redis(host="127.0.0.1", port=victim.replicas[0].port, protocol=2) as c:
            assert c.mget(keys) == [k.encode() for k in keys]
        assert p.stop() == 0, p.output()
        assert "Traceback" not in p.output(), p.output()
    finally:
        if p is not None:
            p.stop()
        sentinels.stop()
        fleet.stop()


# -- in process: the subscriber against a scripted Sentinel --------------------------------


class FakeSentinel:
    """Answers AUTH, PING, SUBSCRIBE and SENTINEL get-master-addr-by-name/master/replicas for
    master names in ``masters`` (name -> (host, port, epoch, [(host, port, flags)]))."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.masters: dict[str, tuple[str, int, int, list[tuple[str, int, str]]]] = {}
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.subscribers: list[asyncio.StreamWriter] = []
        self.auths: list[bytes] = []
        self.queries = 0
        self.pings = 0  # PINGs on subscriptions
        self.muted: set[asyncio.StreamWriter] = set()  # subscriptions whose PINGs go unanswered
        self.handlers: set[asyncio.Task[None]] = set()  # one per open connection

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Go away: close the listener and every connection."""
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await asyncio.gather(*self.handlers)
            await self.server.wait_closed()
            self.server = None
        self.subscribers.clear()

    def publish(self, channel: bytes, payload: bytes) -> None:
        for w in self.subscribers:
            w.write(
                encode.array([encode.bulk(b"message"), encode.bulk(channel), encode.bulk(payload)])
            )

    def _answer(self, argv: list[bytes]) -> bytes:
        cmd = argv[0].lower()
        if cmd == b"auth":
            self.auths.append(argv[-1])
            ok = self.password is not None and argv[-1] == self.password.encode()
            return b"+OK\r\n" if ok else b"-WRONGPASS invalid password\r\n"
        if cmd == b"ping":
            return b"+PONG\r\n"
        if cmd == b"sentinel":
            self.queries += 1
            sub, name = argv[1].lower(), argv[2].decode()
            if name not in self.masters:
                if sub == b"get-master-addr-by-name":
                    return b"*-1\r\n"
                return b"-ERR No such master with that name\r\n"
            host, port, epoch, reps = self.masters[name]
            if sub == b"get-master-addr-by-name":
                return encode.array([encode.bulk(host.encode()), encode.bulk(str(port).encode())])
            if sub == b"master":
                return flat({"name": name, "ip": host, "port": port, "flags": "master",
                             "config-epoch": epoch})  # fmt: skip
            return encode.array([flat({"ip": h, "port": pt, "flags": fl}) for h, pt, fl in reps])
        return b"-ERR unknown command\r\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        parser = requests.RequestParser()
        authed = self.password is None
        try:
            while data := await reader.read(65536):
                for argv, _ in parser.feed(data):
                    if argv[0].lower() == b"ping" and writer in self.subscribers:
                        self.pings += 1
                        if writer not in self.muted:
                            writer.write(encode.array([encode.bulk(b"pong"), encode.bulk(b"")]))
                        continue
                    if argv[0].lower() == b"subscribe":
                        if not authed:
                            writer.write(b"-NOAUTH Authentication required.\r\n")
                            continue
                        self.subscribers.append(writer)
                        for i, ch in enumerate(argv[1:], 1):
                            writer.write(encode.array([encode.bulk(b"subscribe"), encode.bulk(ch),
                                                     encode.integer(i)]))  # fmt: skip
                        continue
                    reply = self._answer(argv)
                    if argv[0].lower() == b"auth" and reply == b"+OK\r\n":
                        authed = True
                    elif argv[0].lower() == b"sentinel" and not authed:
                        reply = b"-NOAUTH Authentication required.\r\n"
                    writer.write(reply)
        except ConnectionError:
            pass
        finally:
            self.handlers.discard(task)
            self.writers.discard(writer)
            if writer in self.subscribers:
                self.subscribers.remove(writer)
            writer.close()


def flat(d: dict[str, object]) -> bytes:
    return encode.array([encode.bulk(str(x).encode()) for kv in d.items() for x in kv])


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        assert loop.time() - t0 < timeout, "condition not met in time"
        await asyncio.sleep(0.005)
    return loop.time() - t0


async def test_subscriber_follows_events_reconnects_and_authenticates() -> None:
    a, b, c, d, e = (free_port() for _ in range(5))  # nothing here talks to a node
    fake = FakeSentinel(password="s3cret")
    await fake.start()
    fake.masters["cache-a"] = ("127.0.0.1", b, 1, [("127.0.0.1", a, "slave")])
    cfg = configmod.parse(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "admin": "off",
            "failover": {"mode": "sentinel"},
            "sentinel": {
                "addresses": [f"127.0.0.1:{fake.port}"],
                "poll_interval_ms": 60000,
                "password": "s3cret",
            },
            "shards": [
                {
                    "name": "s1",
                    "primary": f"127.0.0.1:{a}",
                    "replicas": [f"127.0.0.1:{b}"],
                    "sentinel_name": "cache-a",
                },
                {"name": "s2", "primary": f"127.0.0.1:{c}"},
            ],
        }
    )
    ctx = proxy_root.Proxy(cfg, asyncio.get_running_loop())
    failover = ctx.health.failover
    assert isinstance(failover, SentinelFailover)
    s1 = next(s for s in ctx.fleet.shards if s.name == "s1")
    try:
        failover.start(ctx.health)
        # the first poll: Sentinel says b is the primary (the file said a)
        await until(lambda: s1.primary.port == b)
        assert [r.port for r in s1.replicas] == [a]
        assert s1.primary.role == "primary" and s1.replicas[0].role == "replica"
        await until(lambda: len(fake.subscribers) == 1)
        assert fake.auths and set(fake.auths) == {b"s3cret"}
        # (the fake sees the SUBSCRIBE before the proxy has read its confirmation)
        await until(lambda: failover.subscribed == {f"127.0.0.1:{fake.port}": True})

        # +switch-master moves the primary at once, to a node the file did not list; the
        # follow-up refresh, answered by a Sentinel that has not caught up (no newer epoch than
        # before the event), does not move it back
        queries = fake.queries
        fake.publish(b"+switch-master", f"cache-a 127.0.0.1 {b} 127.0.0.1 {d}".encode())
        took = await until(lambda: s1.primary.port == d)
        assert took < 1.0  # at once, not at the next poll (poll_interval_ms is 60 s)
        assert s1.primary.shard == "s1" and s1.primary.usable and s1.primary.role == "primary"
        await until(lambda: fake.queries >= queries + 3)
        await asyncio.sleep(0.05)
        assert s1.primary.port == d and "s1" in failover.holds
        # once Sentinel agrees, the replicas follow its list
        fake.masters["cache-a"] = ("127.0.0.1", d, 2, [("127.0.0.1", b, "slave")])
        failover.request("s1")
        await until(lambda: [r.port for r in s1.replicas] == [b])
        assert "s1" not in failover.holds
        # events about other masters are ignored; a demoted node flagged s_down is dropped
        fake.publish(b"+switch-master", f"other 127.0.0.1 {d} 127.0.0.1 {e}".encode())
        fake.masters["cache-a"] = ("127.0.0.1", d, 2, [("127.0.0.1", b, "s_down,slave")])
        fake.publish(
            b"+sdown", f"slave 127.0.0.1:{b} 127.0.0.1 {b} @ cache-a 127.0.0.1 {d}".encode()
        )
        await until(lambda: s1.replicas == ())
        assert s1.primary.port == d

        # the Sentinel goes away and comes back on the same port: subscribed again, and
        # the events missed meanwhile are caught up by a refresh
        port = fake.port
        await fake.stop()
        fake.masters["cache-a"] = ("127.0.0.1", e, 3, [("127.0.0.1", d, "slave")])
        await asyncio.sleep(0.3)
        assert s1.primary.port == d and not any(failover.subscribed.values())
        await fake.start(port)
        await until(lambda: len(fake.subscribers) == 1, 5)
        await until(lambda: s1.primary.port == e)
        assert [r.port for r in s1.replicas] == [d]

        # a -READONLY from the primary asks Sentinel again
        fake.masters["cache-a"] = ("127.0.0.1", a, 4, [])
        failover.readonly(s1.primary)
        await until(lambda: s1.primary.port == a)
        assert ctx.stats.failovers[("s1", "success")] == 4
        # s2 is unknown to this Sentinel: left as the file says
        assert next(s for s in ctx.fleet.shards if s.name == "s2").primary.port == c
    finally:
        await failover.stop()
        await fake.stop()
        ctx.close()
    assert all(t.done() for t in failover._tasks) and not failover._tasks


@dataclass
class NoShards:
    """A context without shards (SentinelContext): only the subscription is under test."""

    shards: list[Any] = field(default_factory=list)

    def node_for(self, shard: str, role: str, host: str, port: int) -> Any:
        raise AssertionError("no shard to change")

    def record_failover(self, shard: str, result: str) -> None:
        raise AssertionError("no shard to fail over")


async def test_subscription_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent subscription is PINGed and kept while the PINGs are answered; unanswered, it is
    dropped after twice the keep-alive period and a new one is made."""
    monkeypatch.setattr(sentinel, "KEEPALIVE", 0.05)
    fake = FakeSentinel()
    await fake.start()
    cfg = configmod.parse(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "admin": "off",
            "failover": {"mode": "sentinel"},
            "sentinel": {"addresses": [f"127.0.0.1:{fake.port}"], "poll_interval_ms": 60000},
            "shards": [{"name": "s1", "primary": f"127.0.0.1:{free_port()}"}],
        }
    )
    failover = SentinelFailover(NoShards(), cfg)
    key = f"127.0.0.1:{fake.port}"
    try:
        failover.start(HealthMonitor(lambda: [], HealthSettings(), failover))
        await until(lambda: failover.subscribed.get(key, False))
        (first,) = fake.subscribers
        await until(lambda: fake.pings >= 4)
        assert fake.subscribers == [first] and failover.subscribed[key]

        fake.muted.add(first)
        pings = fake.pings
        took = await until(lambda: fake.subscribers[:1] != [first])
        assert fake.pings - pings <= 2 and took < 0.5
        await until(lambda: failover.subscribed[key] and len(fake.subscribers) == 1)
        assert fake.subscribers[0] is not first
    finally:
        await failover.stop()
        await fake.stop()


def test_parse_answer_and_event() -> None:
    addr = encode.array([encode.bulk(b"10.0.0.2"), encode.bulk(b"6380")])
    master = flat({"name": "m", "ip": "10.0.0.1", "config-epoch": 7, "flags": "master"})
    replicas = encode.array(
        [
            flat({"ip": "10.0.0.1", "port": 6379, "flags": "s_down,slave,disconnected"}),
            flat({"ip": "10.0.0.3", "port": 6381, "flags": "slave"}),
            flat({"ip": "10.0.0.4", "port": 6382, "flags": "slave,o_down"}),
        ]
    )
    a = parse_answer("s", addr, master, replicas)
    assert a is not None
    assert (a.host, a.port, a.epoch, a.replicas) == ("10.0.0.2", 6380, 7, [("10.0.0.3", 6381)])
    assert parse_answer("s", b"*-1\r\n", b"-ERR No such master\r\n", b"-ERR x\r\n") is None
    nothing = parse_answer("s", addr, b"-ERR x\r\n", b"-ERR x\r\n")
    assert nothing is not None and nothing.epoch == -1 and nothing.replicas is None
    assert parse_event(b"+switch-master", b"m 10.0.0.1 6379 10.0.0.2 6380") == (
        "m",
        ["m", "10.0.0.1", "6379", "10.0.0.2", "6380"],
    )
    ev = parse_event(b"+sdown", b"slave 10.0.0.3:6381 10.0.0.3 6381 @ m 10.0.0.2 6380")
    assert ev is not None and ev[0] == "m"
    assert parse_event(b"+sdown", b"master m 10.0.0.2 6380") is None
    assert parse_event(b"+switch-master", b"garbage") is None
