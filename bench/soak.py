"""Soak shardproxy under a checked, mixed workload while primaries die, stall and reload.

Usage: ``python -m bench.soak [--minutes 2] [--seed 1] [--clients 8] [--json] [--keep]``

Starts 3 shards (redis-server primary + replica, ``repl-diskless-sync-delay 0``) and shardproxy
(``failover: {mode: promote}``, ``health: {interval_ms: 100, failures: 2, successes: 1}``,
``timeouts: {connect_ms: 300, command_ms: 1000}``, an admin port), then for ``--minutes``:

- **Load**: ``--clients`` threads, each owning its keys: GET/SET, INCR, MGET/MSET and pipelines
  across shards, MULTI/EXEC (MGET + 2 SETs) on hash-tagged pairs, PUBLISH on its own channel;
  an RPUSH and a BLPOP thread on one list; a subscriber of every channel. redis-py, protocol
  2 or 3 at random, each client replaced every 2-12 s, no retries, 5 s socket timeouts.
- **Checks**: values name their key and a version; a read (or an INCR's reply) must show the
  last acknowledged version or one written since with an unknown outcome (error, timeout); a
  pair is never torn; no pop or message twice or out of order, none never sent; every
  acknowledged push popped. What a primary fault of the key's shard explains (the lost write
  was sent from 2 s before the fault began to 1 s after it ended, the read after it began:
  asynchronous replication, or an unknown-outcome write applied late) is
  ``lost_by_failover``, listed with shard and time; anything else is ``wrong``. No reply nor
  error within 5 s is ``hung``.
- **Faults** (from ``--seed``): SIGKILL a primary and restart it as it was 3-5 s later; SIGSTOP
  a node for 1-2 s; POST /reload every 30 s (same file, or the current primaries first). After
  each, the shard must settle (one master, the replica linked, the proxy routing to it) in 20 s.
- **Samples** every 5 s: the proxy's VmRSS and open fds; least-squares slopes per minute.

Prints requests (round trips), ok, errors by kind, wrong, hung, lost_by_failover, faults, the
proxy's failover counts, slopes and samples (``--json``: also one JSON line). Exit 1 if
wrong > 0, hung > 0, a shard did not settle or a reload failed. Every process it starts is
stopped by PID in a ``finally``; ``--keep`` keeps the temp dir with the logs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench import run as bench

SHARDS = ("s1", "s2", "s3")
TIMEOUT = 5.0  # client socket timeout: neither reply nor error within it is "hung"
QUEUE = "soak:queue"
INF = float("inf")


def client(port: int, protocol: int, timeout: float = TIMEOUT) -> redis.Redis:
    return redis.Redis(port=port, protocol=protocol, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    mx, my = (sum(p[i] for p in points) / len(points) for i in (0, 1))
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


@dataclass
class Event:
    """A fault; ``primary``: it hit the shard's primary; ``end``: the shard had settled."""

    shard: str
    kind: str
    node: str
    primary: bool
    start: float
    end: float = INF

    def covers(self, shard: str, t: float, before: float = 0.0, after: float = 1.0) -> bool:
        return self.primary and shard == self.shard and self.start - before <= t <= self.end + after


class Reg:
    """A key (or tagged pair) owned by one thread: versions sent, acknowledged, unknown."""

    def __init__(self, key: str, shard: str, counter: bool = False) -> None:
        self.key, self.shard, self.counter, self.acked, self.top = key, shard, counter, 0, 0
        self.pending: list[int] = []  # unknown-outcome versions since the last acknowledgement
        self.sent: dict[int, float] = {}  # recent versions -> time sent

    def begin(self, t: float) -> int:
        v = max([self.acked, *self.pending]) + 1 if self.counter else self.top + 1
        self.top, self.sent[v] = max(self.top, v), t
        if len(self.sent) > 256:
            del self.sent[next(iter(self.sent))]
        return v

    def done(self, v: int, ok: bool) -> None:
        self.acked, self.pending = (v, []) if ok else (self.acked, [*self.pending, v])


