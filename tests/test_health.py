"""Health checking, unit level: failure/success counting, replica usability, INFO replication
parsing (on text from real redis-servers), and the real monitor probing a scripted TCP backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shardproxy.backend.dial import Endpoint
from shardproxy.control.health import (
    DOWN,
    UNKNOWN,
    UP,
    HealthMonitor,
    HealthSettings,
    NodeHealth,
    ProbedNode,
    Replication,
    parse_replication,
)
from shardproxy.protocol import encode, requests
from tests.conftest import Fleet

MiB = 1024 * 1024


@dataclass
class FakeNode:
    address: str
    host: str = "127.0.0.1"
    port: int = 0
    shard: str = "s1"
    role: str = "primary"
    unix: str | None = None
    usable: bool = True
    lag_bytes: int | None = None
    reconnects: int = 0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.unix)

    def reconnect_now(self) -> None:
        self.reconnects += 1


@dataclass
class FakeShard:
    name: str
    primary: FakeNode
    replicas: tuple[FakeNode, ...] = ()


class RecordingMonitor(HealthMonitor):
    """The real HealthMonitor, recording every state change as (address, state, monotonic)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes: list[tuple[str, str, float]] = []

    def _set(self, h: NodeHealth, state: str, reason: str) -> None:
        super()._set(h, state, reason)
        self.changes.append((h.node.address, state, time.monotonic()))


