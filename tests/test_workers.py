"""``run --workers 2``: a supervisor and two forked workers, against real redis-server processes.

Clients here are raw sockets with hiredis's reader: no client library that reconnects behind the
test's back or sends commands of its own, so connection counts and command counts are exact.
Which worker serves a connection is read from INFO's process_id (the worker's pid).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import yaml

from tests.conftest import REPO, Fleet, Proxy, free_port, wait_port
from tests.test_observability import K, scrape


class WorkersProxy(Proxy):
    """``python -m shardproxy run -c FILE --workers N``, with an admin port; ``proc`` is the
    supervisor."""

    def __init__(self, topology: dict[str, object], workdir: Path, workers: int = 2) -> None:
        self.topology = topology
        self.workers = workers
        self.path = workdir / f"topology-{free_port()}.yaml"
        self.path.write_text(yaml.safe_dump(topology))
        listen = topology["listen"]
        first = listen[0] if isinstance(listen, list) else listen
        assert isinstance(first, str)
        self.port = int(first.rsplit(":", 1)[1])
        self.admin_port: int = int(str(topology["admin"]).rsplit(":", 1)[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"proxy-{self.port}.log"

    def start(self) -> WorkersProxy:
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardproxy", "run", "-c", str(self.path),
             "--workers", str(self.workers), "--log-level", "info"],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
        wait_port(self.port, proc=self.proc)
        wait_port(self.admin_port, proc=self.proc)
        wait_for(lambda: self.http("/readyz")[0] == 200, what="every worker ready")
        return self

    def children(self) -> set[int]:
        assert self.proc is not None
        pid = self.proc.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def write(self, **changes: object) -> None:
        self.topology = {**self.topology, **changes}
        self.path.write_text(yaml.safe_dump(self.topology))


class Conn:
    """One raw RESP connection to the proxy; ``pid`` is the worker that serves it."""

    def __init__(self, port: int | None = None, unix: str | None = None) -> None:
        if unix is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(unix)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port or 0), timeout=5)
        self.reader = hiredis.Reader()
        info = self.cmd("INFO", "server")
        assert isinstance(info, bytes), info
        match = re.search(rb"process_id:(\d+)", info)
        assert match, info
        self.pid = int(match.group(1))

    def cmd(self, *args: str | bytes | int) -> Any:
        parts = [str(a).encode() if not isinstance(a, bytes) else a for a in args]
        self.sock.sendall(
            b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        )
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the proxy closed the connection")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def connections(p: WorkersProxy, n: int, unix: str | None = None) -> Iterator[list[Conn]]:
    """``n`` open connections (closed afterwards, whatever happens)."""
    opened: list[Conn] = []
    try:
        for _ in range(n):
            opened.append(Conn(p.port, unix))
        yield opened
    finally:
        for c in opened:
            c.close()


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """No such process, or only a zombie left (it holds nothing any more)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return bool(re.search(r"^State:\s+Z", status, re.MULTILINE))


@pytest.fixture
def wproxy(fleet: Fleet, tmp_path: Path) -> Iterator[WorkersProxy]:
    fleet.flushall()
    p = WorkersProxy(fleet.topology(admin=f"127.0.0.1:{free_port()}"), tmp_path).start()
    try:
        yield p
    finally:
        p.stop()


def test_connections_spread_over_both_workers(wproxy: WorkersProxy) -> None:
    workers = wproxy.children()
    assert wproxy.proc is not None
    assert len(workers) == 2 and wproxy.proc.pid not in workers
    with connections(wproxy, 40) as conns:
        assert {c.pid for c in conns} == workers  # each connection served by one of the two
        for i, c in enumerate(conns):
            assert c.cmd("SET", f"w:{i}", f"v{i}") == b"OK"
            assert c.cmd("INCRBY", f"n:{i % 5}", 1) >= 1
        for i, c in enumerate(conns):
            assert c.cmd("GET", f"w:{(i + 7) % 40}") == f"v{(i + 7) % 40}".encode()
        assert conns[0].cmd("MGET", *(f"w:{i}" for i in range(40))) == [
            f"v{i}".encode() for i in range(40)
        ]
        assert sum(int(conns[1].cmd("GET", f"n:{k}")) for k in range(5)) == 40
        assert conns[2].cmd("DBSIZE") == 45
    status, body = wproxy.http("/topology")
    assert status == 200 and '"s1"' in body


def test_merged_metrics_are_exact(wproxy: WorkersProxy) -> None:
    get_ok = K("shardproxy_commands_total", command="get", status="ok")
    get_count = K("shardproxy_command_duration_seconds_count", command="get")
    with connections(wproxy, 20) as conns:
        assert {c.pid for c in conns} == wproxy.children()
        assert conns[0].cmd("SET", "m", "x") == b"OK"
        before = scrape(wproxy)
        assert before["shardproxy_client_connections"] == 20
        for _ in range(10):
            for c in conns:
                assert c.cmd("GET", "m") == b"x"
        after = scrape(wproxy)
        assert after[get_ok] - before.get(get_ok, 0) == 200
        assert after[get_count] - before.get(get_count, 0) == 200
        inf_bucket = K("shardproxy_command_duration_seconds_bucket", command="get", le="+Inf")
        assert after[inf_bucket] == after[get_count]
        # gauges by their merge rule: connections add up, a node's "up" does not
        assert after["shardproxy_client_connections"] == 20
        ups = {k: v for k, v in after.items() if k.startswith("shardproxy_backend_up{")}
        assert set(ups.values()) <= {0.0, 1.0}
        assert [v for k, v in ups.items() if 'role="primary"' in k] == [1.0] * 3
        python = ".".join(map(str, sys.version_info[:3]))
        assert after[K("shardproxy_build_info", python=python, version="0.1.0")] == 1
        for c in conns[:5]:
            c.close()
        wait_for(lambda: scrape(wproxy)["shardproxy_client_connections"] == 15, what="gauge 15")
    _, body = wproxy.http("/metrics")
    types = re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE)
    assert len(types) == len(set(types))  # one family per metric, not one per worker


