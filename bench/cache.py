"""The near-cache: GET throughput and latency with it on and off, and a coherence check.

Usage::

    python -m bench.cache [--rounds 5] [--seconds 5] [--coherence-seconds 10] [--quick] [--json]

Starts the fleet of ``bench.run`` (3 shards of primary + replica, nutcracker over the primaries,
shardproxy ``--workers 1`` with the cache off; its idle prefer-replica proxy too) and one more
shardproxy, the same but with ``cache: {enabled: true, max_memory: 64mb}``. ``key:0 ..
key:99999`` (100-byte values) are written on the shard primaries as the ring places them, and
all of them on s1's primary, which is the **direct** target: ONE redis-server holding the
whole keyspace (no sharding, no proxy hop), as in ``bench.run``.

1. **Throughput.** ``bench/loadgen.c`` (compiled here with gcc) sends GET, keys Zipf s=1.0 over
   the 100,000 keys (rank -> key through a fixed permutation: the hot keys spread over the
   shards), ``-c 50 -P 1``, for ``--seconds``, against direct, nutcracker, shardproxy cache off
   and shardproxy cache on, in that order in every round (interleaved over time); one unmeasured
   warm-up run per target first. Figures are medians over rounds: requests/s, p50/p99 (µs, per
   request), CPU µs/request of the target's processes (utime+stime from /proc, as bench.run
   measures it; for direct the redis-server's), and of the 3 shard primaries ("redis CPU"; for
   direct, s1's). The cache-on proxy's hit ratio per run (from INFO ``cache`` before and after),
   its ``cache_bytes`` and the RSS of every proxy after the load are reported too. Targets,
   printed next to the figures and not asserted: cache on >= 1.5x nutcracker, >= 0.9x direct.
2. **Coherence.** 20 reader threads GET 100 hot keys (``hot:N``) at random through the cache-on
   proxy while one writer SETs ``v<n>|<time.time()>`` (n increasing) to a random one of them,
   about 500 a second, half through the proxy and half directly on the key's primary. Every
   acknowledged write's (key, n, ack time) and every read's (key, value, start time) is kept. A
   read is **stale** if it returns a version older than one acknowledged more than 50 ms before
   it started; the **maximum staleness** is the longest time between the ack of a write and the
   start of a read that still returned an older version. Target: 0 stale reads.

``--json`` prints one more line: every figure as JSON. ``--quick``: 2 rounds of 1 s, 3 s of
coherence run. Every process is stopped by PID in a ``finally``. Exit status 1 when a run
failed (loadgen error, error or nil replies, a lost connection) or a read was stale.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench import run as br
from bench.run import BenchError, Fleet, Managed, Processes, connect, info

REPO = Path(__file__).resolve().parent.parent
KEYS = 100_000
VALUE = b"x" * 100
CONNECTIONS = 50
ZIPF_S = 1.0
TARGETS = ("direct", "nutcracker", "cache_off", "cache_on")
LABELS = {
    "direct": "direct (1 redis primary)",
    "nutcracker": "nutcracker",
    "cache_off": "shardproxy cache off",
    "cache_on": "shardproxy cache on",
}
HOT_KEYS = 100
READERS = 20
WRITES_PER_S = 500
STALE_AFTER = 0.050  # seconds
PAIRS = (("cache_on", "nutcracker"), ("cache_on", "direct"), ("cache_off", "nutcracker"))
PAIRS += (("cache_on", "cache_off"),)
FIGURES = (
    "requests_per_s",
    "p50_us",
    "p99_us",
    "cpu_us_per_request",
    "redis_cpu_us_per_request",
    "loadgen_cpu_us_per_request",
)


def ring() -> Any:
    from shardproxy.routing.ring import Ring

    return Ring.build([(s, 1) for s in br.SHARDS], function="fnv1a_64", distribution="ketama")


def build_loadgen(workdir: Path) -> Path:
    exe = workdir / "loadgen"
    argv = ["gcc", "-O2", "-o", str(exe), str(REPO / "bench" / "loadgen.c")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return exe


def populate(fleet: Fleet) -> None:
    """Every key on its primary by the ring, and all of them on s1's (the direct target)."""
    r = ring()
    keys = [b"key:%d" % i for i in range(KEYS)]
    direct = fleet.primaries[0]
    for primary in fleet.primaries:
        mine = keys if primary is direct else [k for k in keys if r.shard_name(k) == primary.shard]
        with connect(primary.port, timeout=120.0) as conn:
            pipe = conn.pipeline(transaction=False)
            for at in range(0, len(mine), 1000):
                pipe.mset({k: VALUE for k in mine[at : at + 1000]})
            pipe.execute()
    br.wait_replication(fleet.primaries, fleet.replicas, timeout=60.0)