class Stats:
    def __init__(self) -> None:
        self.requests, self.ok, self.ops, self.errors = 0, 0, Counter[str](), Counter[str]()
        self.error_samples: dict[str, str] = {}
        self.error_times: list[float] = []
        self.wrong, self.hung, self.lost = list[str](), list[str](), list[str]()

    def error(self, exc: Exception, t: float) -> None:
        msg = str(exc)
        code = getattr(exc, "status_code", None) or type(exc).__name__
        code = msg.split(" ")[0] if type(exc) is redis.ResponseError else code  # an unknown code
        code += " (no shard named)" if code == "TRYAGAIN" and msg[:6] != "shard " else ""
        self.errors[code] += 1
        self.error_samples.setdefault(code, msg[:150])
        self.error_times.append(t)

    def merge(self, other: Stats) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            setattr(self, name, {**value, **mine} if type(value) is dict else mine + value)


class Load(threading.Thread):
    """A load thread: its own stats and a client it replaces every 2-5 s; never raises."""

    def __init__(self, name: str, seed: int, soak: Soak) -> None:
        super().__init__(name=name, daemon=True)
        self.rng, self.soak, self.st = random.Random(seed), soak, Stats()
        self.halt = threading.Event()
        self.c: redis.Redis | None = None
        self.rotate_at, self.crash = 0.0, ""

    def attempt(self, what: str, fn: Callable[[redis.Redis], Any]) -> tuple[bool, Any]:
        if self.c is None or time.monotonic() >= self.rotate_at:
            if self.c is not None:
                self.c.close()
            self.c = client(self.soak.port, self.rng.choice((2, 3)))
            self.rotate_at = time.monotonic() + self.rng.uniform(2, 5)
        t0 = time.monotonic()
        self.st.requests += 1
        self.st.ops[what] += 1
        try:
            res = fn(self.c)
        except redis.TimeoutError as exc:
            self.st.hung.append(f"{self.name} {what} sent at {self.soak.rel(t0):.1f}s: {exc}")
            self.rotate_at = 0.0
        except redis.RedisError as exc:
            self.st.error(exc, t0)
            self.rotate_at = 0.0 if isinstance(exc, redis.ConnectionError) else self.rotate_at
        else:
            self.st.ok += 1
            return True, res
        return False, None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.step()
        except Exception as exc:  # a bug in this tool: reported as wrong
            self.crash = f"{self.name} crashed: {type(exc).__name__}: {exc}"
        finally:
            if self.c is not None:
                self.c.close()

    def step(self) -> None:
        raise NotImplementedError


