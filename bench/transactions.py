"""Transactions through shardproxy vs direct Redis: MULTI + 2 SETs + EXEC on a tagged key.

Usage::

    python -m bench.transactions [--clients 50] [--seconds 5] [--rounds 5] [--quick]

Starts the same fleet as ``bench.run`` (3 shards of primary + replica, shardproxy with
``read_policy: primary``; nutcracker too, which cannot run transactions and is not measured),
then, in interleaved rounds, drives each target with ``--clients`` connections, each sending
``MULTI``, ``SET {cN}.a v``, ``SET {cN}.b v``, ``EXEC`` in one write and waiting for the four
replies before the next transaction (every connection has its own hash tag, so transactions
spread over the shards through the proxy; direct Redis is s1's primary, holding every key).
The load generator is this process (asyncio, raw sockets, the replies compared byte for
byte). It prints, per target, the median transactions/s over the rounds and CPU per
transaction, the ratio shardproxy/direct, and the backend connections the transactions cost:
``total_connections_received`` of the primaries before and after all the shardproxy rounds.
Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.run import (
    Processes,
    connect,
    cpu_ticks,
    info,
    process_tree,
    start_fleet,
)

CLK = __import__("os").sysconf("SC_CLK_TCK")
VALUE = b"x" * 64
EXPECTED = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+OK\r\n"


def frame(*argv: bytes) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)


def transaction(tag: int) -> bytes:
    a = b"{c%d}.a" % tag
    b = b"{c%d}.b" % tag
    return frame(b"MULTI") + frame(b"SET", a, VALUE) + frame(b"SET", b, VALUE) + frame(b"EXEC")


async def one_client(port: int, tag: int, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = transaction(tag)
    want = len(EXPECTED)
    n = 0
    try:
        while time.monotonic() < until:
            writer.write(request)
            got = await reader.readexactly(want)
            if got != EXPECTED:
                raise RuntimeError(f"unexpected reply {got!r}")
            n += 1
    finally:
        counts.append(n)
        writer.close()


async def drive(port: int, clients: int, seconds: float) -> tuple[int, float]:
    counts: list[int] = []
    start = time.monotonic()
    until = start + seconds
    await asyncio.gather(*(one_client(port, i, until, counts) for i in range(clients)))
    return sum(counts), time.monotonic() - start


def tree_ticks(root: int) -> int:
    return sum(cpu_ticks(p) or 0 for p in process_tree(root))


def connections_received(ports: Sequence[int]) -> int:
    return sum(int(info(p, "stats")["total_connections_received"]) for p in ports)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=None, help="per run (default 5)")
    ap.add_argument("--rounds", type=int, default=None, help="(default 5)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1 s runs, 2 rounds (options still win)")
    args = ap.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (1.0 if quick else 5.0)
    args.rounds = args.rounds or (2 if quick else 5)
    args.idle_connections = 0
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="shardproxy-bench-tx-") as tmp:
        try:
            fleet = start_fleet(procs, Path(tmp), args)
            direct = fleet.primaries[0]
            proxy_port = fleet.proxy_ports["primary"]
            proxy = fleet.proxies["primary"]
            with connect(proxy_port) as c:  # the proxy answers: its pipelines are warm
                c.set("warm", "1")
            primaries = [p.port for p in fleet.primaries]
            results: dict[str, list[tuple[float, float]]] = {"direct": [], "shardproxy": []}
            proxy_connections = 0
            for r in range(args.rounds):
                for name, port, root in (
                    ("direct", direct.port, direct.managed.proc.pid),
                    ("shardproxy", proxy_port, proxy.proc.pid),
                ):
                    before = connections_received(primaries)
                    t0 = tree_ticks(root)
                    done, took = asyncio.run(drive(port, args.clients, args.seconds))
                    ticks = tree_ticks(root) - t0
                    after = connections_received(primaries)
                    if name == "shardproxy":
                        proxy_connections += after - before - len(primaries)
                    cpu_us = ticks / CLK / done * 1e6 if done else float("nan")
                    results[name].append((done / took, cpu_us))
                    print(
                        f"round {r + 1} {name:10} {done / took:9.0f} tx/s  {cpu_us:6.1f} us CPU/tx",
                        flush=True,
                    )
            med = {k: statistics.median(x for x, _ in v) for k, v in results.items()}
            cpu = {k: statistics.median(y for _, y in v) for k, v in results.items()}
            total_tx = sum(x for x, _ in results["shardproxy"]) * args.seconds
            print()
            print(f"MULTI + 2 SETs + EXEC, -c {args.clients}, {args.rounds} rounds:")
            for k in ("direct", "shardproxy"):
                print(f"  {k:10} median {med[k]:9.0f} tx/s   {cpu[k]:6.1f} us CPU/tx")
            print(f"  shardproxy/direct: {med['shardproxy'] / med['direct']:.2f}x tx/s")
            print(
                f"  backend connections opened by ~{total_tx:,.0f} transactions through the "
                f"proxy: {proxy_connections} (its leased-connection pool)"
            )
            return 0
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
