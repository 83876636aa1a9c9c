"""Faults a real redis-server cannot produce (a scripted fake backend), backend AUTH, unix
listeners, and the drain on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import Fleet, Proxy, RedisServer, free_port


class FakeBackend:
    """A TCP server that answers each request with the next scripted bytes (then maybe closes)."""

    def __init__(self, script: list[bytes | None]) -> None:
        self.script = script  # None: close the connection instead of answering
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    if b"PING" in data or b"INFO" in data:  # health probes: a healthy node
                        if b"PING" in data:
                            conn.sendall(b"+PONG\r\n")
                        if b"INFO" in data:
                            conn.sendall(b"$12\r\nrole:master\r\n\r\n")
                        continue
                    step = self.script.pop(0) if self.script else b"+OK\r\n"
                    if step is None:
                        return
                    conn.sendall(step.removesuffix(b"|close"))
                    if step.endswith(b"|close"):
                        return
            except OSError:
                return

    def close(self) -> None:
        self.stopped = True
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize(
    "script,expect",
    [
        ([b"?garbage\r\n"], "protocol error from server"),
        ([b"$10\r\nhal|close"], "connection to node"),
        ([b"$10\r\nhal"], "did not answer within 1000 ms"),
        ([None], "connection to node"),
    ],
    ids=["garbage", "half-reply-then-close", "half-reply-then-silence", "close"],
)
def test_fake_backend_faults_give_errors_naming_the_shard(
    make_proxy: object, script: list[bytes | None], expect: str
) -> None:
    fake = FakeBackend(list(script))
    try:
        topo = {
            "listen": f"127.0.0.1:{free_port()}",
            "admin": "off",
            "timeouts": {"command_ms": 1000},
            "shards": [{"name": "solo", "primary": f"127.0.0.1:{fake.port}"}],
        }
        p: Proxy = make_proxy(topo)  # type: ignore[operator]
        with p.client(protocol=2) as c:
            with pytest.raises(redis.ResponseError) as err:
                c.get("k")
            assert "shard solo" in str(err.value) and expect in str(err.value), str(err.value)
            assert c.ping()  # the client connection is intact
            deadline = time.monotonic() + 5
            while True:  # the proxy reconnects; the script is used up: the fake says +OK
                try:
                    assert c.set("k", "v") is True
                    break
                except redis.ResponseError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
    finally:
        fake.close()


def test_backend_auth(tmp_path: Path, make_proxy: object) -> None:
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        with srv.client() as c:
            c.config_set("requirepass", "s3cret")
        base = {"listen": f"127.0.0.1:{free_port()}", "admin": "off",
                "shards": [{"name": "s1", "primary": srv.address}]}  # fmt: skip
        good: Proxy = make_proxy({**base, "backend": {"password": "s3cret"}})  # type: ignore[operator]
        for protocol in (2, 3):
            with good.client(protocol=protocol) as c:
                assert c.set("a", protocol) is True
                assert c.get("a") == str(protocol).encode()
        bad: Proxy = make_proxy(  # type: ignore[operator]
            {**base, "listen": f"127.0.0.1:{free_port()}", "backend": {"password": "wrong"}}
        )
        with bad.client(protocol=2) as c, pytest.raises(redis.ResponseError) as err:
            c.get("a")
        assert "shard s1" in str(err.value) and "handshake refused" in str(err.value)
    finally:
        srv.stop()


def test_unix_socket_listener(fleet: Fleet, make_proxy: object, tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    topo = fleet.topology()
    topo["listen"] = [topo["listen"], f"unix:{path}"]
    p = Proxy(topo, tmp_path).start()
    try:
        c = redis.Redis(unix_socket_path=str(path), protocol=3)
        try:
            assert c.set("over-unix", "1") is True
            assert c.get("over-unix") == b"1"
        finally:
            c.close()
    finally:
        assert p.stop() == 0


def test_sigterm_drains_in_flight_requests(own_fleet: Fleet, make_proxy: object) -> None:
    topo = own_fleet.topology(timeouts={"command_ms": 5000}, shutdown={"drain_timeout_ms": 5000})
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    victim = own_fleet.shards[0]
    with p.client(protocol=2) as c:
        key = next(
            f"d{i}"
            for i in range(1000)
            if (c.set(f"d{i}", "v") and own_fleet.owner(f"d{i}") is victim)
        )
    sock = socket.create_connection(("127.0.0.1", p.port))
    try:
        victim.primary.signal(signal.SIGSTOP)
        sock.sendall(f"GET {key}\r\n".encode())
        time.sleep(0.2)  # the GET is in flight, stuck on the stopped primary
        assert p.proc is not None
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no new connections while draining
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
        victim.primary.signal(signal.SIGCONT)
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
        assert data == b"$1\r\nv\r\n"  # answered, then closed by the proxy
        assert p.proc.wait(10) == 0
    finally:
        victim.primary.signal(signal.SIGCONT)
        sock.close()


def test_redis_cli_inline_and_telnet_style(proxy: Proxy) -> None:
    out = subprocess.run(
        ["redis-cli", "-p", str(proxy.port)], input="set tel 'a b'\nget tel\n", capture_output=True,
        text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert out.split("\n")[:2] == ["OK", "a b"]


def test_backpressure_bounds_what_a_client_can_queue(own_fleet: Fleet, make_proxy: object) -> None:
    """A client pipelining into a stuck shard, or not reading its replies, is paused: the proxy
    holds at most limits.max_pending_per_client of its requests plus what one read brought in
    (uvloop reads up to 256 KiB at a time); the rest waits in the kernel's socket buffers."""
    limit = 100
    topo = own_fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        limits={"max_pending_per_client": limit},
        timeouts={"command_ms": 5000},
    )
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    victim = own_fleet.shards[0]
    with p.client(protocol=2) as c:
        key = next(
            f"b{i}"
            for i in range(1000)
            if (c.set(f"b{i}", "v") and own_fleet.owner(f"b{i}") is victim)
        )
    frame = f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", p.port))
    try:
        victim.primary.signal(signal.SIGSTOP)
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # push as much as the proxy will take
            try:
                sent += sock.send(frame * 1000)
            except BlockingIOError:
                time.sleep(0.01)
        requests_sent = sent // len(frame)
        pending = p.scrape()[
            "shardproxy_backend_pending_requests{"
            + f'node="{victim.primary.address}",role="primary",shard="{victim.name}"'
            + "}"
        ]
        print(
            f"client pushed {requests_sent} requests; the proxy holds {pending:.0f} (limit {limit})"
        )
        assert requests_sent > 10 * limit  # the kernel buffers took a lot...
        assert pending <= limit + 256 * 1024 // len(frame)  # ...the proxy only about the limit
    finally:
        victim.primary.signal(signal.SIGCONT)
        sock.close()
