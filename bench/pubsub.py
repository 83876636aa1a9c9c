"""Pub/sub through shardproxy vs direct Redis: delivery latency and publish rate.

Usage::

    python -m bench.pubsub [--subscribers 100] [--messages 2000] [--rate 2000] [--seconds 2]
                           [--rounds 3] [--quick] [--json]

Starts the same fleet as ``bench.run`` (3 shards of primary + replica, shardproxy with
``read_policy: primary`` and the default ``pubsub`` settings: one subscriber connection per
shard primary, shared by all the subscribed clients; nutcracker too, which is not measured).
Targets: **direct** is the primary of the shard ``bench.ch`` hashes to (Redis pub/sub is per
node; it is the node the proxy publishes on), **proxy** is shardproxy's port. In interleaved
rounds (direct, then proxy, ``--rounds`` times), ``--subscribers`` raw RESP2 connections are
each in ``SUBSCRIBE bench.ch`` (the confirmation read and compared byte for byte), then:

1. **Delivery latency.** One more connection publishes ``--messages`` messages at ``--rate``
   per second, payload ``b"<seq> <perf_counter()>"``. A message's latency at a subscriber is
   the time the read that completed it returned minus the time in its payload. Publisher and
   subscribers are this one process (one thread, ``selectors``: perf_counter is comparable
   only within a process), so the figures include the time this loop takes to get round to a
   socket (it reads the ready subscribers one after another). The bytes are kept as read and
   parsed afterwards (incrementally: a message may be split across reads); every subscriber
   must get every message exactly once and in order. Lost, duplicated and out-of-order counts
   are printed; the exit status is 1 unless they are all 0.
2. **Publish rate.** The publisher pipelines ``PUBLISH`` in batches of 100 (the next batch
   once the previous one's replies are in) for ``--seconds`` while the subscribers are
   drained: messages published per second, and delivered per second (up to the moment the
   last subscriber has the last message; every subscriber's bytes are counted, and must be
   every message's).

p50 and p99 are per round (over every message at every subscriber); the figures printed are
medians over the rounds, with the ratios proxy/direct. ``--json`` adds one line with every
figure as JSON. ``--quick``: 20 subscribers, 300 messages, 0.5 s, 2 rounds (options still
win). Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.run import SHARDS, Processes, connect, raise_nofile, start_fleet

CHANNEL = b"bench.ch"
CONFIRM = b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(CHANNEL), CHANNEL)
MESSAGE = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$" % (len(CHANNEL), CHANNEL)  # + len, payload
BATCH = 100
RATE_PAYLOAD = b"x" * 24
READ = 1 << 18
IDLE_S = 5.0  # no byte for this long once everything is published: the rest is lost
TARGETS = ("direct", "proxy")


def frame(*argv: bytes) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)


def message_size(payload: bytes) -> int:
    """Bytes of the RESP2 message a subscriber reads for ``payload``."""
    return len(MESSAGE) + len(b"%d\r\n" % len(payload)) + len(payload) + 2


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def subscribe(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(frame(b"SUBSCRIBE", CHANNEL))
        socks.append(s)
    for s in socks:
        got = b""
        while len(got) < len(CONFIRM):
            data = s.recv(4096)
            if not data:
                raise RuntimeError(f"port {port}: subscriber closed before its confirmation")
            got += data
        if got != CONFIRM:
            raise RuntimeError(f"port {port}: SUBSCRIBE answered {got!r}")
    return socks


def wait_unsubscribed(ports: Sequence[int], timeout: float = 10.0) -> None:
    """Until no node has a subscriber of the channel (the previous round's are gone)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        with connect(port) as c:
            while c.pubsub_numsub(CHANNEL)[0][1]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {port}: {CHANNEL!r} still subscribed")
                time.sleep(0.02)


def parse(chunks: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """(time read, payload) of every message in a subscriber's reads, in order."""
    out: list[tuple[float, bytes]] = []
    buf = bytearray()
    for t, data in chunks:
        buf += data
        pos = 0
        while True:
            if not buf.startswith(MESSAGE, pos):
                if len(buf) - pos >= len(MESSAGE) or not MESSAGE.startswith(buf[pos:]):
                    raise RuntimeError(f"not a message on {CHANNEL!r}: {bytes(buf[pos:][:80])!r}")
                break
            head = pos + len(MESSAGE)
            end = buf.find(b"\r\n", head)
            if end < 0:
                break
            size = int(buf[head:end])
            if len(buf) < end + 2 + size + 2:
                break
            out.append((t, bytes(buf[end + 2 : end + 2 + size])))
            pos = end + 2 + size + 2
        del buf[:pos]
    if buf:
        raise RuntimeError(f"a truncated message at the end: {bytes(buf[:80])!r}")
    return out


class Loop:
    """The subscribers and the publisher of one target, read by one selector."""

    def __init__(self, subs: list[socket.socket], pub: socket.socket) -> None:
        self.subs = subs
        self.pub = pub
        self.sel = selectors.DefaultSelector()
        for i, s in enumerate(subs):
            self.sel.register(s, selectors.EVENT_READ, i)
        self.sel.register(pub, selectors.EVENT_READ, -1)
        self.chunks: list[list[tuple[float, bytes]]] = [[] for _ in subs]
        self.received = [0] * len(subs)
        self.replies = 0
        self.last_read = time.perf_counter()

    def poll(self, timeout: float, keep: bool) -> None:
        """Read whatever is ready within ``timeout``; ``keep``: record the subscribers' bytes."""
        for key, _ in self.sel.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data = sock.recv(READ)
            t = time.perf_counter()
            if not data:
                raise RuntimeError("a connection was closed")
            self.last_read = t
            if key.data < 0:
                if b"-" in data:
                    raise RuntimeError(f"PUBLISH failed: {data[:200]!r}")
                self.replies += data.count(b"\n")  # one :N\r\n per PUBLISH
                continue
            self.received[key.data] += len(data)
            if keep:
                self.chunks[key.data].append((t, data))

    def wait_for(self, expected: int, replies: int, keep: bool) -> float:
        """Until every subscriber has ``expected`` bytes (plus a short grace for extra ones);
        returns when the last one had them (or when reading stopped, if some never came)."""
        done_at = None
        while True:
            now = time.perf_counter()
            if done_at is None and self.replies >= replies and min(self.received) >= expected:
                done_at = self.last_read
            if done_at is not None and now - done_at > 0.1:
                return done_at
            if now - self.last_read > IDLE_S:
                return self.last_read
            self.poll(0.05, keep)

    def close(self) -> None:
        self.sel.close()
        for s in [*self.subs, self.pub]:
            s.close()


def latency_phase(loop: Loop, messages: int, rate: float) -> dict[str, Any]:
    expected = 0
    start = time.perf_counter()
    for seq in range(messages):
        due = start + seq / rate
        while (now := time.perf_counter()) < due:
            loop.poll(due - now, True)
        payload = b"%d %.9f" % (seq, time.perf_counter())
        loop.pub.sendall(frame(b"PUBLISH", CHANNEL, payload))
        expected += message_size(payload)
    loop.wait_for(expected, messages, True)
    latencies: list[float] = []
    lost = duplicated = disorder = 0
    for chunks in loop.chunks:
        seen: set[int] = set()
        last = -1
        for t, payload in parse(chunks):
            seq_text, t0 = payload.split()
            seq = int(seq_text)
            latencies.append(t - float(t0))
            if seq in seen:
                duplicated += 1
            elif seq < last:
                disorder += 1
            seen.add(seq)
            last = max(last, seq)
        lost += messages - len(seen)
    return {
        "p50_ms": pct(latencies, 0.50) * 1000 if latencies else float("nan"),
        "p99_ms": pct(latencies, 0.99) * 1000 if latencies else float("nan"),
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": disorder,
    }


def rate_phase(loop: Loop, seconds: float) -> dict[str, Any]:
    batch = frame(b"PUBLISH", CHANNEL, RATE_PAYLOAD) * BATCH
    size = message_size(RATE_PAYLOAD)
    base = list(loop.received)
    loop.replies = 0
    published = 0
    start = time.perf_counter()
    until = start + seconds
    while time.perf_counter() < until:
        loop.pub.sendall(batch)
        published += BATCH
        while loop.replies < published:
            loop.poll(1.0, False)
            if time.perf_counter() - loop.last_read > IDLE_S:
                raise RuntimeError("PUBLISH replies stopped coming")
    took = time.perf_counter() - start
    loop.received = [r - b for r, b in zip(loop.received, base, strict=True)]
    delivered_at = loop.wait_for(published * size, published, False)
    got = sum(loop.received)
    want = published * size * len(loop.subs)
    return {
        "published": published,
        "published_per_s": published / took,
        "delivered_per_s": published / max(delivered_at - start, took),
        "lost": max(0, want - got) // size,
        "duplicated": max(0, got - want) // size,
    }


def one_round(port: int, nodes: Sequence[int], args: argparse.Namespace) -> dict[str, Any]:
    wait_unsubscribed(nodes)
    subs = subscribe(port, args.subscribers)
    pub = socket.create_connection(("127.0.0.1", port), timeout=10)
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = Loop(subs, pub)
    try:
        lat = latency_phase(loop, args.messages, args.rate)
        rate = rate_phase(loop, args.seconds)
    finally:
        loop.close()
    return {
        **lat,
        "published_per_s": rate["published_per_s"],
        "delivered_per_s": rate["delivered_per_s"],
        "rate_lost": rate["lost"],
        "rate_duplicated": rate["duplicated"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=None, help="(default 100)")
    ap.add_argument("--messages", type=int, default=None, help="latency messages (2000)")
    ap.add_argument("--rate", type=float, default=2000.0, help="latency msg/s (2000)")
    ap.add_argument("--seconds", type=float, default=None, help="publish-rate run (2)")
    ap.add_argument("--rounds", type=int, default=None, help="(default 3)")
    ap.add_argument(
        "--quick", action="store_true", help="20 subscribers, 300 msgs, 0.5 s, 2 rounds"
    )
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON line too")
    args = ap.parse_args(argv)
    quick = args.quick
    args.subscribers = args.subscribers or (20 if quick else 100)
    args.messages = args.messages or (300 if quick else 2000)
    args.seconds = args.seconds or (0.5 if quick else 2.0)
    args.rounds = args.rounds or (2 if quick else 3)
    args.idle_connections = args.subscribers  # redis maxclients and proxy max_clients fit them
    args.workers = 1
    raise_nofile(2 * args.subscribers + 1000)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="shardproxy-bench-pubsub-") as tmp:
        try:
            fleet = start_fleet(procs, Path(tmp), args)
            from shardproxy.routing.ring import Ring

            ring = Ring.build([(s, 1) for s in SHARDS], function="fnv1a_64", distribution="ketama")
            shard = ring.shard_name(CHANNEL)
            direct = next(p for p in fleet.primaries if p.shard == shard)
            nodes = [p.port for p in fleet.primaries]
            ports = {"direct": direct.port, "proxy": fleet.proxy_ports["primary"]}
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
            for r in range(args.rounds):
                for name in TARGETS:
                    res = one_round(ports[name], nodes, args)
                    runs[name].append(res)
                    print(
                        f"round {r + 1} {name:6} p50 {res['p50_ms']:7.3f} ms  "
                        f"p99 {res['p99_ms']:7.3f} ms  lost {res['lost']}  "
                        f"{res['published_per_s']:8.0f} published/s  "
                        f"{res['delivered_per_s']:8.0f} delivered/s",
                        flush=True,
                    )
            med = {
                name: {
                    k: statistics.median(run[k] for run in runs[name])
                    for k in ("p50_ms", "p99_ms", "published_per_s", "delivered_per_s")
                }
                for name in TARGETS
            }
            for name in TARGETS:
                for k in ("lost", "duplicated", "out_of_order", "rate_lost", "rate_duplicated"):
                    med[name][k] = sum(run[k] for run in runs[name])
            ratios = {
                k: med["proxy"][k] / med["direct"][k]
                for k in ("p50_ms", "p99_ms", "published_per_s", "delivered_per_s")
            }
            print()
            print(
                f"pub/sub on {CHANNEL.decode()}, {args.subscribers} subscribers, "
                f"{args.rounds} rounds (medians; direct = {shard}'s primary):"
            )
            print(
                f"  latency ({args.messages} msgs at {args.rate:.0f}/s)   "
                f"publish rate (pipelined x{BATCH}, {args.seconds:g} s)   delivery check"
            )
            for name in TARGETS:
                m = med[name]
                print(
                    f"  {name:6} p50 {m['p50_ms']:7.3f} ms  p99 {m['p99_ms']:7.3f} ms   "
                    f"{m['published_per_s']:8.0f} published/s  "
                    f"{m['delivered_per_s']:8.0f} delivered/s   "
                    f"lost {m['lost'] + m['rate_lost']}  "
                    f"duplicated {m['duplicated'] + m['rate_duplicated']}  "
                    f"out of order {m['out_of_order']}"
                )
            print(
                f"  proxy/direct: {ratios['published_per_s']:.2f}x published/s, "
                f"{ratios['delivered_per_s']:.2f}x delivered/s, "
                f"{ratios['p50_ms']:.2f}x p50, {ratios['p99_ms']:.2f}x p99"
            )
            if args.json:
                print(
                    json.dumps(
                        {
                            "bench": "pubsub",
                            "subscribers": args.subscribers,
                            "messages": args.messages,
                            "rate": args.rate,
                            "seconds": args.seconds,
                            "rounds": args.rounds,
                            "direct_shard": shard,
                            "medians": med,
                            "ratios_proxy_direct": ratios,
                            "runs": runs,
                        }
                    )
                )
            bad = sum(
                med[n][k]
                for n in TARGETS
                for k in ("lost", "duplicated", "out_of_order", "rate_lost", "rate_duplicated")
            )
            return 1 if bad else 0
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
