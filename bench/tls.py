"""The cost of TLS (and of AUTH) through shardproxy, next to the cost of TLS on Redis itself.

Usage::

    python -m bench.tls [--rounds 5] [--requests 100000] [--seconds S] [--quick] [--json]

Sets up, in a temp dir on free loopback ports: a CA and certificates (``bench.tlscerts``, the
openssl CLI); 3 plain redis-server primaries and 3 TLS-only ones (``--port 0 --tls-port N``,
``--tls-auth-clients optional``); and three shardproxy processes (``--workers 1``, the proxy
runs compiled unless ``SHARDPROXY_PURE=1`` is in the environment, which is passed through):

* **A** on the plain nodes, with a plain listener and a TLS listener (``tls:``);
* **B** on the TLS nodes (``backend.tls: {enabled: true, ca_file: CA}``, certificates
  verified), with a TLS listener;
* **C** on the plain nodes, with ``auth: {password: ...}``.

The keyspace ``key:000000000000 .. key:000000099999`` (64-byte values) is written before any
run, every key: through A and through B (so the ring places it on each fleet) and in full on
s1's primary of each fleet, the **direct** targets (one Redis, no sharding, no proxy hop).
Every GET therefore hits; the nodes' ``keyspace_misses`` are checked afterwards (exit 1 if not 0).

Each configuration is ``redis-benchmark -t get -c 50 -n N -d 64 -r 100000 --csv`` (``--tls
--cacert CA`` for TLS, ``-a PASSWORD`` for AUTH):

1. ``redis-plain``: Redis direct, plain (plain s1 primary);
2. ``redis-tls``: Redis direct, TLS (TLS s1 primary);
3. ``proxy-plain``: A's plain listener -> plain nodes;
4. ``proxy-tls``: A's TLS listener -> plain nodes (the client side's TLS);
5. ``proxy-tls-tls``: B's TLS listener -> TLS nodes (both sides);
6. ``proxy-auth``: C, plain, AUTH once per connection (its cost should be ~0).

One discarded warm-up run per configuration, then ``--rounds`` rounds, each running every
configuration once (the order rotated by one each round); figures are medians over rounds:
requests/s, p50/p99 ms, and CPU µs/request of the target process (the proxy's, or the
redis-server's for direct; for ``proxy-tls-tls`` the nodes' TLS CPU is not in it). Every run
opens 50 fresh connections, so the 50 TLS handshakes (or AUTHs) are in every run. The ratios
are computed from the same run's medians. ``--seconds S`` sizes each configuration's -n from
its warm-up so that a run takes about S seconds (instead of ``--requests``). ``--quick``: 3000
requests, 2 rounds. ``--json`` prints one more line: every figure as JSON. The machine's cores
are shared by redis-benchmark, the proxy and Redis. Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import yaml
from redis._parsers import _RESP2Parser

from bench.run import (
    KEYSPACE,
    REPO,
    SHARDS,
    VALUE_SIZE,
    BenchError,
    Managed,
    Node,
    Processes,
    Run,
    Scenario,
    _binary,
    _fmt,
    _median,
    _ratio,
    _table,
    free_ports,
    key_name,
    run_benchmark,
    wait_port,
)
from bench.tlscerts import Certs, make_certs

CLIENTS = 50
PASSWORD = "bench-tls-secret"
CONFIGS = {
    "redis-plain": "Redis direct, plain",
    "redis-tls": "Redis direct, TLS",
    "proxy-plain": "shardproxy plain -> plain nodes",
    "proxy-tls": "shardproxy TLS -> plain nodes",
    "proxy-tls-tls": "shardproxy TLS -> TLS nodes",
    "proxy-auth": "shardproxy plain + AUTH -> plain nodes",
}
RATIOS = {  # name: (numerator, denominator)
    "proxy TLS / proxy plain": ("proxy-tls", "proxy-plain"),
    "proxy TLS+TLS / proxy plain": ("proxy-tls-tls", "proxy-plain"),
    "Redis TLS / Redis plain": ("redis-tls", "redis-plain"),
    "proxy TLS / Redis TLS": ("proxy-tls", "redis-tls"),
    "proxy auth / proxy plain": ("proxy-auth", "proxy-plain"),
}


def client(port: int, certs: Certs | None = None, password: str | None = None) -> redis.Redis:
    """redis-py for setup and checks. Over TLS with the pure-Python parser: hiredis's
    ``can_read`` polls the raw socket, which the TLS 1.3 session tickets (sent by Redis and
    the proxy after the handshake) make readable, and a fresh connection then fails its first
    command with "Connection has data" (a race: it depends on when the tickets arrive)."""
    kw: dict[str, Any] = {}
    if certs:
        kw = {"connection_class": redis.SSLConnection, "ssl_ca_certs": certs.ca,
              "parser_class": _RESP2Parser}  # fmt: skip
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, protocol=2, socket_timeout=60,
                                password=password, driver_info=None, **kw)  # fmt: skip
    return redis.Redis.from_pool(pool)


def start_redis(procs: Processes, work: Path, name: str, port: int, certs: Certs | None) -> Node:
    data = work / name
    data.mkdir()
    argv = [_binary("redis-server", "/usr/bin/redis-server"), "--port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(data)]  # fmt: skip
    if certs:
        argv[2] = "0"  # TLS only
        argv += ["--tls-port", str(port), "--tls-cert-file", certs.server_cert,
                 "--tls-key-file", certs.server_key, "--tls-ca-cert-file", certs.ca,
                 "--tls-auth-clients", "optional"]  # fmt: skip
    return Node(name.split("-")[-1], port, procs.start(name, argv, work / f"{name}.log"))


def start_proxy(procs: Processes, work: Path, name: str, cfg: dict[str, Any]) -> Managed:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [sys.executable, "-m", "shardproxy", "run", "-c", str(path), "--workers", "1",
            "--log-level", "warning"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))  # SHARDPROXY_PURE passes through
    return procs.start(name, argv, work / f"{name}.log", env=env)


def proxy_config(listen: int, nodes: list[Node], **extra: Any) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{listen}",
        "admin": "off",
        "hash": {"function": "fnv1a_64", "distribution": "ketama", "tag": "{}"},
        "shards": [{"name": n.shard, "primary": n.address} for n in nodes],
        **extra,
    }


def ready(conn: redis.Redis, what: str, timeout: float = 20.0) -> None:
    """PING until it answers (a proxy connects to its nodes, over TLS for B, on demand)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.ping()
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"{what} does not answer PING: {exc}") from exc
            time.sleep(0.1)