def start_cached_proxy(procs: Processes, fleet: Fleet, workdir: Path) -> tuple[int, Managed]:
    listen, admin = br.free_ports(2)
    topology = br.shardproxy_topology(
        (fleet.primaries, fleet.replicas), listen, admin, "primary", None
    )
    topology["cache"] = {"enabled": True, "max_memory": "64mb"}
    text = yaml.safe_dump(topology, sort_keys=False)
    (workdir / "shardproxy-cache.yaml").write_text(text)
    argv = [
        sys.executable, "-m", "shardproxy", "run", "-c", str(workdir / "shardproxy-cache.yaml"),
        "--workers", "1", "--log-level", "warning",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    managed = procs.start("shardproxy (cache on)", argv, workdir / "shardproxy-cache.log", env=env)
    br.wait_port(listen, managed)
    br.expect_workers(procs, managed, 1)
    return listen, managed


def cache_stats(port: int) -> dict[str, Any]:
    return info(port, "cache")


def hit_ratio(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    hits = after["cache_hits"] - before["cache_hits"]
    asked = hits + after["cache_misses"] - before["cache_misses"]
    return hits / asked if asked else None


def ticks(pids: Sequence[int]) -> dict[int, int | None]:
    return {pid: br.cpu_ticks(pid) for pid in pids}


def spent(before: dict[int, int | None]) -> int:
    """CPU clock ticks used since ``before`` (by the processes still there)."""
    after = ticks(list(before))
    return sum(a - b for p, b in before.items() if b is not None and (a := after[p]) is not None)


def run_load(exe: Path, port: int, seconds: float, cpu_pid: int, redis_pids: list[int]) -> dict:
    """One loadgen run; its JSON plus the CPU figures, or {"error": ...}."""
    target_before, redis_before = ticks(br.process_tree(cpu_pid)), ticks(redis_pids)
    argv = [str(exe), "-h", "127.0.0.1", "-p", str(port), "-c", str(CONNECTIONS), "-P", "1"]
    argv += ["-d", str(seconds), "-n", str(KEYS), "--dist", "zipf", "-s", str(ZIPF_S)]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"error": "loadgen timed out"}
    target_ticks, redis_ticks = spent(target_before), spent(redis_before)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # (the loadgen: the child reaped)
    loadgen_s = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    try:
        run: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"loadgen exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    if done.returncode != 0 or run["errors"] or run["nils"] or not run["requests"]:
        run["error"] = f"loadgen exited {done.returncode}: {done.stderr.strip()[-300:]}"
        if run["errors"] or run["nils"]:
            run["error"] += f" ({run['errors']} error replies, {run['nils']} nil replies)"
    if run["requests"]:
        run["cpu_us_per_request"] = target_ticks / br.CLK_TCK * 1e6 / run["requests"]
        run["redis_cpu_us_per_request"] = redis_ticks / br.CLK_TCK * 1e6 / run["requests"]
        run["loadgen_cpu_us_per_request"] = loadgen_s * 1e6 / run["requests"]
    return run


def coherence(proxy_port: int, fleet: Fleet, seconds: float) -> dict[str, Any]:
    """Readers through the cache-on proxy, one writer half through it, half direct."""
    r = ring()
    keys = [b"hot:%d" % i for i in range(HOT_KEYS)]
    primary = {p.shard: p.port for p in fleet.primaries}
    direct = {shard: connect(port, timeout=10.0) for shard, port in primary.items()}
    writer = connect(proxy_port, timeout=10.0)
    acks: list[list[tuple[float, int]]] = [[] for _ in keys]  # per key: (ack time, version)
    reads: list[tuple[int, bytes | None, float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def write(i: int, n: int, via_proxy: bool) -> None:
        conn = writer if via_proxy else direct[r.shard_name(keys[i])]
        conn.set(keys[i], f"v{n}|{time.time()}")
        acks[i].append((time.time(), n))

    def read_loop(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with connect(proxy_port, timeout=10.0) as conn:
                while not stop.is_set():
                    i = rnd.randrange(HOT_KEYS)
                    began = time.time()
                    reads.append((i, conn.get(keys[i]), began))
        except Exception as exc:
            failures.append(f"reader: {exc!r}")

    for i in range(HOT_KEYS):
        write(i, 0, True)
    before = cache_stats(proxy_port)
    threads = [threading.Thread(target=read_loop, args=(s,), daemon=True) for s in range(READERS)]
    for t in threads:
        t.start()
    rnd = random.Random(12345)
    n = 0
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            n += 1
            write(rnd.randrange(HOT_KEYS), n, n % 2 == 0)
            time.sleep(max(0.0, began + n / WRITES_PER_S - time.monotonic()))
    except Exception as exc:
        failures.append(f"writer: {exc!r}")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        for conn in (writer, *direct.values()):
            conn.close()
    ratio = hit_ratio(before, cache_stats(proxy_port))

    stale = invalid = 0
    max_staleness = 0.0
    times = [[t for t, _ in ack] for ack in acks]
    versions = [[v for _, v in ack] for ack in acks]
    for i, value, start in reads:
        try:
            version = int(value.split(b"|")[0][1:]) if value else -1
        except ValueError:
            version = -1
        at = bisect.bisect_left(versions[i], version)
        if at == len(versions[i]) or versions[i][at] != version:
            invalid += 1  # not a value the writer wrote
            continue
        known = bisect.bisect_right(times[i], start - STALE_AFTER) - 1
        if known >= 0 and version < versions[i][known]:
            stale += 1
        newer = bisect.bisect_right(versions[i], version)  # the first write after the one read
        if newer < len(times[i]) and times[i][newer] < start:
            max_staleness = max(max_staleness, start - times[i][newer])
    writes = sum(len(a) for a in acks) - HOT_KEYS
    return (
        {"seconds": seconds, "readers": READERS, "hot_keys": HOT_KEYS, "reads": len(reads)}
        | {"writes": writes, "writes_direct": (n + 1) // 2, "stale_reads": stale}
        | {"invalid_reads": invalid, "max_staleness_ms": max_staleness * 1000}
        | {"stale_after_ms": STALE_AFTER * 1000, "hit_ratio": ratio, "failures": failures}
    )


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if "error" not in run and run.get(key) is not None]
    return statistics.median(values) if values else None


def measure(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    exe = build_loadgen(workdir)
    fleet = br.start_fleet(procs, workdir, args)
    cache_port, cached = start_cached_proxy(procs, fleet, workdir)
    print("writing the keyspace", file=sys.stderr, flush=True)
    populate(fleet)
    ports = {
        "direct": (fleet.primaries[0].port, fleet.primaries[0].managed),
        "nutcracker": (fleet.nutcracker_port, fleet.nutcracker),
        "cache_off": (fleet.proxy_ports["primary"], fleet.proxies["primary"]),
        "cache_on": (cache_port, cached),
    }
    redis_pids = [p.managed.proc.pid for p in fleet.primaries]
    build = info(cache_port, "server").get("shardproxy_build")

    def load(target: str, seconds: float) -> dict[str, Any]:
        port, managed = ports[target]
        pids = [managed.proc.pid] if target == "direct" else redis_pids
        before = cache_stats(cache_port) if target == "cache_on" else None
        run = run_load(exe, port, seconds, managed.proc.pid, pids)
        if before is not None:
            run["hit_ratio"] = hit_ratio(before, cache_stats(cache_port))
        return run

    for target in TARGETS:  # warm-up: the cache, the connections, the pages
        load(target, args.warmup)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for round_no in range(1, args.rounds + 1):
        for target in TARGETS:
            run = load(target, args.seconds)
            runs[target].append(run)
            status = run.get("error") or (
                f"{br._fmt(run['requests_per_s']):>9} rps  p50 {run['p50_us']:5.0f} µs  "
                f"p99 {run['p99_us']:6.0f} µs  CPU {br._fmt(run.get('cpu_us_per_request'), 1)} "
                f"µs/req  redis {br._fmt(run.get('redis_cpu_us_per_request'), 1)} µs/req"
                + (f"  hit ratio {run['hit_ratio']:.3f}" if target == "cache_on" else "")
            )
            print(f"[round {round_no}/{args.rounds}] {target:<10} {status}", flush=True)

    medians = {
        t: {k: _median(runs[t], k) for k in FIGURES}
        | {"runs_ok": sum("error" not in run for run in runs[t]), "runs": len(runs[t])}
        for t in TARGETS
    }
    rps = {t: medians[t]["requests_per_s"] for t in TARGETS}
    ratios = {f"{a}/{b}": rps[a] / rps[b] if rps[a] and rps[b] else None for a, b in PAIRS}
    stats = cache_stats(cache_port)
    cache = {k: stats[f"cache_{k}"] for k in ("entries", "bytes", "max_memory", "evictions")}
    cache["hit_ratio"] = _median(runs["cache_on"], "hit_ratio")
    cache["hit_ratio_since_start"] = stats["cache_hit_ratio"]
    rss = {t: br.rss_kib(br.process_tree(ports[t][1].proc.pid)) for t in TARGETS[1:]}
    print(f"coherence run, {args.coherence_seconds:g} s", file=sys.stderr, flush=True)
    coh = coherence(cache_port, fleet, args.coherence_seconds)
    return {
        "bench": "cache",
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "warmup_seconds": args.warmup}
        | {"connections": CONNECTIONS, "pipeline": 1, "keys": KEYS, "value_size": len(VALUE)}
        | {"distribution": f"zipf s={ZIPF_S}", "workers": 1, "shardproxy_build": build}
        | {"direct": f"one redis-server primary (s1, port {fleet.primaries[0].port}), every key"},
        "medians": medians,
        "ratios": ratios,
        "targets_wanted": {"cache_on/nutcracker": 1.5, "cache_on/direct": 0.9},
        "cache": cache,
        "rss_kib_after_load": rss,
        "coherence": coh,
        "runs": runs,
    }


def report(res: dict[str, Any]) -> str:
    s, med, rat, c, coh = (res[k] for k in ("settings", "medians", "ratios", "cache", "coherence"))
    out = [
        f"near-cache benchmark: GET, {s['distribution']} over {s['keys']:,} keys "
        f"({s['value_size']}-byte values), loadgen -c {s['connections']} -P 1, "
        f"{s['seconds']:g} s per run, {s['rounds']} round(s), medians; shardproxy --workers 1, "
        f"build: {s['shardproxy_build']}; load generator, proxies and redis share "
        f"{os.cpu_count()} CPUs",
        "direct = ONE redis-server primary (s1) holding the whole keyspace: no sharding, no "
        "proxy hop",
    ]
    rows = [["target", "rps", "p50 µs", "p99 µs", "CPU µs/req", "redis CPU µs/req"]]
    rows[0] += ["loadgen CPU µs/req", "runs ok"]
    for t in TARGETS:
        m = med[t]
        row = [LABELS[t], *(br._fmt(m[k], 1 if "cpu" in k else 0) for k in FIGURES)]
        rows.append([*row, f"{m['runs_ok']}/{m['runs']}"])
    rows[1][4] += " (redis)"
    out.extend(br._table(rows))
    want = res["targets_wanted"]
    out.append(
        f"   cache on / nutcracker: {br._fmt(rat['cache_on/nutcracker'], 2, 'x')} "
        f"(target >= {want['cache_on/nutcracker']}x)   cache on / direct: "
        f"{br._fmt(rat['cache_on/direct'], 2, 'x')} (target >= {want['cache_on/direct']}x)   "
        f"cache off / nutcracker: {br._fmt(rat['cache_off/nutcracker'], 2, 'x')}   "
        f"cache on / cache off: {br._fmt(rat['cache_on/cache_off'], 2, 'x')}"
    )
    rss = res["rss_kib_after_load"]
    out.append(
        f"   cache: hit ratio {br._fmt(c['hit_ratio'], 3)} (median per run; "
        f"{c['hit_ratio_since_start']} since start), {c['entries']:,} entries, "
        f"cache_bytes {c['bytes']:,} of {c['max_memory']:,}, {c['evictions']} evictions"
    )
    out.append(
        f"   RSS after load: cache on {rss['cache_on']:,} KiB, cache off {rss['cache_off']:,} "
        f"KiB, nutcracker {rss['nutcracker']:,} KiB"
    )
    out.append(
        f"coherence ({coh['seconds']:g} s, {coh['readers']} readers on {coh['hot_keys']} hot keys "
        f"through the cache-on proxy, {coh['writes']:,} writes, {coh['writes_direct']:,} of them "
        f"direct on the primary): {coh['reads']:,} reads, {coh['stale_reads']} stale (target 0; "
        f"stale = older than a write acked > {coh['stale_after_ms']:.0f} ms before the read), "
        f"{coh['invalid_reads']} invalid, max staleness {coh['max_staleness_ms']:.1f} ms, "
        f"hit ratio {br._fmt(coh['hit_ratio'], 3)}"
    )
    out.extend(f"   FAILED: {f}" for f in coh["failures"])
    for t in TARGETS:
        out.extend(f"   FAILED {t}: {run['error']}" for run in res["runs"][t] if "error" in run)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="(default 5; --quick 2)")
    ap.add_argument("--seconds", type=float, default=None, help="per run (default 5; --quick 1)")
    ap.add_argument("--coherence-seconds", type=float, default=None, help="(10; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1 s, 3 s coherence run")
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON line too")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    args.coherence_seconds = args.coherence_seconds or (3.0 if args.quick else 10.0)
    args.warmup = min(args.seconds, 2.0)
    args.workers = 1
    args.idle_connections = 0  # for br.start_fleet: redis maxclients and nutcracker limits of 1000
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # so that the finally stops the fleet
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="shardproxy-bench-cache-") as tmp:
        try:
            res = measure(args, procs, Path(tmp))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; stopping every process started", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            procs.stop_all()
    print()
    print(report(res))
    if args.json:
        print(json.dumps(res))
    failed = any("error" in run for t in TARGETS for run in res["runs"][t])
    coh = res["coherence"]
    return 1 if failed or coh["stale_reads"] or coh["invalid_reads"] or coh["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
