"""Benchmark shardproxy against nutcracker (twemproxy 0.5) and direct Redis, on this machine.

Usage::

    python -m bench.run [--workers N] [--rounds R] [--quick] [--out DIR] [...]
    python -m bench.run --help

One command does everything, and leaves nothing running:

1. **Fleet.** In a temp dir, on free loopback ports: 3 shards ``s1 s2 s3``, each a redis-server
   primary with one replica (``--save "" --appendonly no``); nutcracker over the primaries with
   the same ketama ring (``host:port:1 sN``, fnv1a_64, hash tag ``{}``, one server connection,
   preconnect, no ejection); shardproxy (``python -m shardproxy run --workers N``, the default
   config plus listen/admin ports, the shards with their replicas) with ``read_policy: primary``;
   and a second shardproxy with ``read_policy: prefer-replica`` for the read-heavy run. The
   keyspace ``key:000000000000 .. key:000000099999`` (64-byte values) is written beforehand on
   the shard primaries, placed by the same ring, and in full on s1's primary for the direct runs.
2. **Throughput and latency.** ``redis-benchmark -d 64 -r 100000 --csv`` per configuration:
   SET and GET at ``-c 50 -P 1``, ``-c 200 -P 1`` and ``-c 50 -P 16`` (``-t set`` and ``-t get``
   as separate runs, so that CPU is measured per command); ``MGET`` of 10 random keys (spread
   over the shards) at ``-c 50``; and a read-heavy GET at ``-c 50`` where the shardproxy target
   is the prefer-replica proxy (direct and nutcracker read the primaries). Targets: **direct**
   Redis (ONE primary, s1: the ceiling a single unsharded server gives, no proxy hop),
   **nutcracker** and **shardproxy**. Each round runs every configuration against the targets in
   that order (direct, nutcracker, shardproxy), so the targets are interleaved over time; the
   figures are medians over rounds (rps, p50 and p99 from redis-benchmark's CSV columns
   ``rps`` ``p50_latency_ms`` ``p99_latency_ms``).
3. **CPU per request** of each target process: utime+stime from ``/proc/PID/stat`` over the run,
   summed over the process and all its descendants (shardproxy's worker processes), in clock
   ticks (``SC_CLK_TCK``), divided by the run's requests. For direct it is the redis-server's.
4. **Memory per idle connection.** Before the throughput runs: each proxy's RSS (``VmRSS``,
   summed over its processes) idle, and again with ``--idle-connections`` (10000) plain sockets
   open to it (opened in batches from this process, which raises ``RLIMIT_NOFILE`` first so the
   proxies inherit it); the difference over the connection count is KiB per idle connection.
   The RSS after all the throughput runs is reported too.
5. **Report.** A table per configuration (median rps, p50/p99, CPU µs/request, ratios
   shardproxy/nutcracker and shardproxy/direct), the memory figures and the machine, on stdout
   and in ``report.txt``; ``results.json`` (every run, the medians, the ratios, the configs, and
   every PID started with its start time) and ``rps.png`` (a bar chart; needs matplotlib) in
   ``--out``.

Every process is started in its own session (a Ctrl-C in the terminal reaches only this
program), recorded with its PID, and stopped by PID in a ``finally`` (SIGTERM, then SIGKILL),
also on Ctrl-C or SIGTERM. Exit status: 0 when every run succeeded, 1 when any failed (the
report says which; the temp dir with all logs is then kept), 130 on interruption.

Defaults: 200000 requests per ``-P 1`` run, 1000000 per ``-P 16`` run, 100000 per MGET run,
3 rounds, 10000 idle connections. ``--quick`` makes every count CI-sized (a few seconds of
load in all), and explicit options still win over it. The machine has few cores: the load
generator, the proxy and redis share them, as the report's machine line says.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"

SHARDS = ("s1", "s2", "s3")
KEYSPACE = 100_000  # redis-benchmark -r; keys are key:%012d
VALUE_SIZE = 64  # redis-benchmark -d
MGET_KEYS = 10
TARGETS = ("direct", "nutcracker", "shardproxy")
TARGET_LABELS = {
    "direct": "direct (1 redis primary)",
    "nutcracker": "nutcracker 0.5",
    "shardproxy": "shardproxy",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECT_BATCH = 100  # idle connections opened before waiting for the proxy to accept them


def key_name(i: int) -> bytes:
    """The key redis-benchmark makes of ``key:__rand_int__`` for random number ``i``."""
    return b"key:%012d" % i


# --- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Request counts: the full defaults, and the --quick ones."""

    requests: int
    requests_pipelined: int
    mget_requests: int
    idle_connections: int
    run_timeout: float