class Worker(Load):
    OPS, WEIGHTS = (
        ("set", "get", "incr", "mget", "mset", "pipe", "multi", "pub"),
        (15, 15, 10, 10, 8, 8, 10, 8),
    )

    def __init__(self, i: int, seed: int, soak: Soak) -> None:
        super().__init__(f"worker-{i}", seed, soak)
        h = [hashlib.md5(f"{i}.{j}".encode()).hexdigest()[:8] for j in range(40)]
        self.keys = [soak.reg(f"soak:{i}:k:{x}") for x in h]
        self.counters = [soak.reg(f"soak:{i}:n:{x}", counter=True) for x in h[:8]]
        self.pairs = [soak.reg(f"{{soak:{i}:g:{x}}}") for x in h[:6]]
        self.channel, self.pub_seq, self.pub_failed = f"soak:ch:{i}", 0, set[int]()

    def check(self, r: Reg, raw: Any, t: float, key: str = "") -> None:
        """A value read of ``r`` (stored as b"<key>=<version>"; no key is version 0)."""
        k, _, v = bytes(raw or b"=0").decode(errors="replace").rpartition("=")
        if raw is not None and (k != (key or r.key) or not v.isdigit()):
            self.st.wrong.append(f"{key or r.key} read {raw!r} at {self.soak.rel(t):.1f}s")
        else:
            self.observe(r, int(v), t)

    def observe(self, r: Reg, o: int, t: float) -> None:
        if o == r.acked or o in r.pending:
            return
        what = f"{r.key} ({r.shard}) read v{o} at {self.soak.rel(t):.1f}s, acked v{r.acked}"
        # the first lost version was sent at most 2 s before the fault began (replication lag
        # is milliseconds), or during it; the read came after the fault began
        first = r.sent.get(min(o, r.acked) + 1, INF)
        e = next(
            (e for e in self.soak.events if e.covers(r.shard, first, 2) and e.start <= t), None
        )
        if e is None or not 0 <= o <= r.top:
            return self.st.wrong.append(f"{what}, pending {r.pending}")
        self.st.lost.append(f"{what}: {e.kind} of {e.node} at {self.soak.rel(e.start):.1f}s")
        r.acked = o

    def step(self) -> None:
        rng, now, enc = self.rng, time.monotonic(), lambda k, v: f"{k}={v}".encode()
        op = rng.choices(self.OPS, self.WEIGHTS)[0]
        if op in ("set", "incr"):
            r = rng.choice(self.keys if op == "set" else self.counters)
            v = r.begin(now)
            ok, res = self.attempt(
                op, lambda c: c.set(r.key, enc(r.key, v)) if op == "set" else c.incr(r.key)
            )
            if ok and r.counter:  # INCR's reply must follow a value the key may have
                self.observe(r, int(res) - 1, now)
                v = int(res)
            r.done(v, ok and res is not False)
        elif op in ("get", "mget"):
            regs = rng.sample(self.keys, 1 if op == "get" else 5)
            ok, res = self.attempt(
                op, lambda c: [c.get(regs[0].key)] if op == "get" else c.mget([r.key for r in regs])
            )
            if ok and len(res) != len(regs):
                self.st.wrong.append(f"{op} of {len(regs)} keys answered {res!r}")
            for r, raw in zip(regs, res if ok else [], strict=False):
                self.check(r, raw, now)
        elif op in ("mset", "pipe"):
            plan = [
                (r, r.begin(now) if op == "mset" or rng.random() < 0.5 else 0)
                for r in rng.sample(self.keys, 4)
            ]

            def send(c: redis.Redis) -> list[Any]:
                if op == "mset":
                    return [c.mset({r.key: enc(r.key, v) for r, v in plan})] * len(plan)
                p = c.pipeline(transaction=False)
                for r, v in plan:
                    p.set(r.key, enc(r.key, v)) if v else p.get(r.key)
                return p.execute(raise_on_error=False)  # type: ignore[no-any-return]

            ok, res = self.attempt(op, send)
            for x in (x for x in res if isinstance(x, Exception)) if ok else ():
                self.st.error(x, now)
            self.st.ok -= ok and any(isinstance(x, Exception) for x in res)
            for (r, v), got in zip(plan, res if ok else [None] * len(plan), strict=True):
                if v:
                    r.done(v, got is True)
                elif ok and not isinstance(got, Exception):
                    self.check(r, got, now)
        elif op == "multi":
            g = rng.choice(self.pairs)
            v, a, b = g.begin(now), g.key + ".a", g.key + ".b"
            ok, res = self.attempt(op, lambda c: c.pipeline(transaction=True).mget([a, b])
                                   .set(a, enc(a, v)).set(b, enc(b, v)).execute())  # fmt: skip
            if ok and res[1:] == [True, True]:
                self.check_pair(g, res[0], now)
            g.done(v, ok and res[1:] == [True, True])
        else:
            self.pub_seq += 1
            seq = self.pub_seq
            ok, _ = self.attempt(op, lambda c: c.publish(self.channel, f"{self.name}:{seq}"))
            self.pub_failed.update(() if ok else (seq,))
        time.sleep(0.005)

    def check_pair(self, g: Reg, res: list[Any], t: float) -> None:
        a, b = (x if x is None else bytes(x).rpartition(b"=")[2] for x in res)
        if a != b:  # both written in one MULTI/EXEC: never one without the other
            return self.st.wrong.append(f"torn pair {g.key} at {self.soak.rel(t):.1f}s: {res!r}")
        self.check(g, res[0], t, g.key + ".a")
        self.check(g, res[1], t, g.key + ".b")

    def final(self) -> None:
        """Every key read once more, once the fleet has settled."""
        now = time.monotonic()
        for r in [*self.keys, *self.counters, *self.pairs]:
            keys = [r.key + ".a", r.key + ".b"] if r in self.pairs else [r.key]
            ok, res = self.attempt("final", lambda c, keys=keys: c.mget(keys))
            if ok and len(keys) == 2:
                self.check_pair(r, res, now)
            elif ok:
                self.observe(r, int(res[0] or 0), now) if r.counter else self.check(r, res[0], now)
        if self.c is not None:
            self.c.close()


