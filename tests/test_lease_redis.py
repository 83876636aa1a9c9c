"""Leased connections and the control connection against a real redis-server.

What the sans-IO tests cannot show: that the reset a released lease goes through (``RESET``
and the handshake again) really does give the next holder a clean connection on Redis: no
name, no transaction, no subscription, database 0, authenticated again, the protocol asked
for. And that ``ControlConnection`` reports the server's own handshake refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from shardproxy.backend import dial
from shardproxy.backend.connection import DOWN, READY, BackendSettings
from shardproxy.backend.lease import Lease, LeasePool
from shardproxy.backend.node import Node
from shardproxy.backend.slots import CallSlot
from shardproxy.protocol import errors, replies
from tests.conftest import RedisServer
from tests.sansio import cmd, wait_until

PASSWORD = "s3cret-lease"
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


@pytest.fixture(scope="module")
def plain(workdir: Path) -> Iterator[RedisServer]:
    srv = RedisServer(workdir / "lease-plain").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def guarded(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server that requires a password."""
    srv = RedisServer(workdir / "lease-guarded").start()
    try:
        with srv.client() as c:
            c.config_set("requirepass", PASSWORD)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.close()
    await asyncio.sleep(0.02)  # let the transports finish closing


def make_node(nodes: list[Node], srv: RedisServer, password: str | None = None) -> Node:
    settings = BackendSettings(connect_timeout=2.0, command_timeout=2.0, password=password)
    node = Node(asyncio.get_running_loop(), "s1", "primary", "127.0.0.1", srv.port, settings)
    nodes.append(node)
    return node


async def call(lease: Lease, *argv: bytes | str | int) -> bytes:
    return (await call_many(lease, [argv]))[0]