@dataclass
class ScriptedMonitor:
    """The real HealthMonitor, with each node's probe result set by the test (no network):
    ``answers[address]`` is the INFO replication a probe returns, or None for a failed probe."""

    shard: FakeShard
    settings: HealthSettings
    answers: dict[str, Replication | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        outer = self

        class Monitor(RecordingMonitor):
            async def _probe(self, node: ProbedNode) -> None:
                repl = outer.answers.get(node.address)
                if repl is None:
                    self.failure(node, "scripted failure")
                else:
                    self.success(node, repl)

        self.monitor = Monitor(lambda: [self.shard], self.settings)  # type: ignore[list-item]

    @property
    def changes(self) -> list[tuple[str, str]]:
        return [(address, state) for address, state, _ in self.monitor.changes]

    async def round(self, **answers: Replication | None) -> None:
        for role, repl in answers.items():
            node = self.shard.primary if role == "primary" else self.shard.replicas[0]
            self.answers[node.address] = repl
        await self.monitor.round()

    def state(self, node: FakeNode) -> str:
        return self.monitor.state(node)  # type: ignore[arg-type]


MASTER = Replication(role="master")


# -- counting ------------------------------------------------------------------------------------


async def test_one_failure_in_three_never_marks_a_node_down() -> None:
    node = FakeNode("10.0.0.1:6379")
    m = ScriptedMonitor(FakeShard("s1", node), HealthSettings(failures=3, successes=2))
    for _ in range(30):
        for answer in (None, MASTER, MASTER):  # fail, ok, ok
            await m.round(primary=answer)
            assert m.state(node) != DOWN and node.usable
    assert m.state(node) == UP
    assert m.changes == [(node.address, UP)]


async def test_consecutive_failures_mark_down_and_successes_bring_back() -> None:
    node = FakeNode("10.0.0.1:6379")
    m = ScriptedMonitor(FakeShard("s1", node), HealthSettings(failures=3, successes=2))
    await m.round(primary=MASTER)
    assert m.state(node) == UNKNOWN and node.usable  # a primary is usable until proven down
    await m.round(primary=MASTER)
    assert m.state(node) == UP

    await m.round(primary=None)
    await m.round(primary=None)
    assert m.state(node) == UP and node.usable
    await m.round(primary=None)
    assert m.state(node) == DOWN and not node.usable

    # one good probe is not enough, and a failure in between starts the count again
    await m.round(primary=MASTER)
    await m.round(primary=None)
    await m.round(primary=MASTER)
    assert m.state(node) == DOWN and not node.usable
    await m.round(primary=MASTER)
    assert m.state(node) == UP and node.usable
    assert m.changes == [(node.address, s) for s in (UP, DOWN, UP)]
    assert node.reconnects == 1  # back from DOWN: its data connections reconnect at once


async def test_live_traffic_failures_count_with_probe_failures() -> None:
    node = FakeNode("10.0.0.1:6379")
    m = ScriptedMonitor(FakeShard("s1", node), HealthSettings(failures=3, successes=1))
    await m.round(primary=MASTER)
    assert m.state(node) == UP
    m.monitor.failure(node, "connection reset")  # type: ignore[arg-type]
    m.monitor.failure(node, "connection reset")  # type: ignore[arg-type]
    await m.round(primary=MASTER)  # a good probe resets the count
    m.monitor.failure(node, "connection reset")  # type: ignore[arg-type]
    m.monitor.failure(node, "connection reset")  # type: ignore[arg-type]
    assert m.state(node) == UP
    await m.round(primary=None)
    assert m.state(node) == DOWN and not node.usable


async def test_a_node_that_never_answers_goes_down_from_unknown() -> None:
    node = FakeNode("10.0.0.1:6379")
    m = ScriptedMonitor(FakeShard("s1", node), HealthSettings(failures=3, successes=2))
    for _ in range(2):
        await m.round(primary=None)
        assert m.state(node) == UNKNOWN
    await m.round(primary=None)
    assert m.state(node) == DOWN and not node.usable


# -- replica usability ---------------------------------------------------------------------------


def pair() -> tuple[FakeShard, FakeNode, FakeNode]:
    primary = FakeNode("10.0.0.1:6379")
    replica = FakeNode("10.0.0.2:6379", role="replica", usable=False)  # as the fleet makes it
    return FakeShard("s1", primary, (replica,)), primary, replica


def primary_at(offset: int, seen: int | None) -> Replication:
    """The primary's INFO: its offset and, if ``seen`` is set, what it knows of the replica's."""
    replicas = {} if seen is None else {"10.0.0.2:6379": seen}
    return Replication(role="master", offset=offset, replicas=replicas)


def replica_at(
    offset: int, link_up: bool = True, last_io_ms: int | None = 0, role: str = "slave"
) -> Replication:
    return Replication(
        role=role, master="10.0.0.1:6379", link_up=link_up, offset=offset, last_io_ms=last_io_ms
    )


@pytest.mark.parametrize(
    ("lag_limit", "primary", "replica", "usable", "lag"),
    [
        ("1mb", primary_at(5000, 5000), replica_at(5000), True, 0),
        ("1mb", primary_at(5000, 5000), replica_at(5000, link_up=False), False, 0),
        ("1mb", primary_at(5000, 5000), replica_at(5000, role="master"), False, 0),
        ("1mb", primary_at(5000 + MiB, 5000), replica_at(5000), True, MiB),
        ("1mb", primary_at(5001 + MiB, 5000), replica_at(5000), False, MiB + 1),
        ("1mb", primary_at(9000, None), replica_at(8000), True, 1000),  # replica's own offset
        (
            "2s",
            primary_at(5000 + 50 * MiB, 5000),
            replica_at(5000, last_io_ms=1000),
            True,
            50 * MiB,
        ),
        ("2s", primary_at(5000, 5000), replica_at(5000, last_io_ms=2000), True, 0),
        ("2s", primary_at(5000, 5000), replica_at(5000, last_io_ms=3000), False, 0),
        ("2s", primary_at(5000, 5000), replica_at(5000, last_io_ms=None), False, 0),
        ("2s", primary_at(5000, 5000), replica_at(5000, link_up=False), False, 0),
    ],
)
async def test_replica_usable_only_linked_and_within_lag(
    lag_limit: str, primary: Replication, replica: Replication, usable: bool, lag: int
) -> None:
    shard, p, r = pair()
    settings = HealthSettings(
        failures=2,
        successes=1,
        max_lag_bytes=MiB if lag_limit == "1mb" else None,
        max_lag_ms=2000 if lag_limit == "2s" else None,
    )
    m = ScriptedMonitor(shard, settings)
    await m.round(primary=primary, replica=replica)
    assert m.state(r) == UP
    assert (r.usable, r.lag_bytes) == (usable, lag)
    assert p.usable and p.lag_bytes is None


async def test_replica_usability_follows_its_link_lag_and_health() -> None:
    shard, p, r = pair()
    m = ScriptedMonitor(shard, HealthSettings(failures=2, successes=2, max_lag_bytes=MiB))
    await m.round(primary=primary_at(100, 100), replica=replica_at(100))
    assert m.state(r) == UNKNOWN and not r.usable  # not vetted yet
    await m.round()
    assert m.state(r) == UP and r.usable
    await m.round(replica=replica_at(100, link_up=False))
    assert not r.usable  # link down
    await m.round(replica=replica_at(100))
    assert r.usable
    await m.round(primary=primary_at(100 + 2 * MiB, 100))
    assert not r.usable and r.lag_bytes == 2 * MiB  # too far behind
    await m.round(
        primary=primary_at(100 + 2 * MiB, 100 + 2 * MiB), replica=replica_at(100 + 2 * MiB)
    )
    assert r.usable and r.lag_bytes == 0  # caught up
    await m.round(replica=None)
    assert r.usable  # one failed probe of failures=2
    await m.round(replica=None)
    assert m.state(r) == DOWN and not r.usable
    await m.round(replica=replica_at(100 + 2 * MiB))
    assert m.state(r) == DOWN and not r.usable  # successes=2
    await m.round()
    assert m.state(r) == UP and r.usable
    await m.round(primary=None)
    await m.round(primary=None)
    assert m.state(p) == DOWN and not p.usable
    assert not r.usable and r.lag_bytes is None  # lag unknown without the primary's view


# -- parse_replication on real INFO text ---------------------------------------------------------


def info_replication(port: int) -> str:
    """The raw INFO replication text of a server (no client library in between)."""
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(encode.encode_command([b"INFO", b"replication"]))
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n")
        assert head.startswith(b"$"), head
        size = int(head[1:])
        while len(body) < size + 2:
            body += s.recv(65536)
        return body[:size].decode()


def test_parse_replication_of_real_servers(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, shards=1, replicas=1).start()
    try:
        shard = fleet.shards[0]
        primary, replica = shard.primary, shard.replicas[0]
        with primary.client() as c:
            c.config_set("repl-diskless-sync-delay", 0)
            fleet.wait_replication()
            for i in range(20):
                c.set(f"k{i}", "v" * 100)
            assert c.execute_command("WAIT", 1, 5000) == 1
            expected = c.info("replication")

        text = info_replication(primary.port)
        p = parse_replication(text)
        print(f"\nprimary INFO replication parsed: {p}")
        assert p.role == "master" and p.master is None
        # (offsets only grow: the primary's replication PINGs and the replica's ACKs)
        assert p.offset >= expected["master_repl_offset"] > 2000
        assert list(p.replicas) == [replica.address]
        assert expected["slave0"]["offset"] <= p.replicas[replica.address] <= p.offset

        r = parse_replication(info_replication(replica.port))
        print(f"replica INFO replication parsed: {r}")
        assert r.role == "slave"
        assert r.master == primary.address
        assert r.link_up
        assert r.offset >= p.replicas[replica.address] > 0
        assert r.last_io_ms is not None and 0 <= r.last_io_ms <= 10_000

        primary.kill()
        deadline = time.monotonic() + 5
        while (r := parse_replication(info_replication(replica.port))).link_up:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        print(f"replica INFO replication after the primary died: {r}")
        assert r.role == "slave" and r.master == primary.address
        assert r.last_io_ms is None  # master_last_io_seconds_ago:-1
    finally:
        fleet.stop()


# -- the real monitor probing a scripted backend over TCP ----------------------------------------

INFO_MASTER = b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n"


class FakeBackend:
    """Answers PING and INFO, but leaves every ``drop_every``-th probe unanswered (or every
    probe while ``silent``)."""

    def __init__(self, drop_every: int = 3) -> None:
        self.drop_every = drop_every
        self.silent = False
        self.pings = 0
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        parser = requests.RequestParser()
        drop = False
        try:
            while data := await reader.read(65536):
                for argv, _ in parser.feed(data):
                    name = argv[0].upper()
                    if name == b"PING":
                        self.pings += 1
                        drop = self.silent or (
                            self.drop_every > 0 and self.pings % self.drop_every == 0
                        )
                        self.dropped += drop
                        if not drop:
                            writer.write(b"+PONG\r\n")
                    elif name == b"INFO":
                        if not drop:
                            writer.write(encode.bulk(INFO_MASTER))
                    else:
                        writer.write(b"-ERR unknown command\r\n")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.handlers.discard(task)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=2)


