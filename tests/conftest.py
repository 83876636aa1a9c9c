"""Fixtures: real redis-server processes on ephemeral loopback ports, and the proxy in front.

Nothing here mocks Redis. Every process a fixture starts is stopped by its PID when the fixture
ends, whatever the test did.

Which server, and how it runs, is chosen once per test run and printed in pytest's header:

- ``SHARDPROXY_TEST_SERVER=redis`` (default) or ``valkey``: the servers are ``redis-server`` /
  ``redis-sentinel`` or ``valkey-server`` / ``valkey-sentinel``.
- ``SHARDPROXY_TEST_FLEET=auto`` (default), ``processes`` or ``containers``: ``auto`` runs the
  servers as processes when the binary is installed, and otherwise as containers of the image
  ``deploy/docker/compose.yaml`` uses when a Docker engine answers (``tests/containers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

REPO = Path(__file__).resolve().parent.parent

# -- which server, processes or containers (chosen once, shown by pytest_report_header) ---------

SERVER_BINARIES = {
    "redis": ("redis-server", "redis-sentinel"),
    "valkey": ("valkey-server", "valkey-sentinel"),
}


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


def _installed(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


SERVER_KIND = os.environ.get("SHARDPROXY_TEST_SERVER", "").strip().lower() or "redis"
if SERVER_KIND not in SERVER_BINARIES:
    raise pytest.UsageError(
        f"SHARDPROXY_TEST_SERVER={SERVER_KIND!r}: must be one of {', '.join(SERVER_BINARIES)}"
    )
SERVER_NAME, SENTINEL_NAME = SERVER_BINARIES[SERVER_KIND]
REDIS_SERVER = _binary(SERVER_NAME)  # the server binary the fixtures run (redis or valkey)
REDIS_SENTINEL = _binary(SENTINEL_NAME)


def _select_fleet() -> tuple[str, str]:
    """("processes" | "containers", why), from SHARDPROXY_TEST_FLEET and what is installed."""
    from tests import containers

    return containers.choose_fleet(
        os.environ.get("SHARDPROXY_TEST_FLEET", ""),
        server_kind=SERVER_KIND,
        binary=REDIS_SERVER if _installed(REDIS_SERVER) else None,
        engine=containers.docker_engine,
    )


if SERVER_KIND != "redis" and not _installed(REDIS_SERVER):
    raise pytest.UsageError(
        f"SHARDPROXY_TEST_SERVER={SERVER_KIND}: {SERVER_NAME} is not installed "
        "(deploy/setup.sh installs it; on Debian 12 from bookworm-backports)"
    )
FLEET_MODE, FLEET_WHY = _select_fleet()


def _version(binary: str) -> str:
    if not _installed(binary):
        return "not installed"
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"does not run: {exc}"
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out.strip()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if FLEET_MODE == "containers":
        from tests import containers

        servers = f"servers: {SERVER_KIND} in containers of {containers.SERVER_IMAGE}"
    else:
        servers = (
            f"servers: {SERVER_KIND} (SHARDPROXY_TEST_SERVER): {REDIS_SERVER} "
            f"{_version(REDIS_SERVER)}, {REDIS_SENTINEL} {_version(REDIS_SENTINEL)}"
        )
    return [servers, f"fleet: {FLEET_MODE} (SHARDPROXY_TEST_FLEET): {FLEET_WHY}"]


def metric_key(name: str, **labels: str) -> str:
    """A Prometheus sample's key with its labels sorted by name: ``name{a="1",b="2"}``."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in a test run (the kernel may offer a
    port again before the process it was picked for has bound it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """One redis-server (or valkey-server) on 127.0.0.1 (no persistence): a process, or a
    container of compose.yaml's image on the host's network (see FLEET_MODE)."""

    def __init__(
        self, workdir: Path, port: int | None = None, replicaof: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.replicaof = replicaof
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.container: Any = None  # a tests.containers.ServerContainer in containers mode

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None or self.container is not None

    def argv(self) -> list[str]:
        """The command line of the server process (containers run the same flags)."""
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            "--repl-diskless-sync-delay", "0",  # replicas sync at once (tests start many)
        ]  # fmt: skip
        if self.replicaof:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        return args

    def start(self) -> RedisServer:
        if FLEET_MODE == "containers":
            from tests.containers import ServerContainer, server_spec

            self.container = ServerContainer(server_spec(self.argv())).start()
            wait_port(self.port, timeout=60)  # a first run may pull the image
            return self
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port, proc=self.proc)
        return self

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=2, **kw)  # type: ignore[arg-type]

    def signal(self, sig: int) -> None:
        if self.container is not None:
            self.container.signal(sig)
        elif self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.container is not None:
            self.container.kill()
            self.container = None
        if self.proc is not None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()
            self.container = None
        if self.proc is not None:
            self.signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


@dataclass
class Shard:
    name: str
    primary: RedisServer
    replicas: list[RedisServer] = field(default_factory=list)


