"""A shard whose primary misbehaves mid-reply, next to two real shards.

The misbehaving primary is a scripted fake (``ScriptedBackend``): a small threaded TCP server
that speaks enough RESP to pass for a healthy Redis (PING, INFO replication for the health
probes, SET/GET kept in a dict, +OK for the rest) until a fault is armed on a key. The next
request naming that key then gets garbage, half a reply and silence, a 100 MB bulk, or half a
reply and a closed connection. Each case checks that

- the client whose request went to the fake gets an error naming the shard (or, for the 100 MB
  bulk, the reply itself), and its later replies on the same connection are intact;
- the proxy drops the broken backend connection: the fake sees it closed, and the next request
  arrives on a new connection;
- the real shards answer at the same time (another client, during the fault) and afterwards;
- the proxy stays up, logs no traceback, and (100 MB bulk) gives the memory back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import hiredis
import pytest

from shardproxy.routing.ring import Ring
from tests.conftest import Fleet, Proxy

NOT_YET = object()  # hiredis.Reader: no complete reply yet
HUGE = 100 * 1024 * 1024
FAKE_SHARD = "s3"
INFO = b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n"
RSS_SLACK_MB = 64  # the proxy's RSS after the 100 MB reply: within this of before


def cmd(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


@dataclass
class FakeConn:
    id: int
    sock: socket.socket
    requests: list[list[bytes]] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    ended_by: str = ""  # "peer" (the proxy closed or reset it) | "fake" (a fault closed it)


class ScriptedBackend:
    """A fake Redis primary, one thread per connection; ``arm(key, fault)`` makes the next
    request naming ``key`` misbehave (once)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: list[FakeConn] = []
        self.faults: dict[bytes, str] = {}
        self.faulted: FakeConn | None = None  # the connection the last fault happened on
        self.data: dict[bytes, bytes] = {}
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def arm(self, key: bytes, fault: str) -> None:
        with self.lock:
            self.faults[key] = fault
            self.faulted = None

    def data_requests(self) -> list[tuple[int, list[bytes]]]:
        """(connection id, argv) of every request but the health probes', in arrival order."""
        with self.lock:
            out = [(c.id, r) for c in self.conns for r in c.requests]
        return [(i, r) for i, r in out if r[0].upper() not in (b"PING", b"INFO")]

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                conn = FakeConn(len(self.conns), sock)
                self.conns.append(conn)
            self._start(self._serve, conn)

    def _serve(self, conn: FakeConn) -> None:
        sock = conn.sock
        reader = hiredis.Reader(notEnoughData=NOT_YET)
        silent = False  # after half a reply: answer nothing more on this connection
        try:
            while not self.stopped.is_set():
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    conn.ended_by = "peer"
                    return
                reader.feed(data)
                while (argv := reader.gets()) is not NOT_YET:
                    with self.lock:
                        conn.requests.append(argv)
                        fault = None
                        if len(argv) > 1 and argv[1] in self.faults:
                            fault = self.faults.pop(argv[1])
                            self.faulted = conn
                    if silent:
                        continue
                    if fault is not None:
                        if fault == "garbage":
                            sock.sendall(b"?garbage\r\n")
                        elif fault == "half_reply_stall":
                            sock.sendall(b"$10\r\nabc")
                            silent = True
                        elif fault == "huge_reply":
                            self._send_huge(sock)
                        elif fault == "close_mid_reply":
                            sock.sendall(b"$10\r\nabc")
                            conn.ended_by = "fake"
                            return
                        continue
                    sock.sendall(self._answer(argv))
        except OSError:
            conn.ended_by = conn.ended_by or "peer"
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            conn.ended.set()

    @staticmethod
    def _send_huge(sock: socket.socket) -> None:
        sock.sendall(b"$%d\r\n" % HUGE)
        block = b"z" * (1 << 20)
        for _ in range(HUGE // len(block)):
            sock.sendall(block)
        sock.sendall(b"\r\n")

    def _answer(self, argv: list[bytes]) -> bytes:
        name = argv[0].upper()
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"INFO":
            return b"$%d\r\n%s\r\n" % (len(INFO), INFO)
        if name == b"SET" and len(argv) >= 3:
            self.data[argv[1]] = argv[2]
            return b"+OK\r\n"
        if name == b"GET" and len(argv) == 2:
            value = self.data.get(argv[1])
            return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        return b"+OK\r\n"

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(5)
        self.listener.close()


class Client:
    """A RESP2 client on a raw socket: exact replies (hiredis), pipelined calls."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = hiredis.Reader(notEnoughData=NOT_YET)

    def call(self, *frames: bytes) -> list[Any]:
        self.sock.sendall(b"".join(frames))
        out: list[Any] = []
        while len(out) < len(frames):
            reply = self.reader.gets()
            if reply is NOT_YET:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError(f"the proxy closed the connection after {out!r:.200}")
                self.reader.feed(data)
                continue
            out.append(reply)
        return out

    def close(self) -> None:
        self.sock.close()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def keys_on(ring: Ring, shard: str, n: int, prefix: str) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        k = f"{prefix}:{i}".encode()
        if ring.shard_name(k) == shard:
            out.append(k)
        i += 1
    return out


def is_error(reply: Any, prefix: str) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(prefix)


class Bystander:
    """Another client, SET/GET on the real shards in a loop while a fault is under way."""

    def __init__(self, port: int, keys: list[bytes]) -> None:
        self.client = Client(port, timeout=5)
        self.keys = keys
        self.stop = threading.Event()
        self.rounds = 0
        self.worst = 0.0
        self.problems: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                for k in self.keys:
                    value = b"by-%d" % self.rounds
                    t0 = time.monotonic()
                    got = self.client.call(cmd(b"SET", k, value), cmd(b"GET", k))
                    self.worst = max(self.worst, time.monotonic() - t0)
                    if got != [b"OK", value]:
                        self.problems.append(f"{k!r}: {got!r:.200}")
                self.rounds += 1
        except (OSError, ConnectionError) as exc:
            self.problems.append(f"bystander failed: {exc!r}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.close()


CASES = {
    # fault: (timeouts.command_ms, what the error says after "TRYAGAIN shard s3: ")
    "garbage": (1000, "lost before the reply (protocol error from server"),
    "half_reply_stall": (500, "did not answer within 500 ms"),
    "huge_reply": (10000, None),  # the reply itself, or an error naming the shard
    "close_mid_reply": (1000, "lost before the reply"),
}


@pytest.mark.parametrize("fault", list(CASES))
def test_misbehaving_backend_fails_only_its_own_requests(
    fleet: Fleet, make_proxy: Any, fault: str
) -> None:
    command_ms, expect = CASES[fault]
    fake = ScriptedBackend()
    clients: list[Client] = []
    try:
        topo = fleet.topology(timeouts={"command_ms": command_ms})
        shards: list[dict[str, Any]] = topo["shards"]  # type: ignore[assignment]
        fake_shard = next(s for s in shards if s["name"] == FAKE_SHARD)
        fake_shard["primary"] = fake.address
        fake_shard["replicas"] = []
        real = {s.name: s for s in fleet.shards if s.name != FAKE_SHARD}
        p: Proxy = make_proxy(topo)
        assert p.proc is not None
        ring = Ring.build([(s["name"], 1) for s in shards])
        victim, spare = keys_on(ring, FAKE_SHARD, 2, f"fake-{fault}")
        real_keys = {name: keys_on(ring, name, 2, f"real-{fault}") for name in real}
        pid = p.proc.pid

        c = Client(p.port)
        clients.append(c)
        assert c.call(cmd(b"SET", victim, b"before"), cmd(b"GET", victim)) == [b"OK", b"before"]
        first_conn = fake.data_requests()[-1][0]
        rss_before = rss_mb(pid)

        # the fault, with requests to the real shards pipelined behind it on the same
        # connection, and another client busy on the real shards meanwhile
        fake.arm(victim, fault)
        behind = []
        for name, (k, _) in real_keys.items():
            behind += [cmd(b"SET", k, name.encode()), cmd(b"GET", k)]
        bystander = Bystander(p.port, [k for ks in real_keys.values() for k in ks[1:]])
        peak = [rss_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        try:
            got = c.call(cmd(b"GET", victim), *behind)
        finally:
            elapsed = time.monotonic() - t0
            time.sleep(0.1)
            bystander.finish()
            sampling.set()
            sampler.join(5)
        first, rest = got[0], got[1:]
        shown = f"{len(first)} bytes" if isinstance(first, bytes) else repr(first)
        print(
            f"\n{fault}: the client got {shown} after {elapsed * 1000:.0f} ms; bystander: "
            f"{bystander.rounds} rounds, slowest {bystander.worst * 1000:.0f} ms"
        )
        want_rest = []
        for name in real_keys:
            want_rest += [b"OK", name.encode()]
        assert rest == want_rest, "the replies behind the fault on the same connection"
        assert not bystander.problems, bystander.problems[:5]
        assert bystander.rounds > 0

        if expect is None:  # the 100 MB bulk: delivered, or an error naming the shard
            assert first == b"z" * HUGE or is_error(first, f"TRYAGAIN shard {FAKE_SHARD}: "), shown
        else:
            assert is_error(first, f"TRYAGAIN shard {FAKE_SHARD}: node {fake.address}") or (
                is_error(first, f"TRYAGAIN shard {FAKE_SHARD}: connection to node {fake.address}")
            ), shown
            assert expect in str(first), shown
        if fault == "half_reply_stall":
            assert command_ms / 1000 - 0.05 <= elapsed <= command_ms / 1000 + 0.5, elapsed
            # the real shards answered while the fake's request waited out its timeout
            assert bystander.worst < command_ms / 1000 / 2, bystander.worst

        faulted = fake.faulted
        assert faulted is not None and faulted.id == first_conn, (
            "the fault hit the connection the earlier request used"
        )
        reset = isinstance(first, hiredis.ReplyError)
        if reset:
            # the proxy drops the broken connection (the fake sees it closed) ...
            assert faulted.ended.wait(5), "the proxy kept the broken backend connection open"
            if fault != "close_mid_reply":
                assert faulted.ended_by == "peer", faulted.ended_by

        # ... and the next request to the shard goes out on a new connection
        deadline = time.monotonic() + 5
        while True:
            (again,) = c.call(cmd(b"GET", victim))
            if again == b"before":
                break
            assert is_error(again, f"TRYAGAIN shard {FAKE_SHARD}: "), again
            assert time.monotonic() < deadline, f"no recovery within 5 s: {again!r}"
            time.sleep(0.05)
        conn_after = fake.data_requests()[-1][0]
        print(
            f"{fault}: backend connection {first_conn} "
            f"{'dropped by the proxy' if reset else 'kept'}; the next request went on "
            f"connection {conn_after}"
        )
        if reset:
            assert conn_after != first_conn, "the next request used the broken connection"
        assert c.call(cmd(b"SET", spare, b"after"), cmd(b"GET", spare)) == [b"OK", b"after"]

        # the real shards, afterwards; their data is on their own primaries
        for name, (k, _) in real_keys.items():
            assert c.call(cmd(b"GET", k)) == [name.encode()]
            with real[name].primary.client() as direct:
                assert direct.get(k) == name.encode()

        if fault == "huge_reply":
            deadline = time.monotonic() + 15
            while (rss_after := rss_mb(pid)) > rss_before + RSS_SLACK_MB:
                assert time.monotonic() < deadline, (
                    f"the proxy's RSS stays at {rss_after:.0f} MB after the 100 MB reply "
                    f"(before: {rss_before:.0f} MB, peak {peak[0]:.0f} MB)"
                )
                time.sleep(0.2)
            print(
                f"huge_reply: proxy RSS {rss_before:.0f} MB before, peak {peak[0]:.0f} MB, "
                f"{rss_after:.0f} MB after"
            )

        assert p.proc.poll() is None, "the proxy died"
        log = p.output()
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    finally:
        for client in clients:
            client.close()
        fake.close()