async def test_monitor_against_a_backend_that_drops_probes() -> None:
    interval, timeout, failures, successes = 0.05, 0.04, 3, 2
    backend = FakeBackend(drop_every=3)
    port = await backend.start()
    node = FakeNode(f"127.0.0.1:{port}", port=port)
    monitor = RecordingMonitor(
        lambda: [FakeShard("fake", node)],  # type: ignore[list-item]
        HealthSettings(interval=interval, timeout=timeout, failures=failures, successes=successes),
    )
    monitor.start()
    try:
        t0 = time.monotonic()
        while monitor.rounds < 40:
            await asyncio.sleep(0.01)
        print(
            f"\n{monitor.rounds} rounds in {time.monotonic() - t0:.2f} s: {backend.pings} probes, "
            f"{backend.dropped} dropped; state changes {[s for _, s, _ in monitor.changes]}"
        )
        assert backend.dropped >= 12
        assert [s for _, s, _ in monitor.changes] == [UP]
        assert monitor.state(node) == UP and node.usable  # type: ignore[arg-type]

        backend.silent = True
        t_silent = time.monotonic()
        while monitor.state(node) != DOWN:  # type: ignore[arg-type]
            assert time.monotonic() - t_silent < 2, "never marked down"
            await asyncio.sleep(0.002)
        took = monitor.changes[-1][2] - t_silent
        bound = failures * interval + timeout
        print(
            f"silent -> marked down after {took * 1000:.0f} ms "
            f"(failures*interval + timeout = {bound * 1000:.0f} ms)"
        )
        assert monitor.changes[-1][1] == DOWN and not node.usable
        assert (failures - 1) * interval + timeout - 0.01 <= took <= bound + 0.03

        backend.silent = False
        backend.drop_every = 0
        t_back = time.monotonic()
        while monitor.state(node) != UP:  # type: ignore[arg-type]
            assert time.monotonic() - t_back < 2, "never back up"
            await asyncio.sleep(0.002)
        took = monitor.changes[-1][2] - t_back
        print(f"answering again -> up after {took * 1000:.0f} ms")
        assert node.usable
        assert took <= successes * interval + interval + 0.03
    finally:
        await monitor.stop()
        await backend.close()
        await asyncio.sleep(0.05)  # let closed transports finish