def fill(conn: redis.Redis, chunk: int = 1000) -> None:
    """MSET the whole keyspace (64-byte values), pipelined, and read a few keys back."""
    value = b"x" * VALUE_SIZE
    keys = [key_name(i) for i in range(KEYSPACE)]
    pipe = conn.pipeline(transaction=False)
    for start in range(0, KEYSPACE, chunk):
        pipe.mset({k: value for k in keys[start : start + chunk]})
    if not all(r is True for r in pipe.execute(raise_on_error=False)):
        raise BenchError("MSET of the keyspace failed")
    sample = keys[:: KEYSPACE // 10]
    if conn.mget(sample) != [value] * len(sample):
        raise BenchError("the keyspace does not read back")


def misses(nodes: list[tuple[Node, Certs | None]]) -> int:
    total = 0
    for node, certs in nodes:
        with client(node.port, certs) as c:
            total += int(c.info("stats")["keyspace_misses"])
    return total


def summarize(runs: dict[str, list[Run]]) -> dict[str, Any]:
    medians: dict[str, Any] = {}
    for key, target_runs in runs.items():
        ok = [r for r in target_runs if r.error is None]
        medians[key] = {
            "label": CONFIGS[key],
            "rps": _median([r.rps for r in ok]),
            "p50_ms": _median([r.p50_ms for r in ok]),
            "p99_ms": _median([r.p99_ms for r in ok]),
            "cpu_us_per_request": _median([r.cpu_us_per_request for r in ok]),
            "runs_ok": len(ok),
            "runs_failed": len(target_runs) - len(ok),
            "rps_per_round": [r.rps for r in target_runs],
            "errors": [r.error for r in target_runs if r.error],
        }
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="(default 5; quick 2)")
    ap.add_argument("--requests", type=int, default=None, help="-n per run (default 100000)")
    ap.add_argument("--seconds", type=float, default=None, help="size -n for ~S s runs instead")
    ap.add_argument("--quick", action="store_true", help="3000 requests, 2 rounds")
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON line too")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    requests = args.requests or (3000 if args.quick else 100_000)
    timeout = 60.0 if args.quick else 600.0
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="shardproxy-bench-tls-") as tmp:
        work = Path(tmp)
        try:
            certs = make_certs(work / "certs")
            ports = free_ports(2 * len(SHARDS) + 6)
            plain = [start_redis(procs, work, f"redis-plain-{s}", p, None)
                     for s, p in zip(SHARDS, ports, strict=False)]  # fmt: skip
            tls = [start_redis(procs, work, f"redis-tls-{s}", p, certs)
                   for s, p in zip(SHARDS, ports[len(SHARDS) :], strict=False)]  # fmt: skip
            a_plain, a_tls, b_plain, b_tls, c_plain, _ = ports[2 * len(SHARDS) :]
            server_tls = {"cert_file": certs.server_cert, "key_file": certs.server_key}
            proxies = {
                "A": start_proxy(procs, work, "shardproxy-A", proxy_config(
                    a_plain, plain, tls={"listen": f"127.0.0.1:{a_tls}", **server_tls})),
                "B": start_proxy(procs, work, "shardproxy-B", proxy_config(
                    b_plain, tls, tls={"listen": f"127.0.0.1:{b_tls}", **server_tls},
                    backend={"tls": {"enabled": True, "ca_file": certs.ca}})),
                "C": start_proxy(procs, work, "shardproxy-C", proxy_config(
                    c_plain, plain, auth={"password": PASSWORD})),
            }  # fmt: skip
            for node in plain + tls:
                wait_port(node.port, node.managed)
            for port, name in ((a_plain, "A"), (a_tls, "A"), (b_tls, "B"), (c_plain, "C")):
                wait_port(port, proxies[name])
            #   key: (port, process whose CPU is counted, client certs, password)
            targets: dict[str, tuple[int, Managed, Certs | None, str | None]] = {
                "redis-plain": (plain[0].port, plain[0].managed, None, None),
                "redis-tls": (tls[0].port, tls[0].managed, certs, None),
                "proxy-plain": (a_plain, proxies["A"], None, None),
                "proxy-tls": (a_tls, proxies["A"], certs, None),
                "proxy-tls-tls": (b_tls, proxies["B"], certs, None),
                "proxy-auth": (c_plain, proxies["C"], None, PASSWORD),
            }
            for key, (port, _, tcerts, password) in targets.items():
                with client(port, tcerts, password) as c:
                    ready(c, f"{key} (port {port})")
            for port, tcerts in ((plain[0].port, None), (a_plain, None),
                                 (tls[0].port, certs), (b_tls, certs)):  # fmt: skip
                with client(port, tcerts) as c:
                    fill(c)
            with client(a_plain) as c:
                build = c.info("server").get("shardproxy_build", "?")
            nodes = [(n, None) for n in plain] + [(n, certs) for n in tls]
            misses_before = misses(nodes)

            def scenario(key: str, n: int) -> Scenario:
                _, _, tcerts, password = targets[key]
                extra = ("--tls", "--cacert", tcerts.ca) if tcerts else ()
                extra += ("-a", password) if password else ()
                return Scenario(key, key, CONFIGS[key], (*extra, "-t", "get"), CLIENTS, 1, n)

            def measure(key: str, n: int) -> Run:
                port, managed, _, _ = targets[key]
                run = run_benchmark(port, managed.proc.pid, scenario(key, n), timeout)
                status = run.error or (f"{_fmt(run.rps):>9} rps  p50 {_fmt(run.p50_ms, 3)} ms"
                                       f"  CPU {_fmt(run.cpu_us_per_request, 1)} µs/req")  # fmt: skip
                print(f"  {key:14} -n {n:<8} {status}", file=sys.stderr, flush=True)
                return run

            keys = list(CONFIGS)
            print(f"warm-up (shardproxy build: {build})", file=sys.stderr)
            sizes = {}
            for key in keys:
                warm = measure(key, min(requests, 5000))
                if args.seconds and warm.rps:
                    sizes[key] = max(1000, round(warm.rps * args.seconds))
                else:
                    sizes[key] = requests
            runs: dict[str, list[Run]] = {k: [] for k in keys}
            for r in range(rounds):
                print(f"round {r + 1}/{rounds}", file=sys.stderr)
                for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                    runs[key].append(measure(key, sizes[key]))
            get_misses = misses(nodes) - misses_before
        except (BenchError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()

    med = summarize(runs)
    ratios = {name: _ratio(med[a]["rps"], med[b]["rps"]) for name, (a, b) in RATIOS.items()}
    cpu_ratios = {
        name: _ratio(med[a]["cpu_us_per_request"], med[b]["cpu_us_per_request"])
        for name, (a, b) in RATIOS.items()
    }
    n_text = f"~{args.seconds:g} s" if args.seconds else f"{requests:,} requests"
    print(f"GET -c {CLIENTS} -d {VALUE_SIZE} -r {KEYSPACE} (every key present), {n_text} per "
          f"run, {rounds} rounds, medians; shardproxy build: {build}, --workers 1")  # fmt: skip
    rows = [["configuration", "requests/s", "p50 ms", "p99 ms", "CPU µs/req", "runs ok"]]
    for key in keys:
        m = med[key]
        rows.append([f"{key:14} {m['label']}", _fmt(m["rps"]), _fmt(m["p50_ms"], 3),
                     _fmt(m["p99_ms"], 3), _fmt(m["cpu_us_per_request"], 1),
                     f"{m['runs_ok']}/{m['runs_ok'] + m['runs_failed']}"])  # fmt: skip
    print("\n".join(_table(rows)))
    print("   CPU µs/req: of the target process only (proxy, or redis-server for direct)")
    width = max(map(len, RATIOS))
    for name in RATIOS:
        print(f"   {name:{width}}  requests/s {_fmt(ratios[name], 2, 'x')}"
              f"   CPU/req {_fmt(cpu_ratios[name], 2, 'x')}")  # fmt: skip
    print(f"   GET misses on the nodes during the runs: {get_misses}")
    failed = [e for m in med.values() for e in m["errors"]]
    for error in failed:
        print(f"   FAILED: {error}")
    if args.json:
        print(json.dumps({"build": build, "clients": CLIENTS, "requests": sizes,
                          "rounds": rounds, "configurations": med, "ratios": ratios,
                          "cpu_ratios": cpu_ratios, "get_misses": get_misses}))  # fmt: skip
    return 1 if failed or get_misses else 0


if __name__ == "__main__":
    sys.exit(main())