def test_killed_worker_is_restarted_and_others_unaffected(wproxy: WorkersProxy) -> None:
    get_ok = K("shardproxy_commands_total", command="get", status="ok")
    with connections(wproxy, 40) as conns:
        victim = conns[0].pid
        survivor = next(c.pid for c in conns if c.pid != victim)
        for c in conns:
            assert c.cmd("SET", "k", "v") == b"OK" and c.cmd("GET", "k") == b"v"
        before = scrape(wproxy)[get_ok]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(wproxy.children() - {victim, survivor}) == 1, what="a new worker")
        (new,) = wproxy.children() - {survivor}
        for c in conns:
            if c.pid == survivor:  # the same connections keep working, on the same worker
                assert c.cmd("GET", "k") == b"v"
                assert c.cmd("INFO", "server").count(b"process_id:%d" % survivor) == 1
            else:
                with pytest.raises(OSError):
                    c.cmd("GET", "k")
        # new connections land on both the survivor and the restarted worker
        with connections(wproxy, 40) as fresh:
            assert {c.pid for c in fresh} == {survivor, new}
            assert all(c.cmd("GET", "k") == b"v" for c in fresh)
    wait_for(lambda: wproxy.http("/readyz")[0] == 200, what="ready after the restart")
    assert scrape(wproxy)[get_ok] >= before + 40  # the dead worker's counts are kept
    assert re.search(rf"worker \d \(pid {victim}\) was killed by SIGKILL", wproxy.output())


def test_sighup_and_post_reload_reach_every_worker(wproxy: WorkersProxy) -> None:
    ok = K("shardproxy_config_reloads_total", result="success")
    with connections(wproxy, 20) as conns:
        one = {c.pid: c for c in conns}
        assert len(one) == 2
        for c in one.values():
            assert c.cmd("KEYS", "*") == []
        wproxy.write(deny_commands=["keys"])
        assert wproxy.proc is not None
        wproxy.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: all(isinstance(c.cmd("KEYS", "*"), hiredis.ReplyError) for c in one.values()),
            what="KEYS refused by both workers",
        )
        for c in one.values():
            assert "deny_commands" in str(c.cmd("KEYS", "*"))
        assert scrape(wproxy)[ok] == 2  # once per worker
        wproxy.write(deny_commands=[])
        status, body = wproxy.http("/reload", method="POST")
        assert status == 200 and body.count('"ok": true') == 2
        assert all(c.cmd("KEYS", "*") == [] for c in one.values())
        assert scrape(wproxy)[ok] == 4
        wproxy.write(shards="not a list")
        status, body = wproxy.http("/reload", method="POST")
        assert status == 400 and '"result": "failure"' in body and "shards" in body


def test_sigterm_stops_everything_with_exit_0(wproxy: WorkersProxy) -> None:
    workers = wproxy.children()
    assert wproxy.proc is not None
    with connections(wproxy, 10) as conns:
        assert {c.pid for c in conns} == workers
        wproxy.proc.send_signal(signal.SIGTERM)
        assert wproxy.proc.wait(15) == 0, wproxy.output()
    assert all(gone(pid) for pid in workers)
    for port in (wproxy.port, wproxy.admin_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), 1).close()


def test_killed_supervisor_leaves_no_worker(wproxy: WorkersProxy) -> None:
    workers = wproxy.children()
    assert wproxy.proc is not None
    wproxy.proc.kill()
    wproxy.proc.wait(10)
    wait_for(lambda: all(gone(pid) for pid in workers), what="workers gone after the supervisor")
    rundir = re.search(r"unix:(\S+)/worker-0\.sock", wproxy.output())
    if rundir:  # a SIGKILLed supervisor cannot remove its run directory
        shutil.rmtree(rundir.group(1), ignore_errors=True)


def test_unix_listener_is_shared_by_the_workers(fleet: Fleet, tmp_path: Path) -> None:
    fleet.flushall()
    path = tmp_path / "proxy.sock"
    port = free_port()
    topo = fleet.topology(admin=f"127.0.0.1:{free_port()}")
    topo["listen"] = [f"127.0.0.1:{port}", f"unix:{path}"]
    p = WorkersProxy(topo, tmp_path).start()
    try:
        workers = p.children()
        with connections(p, 20, unix=str(path)) as conns:
            assert {c.pid for c in conns} <= workers
            for i, c in enumerate(conns):
                assert c.cmd("SET", f"u:{i}", i) == b"OK"
            with connections(p, 1) as (tcp,):
                assert tcp.cmd("MGET", "u:0", "u:19") == [b"0", b"19"]
    finally:
        assert p.stop() == 0, p.output()
    assert not path.exists()