async def call_many(lease: Lease, commands: Sequence[Sequence[bytes | str | int]]) -> list[bytes]:
    """Send ``commands`` on the lease together; their raw replies."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[bytes]] = []
    for argv in commands:
        fut: asyncio.Future[bytes] = loop.create_future()
        lease.send(cmd(*argv), CallSlot(fut))
        futures.append(fut)
    return list(await asyncio.wait_for(asyncio.gather(*futures), 5.0))


async def give_back(pool: LeasePool, lease: Lease) -> None:
    lease.release()
    await wait_until(lambda: lease in pool.idle or lease.state != READY, timeout=5.0)
    assert lease in pool.idle, f"the reset failed: {lease.state} {lease.last_error}"


def client_info(raw: bytes) -> dict[str, str]:
    text = (replies.parse_bulk(raw) or b"").decode()
    return dict(field.split("=", 1) for field in text.split())


def null(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"$-1\r\n"


@pytest.mark.parametrize("proto", [2, 3])
async def test_released_lease_comes_back_reset(
    plain: RedisServer, nodes: list[Node], proto: int
) -> None:
    node = make_node(nodes, plain)
    pool = node.leases
    lease = pool.acquire(proto, None)
    assert lease is not None
    key = f"lease-reset-{proto}"
    first = await call_many(
        lease,
        [
            ["CLIENT", "ID"],
            ["CLIENT", "SETNAME", "x"],
            ["SELECT", "1"],
            ["MULTI"],
            ["SET", key, "v"],
            ["CLIENT", "GETNAME"],
        ],
    )
    client_id = first[0]
    assert client_id.startswith(b":")
    assert first[1:] == [b"+OK\r\n", b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"]

    await give_back(pool, lease)
    again = pool.acquire(proto, None)
    assert again is lease  # the same connection ...
    after = await call_many(
        lease,
        [
            ["CLIENT", "ID"],
            ["CLIENT", "GETNAME"],
            ["EXEC"],
            ["GET", key],
            ["CLIENT", "INFO"],
        ],
    )
    assert after[0] == client_id  # ... on the server too
    assert after[1] == null(proto)  # no name, and the protocol asked for
    assert after[2] == b"-ERR EXEC without MULTI\r\n"
    assert after[3] == null(proto)  # the queued SET never ran
    info = client_info(after[4])
    assert (info["db"], info["multi"], info["resp"], info["name"]) == ("0", "-1", str(proto), "")
    lease.release()


async def test_subscribed_lease_comes_back_unsubscribed(
    plain: RedisServer, nodes: list[Node]
) -> None:
    node = make_node(nodes, plain)
    pool = node.leases
    lease = pool.acquire(2, None)
    assert lease is not None
    assert await call(lease, "SUBSCRIBE", "lease-ch") == (
        b"*3\r\n$9\r\nsubscribe\r\n$8\r\nlease-ch\r\n:1\r\n"
    )
    await give_back(pool, lease)
    assert pool.acquire(2, None) is lease
    assert await call(lease, "PING") == b"+PONG\r\n"  # not the subscribed ["pong", ""]
    info = client_info(await call(lease, "CLIENT", "INFO"))
    assert (info["sub"], info["flags"]) == ("0", "N")


@pytest.mark.parametrize("proto", [2, 3])
async def test_reset_authenticates_again(
    guarded: RedisServer, nodes: list[Node], proto: int
) -> None:
    node = make_node(nodes, guarded, PASSWORD)
    pool = node.leases
    lease = pool.acquire(proto, None)
    assert lease is not None
    key = f"lease-auth-{proto}"
    assert await call(lease, "SET", key, "v") == b"+OK\r\n"
    await give_back(pool, lease)
    assert pool.acquire(proto, None) is lease
    # RESET logged the connection out; the handshake that followed it logged it in again
    assert await call_many(lease, [["GET", key], ["ACL", "WHOAMI"]]) == [
        b"$1\r\nv\r\n",
        b"$7\r\ndefault\r\n",
    ]
    lease.release()


async def test_lease_with_a_wrong_password_is_refused(
    guarded: RedisServer, nodes: list[Node]
) -> None:
    node = make_node(nodes, guarded, "wrong")
    pool = node.leases
    lease = pool.acquire(2, None)
    assert lease is not None
    reply = await call(lease, "GET", "k")
    assert reply == errors.reply(
        "shard_unavailable",
        shard="s1",
        node=f"127.0.0.1:{guarded.port}",
        detail="handshake refused: " + WRONGPASS,
    )
    assert lease.state == DOWN
    assert pool.open_count() == 0


async def test_shared_pipeline_against_redis(plain: RedisServer, nodes: list[Node]) -> None:
    node = make_node(nodes, plain)
    p = node.connection(3, 1)
    loop = asyncio.get_running_loop()
    futures = []
    for argv in (["SET", "pipe-k", "1"], ["INCR", "pipe-k"], ["GET", "pipe-k"], ["GET", "none"]):
        fut: asyncio.Future[bytes] = loop.create_future()
        p.send(cmd(*argv), CallSlot(fut))
        futures.append(fut)
    got = await asyncio.wait_for(asyncio.gather(*futures), 5.0)
    assert got == [b"+OK\r\n", b":2\r\n", b"$1\r\n2\r\n", b"_\r\n"]


# -- ControlConnection -----------------------------------------------------------------------


async def test_control_connection_wrong_password(guarded: RedisServer) -> None:
    endpoint = dial.Endpoint("127.0.0.1", guarded.port)
    with pytest.raises(dial.HandshakeError) as err:
        await dial.ControlConnection.open(endpoint, dial.Credentials(None, "wrong"), timeout=2.0)
    assert str(err.value) == WRONGPASS
    with pytest.raises(dial.HandshakeError) as err:
        await dial.ControlConnection.open(
            endpoint, dial.Credentials(None, "wrong"), proto=3, timeout=2.0
        )
    assert str(err.value) == WRONGPASS


async def test_control_connection_call_many_in_order(guarded: RedisServer) -> None:
    endpoint = dial.Endpoint("127.0.0.1", guarded.port)
    conn = await dial.ControlConnection.open(endpoint, dial.Credentials(None, PASSWORD))
    try:
        got = await conn.call_many(
            [
                ["DEL", "ctl-k"],
                ["SET", "ctl-k", "1"],
                ["INCR", "ctl-k"],
                ["GET", "ctl-k"],
                ["LPUSH", "ctl-k", "x"],
                ["PING"],
            ]
        )
        assert got == [
            b":0\r\n",
            b"+OK\r\n",
            b":2\r\n",
            b"$1\r\n2\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b"+PONG\r\n",
        ]
        assert await conn.value("GET", "ctl-k") == b"2"
        assert not conn.closed
    finally:
        conn.close()
    await asyncio.sleep(0.01)