def in_order(load: Load, label: str, got: list[tuple[int, float]], unknown: set[int],
             excused: Callable[[float], bool]) -> set[int]:  # fmt: skip
    """No seq twice or out of order, except an unknown-outcome one applied late or one that a
    fault excuses (lost_by_failover); returns the seqs seen."""
    seen, high = set[int](), 0
    for seq, t in got:
        if seq in seen or seq < high:
            how = "twice" if seq in seen else f"after {high}"
            what = f"{label} {seq} {how} at {load.soak.rel(t):.1f}s"
            late = seq not in seen and seq in unknown
            (load.st.lost if late or excused(t) else load.st.wrong).append(what)
        seen.add(seq)
        high = max(high, seq)
    return seen


class Queue(Load):
    """The RPUSH end (``pusher`` None) or the BLPOP end of the shared list."""

    def __init__(self, seed: int, soak: Soak, pusher: Queue | None = None) -> None:
        super().__init__("popper" if pusher else "pusher", seed, soak)
        self.pusher, self.top, self.empty = pusher, 0, 0
        self.acked, self.failed = dict[int, float](), set[int]()  # pushes: seq -> time sent
        self.popped: list[tuple[int, float]] = []

    def step(self) -> None:
        t = time.monotonic()
        if self.pusher is None:
            self.top += 1
            seq = self.top
            ok, _ = self.attempt("rpush", lambda c: c.rpush(QUEUE, f"q:{seq}"))
            self.acked.update({seq: t}) if ok else self.failed.add(seq)
            return time.sleep(0.01)
        ok, res = self.attempt("blpop", lambda c: c.blpop([QUEUE], 1))
        self.empty = self.empty + 1 if ok and res is None else 0
        text = bytes(res[1]).decode(errors="replace") if ok and res else ""
        if text[:2] == "q:" and text[2:].isdigit() and int(text[2:]) <= self.pusher.top:
            self.popped.append((int(text[2:]), t))
        elif text:
            self.st.wrong.append(f"BLPOP got {res!r}: never pushed")

    def verify(self, shard: str, events: list[Event]) -> None:
        assert self.pusher is not None

        def near(t: float, before: float, after: float) -> bool:
            return any(e.covers(shard, t, before, after) for e in events)

        seen = in_order(self, "q", self.popped, self.pusher.failed, lambda t: near(t, 0, 5))
        for seq, t in self.pusher.acked.items():
            if seq not in seen:
                what = f"q {seq} pushed (acknowledged) at {self.soak.rel(t):.1f}s, never popped"
                (self.st.lost if near(t, 2, 1) else self.st.wrong).append(what)


class Subscriber(Load):
    def __init__(self, seed: int, soak: Soak, workers: list[Worker]) -> None:
        super().__init__("subscriber", seed, soak)
        self.by_channel = {w.channel: w for w in workers}
        self.got: dict[str, list[tuple[int, float]]] = {w.channel: [] for w in workers}

    def step(self) -> None:
        c = client(self.soak.port, self.rng.choice((2, 3)))
        ps, t0, confirmed = c.pubsub(), time.monotonic(), 0
        self.st.requests += 1
        self.st.ops["subscribe"] += 1
        try:
            ps.subscribe(*self.by_channel)
            until = t0 + self.rng.uniform(6, 12)
            while not self.halt.is_set() and time.monotonic() < until:
                if confirmed < len(self.got) and time.monotonic() - t0 > TIMEOUT:
                    return self.st.hung.append(
                        f"SUBSCRIBE at {self.soak.rel(t0):.1f}s not confirmed"
                    )
                m = ps.get_message(timeout=0.5)
                if m and m["type"] == "subscribe":
                    confirmed += 1
                    self.st.ok += confirmed == len(self.got)
                elif m and m["type"] == "message":
                    channel, data = bytes(m["channel"]).decode(), bytes(m["data"]).decode()
                    w, (name, _, seq) = self.by_channel.get(channel), data.rpartition(":")
                    if w and name == w.name and seq.isdigit() and int(seq) <= w.pub_seq:
                        self.got[channel].append((int(seq), time.monotonic()))
                    else:
                        self.st.wrong.append(f"message {data!r} on {channel!r}: never published")
        except redis.RedisError as exc:
            self.st.error(exc, t0)
        finally:
            ps.close()
            c.close()

    def verify(self) -> int:
        for channel, got in self.got.items():
            in_order(self, channel, got, self.by_channel[channel].pub_failed, lambda t: False)
        return sum(map(len, self.got.values()))