class Fleet:
    """Shards of one primary and ``replicas`` replicas each, all real redis-server processes."""

    def __init__(self, workdir: Path, shards: int = 3, replicas: int = 1) -> None:
        self.workdir = workdir
        self.shards: list[Shard] = []
        for i in range(shards):
            primary = RedisServer(workdir)
            reps = [RedisServer(workdir, replicaof=primary.port) for _ in range(replicas)]
            self.shards.append(Shard(f"s{i + 1}", primary, reps))

    def start(self) -> Fleet:
        for s in self.shards:
            s.primary.start()
        for s in self.shards:
            for r in s.replicas:
                r.start()
        return self

    def wait_replication(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for s in self.shards:
            for r in s.replicas:
                with r.client() as c:
                    while c.info("replication").get("master_link_status") != "up":
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"replica {r.address} never linked")
                        time.sleep(0.05)

    def servers(self) -> list[RedisServer]:
        return [srv for s in self.shards for srv in (s.primary, *s.replicas)]

    def stop(self) -> None:
        for srv in self.servers():
            srv.stop()

    def flushall(self) -> None:
        for s in self.shards:
            if s.primary.running:
                with s.primary.client() as c:
                    c.flushall()

    def topology(self, **extra: object) -> dict[str, object]:
        topo: dict[str, object] = {
            "listen": f"127.0.0.1:{free_port()}",
            "admin": "off",
            "shards": [
                {
                    "name": s.name,
                    "primary": s.primary.address,
                    "replicas": [r.address for r in s.replicas],
                }
                for s in self.shards
            ],
        }
        topo.update(extra)
        return topo

    def owner(self, key: bytes | str) -> Shard:
        """The shard whose primary holds ``key`` (looked up on the servers themselves)."""
        for s in self.shards:
            with s.primary.client() as c:
                if c.exists(key):
                    return s
        raise KeyError(key)


class Proxy:
    """``python -m shardproxy run`` in a subprocess, with a topology written to a temp file."""

    def __init__(self, topology: dict[str, object], workdir: Path) -> None:
        self.topology = topology
        self.path = workdir / f"topology-{free_port()}.yaml"
        self.path.write_text(yaml.safe_dump(topology))
        listen = topology["listen"]
        first = listen[0] if isinstance(listen, list) else listen  # the first must be TCP
        assert isinstance(first, str)
        self.port = int(first.rsplit(":", 1)[1])
        admin = topology.get("admin", "off")
        self.admin_port = int(str(admin).rsplit(":", 1)[1]) if admin not in ("off", None) else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"proxy-{self.port}.log"

    def start(self) -> Proxy:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardproxy",
                "run",
                "-c",
                str(self.path),
                "--log-level",
                "info",
            ],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_port(self.port, proc=self.proc)
            if self.admin_port is not None:
                wait_port(self.admin_port, proc=self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(
                f"{exc}; proxy log:\n{self.log.read_text(errors='replace')}"
            ) from None
        return self

    def client(self, protocol: int = 3, **kw: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=protocol, **kw)  # type: ignore[arg-type]

    def stop(self) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
            self._logf.close()
        return code

    def http(self, path: str, method: str = "GET") -> tuple[int, str]:
        """(status, body) of an admin endpoint."""
        import urllib.error
        import urllib.request

        assert self.admin_port is not None, "this proxy has admin: off"
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()

    def scrape(self) -> dict[str, float]:
        """/metrics as {sample key: value}; keys as :func:`metric_key` writes them."""
        status, body = self.http("/metrics")
        assert status == 200, body
        values: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                name, _, labels = sample.partition("{")
                pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
                values[metric_key(name, **pairs)] = float(value)
        return values

    def topology_json(self) -> dict[str, Any]:
        status, body = self.http("/topology")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="shardproxy-tests-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet(workdir: Path) -> Iterator[Fleet]:
    """Three shards, primary + replica each, shared by the tests that do not break them."""
    f = Fleet(workdir / "shared-fleet").start()
    try:
        f.wait_replication()
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="session")
def proxy(fleet: Fleet, workdir: Path) -> Iterator[Proxy]:
    """The proxy in front of the shared fleet (read_policy primary)."""
    p = Proxy(fleet.topology(), workdir).start()
    try:
        yield p
    finally:
        assert p.stop() == 0, p.output()


@pytest.fixture
def clean(fleet: Fleet) -> Fleet:
    fleet.flushall()
    return fleet


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet for one test that may kill or stop its servers."""
    f = Fleet(tmp_path / "fleet").start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[object]:
    started: list[Proxy] = []

    def make(topology: dict[str, object]) -> Proxy:
        p = Proxy(topology, tmp_path).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
async def net() -> AsyncIterator[Any]:
    """The sans-IO network (tests/sansio.py): this test's event loop dials fake servers."""
    from tests.sansio import FakeNetwork, settle

    with FakeNetwork.installed(asyncio.get_running_loop()) as n:
        yield n
    await settle(3)  # connects cancelled at uninstall end


@pytest.fixture
async def make_host(net: Any) -> AsyncIterator[Any]:
    """FakeHosts on the sans-IO network (``make_host("a", "b", read_policy=...)``), closed at
    the end: their clients hang up first, so that no mode's retry races the nodes' closing."""
    from tests.sansio import FakeHost, settle

    hosts: list[FakeHost] = []

    def make(*names: str, **kw: Any) -> FakeHost:
        h = FakeHost(net, names or ("a", "b"), **kw)
        hosts.append(h)
        return h

    yield make
    for h in hosts:
        for c in h.clients:
            if not c.transport.lost:
                c.hang_up()
    await settle(2)
    for h in hosts:
        h.close()
    await settle(2)


@pytest.fixture
async def host(make_host: Any) -> Any:
    """A FakeHost with shards "a" and "b"."""
    return make_host()