FULL = Sizes(200_000, 1_000_000, 100_000, 10_000, 600.0)
QUICK = Sizes(4_000, 20_000, 1_000, 1_000, 60.0)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(
            "Benchmark shardproxy against nutcracker and direct Redis on a fleet it starts "
            "itself (3 shards of primary+replica on loopback), then stops. Prints a table per "
            "configuration and writes results.json, report.txt and rps.png into --out."
        ),
        epilog=(
            "Configurations: SET and GET at -c 50 -P 1, -c 200 -P 1, -c 50 -P 16; MGET of 10 "
            "keys at -c 50; read-heavy GET at -c 50 against a read_policy: prefer-replica "
            "shardproxy. 'direct' is ONE redis primary (no sharding, no proxy). Medians over "
            "rounds; CPU µs/request from /proc/PID/stat of the target (and its workers). "
            f"Full sizes: --requests {FULL.requests} --requests-pipelined "
            f"{FULL.requests_pipelined} --mget-requests {FULL.mget_requests} "
            f"--idle-connections {FULL.idle_connections}; --quick: {QUICK.requests}, "
            f"{QUICK.requests_pipelined}, {QUICK.mget_requests}, {QUICK.idle_connections}. "
            "Example: python -m bench.run --workers 2 --rounds 5"
        ),
    )
    parser.add_argument(
        "--workers", type=_positive, default=1, metavar="N",
        help="passed to `shardproxy run --workers N` (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=_positive, default=3, metavar="R",
        help="rounds; each runs every configuration against every target (default: 3)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="CI-sized request counts (a few seconds of load in all)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=_positive, metavar="N",
        help=f"requests per -P 1 SET/GET run (default: {FULL.requests}; quick {QUICK.requests})",
    )  # fmt: skip
    parser.add_argument(
        "--requests-pipelined", type=_positive, metavar="N",
        help=(
            f"requests per -P 16 run (default: {FULL.requests_pipelined}; "
            f"quick {QUICK.requests_pipelined})"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--mget-requests", type=_positive, metavar="N",
        help=(
            f"MGET commands per MGET run (default: {FULL.mget_requests}; "
            f"quick {QUICK.mget_requests})"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--idle-connections", type=int, metavar="N",
        help=(
            f"idle client connections for the memory figures, 0 skips them "
            f"(default: {FULL.idle_connections}; quick {QUICK.idle_connections})"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--run-timeout", type=float, metavar="SECONDS",
        help=(
            f"a redis-benchmark run taking longer fails (default: {FULL.run_timeout:.0f}; "
            f"quick {QUICK.run_timeout:.0f})"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
        help="where results.json, report.txt and rps.png go (default: bench/results/)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-workdir", action="store_true",
        help="keep the temp dir (configs, logs) even when every run succeeded",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for name in ("requests", "requests_pipelined", "mget_requests", "idle_connections"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(sizes, name))
    if args.run_timeout is None:
        args.run_timeout = sizes.run_timeout
    if args.idle_connections < 0:
        parser.error("--idle-connections must be >= 0")
    return args


# --- /proc ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; index = field number - 3."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the PID, an identity)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, started: int) -> bool:
    """True while the process ``pid`` that started at ``started`` exists and is no zombie."""
    fields = _stat(pid)
    return fields is not None and int(fields[19]) == started and fields[0] not in ("Z", "X")


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks; None once it is gone."""
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else None


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/PID/task/*/children), ``pid`` first."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in found or not os.path.exists(f"/proc/{current}"):
            continue
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{current}/task/{task}/children").read_text()
                    stack.extend(int(child) for child in children.split())
    return found


def rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmRSS (KiB) over ``pids``."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def fd_count(pids: Sequence[int]) -> int:
    """Open file descriptors over ``pids``."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


# --- processes --------------------------------------------------------------------------------


@dataclass
class Managed:
    """A process this program started; ``started`` is its /proc start time."""

    name: str
    proc: subprocess.Popen[bytes]
    started: int
    log: Path


@dataclass
class Processes:
    """Every process started, so that all of them are stopped by PID, whatever happens."""

    managed: list[Managed] = field(default_factory=list)
    # descendants of managed processes (shardproxy workers): (name, pid, start time)
    descendants: list[tuple[str, int, int]] = field(default_factory=list)

    def start(
        self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> Managed:
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal Ctrl-C reaches us only; we stop them
                cwd=REPO,
                env=env,
            )
        managed = Managed(name, proc, start_time(proc.pid) or 0, log)
        self.managed.append(managed)
        return managed

    def adopt_descendants(self, managed: Managed) -> list[int]:
        """Record the descendants of ``managed`` now alive; returns their PIDs."""
        known = {pid for _, pid, _ in self.descendants}
        pids = process_tree(managed.proc.pid)[1:]
        for pid in pids:
            started = start_time(pid)
            if pid not in known and started is not None:
                self.descendants.append((f"{managed.name} child", pid, started))
        return pids

    def records(self) -> list[dict[str, Any]]:
        rows = [{"name": m.name, "pid": m.proc.pid, "start_time": m.started} for m in self.managed]
        rows += [{"name": n, "pid": p, "start_time": s} for n, p, s in self.descendants]
        return rows

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every process (newest first), SIGKILL what is left after ``timeout``."""
        for managed in self.managed:
            if managed.proc.poll() is None:
                self.adopt_descendants(managed)
        for managed in reversed(self.managed):
            if managed.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    managed.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for managed in reversed(self.managed):
            try:
                managed.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                managed.proc.kill()
                managed.proc.wait(10)
        deadline = time.monotonic() + timeout
        for _, pid, started in self.descendants:
            while is_running(pid, started) and time.monotonic() < deadline:
                time.sleep(0.05)
            if is_running(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, so no duplicates)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_port(port: int, managed: Managed, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed.proc.poll() is not None:
            raise BenchError(
                f"{managed.name} exited with {managed.proc.returncode} before listening on "
                f"{port}; log {managed.log}:\n{_tail(managed.log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BenchError(f"{managed.name}: nothing listens on 127.0.0.1:{port} after {timeout}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class BenchError(Exception):
    """The fleet could not be set up; the message says what and where the log is."""


# --- setup and checks use redis-py (the load itself is redis-benchmark's) ---------------------


def connect(port: int, timeout: float = 30.0) -> redis.Redis:
    """A RESP2 client for setup and checks. driver_info=None: no CLIENT SETINFO on connect,
    which nutcracker answers by closing the connection."""
    return redis.Redis(
        host="127.0.0.1", port=port, protocol=2, socket_timeout=timeout, driver_info=None
    )


def info(port: int, section: str) -> dict[str, Any]:
    with connect(port) as conn:
        return conn.info(section)


# --- the fleet --------------------------------------------------------------------------------


@dataclass
class Node:
    shard: str
    port: int
    managed: Managed

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Fleet:
    primaries: list[Node]
    replicas: list[Node]
    nutcracker: Managed
    nutcracker_port: int
    proxies: dict[str, Managed]  # read policy -> shardproxy
    proxy_ports: dict[str, int]
    configs: dict[str, str]  # name -> the config file text


def shardproxy_topology(
    fleet_nodes: tuple[list[Node], list[Node]],
    listen: int,
    admin: int,
    read_policy: str,
    max_clients: int | None,
) -> dict[str, Any]:
    primaries, replicas = fleet_nodes
    topology: dict[str, Any] = {
        "listen": f"127.0.0.1:{listen}",
        "admin": f"127.0.0.1:{admin}",
        "hash": {"function": "fnv1a_64", "distribution": "ketama", "tag": "{}"},
        "read_policy": read_policy,
        "shards": [
            {
                "name": primary.shard,
                "weight": 1,
                "primary": primary.address,
                "replicas": [r.address for r in replicas if r.shard == primary.shard],
            }
            for primary in primaries
        ],
    }
    if max_clients is not None:  # only when the idle-connection test needs more than the default
        topology["limits"] = {"max_clients": max_clients}
    return topology


def nutcracker_config(primaries: list[Node], listen: int, client_connections: int) -> str:
    servers = "".join(f"    - {p.address}:1 {p.shard}\n" for p in primaries)
    return (
        "bench:\n"
        f"  listen: 127.0.0.1:{listen}\n"
        "  hash: fnv1a_64\n"
        '  hash_tag: "{}"\n'
        "  distribution: ketama\n"
        "  auto_eject_hosts: false\n"
        "  redis: true\n"
        "  server_connections: 1\n"
        "  preconnect: true\n"
        f"  client_connections: {client_connections}\n"
        "  servers:\n" + servers
    )


def _binary(name: str, fallback: str) -> str:
    path = shutil.which(name) or fallback
    if not os.access(path, os.X_OK):
        raise BenchError(f"{name} not found (looked on PATH and at {fallback})")
    return path


def start_fleet(procs: Processes, workdir: Path, args: argparse.Namespace) -> Fleet:
    redis_server = _binary("redis-server", "/usr/bin/redis-server")
    nutcracker = _binary("nutcracker", "/usr/sbin/nutcracker")
    ports = free_ports(2 * len(SHARDS) + 6)

    def redis(name: str, port: int, replicaof: int | None) -> Managed:
        data = workdir / name
        data.mkdir()
        argv = [
            redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(data),
            "--maxclients", str(args.idle_connections + 1000),
        ]  # fmt: skip
        if replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(replicaof)]
        return procs.start(name, argv, workdir / f"{name}.log")

    primaries = []
    replicas = []
    for i, shard in enumerate(SHARDS):
        port = ports[2 * i]
        primaries.append(Node(shard, port, redis(f"redis-{shard}-primary", port, None)))
    for i, shard in enumerate(SHARDS):
        port = ports[2 * i + 1]
        replicas.append(Node(shard, port, redis(f"redis-{shard}-replica", port, primaries[i].port)))
    for node in primaries + replicas:
        wait_port(node.port, node.managed)
    wait_replication(primaries, replicas, timeout=30.0)

    nc_port, nc_stats, sp_port, sp_admin, spr_port, spr_admin = ports[2 * len(SHARDS) :]
    configs: dict[str, str] = {}
    nc_text = nutcracker_config(primaries, nc_port, args.idle_connections + 1000)
    configs["nutcracker.yml"] = nc_text
    (workdir / "nutcracker.yml").write_text(nc_text)
    nc_argv = [
        nutcracker, "-c", str(workdir / "nutcracker.yml"), "-s", str(nc_stats),
        "-a", "127.0.0.1", "-v", "4", "-o", str(workdir / "nutcracker.out"),
    ]  # fmt: skip
    nc = procs.start("nutcracker", nc_argv, workdir / "nutcracker.log")

    # The default max_clients (10000 per worker) fits the default idle-connection count.
    needed = args.idle_connections + 200
    max_clients = needed if needed > 10_000 else None
    proxies: dict[str, Managed] = {}
    proxy_ports = {"primary": sp_port, "prefer-replica": spr_port}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for policy, listen, admin in (
        ("primary", sp_port, sp_admin),
        ("prefer-replica", spr_port, spr_admin),
    ):
        name = f"shardproxy-{policy}.yaml"
        text = yaml.safe_dump(
            shardproxy_topology((primaries, replicas), listen, admin, policy, max_clients),
            sort_keys=False,
        )
        configs[name] = text
        (workdir / name).write_text(text)
        sp_argv = [
            sys.executable, "-m", "shardproxy", "run", "-c", str(workdir / name),
            "--workers", str(args.workers), "--log-level", "warning",
        ]  # fmt: skip
        proxies[policy] = procs.start(
            f"shardproxy ({policy})", sp_argv, workdir / f"shardproxy-{policy}.log", env=env
        )
    wait_port(nc_port, nc)
    for policy, managed in proxies.items():
        wait_port(proxy_ports[policy], managed)
    for managed in proxies.values():
        expect_workers(procs, managed, args.workers)
    return Fleet(primaries, replicas, nc, nc_port, proxies, proxy_ports, configs)


def expect_workers(procs: Processes, managed: Managed, workers: int) -> None:
    """Record shardproxy's worker processes (waits a little for N>1 of them to appear)."""
    deadline = time.monotonic() + (5.0 if workers > 1 else 0.0)
    while True:
        found = procs.adopt_descendants(managed)
        if len(found) >= workers or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if workers > 1 and len(found) < workers:
        progress(
            f"note: {managed.name} has {len(found)} child process(es) for --workers {workers}; "
            "CPU and RSS are summed over whatever processes it has"
        )


def wait_replication(primaries: list[Node], replicas: list[Node], timeout: float) -> None:
    """Until every replica is linked and has the primary's replication offset."""
    deadline = time.monotonic() + timeout
    for replica in replicas:
        primary = next(p for p in primaries if p.shard == replica.shard)
        while True:
            offset = int(info(primary.port, "replication").get("master_repl_offset", 0))
            state = info(replica.port, "replication")
            if (
                state.get("master_link_status") == "up"
                and int(state.get("slave_repl_offset", -1)) >= offset
            ):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"replica of {replica.shard} ({replica.address}) not in sync")
            time.sleep(0.05)


def populate(port: int, keys: Sequence[bytes], chunk: int = 1000) -> None:
    """MSET ``keys`` (64-byte values) on one server, pipelined."""
    value = b"x" * VALUE_SIZE
    with connect(port, timeout=120.0) as conn:
        pipe = conn.pipeline(transaction=False)
        for start in range(0, len(keys), chunk):
            pipe.mset({key: value for key in keys[start : start + chunk]})
        replies = pipe.execute(raise_on_error=False)
    if any(reply is not True for reply in replies):
        raise BenchError(f"MSET on port {port}: {[r for r in replies if r is not True][:1]!r}")


def populate_fleet(fleet: Fleet) -> None:
    """The keyspace on each shard primary as the ring places it, and all of it on s1 (direct)."""
    from shardproxy.routing.ring import Ring

    ring = Ring.build([(s, 1) for s in SHARDS], function="fnv1a_64", distribution="ketama")
    keys = [key_name(i) for i in range(KEYSPACE)]
    by_shard: dict[str, list[bytes]] = {s: [] for s in SHARDS}
    for key in keys:
        by_shard[ring.shard_name(key)].append(key)
    direct = fleet.primaries[0]
    for primary in fleet.primaries:
        populate(primary.port, keys if primary is direct else by_shard[primary.shard])
    wait_replication(fleet.primaries, fleet.replicas, timeout=60.0)


def check_target(name: str, port: int) -> None:
    """GET and a 10-key MGET through ``port`` return the stored values (placement agrees)."""
    value = b"x" * VALUE_SIZE
    keys = [key_name(i * 9973 % KEYSPACE) for i in range(MGET_KEYS)]
    with connect(port, timeout=10.0) as conn:
        got = conn.get(keys[0])
        many = conn.mget(keys)
    if got != value or many != [value] * MGET_KEYS:
        raise BenchError(f"{name} on port {port}: GET gave {got!r}, MGET gave {many!r}")


# --- idle-connection memory -------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (capped by the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _wait_fds(root: int, at_least: int | None, at_most: int | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = fd_count(process_tree(root))
        if (at_least is None or count >= at_least) and (at_most is None or count <= at_most):
            return count
        if time.monotonic() > deadline:
            return count
        time.sleep(0.01)


def idle_memory(name: str, port: int, root: int, count: int) -> dict[str, Any]:
    """RSS of the process tree at ``root`` idle and with ``count`` idle client connections."""
    time.sleep(0.3)
    base_fds = fd_count(process_tree(root))
    rss_idle = rss_kib(process_tree(root))
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            for _ in range(min(CONNECT_BATCH, count - len(socks))):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.settimeout(10.0)
                sock.connect(("127.0.0.1", port))
            # the accept queue is short: let the proxy take this batch before the next one
            _wait_fds(root, base_fds + len(socks), None, 20.0)
        time.sleep(1.0)
        pids = process_tree(root)
        accepted = fd_count(pids) - base_fds
        rss_loaded = rss_kib(pids)
    finally:
        for sock in socks:  # RST instead of FIN: no TIME_WAIT pile-up on this side
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    _wait_fds(root, None, base_fds, 20.0)
    per_conn = (rss_loaded - rss_idle) / accepted if accepted > 0 else None
    progress(
        f"memory {name}: {rss_idle} KiB idle, {rss_loaded} KiB with {accepted} connections"
        f" -> {_fmt(per_conn, 2)} KiB/connection"
    )
    return {
        "rss_kib_idle": rss_idle,
        "rss_kib_with_connections": rss_loaded,
        "connections_opened": count,
        "connections_accepted": accepted,
        "kib_per_connection": per_conn,
    }


# --- benchmark runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One configuration: a redis-benchmark command line, against every target."""

    key: str
    short: str  # chart label
    title: str
    command: tuple[str, ...]  # "-t set", or a command line with __rand_int__
    clients: int
    pipeline: int
    requests: int
    read_policy: str = "primary"  # the shardproxy that serves it
    note: str = ""


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    result = []
    for clients, pipeline in ((50, 1), (200, 1), (50, 16)):
        requests = args.requests if pipeline == 1 else args.requests_pipelined
        for test in ("set", "get"):
            result.append(
                Scenario(
                    key=f"{test}-c{clients}-P{pipeline}",
                    short=f"{test.upper()} c{clients} P{pipeline}",
                    title=f"{test.upper()} -c {clients} -P {pipeline}",
                    command=("-t", test),
                    clients=clients,
                    pipeline=pipeline,
                    requests=requests,
                )
            )
    result.append(
        Scenario(
            key="mget10-c50-P1",
            short=f"MGET x{MGET_KEYS} c50 P1",
            title=f"MGET of {MGET_KEYS} keys -c 50 -P 1",
            command=("mget", *["key:__rand_int__"] * MGET_KEYS),
            clients=50,
            pipeline=1,
            requests=args.mget_requests,
            note="keys random over the keyspace, so spread over the 3 shards",
        )
    )
    result.append(
        Scenario(
            key="get-read-heavy-prefer-replica",
            short="GET c50 P1 read-heavy\n(prefer-replica)",
            title="read-heavy GET -c 50 -P 1, shardproxy read_policy: prefer-replica",
            command=("-t", "get"),
            clients=50,
            pipeline=1,
            requests=args.requests,
            read_policy="prefer-replica",
            note="shardproxy reads from the replicas; direct and nutcracker from the primaries",
        )
    )
    return result


@dataclass
class Run:
    """One redis-benchmark run against one target."""

    rps: float | None = None
    avg_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    cpu_us_per_request: float | None = None
    cpu_ticks: int | None = None
    seconds: float | None = None
    error: str | None = None


def benchmark_argv(port: int, scenario: Scenario) -> list[str]:
    return [
        _binary("redis-benchmark", "/usr/bin/redis-benchmark"),
        "-h", "127.0.0.1", "-p", str(port),
        "-c", str(scenario.clients), "-n", str(scenario.requests), "-P", str(scenario.pipeline),
        "-d", str(VALUE_SIZE), "-r", str(KEYSPACE), "--csv",
        *scenario.command,
    ]  # fmt: skip


def parse_csv(stdout: str) -> dict[str, str]:
    """The last data row of redis-benchmark --csv output, by column name.

    redis-benchmark 7.0 columns: test, rps, avg_latency_ms, min_latency_ms, p50_latency_ms,
    p95_latency_ms, p99_latency_ms, max_latency_ms.
    """
    lines = [line for line in stdout.splitlines() if line.startswith('"')]
    rows = list(csv.reader(lines))
    if len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        raise ValueError(f"no CSV result in redis-benchmark output: {stdout[-500:]!r}")
    return dict(zip(rows[0], rows[-1], strict=False))


def run_benchmark(port: int, cpu_root: int, scenario: Scenario, timeout: float) -> Run:
    pids = process_tree(cpu_root)
    before = {pid: cpu_ticks(pid) for pid in pids}
    began = time.monotonic()
    proc = subprocess.Popen(
        benchmark_argv(port, scenario),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return Run(error=f"redis-benchmark timed out after {timeout:.0f}s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    seconds = time.monotonic() - began
    ticks = 0
    for pid, start in before.items():
        end = cpu_ticks(pid)
        if start is not None and end is not None:
            ticks += end - start
    text = stdout.decode(errors="replace")
    if proc.returncode != 0:
        problem = (stderr.decode(errors="replace") + text).strip().splitlines()
        return Run(error=f"redis-benchmark exited {proc.returncode}: {' | '.join(problem[-3:])}")
    try:
        row = parse_csv(text)
        return Run(
            rps=float(row["rps"]),
            avg_ms=float(row["avg_latency_ms"]),
            p50_ms=float(row["p50_latency_ms"]),
            p99_ms=float(row["p99_latency_ms"]),
            max_ms=float(row["max_latency_ms"]),
            cpu_us_per_request=ticks / CLK_TCK * 1e6 / scenario.requests,
            cpu_ticks=ticks,
            seconds=seconds,
        )
    except (KeyError, ValueError) as exc:
        return Run(error=str(exc))


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: dict[str, list[Run]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Medians per target, and the shardproxy ratios."""
    medians: dict[str, Any] = {}
    for target, target_runs in runs.items():
        ok = [r for r in target_runs if r.error is None]
        medians[target] = {
            "rps": _median([r.rps for r in ok]),
            "p50_ms": _median([r.p50_ms for r in ok]),
            "p99_ms": _median([r.p99_ms for r in ok]),
            "cpu_us_per_request": _median([r.cpu_us_per_request for r in ok]),
            "runs_ok": len(ok),
            "runs_failed": len(target_runs) - len(ok),
        }
    sp = medians["shardproxy"]
    ratios: dict[str, Any] = {}
    for other in ("nutcracker", "direct"):
        ratios[f"shardproxy/{other}"] = {
            metric: _ratio(sp[metric], medians[other][metric])
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
        }
    return medians, ratios


# --- report -----------------------------------------------------------------------------------


def progress(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "unknown"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if done.stdout or done.stderr
            else ""
        )

    import shardproxy

    commit = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = version(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "python": platform.python_version(),
        "redis_server": version([_binary("redis-server", "/usr/bin/redis-server"), "--version"]),
        "nutcracker": version([_binary("nutcracker", "/usr/sbin/nutcracker"), "-V"]),
        "shardproxy": f"{shardproxy.__version__} ({commit}{', modified' if dirty else ''})",
    }


def format_report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    m = results["machine"]
    s = results["settings"]
    lines.append(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"{m['memory_gib']} GiB; Python {m['python']}"
    )
    lines.append(f"         {m['redis_server']}; {m['nutcracker']}; shardproxy {m['shardproxy']}")
    lines.append(
        f"settings: shardproxy --workers {s['workers']}, {s['rounds']} round(s), medians; "
        f"load generator, proxies and redis share the {m['nproc']} CPUs"
    )
    lines.append(
        "direct = ONE redis-server primary (s1) holding the whole keyspace: no sharding, "
        "no proxy hop"
    )
    for conf in results["configurations"]:
        lines.append("")
        lines.append(
            f"== {conf['title']}  ({conf['requests']:,} requests/run; "
            f"redis-benchmark {_command_text(conf['command'])} -d {VALUE_SIZE} -r {KEYSPACE})"
        )
        if conf["note"]:
            lines.append(f"   {conf['note']}")
        rows = [["target", "rps", "p50 ms", "p99 ms", "CPU µs/req", "runs ok"]]
        for target in TARGETS:
            med = conf["targets"][target]
            label = TARGET_LABELS[target]
            if target == "shardproxy" and conf["read_policy"] != "primary":
                label += f" ({conf['read_policy']})"
            cpu = _fmt(med["cpu_us_per_request"], 2)
            if target == "direct":
                cpu += " (redis)"
            runs = f"{med['runs_ok']}/{med['runs_ok'] + med['runs_failed']}"
            rows.append(
                [
                    label,
                    _fmt(med["rps"]),
                    _fmt(med["p50_ms"], 3),
                    _fmt(med["p99_ms"], 3),
                    cpu,
                    runs,
                ]
            )
        lines.extend(_table(rows))
        vs_nc = conf["ratios"]["shardproxy/nutcracker"]
        vs_direct = conf["ratios"]["shardproxy/direct"]
        lines.append(
            f"   shardproxy/nutcracker: rps {_fmt(vs_nc['rps'], 2, 'x')}, "
            f"p99 {_fmt(vs_nc['p99_ms'], 2, 'x')}, "
            f"CPU/req {_fmt(vs_nc['cpu_us_per_request'], 2, 'x')}   "
            f"shardproxy/direct: rps {_fmt(vs_direct['rps'], 2, 'x')}, "
            f"p99 {_fmt(vs_direct['p99_ms'], 2, 'x')}"
        )
        for target in TARGETS:
            for i, run in enumerate(conf["runs"][target]):
                if run["error"]:
                    lines.append(f"   FAILED {target} round {i + 1}: {run['error']}")
    mem = results["memory"]
    lines.append("")
    if mem.get("skipped"):
        lines.append(f"== memory: skipped ({mem['skipped']})")
    else:
        lines.append(
            f"== memory: RSS (summed over the proxy's processes) idle and with "
            f"{mem['idle_connections']:,} idle client connections"
        )
        rows = [
            ["proxy", "RSS idle KiB", "RSS +conns KiB", "accepted", "KiB/conn", "RSS after load"]
        ]
        for name in ("nutcracker", "shardproxy"):
            fig = mem[name]
            rows.append(
                [
                    TARGET_LABELS[name],
                    _fmt(fig["rss_kib_idle"]),
                    _fmt(fig["rss_kib_with_connections"]),
                    _fmt(fig["connections_accepted"]),
                    _fmt(fig["kib_per_connection"], 2),
                    _fmt(fig.get("rss_kib_after_load")),
                ]
            )
        lines.extend(_table(rows))
        lines.append(
            f"   shardproxy/nutcracker: KiB/conn {_fmt(mem['ratio_kib_per_connection'], 2, 'x')}, "
            f"idle RSS {_fmt(mem['ratio_rss_idle'], 2, 'x')}"
        )
    return "\n".join(lines) + "\n"


def _command_text(command: Sequence[str]) -> str:
    """The command line, repeated arguments shortened: ``mget key:__rand_int__ x10``."""
    if len(command) > 2 and len(set(command[1:])) == 1:
        return f"{command[0]} {command[1]} x{len(command) - 1}"
    return " ".join(command)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("   " + "  ".join(cells))
    return out


def write_chart(path: Path, results: dict[str, Any]) -> None:
    """Grouped bars: median rps per configuration per target (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    confs = results["configurations"]
    fig, ax = plt.subplots(figsize=(max(9.0, 1.5 * len(confs)), 5.5), dpi=110)
    width = 0.8 / len(TARGETS)
    colors = {"direct": "#8c8c8c", "nutcracker": "#4c72b0", "shardproxy": "#dd8452"}
    for i, target in enumerate(TARGETS):
        xs = [j + (i - (len(TARGETS) - 1) / 2) * width for j in range(len(confs))]
        values = [conf["targets"][target]["rps"] or 0.0 for conf in confs]
        bars = ax.bar(xs, values, width, label=TARGET_LABELS[target], color=colors[target])
        for bar, value in zip(bars, values, strict=True):
            if value > 0:
                ax.annotate(
                    f"{value / 1000:.0f}k",
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_yscale("log")
    present = [conf["targets"][t]["rps"] for conf in confs for t in TARGETS]
    low = min((v for v in present if v), default=1.0)
    ax.set_ylim(bottom=low / 2)
    tick_format = FuncFormatter(lambda value, _pos: f"{value / 1000:g}k")
    ax.yaxis.set_major_formatter(tick_format)
    ax.yaxis.set_minor_formatter(tick_format)
    ax.tick_params(axis="y", which="both", labelsize=7)
    ax.set_xticks(range(len(confs)))
    ax.set_xticklabels([conf["short"] for conf in confs], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("requests/s (median over rounds, log scale)")
    m = results["machine"]
    ax.set_title(
        f"shardproxy (--workers {results['settings']['workers']}) vs nutcracker vs direct Redis\n"
        f"{m['nproc']} CPUs {m['cpu_model']}, {results['settings']['rounds']} round(s)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """No second Ctrl-C/SIGTERM in the middle of stopping the fleet."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def benchmark(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    """Set up, measure; returns the results (without the process list)."""
    limit = raise_nofile(args.idle_connections + 1000)
    if args.idle_connections + 500 > limit:
        progress(f"note: RLIMIT_NOFILE is {limit}; opening {limit - 500} idle connections")
        args.idle_connections = max(0, limit - 500)
    machine = machine_info()
    progress(f"starting fleet in {workdir}")
    fleet = start_fleet(procs, workdir, args)
    progress("writing the keyspace")
    populate_fleet(fleet)
    direct = fleet.primaries[0]
    targets: dict[str, tuple[int, Managed]] = {
        "direct": (direct.port, direct.managed),
        "nutcracker": (fleet.nutcracker_port, fleet.nutcracker),
    }
    check_target("direct", direct.port)
    check_target("nutcracker", fleet.nutcracker_port)
    for policy, port in fleet.proxy_ports.items():
        check_target(f"shardproxy ({policy})", port)

    memory: dict[str, Any] = {"idle_connections": args.idle_connections}
    if args.idle_connections > 0:
        for name, port, managed in (
            ("nutcracker", fleet.nutcracker_port, fleet.nutcracker),
            ("shardproxy", fleet.proxy_ports["primary"], fleet.proxies["primary"]),
        ):
            memory[name] = idle_memory(name, port, managed.proc.pid, args.idle_connections)
        memory["ratio_kib_per_connection"] = _ratio(
            memory["shardproxy"]["kib_per_connection"], memory["nutcracker"]["kib_per_connection"]
        )
        memory["ratio_rss_idle"] = _ratio(
            memory["shardproxy"]["rss_kib_idle"], memory["nutcracker"]["rss_kib_idle"]
        )
    else:
        memory["skipped"] = "--idle-connections 0"

    plan = scenarios(args)
    runs: dict[str, dict[str, list[Run]]] = {sc.key: {t: [] for t in TARGETS} for sc in plan}
    for round_no in range(1, args.rounds + 1):
        for sc in plan:
            if sc.read_policy != "primary":
                wait_replication(fleet.primaries, fleet.replicas, timeout=60.0)
            for target in TARGETS:
                if target == "shardproxy":
                    port, managed = fleet.proxy_ports[sc.read_policy], fleet.proxies[sc.read_policy]
                else:
                    port, managed = targets[target]
                run = run_benchmark(port, managed.proc.pid, sc, args.run_timeout)
                runs[sc.key][target].append(run)
                status = (
                    f"FAILED: {run.error}"
                    if run.error
                    else f"{_fmt(run.rps):>10} rps  p50 {_fmt(run.p50_ms, 3)} ms  "
                    f"p99 {_fmt(run.p99_ms, 3)} ms  CPU {_fmt(run.cpu_us_per_request, 2)} µs/req"
                )
                progress(f"[round {round_no}/{args.rounds}] {sc.key:<30} {target:<10} {status}")

    if args.idle_connections > 0:
        memory["nutcracker"]["rss_kib_after_load"] = rss_kib(
            process_tree(fleet.nutcracker.proc.pid)
        )
        memory["shardproxy"]["rss_kib_after_load"] = rss_kib(
            process_tree(fleet.proxies["primary"].proc.pid)
        )

    configurations = []
    for sc in plan:
        medians, ratios = summarize(runs[sc.key])
        configurations.append(
            {
                "key": sc.key,
                "title": sc.title,
                "short": sc.short,
                "command": list(sc.command),
                "clients": sc.clients,
                "pipeline": sc.pipeline,
                "requests": sc.requests,
                "read_policy": sc.read_policy,
                "note": sc.note,
                "targets": medians,
                "ratios": ratios,
                "runs": {t: [asdict(r) for r in runs[sc.key][t]] for t in TARGETS},
            }
        )
    return {
        "machine": machine,
        "settings": {
            "workers": args.workers,
            "rounds": args.rounds,
            "quick": args.quick,
            "requests": args.requests,
            "requests_pipelined": args.requests_pipelined,
            "mget_requests": args.mget_requests,
            "idle_connections": args.idle_connections,
            "keyspace": KEYSPACE,
            "value_size": VALUE_SIZE,
            "clock_ticks_per_second": CLK_TCK,
            "direct": f"one redis-server primary (s1, port {direct.port}) with every key",
        },
        "configurations": configurations,
        "memory": memory,
        "configs": fleet.configs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # Explicitly, also where SIGINT came in ignored (a background job of a non-interactive shell)
    old_handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="shardproxy-bench-"))
    results: dict[str, Any] | None = None
    failed = True
    interrupted = False
    try:
        results = benchmark(args, procs, workdir)
        failed = any(
            conf["targets"][t]["runs_failed"] for conf in results["configurations"] for t in TARGETS
        )
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted; stopping every process started")
    except (BenchError, OSError) as exc:
        progress(f"error: {exc}")
    finally:
        with _signals_ignored():
            procs.stop_all()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if (failed and not interrupted) or args.keep_workdir:
        progress(f"logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    if results is None:
        return 1
    results["processes"] = procs.records()
    report = format_report(results)
    sys.stdout.write("\n" + report)
    (out / "report.txt").write_text(report)
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    try:
        write_chart(out / "rps.png", results)
    except ImportError:
        progress("matplotlib is not installed: no rps.png (pip install matplotlib)")
    progress(f"wrote {out / 'results.json'}, {out / 'report.txt'}, {out / 'rps.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