@dataclass
class Node:
    address: str
    port: int
    argv: list[str]
    managed: bench.Managed


class Soak:
    """The fleet, the proxy, the faults and the samples."""

    def __init__(self, args: argparse.Namespace, procs: bench.Processes, workdir: Path) -> None:
        from shardproxy.routing.ring import Ring

        self.args, self.procs, self.workdir, self.t0 = args, procs, workdir, time.monotonic()
        self.events, self.problems, self.faults = list[Event](), list[str](), Counter[str]()
        self.samples: list[tuple[float, int, int]] = []
        self.halt, self.ring = threading.Event(), Ring.build([(s, 1) for s in SHARDS])

    def rel(self, t: float) -> float:
        return t - self.t0

    def reg(self, key: str, counter: bool = False) -> Reg:
        tag = key[1 : key.index("}")] if key.startswith("{") else key
        return Reg(key, self.ring.shard_name(tag.encode()), counter)

    def start(self) -> None:
        server, ports = shutil.which("redis-server") or "/usr/bin/redis-server", bench.free_ports(8)
        self.nodes: dict[str, list[Node]] = {s: [] for s in SHARDS}
        for i, port in enumerate(ports[:6]):
            (self.workdir / str(port)).mkdir()
            argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.workdir / str(port)),
                    "--repl-diskless-sync-delay", "0"]  # fmt: skip
            argv += ["--replicaof", "127.0.0.1", str(ports[i - 1])] if i % 2 else []
            m = self.procs.start(f"redis-{port}", argv, self.workdir / f"redis-{port}.log")
            self.nodes[SHARDS[i // 2]].append(Node(f"127.0.0.1:{port}", port, argv, m))
            bench.wait_port(port, m)
        self.port, self.admin = ports[6:]
        self.topology = self.workdir / "topology.yaml"
        self.write_topology({s: ns[0].address for s, ns in self.nodes.items()})
        argv = [sys.executable, "-m", "shardproxy", "run", "-c", str(self.topology),
                "--log-level", "warning"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(bench.REPO))
        self.proxy = self.procs.start("shardproxy", argv, self.workdir / "proxy.log", env=env)
        bench.wait_port(self.port, self.proxy)
        bench.wait_port(self.admin, self.proxy)
        if not all(self.wait_settled(shard, 30) for shard in SHARDS):
            raise RuntimeError(f"the fleet did not settle; logs in {self.workdir}")

    def write_topology(self, primaries: dict[str, str]) -> None:
        shards = [{"name": s, "primary": p, "replicas": [n.address for n in ns if n.address != p]}
                  for s, ns in self.nodes.items() for p in [primaries[s]]]  # fmt: skip
        topology = {"listen": f"127.0.0.1:{self.port}", "admin": f"127.0.0.1:{self.admin}",
                    "failover": {"mode": "promote"},
                    "health": {"interval_ms": 100, "failures": 2, "successes": 1},
                    "timeouts": {"connect_ms": 300, "command_ms": 1000},
                    "shards": shards}  # fmt: skip
        self.topology.with_suffix(".tmp").write_text(yaml.safe_dump(topology, sort_keys=False))
        os.replace(self.topology.with_suffix(".tmp"), self.topology)

    def http(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def view(self) -> dict[str, dict[str, Any]]:
        status, body = self.http("/topology")
        return {s["name"]: s for s in json.loads(body)["shards"]} if status == 200 else {}

    def master(self, shard: str) -> Node | None:
        """The shard's master if it is settled: one master, the replica linked to it, the proxy
        routing to it and seeing every node up."""
        try:
            infos = {}
            for n in self.nodes[shard]:
                with client(n.port, 2, 0.5) as c:
                    infos[n.port] = c.info("replication")
        except redis.RedisError:
            return None
        m = [n for n in self.nodes[shard] if infos[n.port]["role"] == "master"]
        linked = len(m) == 1 and all(
            n is m[0]
            or (
                infos[n.port].get("master_port") == m[0].port
                and infos[n.port].get("master_link_status") == "up"
            )
            for n in self.nodes[shard]
        )
        view = self.view().get(shard) if linked else None
        up = (
            view
            and view["primary"] == m[0].address
            and all(x["health"] == "up" for x in view["nodes"])
        )
        return m[0] if up else None

    def wait_settled(self, shard: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.master(shard) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def chaos(self) -> None:
        rng, n = random.Random(self.args.seed), 0
        end, nxt = self.t0 + self.args.minutes * 60 - 12, self.t0 + 5  # time to settle at the end
        while not self.halt.wait(0.1) and time.monotonic() < end:
            if time.monotonic() < nxt:
                continue
            kind = ("kill", "stop")[n] if n < 2 else rng.choice(("kill", "stop", "stop"))
            shard, n = rng.choice(SHARDS), n + 1
            master = self.master(shard) if self.wait_settled(shard, 10) else None
            if master is None:
                return self.problems.append(f"{shard} not settled before a {kind}: no more faults")
            node = master if kind == "kill" else rng.choice(self.nodes[shard])
            ev = Event(shard, kind, node.address, node is master, time.monotonic())
            self.events.append(ev)
            self.faults[kind] += 1
            if kind == "kill":
                node.managed.proc.kill()
                node.managed.proc.wait(10)
                time.sleep(rng.uniform(3, 5))
                log = self.workdir / f"redis-{node.port}.{ev.start:.0f}.log"
                node.managed = self.procs.start(f"redis-{node.port}", node.argv, log)
                bench.wait_port(node.port, node.managed)
            else:
                os.kill(node.managed.proc.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(1, 2))
                os.kill(node.managed.proc.pid, signal.SIGCONT)
            what = f"{kind} {node.address} ({shard} {'primary' if ev.primary else 'replica'})"
            if not self.wait_settled(shard, 20):
                self.problems.append(
                    f"not settled 20 s after the {what} at {self.rel(ev.start):.0f}s"
                )
            ev.end = time.monotonic()
            print(f"[{self.rel(ev.start):6.1f}s] {what}, settled after {ev.end - ev.start:.1f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
            nxt = time.monotonic() + rng.uniform(4, 9)

    def reloader(self) -> None:
        n = 0
        while not self.halt.wait(30):
            if n % 2 and (view := self.view()):  # the current primaries first, as the proxy says
                self.write_topology({name: s["primary"] for name, s in view.items()})
            status, body = self.http("/reload", "POST")
            self.faults["reload"], n = self.faults["reload"] + 1, n + 1
            if status != 200:
                self.problems.append(f"reload at {self.rel(time.monotonic()):.1f}s: {body}")

    def sampler(self, done: threading.Event) -> None:
        """Every 5 s, and once more when ``done`` is set."""
        while True:
            pids = bench.process_tree(self.proxy.proc.pid)
            self.samples.append(
                (round(self.rel(time.monotonic())), bench.rss_kib(pids), bench.fd_count(pids))
            )
            if done.is_set():
                return
            done.wait(5)


def soak(args: argparse.Namespace, procs: bench.Processes, workdir: Path) -> dict[str, Any]:
    s = Soak(args, procs, workdir)
    s.start()
    s.t0 = time.monotonic()
    workers = [Worker(i, args.seed * 1000 + i, s) for i in range(args.clients)]
    pusher = Queue(args.seed * 1000 + 900, s)
    popper = Queue(args.seed * 1000 + 901, s, pusher)
    sub = Subscriber(args.seed * 1000 + 902, s, workers)
    helpers = [threading.Thread(target=f, daemon=True) for f in (s.chaos, s.reloader)]
    for t in [sub, *workers, pusher, popper, *helpers]:
        t.start()
    done = threading.Event()
    sampler = threading.Thread(target=s.sampler, args=(done,), daemon=True)
    sampler.start()
    time.sleep(max(0.0, s.t0 + args.minutes * 60 - time.monotonic()))
    for t in [*workers, pusher]:
        t.halt.set()
        t.join(30)
    s.halt.set()
    for t in helpers:
        t.join(60)
    s.problems += [f"{x} not settled at the end" for x in SHARDS if not s.wait_settled(x, 30)]
    popper.empty = 0
    while popper.empty < 2 and popper.is_alive():  # until the queue is drained
        time.sleep(0.2)
    for t in (popper, sub):
        t.halt.set()
        t.join(30)
    for w in workers:
        w.final()
    popper.verify(s.ring.shard_name(QUEUE.encode()), s.events)
    delivered, st, failovers = sub.verify(), Stats(), Counter[str]()
    done.set()  # one last sample, after everything
    sampler.join(10)
    for t in [sub, *workers, pusher, popper]:
        st.merge(t.st)
        st.wrong += [t.crash or f"{t.name} did not stop"] if t.crash or t.is_alive() else []
    for line in s.http("/metrics")[1].splitlines():
        if line.startswith("shardproxy_failovers_total{"):
            failovers[line.split('result="')[1].split('"')[0]] += int(float(line.split()[-1]))
    outside = sum(
        not any(e.start - 0.1 <= t <= e.end + 2 for e in s.events) for t in st.error_times
    )
    return {
        "minutes": args.minutes, "seed": args.seed, "clients": args.clients,
        "requests": st.requests, "ok": st.ok, "errors": dict(st.errors.most_common()),
        "errors_list": [f"{k}: {m}" for k, m in st.error_samples.items()],
        "errors_outside_faults": outside,
        "wrong": len(st.wrong), "hung": len(st.hung), "lost_by_failover": len(st.lost),
        "faults_injected": s.faults.total(), "faults": dict(s.faults),
        "proxy_failovers": dict(failovers), "problems": s.problems, "ops": dict(st.ops),
        "queue": {"pushed_acked": len(pusher.acked), "popped": len(popper.popped)},
        "pubsub": {"published": sum(w.pub_seq for w in workers), "delivered": delivered},
        "rss_kb_per_min": round(slope([(t / 60, r) for t, r, _ in s.samples]), 1),
        "fds_per_min": round(slope([(t / 60, f) for t, _, f in s.samples]), 2),
        "samples": [{"t_s": t, "rss_kb": r, "fds": f} for t, r, f in s.samples],
        "wrong_list": st.wrong[:20], "hung_list": st.hung[:20],
        "lost_by_failover_list": st.lost[:50],
    }  # fmt: skip


def report(r: dict[str, Any]) -> None:
    print(
        f"soak: {r['minutes']} min, seed {r['seed']}, {r['clients']} clients + queue + subscriber"
    )
    for k, v in list(r.items())[3:]:
        if k == "samples":
            print("  samples (s, RSS KB, fds):", *((x["t_s"], x["rss_kb"], x["fds"]) for x in v))
        elif not k.endswith("_list"):
            print(f"  {k}: {v}")
        for x in r.get(k + "_list", ()):
            print(f"      {x}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1, help="the fault schedule and the op mix")
    ap.add_argument("--clients", type=int, default=8, help="key-owning load threads (8)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    args = ap.parse_args(argv)
    procs, workdir, failed = (
        bench.Processes(),
        Path(tempfile.mkdtemp(prefix="shardproxy-soak-")),
        True,
    )
    try:
        res = soak(args, procs, workdir)
        report(res)
        print(json.dumps(res)) if args.json else None
        failed = bool(res["wrong"] or res["hung"] or res["problems"])
        return int(failed)
    finally:
        for m in procs.managed:  # a stopped node would not act on SIGTERM
            if m.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGCONT)
        procs.stop_all()
        if failed or args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
