"""Blocking commands through shardproxy vs direct Redis: wake-up latency and connection cost.

Usage::

    python -m bench.blocking [--samples 500] [--blocked 1000] [--quick]

Starts the same fleet as ``bench.run`` (3 shards of primary + replica, shardproxy with
``read_policy: primary`` and ``backend.max_leases`` raised to fit ``--blocked``), then:

1. **Push to wake-up.** A client blocks in ``BLPOP q 0`` (through the proxy, or directly on the
   shard's primary); another connection pushes; the time from just before the push is written
   to the moment the blocked client has read its reply. ``--samples`` rounds per target,
   interleaved; median and p99 in ms.
2. **Many blocked clients.** ``--blocked`` raw connections each block on a key of their own
   (spread over the shards); the primaries' ``connected_clients`` before, while all are blocked,
   and after they have been woken and the idle leases closed (``backend.lease_idle_ms``).

Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.run import Processes, connect, info, start_fleet, wait_port


def frame(*argv: bytes) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)


def wake_up(block_port: int, push_port: int, samples: int, key: bytes) -> list[float]:
    waiter = socket.create_connection(("127.0.0.1", block_port))
    pusher = socket.create_connection(("127.0.0.1", push_port))
    for s in (waiter, pusher):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    expect = b"*2\r\n$%d\r\n%s\r\n$1\r\nx\r\n" % (len(key), key)
    try:
        for _ in range(samples):
            waiter.sendall(frame(b"BLPOP", key, b"0"))
            time.sleep(0.005)  # let it block
            t0 = time.perf_counter()
            pusher.sendall(frame(b"RPUSH", key, b"x"))
            got = b""
            while len(got) < len(expect):
                got += waiter.recv(4096)
            out.append(time.perf_counter() - t0)
            assert got == expect, got
            pusher.recv(4096)  # RPUSH's :1
    finally:
        waiter.close()
        pusher.close()
    return out


def connected(ports: Sequence[int]) -> int:
    return sum(int(info(p, "clients")["connected_clients"]) - 1 for p in ports)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=None, help="wake-ups per target (500)")
    ap.add_argument("--blocked", type=int, default=None, help="blocked clients (1000)")
    ap.add_argument("--quick", action="store_true", help="50 samples, 100 blocked clients")
    args = ap.parse_args(argv)
    samples = args.samples or (50 if args.quick else 500)
    blocked = args.blocked or (100 if args.quick else 1000)
    args.idle_connections = blocked
    args.workers = 1
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="shardproxy-bench-block-") as tmp:
        try:
            fleet = start_fleet(procs, Path(tmp), args)
            # a proxy of its own, with room for the blocked clients' leases
            cfg = yaml.safe_load(fleet.configs["shardproxy-primary.yaml"])
            port = fleet.proxy_ports["primary"] + 1000
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    port += 1
                except OSError:
                    break
            cfg["listen"] = f"127.0.0.1:{port}"
            cfg["admin"] = "off"
            cfg["backend"] = {"max_leases": blocked, "lease_idle_ms": 1000}
            path = Path(tmp) / "blocking.yaml"
            path.write_text(yaml.safe_dump(cfg))
            proxy = procs.start(
                "shardproxy (blocking)",
                [
                    sys.executable,
                    "-m",
                    "shardproxy",
                    "run",
                    "-c",
                    str(path),
                    "--log-level",
                    "warning",
                ],
                Path(tmp) / "blocking.log",
            )
            wait_port(port, proxy)
            direct = fleet.primaries[0]
            key = b"{wake}q"
            with connect(port) as c:
                c.delete(key)
            times: dict[str, list[float]] = {"direct": [], "shardproxy": []}
            for _ in range(5):  # interleaved rounds
                times["direct"] += wake_up(direct.port, direct.port, samples // 5, key)
                times["shardproxy"] += wake_up(port, port, samples // 5, key)
            print(f"push -> wake-up over {samples} samples each (BLPOP q 0, RPUSH q x):")
            for name, values in times.items():
                print(
                    f"  {name:10} median {statistics.median(values) * 1000:6.3f} ms   "
                    f"p99 {pct(values, 0.99) * 1000:6.3f} ms"
                )
            primaries = [p.port for p in fleet.primaries]
            before = connected(primaries)
            socks = []
            for i in range(blocked):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(frame(b"BLPOP", b"bq:%d" % i, b"0"))
                socks.append(s)
            deadline = time.monotonic() + 30
            while int(info(port, "clients")["blocked_clients"]) < blocked:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every client blocked")
                time.sleep(0.05)
            during = connected(primaries)
            with connect(port) as c:
                for i in range(blocked):
                    c.rpush(f"bq:{i}", "v")
            for s in socks:
                s.settimeout(10)
                assert s.recv(4096).endswith(b"$1\r\nv\r\n")
                s.close()
            time.sleep(2.5)  # idle leases close after lease_idle_ms
            after = connected(primaries)
            print(
                f"{blocked} blocked clients: backend connections {before} before, "
                f"{during} while blocked (+{during - before}), {after} after they were woken"
            )
            return 0
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
