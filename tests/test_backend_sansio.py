"""Backend connections, sans-IO: real Node, Pipeline, LeasePool and Lease over fake sockets.

Exact bytes on the wire (harness: ``tests/sansio.py``), exact replies in the slots, exact
states; the timers (command timeout, backoff, lease deadlines, idle sweep) run on the real
loop with small values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from shardproxy.backend.connection import CLOSED, CONNECTING, DOWN, READY, BackendSettings
from shardproxy.backend.lease import RESET_FRAME, Lease
from shardproxy.backend.node import Node
from shardproxy.backend.pipeline import Pipeline
from shardproxy.protocol import errors
from shardproxy.session.queue import QueuedReply
from tests.sansio import (
    FakeNetwork,
    FakeServer,
    RecordingPushes,
    ServerConn,
    cmd,
    reply_of,
    settle,
    wait_until,
)

ADDRESS = "10.1.0.1:6379"
HELLO3_REPLY = b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
PUSH = b">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$-1\r\n"

MakeNode = Callable[..., Node]


@pytest.fixture
async def make_node(net: FakeNetwork) -> AsyncIterator[MakeNode]:
    nodes: list[Node] = []

    def make(**settings: object) -> Node:
        node = Node(
            net.loop,
            "s1",
            "primary",
            "10.1.0.1",
            6379,
            BackendSettings(**settings),  # type: ignore[arg-type]
        )
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()
    await settle(2)


def slot() -> QueuedReply:
    """A real reply slot with no client: records the reply it gets."""
    return QueuedReply(None, 0, 0.0)


def server(net: FakeNetwork) -> FakeServer:
    return net.server(ADDRESS)


def timeout_reply(ms: int) -> bytes:
    return errors.reply("shard_timeout", shard="s1", node=ADDRESS, ms=ms)


# -- the handshake ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "proto,username,password,handshake",
    [
        (2, None, None, b""),
        (2, None, "pw", cmd("AUTH", "pw")),
        (2, "app", "pw", cmd("AUTH", "app", "pw")),
        (3, None, None, cmd("HELLO", "3")),
        (3, None, "pw", cmd("HELLO", "3", "AUTH", "default", "pw")),
        (3, "app", "pw", cmd("HELLO", "3", "AUTH", "app", "pw")),
    ],
    ids=["resp2", "resp2-pass", "resp2-user-pass", "resp3", "resp3-pass", "resp3-user-pass"],
)
async def test_pipeline_handshake_then_requests_queued_while_connecting(
    net: FakeNetwork,
    make_node: MakeNode,
    proto: int,
    username: str | None,
    password: str | None,
    handshake: bytes,
) -> None:
    node = make_node(username=username, password=password)
    p = node.connection(proto, 7)
    assert p.state == CONNECTING
    slots = [slot() for _ in range(3)]
    frames = [cmd("GET", "a"), cmd("SET", "b", "1"), cmd("INCR", "c")]
    for f, s in zip(frames, slots, strict=True):
        p.send(f, s)
    await settle()
    conn = server(net).conn
    if handshake:
        assert conn.writes == [handshake]  # the handshake alone, requests held back
        assert p.state == CONNECTING
        conn.answer(HELLO3_REPLY if proto == 3 else b"+OK\r\n")
        assert p.state == READY
        await settle()
        assert conn.writes == [handshake, b"".join(frames)]  # in order, one write
    else:
        assert p.state == READY
        assert conn.writes == [b"".join(frames)]
    assert node.requests == 3
    conn.answer(b"$1\r\nA\r\n+OK\r\n:1\r\n")
    assert [reply_of(s) for s in slots] == [b"$1\r\nA\r\n", b"+OK\r\n", b":1\r\n"]
    assert len(p.pending) == 0


async def test_pipeline_handshake_refused_fails_pending_and_goes_down(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(password="wrong", backoff_min=10.0)
    p = node.connection(2, 1)
    s = slot()
    p.send(cmd("GET", "a"), s)
    await settle()
    conn = server(net).conn
    assert conn.writes == [cmd("AUTH", "wrong")]
    conn.answer(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    detail = "handshake refused: WRONGPASS invalid username-password pair or user is disabled."
    assert reply_of(s) == errors.reply("shard_unavailable", shard="s1", node=ADDRESS, detail=detail)
    assert p.state == DOWN
    assert node.errors == {"timeout": 0, "connection": 0, "protocol": 1}
    assert conn.transport.aborted
    assert conn.writes == [cmd("AUTH", "wrong")]  # the request was never written


async def test_requests_sent_in_one_tick_are_written_once(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    p = node.connection(2, 1)
    await settle()
    conn = server(net).conn
    p.send(cmd("GET", "a"), slot())
    p.send(cmd("GET", "b"), slot())
    assert conn.writes == []  # batched with call_soon
    await settle(1)
    assert conn.writes == [cmd("GET", "a") + cmd("GET", "b")]
    p.send(cmd("GET", "c"), slot())
    await settle(1)
    assert conn.writes == [cmd("GET", "a") + cmd("GET", "b"), cmd("GET", "c")]


async def test_pipelines_are_per_protocol_and_pinned_by_client_id(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(connections=2)
    assert node.connection(2, 4) is node.connection(2, 6)
    assert node.connection(2, 4) is not node.connection(2, 5)
    assert node.connection(3, 4) is not node.connection(2, 4)
    await settle()
    assert len(server(net).conns) == 4
    assert {p.proto for p in node.connections()} == {2, 3}


# -- pushes on a shared pipeline -------------------------------------------------------------


async def test_push_on_a_shared_pipeline_goes_to_the_node_consumer(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    consumer = RecordingPushes()
    node.pushes = consumer
    p = node.connection(3, 1)
    s1, s2 = slot(), slot()
    p.send(cmd("GET", "a"), s1)
    p.send(cmd("GET", "b"), s2)
    await settle()
    conn = server(net).conn
    conn.answer(HELLO3_REPLY)
    await settle()
    conn.answer(b"$1\r\nA\r\n" + PUSH + b"$1\r\nB\r\n")
    assert reply_of(s1) == b"$1\r\nA\r\n"
    assert reply_of(s2) == b"$1\r\nB\r\n"
    assert consumer.frames == [(PUSH, s2)]  # it came before s2's reply
    assert node.pushes_dropped == 0
    conn.answer(PUSH)  # nothing pending: before nothing
    assert consumer.frames == [(PUSH, s2), (PUSH, None)]
    assert p.state == READY


async def test_push_on_a_shared_pipeline_without_a_consumer_is_dropped(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    p = node.connection(3, 1)
    s1, s2 = slot(), slot()
    p.send(cmd("GET", "a"), s1)
    p.send(cmd("GET", "b"), s2)
    await settle()
    conn = server(net).conn
    conn.answer(HELLO3_REPLY)
    await settle()
    conn.answer(PUSH + b"$1\r\nA\r\n" + PUSH)
    assert node.pushes_dropped == 2
    assert reply_of(s1) == b"$1\r\nA\r\n"
    assert reply_of(s2) is None
    conn.answer(b"$1\r\nB\r\n")
    assert reply_of(s2) == b"$1\r\nB\r\n"
    assert p.state == READY


async def test_reply_without_a_request_drops_the_pipeline(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(backoff_min=10.0)
    p = node.connection(2, 1)
    await settle()
    server(net).conn.answer(b"+OK\r\n")
    assert p.state == DOWN
    assert p.last_error == "reply without a request"
    assert node.errors["protocol"] == 1


async def test_a_node_back_up_reconnects_its_pipelines_without_waiting_the_backoff(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(backoff_min=10.0)
    p = node.connection(2, 1)
    await settle()
    server(net).conn.answer(b"+OK\r\n")  # a reply without a request: DOWN, 10 s backoff
    assert p.state == DOWN and len(server(net).conns) == 1
    node.reconnect_now()  # health checking saw the node answer again
    await wait_until(lambda: p.state == READY, timeout=1.0)
    assert len(server(net).conns) == 2
    node.reconnect_now()  # nothing DOWN: nothing happens
    await settle()
    assert len(server(net).conns) == 2


# -- the command timeout -------------------------------------------------------------------


async def test_command_timeout_fails_pending_goes_down_and_reconnects(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(command_timeout=0.05, backoff_min=0.05)
    p = node.connection(2, 1)
    s1, s2 = slot(), slot()
    p.send(cmd("GET", "a"), s1)
    await settle()
    first = server(net).conn
    p.send(cmd("GET", "b"), s2)
    await settle()
    assert first.writes == [cmd("GET", "a"), cmd("GET", "b")]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_until(lambda: p.state == DOWN)
    assert loop.time() - t0 < 0.5
    assert reply_of(s1) == timeout_reply(50)
    assert reply_of(s1) == (
        b"-TRYAGAIN shard s1: node 10.1.0.1:6379 did not answer within 50 ms\r\n"
    )
    assert reply_of(s2) == timeout_reply(50)
    assert node.errors == {"timeout": 1, "connection": 0, "protocol": 0}
    assert first.transport.aborted
    assert node.usable is False
    assert p.last_error == "no reply within 50 ms"

    s3 = slot()
    p.send(cmd("GET", "c"), s3)  # DOWN: fails at once
    assert reply_of(s3) == errors.reply(
        "shard_unavailable", shard="s1", node=ADDRESS, detail="no reply within 50 ms"
    )

    await wait_until(lambda: p.state == READY)  # after the backoff
    assert len(server(net).conns) == 2
    assert node.usable is True
    second = server(net).conns[1]
    s4 = slot()
    p.send(cmd("GET", "d"), s4)
    await settle()
    assert second.writes == [cmd("GET", "d")]
    second.answer(b"$1\r\nD\r\n")
    assert reply_of(s4) == b"$1\r\nD\r\n"
    assert node.errors["timeout"] == 1


async def test_command_timeout_counts_from_the_oldest_unanswered_request(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(command_timeout=0.2)
    p = node.connection(2, 1)
    s1, s2 = slot(), slot()
    p.send(cmd("GET", "a"), s1)
    await settle()
    conn = server(net).conn
    await asyncio.sleep(0.12)
    p.send(cmd("GET", "b"), s2)
    conn.answer(b"$1\r\nA\r\n")  # the head is answered: s2 gets its own full timeout
    await asyncio.sleep(0.12)  # 0.24 s after s1 was sent, 0.12 s after s2 became the head
    assert p.state == READY
    assert reply_of(s2) is None
    await wait_until(lambda: p.state == DOWN)
    assert reply_of(s2) == timeout_reply(200)


async def test_connection_lost_fails_pending_with_shard_closed(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(backoff_min=10.0)
    p = node.connection(2, 1)
    s = slot()
    p.send(cmd("GET", "a"), s)
    await settle()
    server(net).conn.hang_up()
    assert reply_of(s) == errors.reply(
        "shard_closed", shard="s1", node=ADDRESS, detail="connection closed by server"
    )
    assert p.state == DOWN
    assert node.errors["connection"] == 1


async def test_connect_timeout(net: FakeNetwork, make_node: MakeNode) -> None:
    node = make_node(connect_timeout=0.03, backoff_min=10.0)
    server(net).hang = True
    p = node.connection(2, 1)
    s = slot()
    p.send(cmd("GET", "a"), s)
    await wait_until(lambda: p.state == DOWN)
    assert reply_of(s) == errors.reply(
        "shard_unavailable", shard="s1", node=ADDRESS, detail="connect timed out after 30 ms"
    )
    assert node.errors["timeout"] == 1


# -- leases ----------------------------------------------------------------------------------


async def ready_lease(
    net: FakeNetwork, node: Node, proto: int = 2, hs_reply: bytes = b""
) -> tuple[Lease, ServerConn]:
    """A lease, connected and through its handshake; and its server connection."""
    before = len(server(net).conns)
    lease = node.leases.acquire(proto, None)
    assert lease is not None
    await settle()
    conns = server(net).conns
    assert len(conns) == before + 1
    conn = conns[-1]
    if hs_reply:
        conn.answer(hs_reply)
    assert lease.state == READY
    conn.take()
    return lease, conn


async def test_lease_requests_go_on_their_own_connection(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    shared = node.connection(2, 1)
    shared.send(cmd("GET", "shared"), slot())
    lease = node.leases.acquire(2, None)
    assert isinstance(lease, Lease)
    assert lease.leased and node.leases.leased == {lease}
    s = slot()
    lease.send(cmd("MULTI"), s)
    await settle()
    pconn, lconn = server(net).conns
    assert shared.transport is pconn.transport
    assert lease.transport is lconn.transport
    assert pconn.writes == [cmd("GET", "shared")]
    assert lconn.writes == [cmd("MULTI")]
    lconn.answer(b"+OK\r\n")
    assert reply_of(s) == b"+OK\r\n"
    assert len(shared.pending) == 1  # untouched by the lease's reply


@pytest.mark.parametrize(
    "proto,password,handshake,hs_reply",
    [
        (2, None, b"", b""),
        (2, "pw", cmd("AUTH", "pw"), b"+OK\r\n"),
        (3, None, cmd("HELLO", "3"), HELLO3_REPLY),
        (3, "pw", cmd("HELLO", "3", "AUTH", "default", "pw"), HELLO3_REPLY),
    ],
    ids=["resp2", "resp2-pass", "resp3", "resp3-pass"],
)
async def test_lease_release_resets_and_the_same_lease_comes_back(
    net: FakeNetwork,
    make_node: MakeNode,
    proto: int,
    password: str | None,
    handshake: bytes,
    hs_reply: bytes,
) -> None:
    node = make_node(password=password)
    pool = node.leases
    lease = pool.acquire(proto, RecordingPushes())
    assert lease is not None
    await settle()
    conn = server(net).conn
    assert conn.take() == handshake
    if hs_reply:
        conn.answer(hs_reply)
    s = slot()
    lease.send(cmd("CLIENT", "SETNAME", "x"), s)
    await settle()
    assert conn.take() == cmd("CLIENT", "SETNAME", "x")
    conn.answer(b"+OK\r\n")
    assert reply_of(s) == b"+OK\r\n"

    lease.release()
    assert lease.holder is None
    await settle()
    assert conn.writes[-1] == RESET_FRAME + handshake  # RESET, then the handshake, one write
    assert conn.take() == cmd("RESET") + handshake
    assert pool.idle == [] and lease in pool.leased  # not lendable until the reset is answered
    conn.answer(b"+RESET\r\n" + hs_reply)
    await settle()
    assert pool.idle == [lease] and pool.leased == set()
    assert lease.state == READY and not conn.transport.closed

    holder = RecordingPushes()
    again = pool.acquire(proto, holder)
    assert again is lease
    assert lease.holder is holder
    assert len(server(net).conns) == 1  # no new connection
    s2 = slot()
    lease.send(cmd("PING"), s2)
    await settle()
    assert conn.take() == cmd("PING")
    conn.answer(b"+PONG\r\n")
    assert reply_of(s2) == b"+PONG\r\n"


@pytest.mark.parametrize(
    "answer",
    [
        b"-ERR unknown command 'RESET'\r\n+OK\r\n",
        b"+RESET\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        b"+OK\r\n+OK\r\n",
    ],
    ids=["reset-error", "auth-error", "not-reset"],
)
async def test_lease_reset_answered_wrongly_closes_it(
    net: FakeNetwork, make_node: MakeNode, answer: bytes
) -> None:
    node = make_node(password="pw")
    pool = node.leases
    lease, conn = await ready_lease(net, node, 2, b"+OK\r\n")
    lease.release()
    await settle()
    assert conn.take() == cmd("RESET") + cmd("AUTH", "pw")
    conn.answer(answer)
    await settle()
    assert lease.state == CLOSED
    assert conn.transport.closed
    assert pool.idle == [] and pool.leased == set()
    assert pool.acquire(2, None) is not lease


async def test_lease_lost_while_idle_is_discarded(net: FakeNetwork, make_node: MakeNode) -> None:
    node = make_node()
    pool = node.leases
    lease, conn = await ready_lease(net, node)
    lease.release()
    await settle()
    conn.answer(b"+RESET\r\n")
    await settle()
    assert pool.idle == [lease]
    conn.hang_up()
    assert pool.idle == []
    assert lease.state == DOWN
    assert pool.acquire(2, None) is not lease


async def test_max_leases(net: FakeNetwork, make_node: MakeNode) -> None:
    node = make_node(max_leases=2)
    pool = node.leases
    first = pool.acquire(2, None)
    second = pool.acquire(3, None)
    assert first is not None and second is not None
    assert pool.acquire(2, None) is None  # at the cap
    assert pool.open_count() == 2
    await settle()
    conn = server(net).conns[0]
    first.release()
    await settle()
    conn.answer(b"+RESET\r\n")
    await settle()
    assert pool.idle == [first]
    assert pool.acquire(3, None) is None  # the idle one speaks RESP2: still at the cap
    assert pool.acquire(2, None) is first  # an idle lease is lent again
    second.close()
    assert pool.open_count() == 1
    third = pool.acquire(3, None)
    assert third is not None and third is not second


async def test_idle_lease_is_closed_after_lease_idle(net: FakeNetwork, make_node: MakeNode) -> None:
    node = make_node(lease_idle=0.05)
    pool = node.leases
    lease, conn = await ready_lease(net, node)
    lease.release()
    await settle()
    conn.answer(b"+RESET\r\n")
    await settle()
    assert pool.idle == [lease]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_until(lambda: lease.state == CLOSED)
    assert 0.03 < loop.time() - t0 < 0.5
    assert conn.transport.closed
    assert pool.idle == [] and pool.open_count() == 0


async def test_lease_in_use_is_not_swept(net: FakeNetwork, make_node: MakeNode) -> None:
    node = make_node(lease_idle=0.06)
    pool = node.leases
    lease, conn = await ready_lease(net, node)
    lease.release()
    await settle()
    conn.answer(b"+RESET\r\n")
    await settle()
    assert pool.acquire(2, None) is lease  # taken again before the sweep
    await asyncio.sleep(0.1)  # past the sweep
    assert lease.state == READY and not conn.transport.closed
    assert pool.leased == {lease}


async def test_lease_request_deadline(net: FakeNetwork, make_node: MakeNode) -> None:
    node = make_node(command_timeout=1.0)
    pool = node.leases
    lease, conn = await ready_lease(net, node)
    s = slot()
    lease.send(cmd("BLPOP", "q", "0"), s, timeout=0.05)
    await settle()
    assert conn.take() == cmd("BLPOP", "q", "0")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_until(lambda: reply_of(s) is not None)
    assert loop.time() - t0 < 0.5  # its own deadline, not the 1 s command timeout
    reply = reply_of(s)
    assert reply is not None
    assert reply.startswith(b"-TRYAGAIN shard s1: node 10.1.0.1:6379 did not answer within ")
    assert lease.state == DOWN
    assert conn.transport.aborted
    assert pool.open_count() == 0
    assert node.errors == {"timeout": 1, "connection": 0, "protocol": 0}
    assert pool.acquire(2, None) is not lease


async def test_lease_deadline_error_names_the_requests_own_timeout(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    """The deadline that passed was the request's 50 ms; the error must not claim the node
    had the 1000 ms command timeout to answer."""
    node = make_node(command_timeout=1.0)
    lease, _conn = await ready_lease(net, node)
    s = slot()
    lease.send(cmd("BLPOP", "q", "0"), s, timeout=0.05)
    await wait_until(lambda: reply_of(s) is not None)
    assert reply_of(s) == timeout_reply(50)


async def test_lease_default_deadline_is_the_command_timeout(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node(command_timeout=0.05)
    lease, _conn = await ready_lease(net, node)
    s = slot()
    lease.send(cmd("GET", "a"), s)
    await wait_until(lambda: reply_of(s) is not None)
    assert reply_of(s) == timeout_reply(50)
    assert node.leases.open_count() == 0


async def test_lease_pushes_go_to_the_holder_in_order(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    holder = RecordingPushes()
    lease = node.leases.acquire(3, holder)
    assert lease is not None
    await settle()
    conn = server(net).conn
    conn.answer(HELLO3_REPLY)
    s1, s2 = slot(), slot()
    lease.send(cmd("SUBSCRIBE", "ch"), s1)
    lease.send(cmd("PING"), s2)
    await settle()
    conn.answer(b"+OK\r\n" + PUSH + b"+PONG\r\n" + PUSH)
    assert reply_of(s1) == b"+OK\r\n" and reply_of(s2) == b"+PONG\r\n"
    assert holder.frames == [(PUSH, s2), (PUSH, None)]
    assert node.pushes_dropped == 0


async def test_lease_resp2_messages_are_pushes_when_asked(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    holder = RecordingPushes()
    lease, conn = await ready_lease(net, node)
    lease.holder = holder
    message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    s = slot()
    lease.send(cmd("PING"), s)
    await settle()
    conn.answer(message)  # resp2_messages off: an ordinary reply
    assert reply_of(s) == message and holder.frames == []
    lease.resp2_messages = True
    s2 = slot()
    lease.send(cmd("PING"), s2)
    await settle()
    conn.answer(message + b"+PONG\r\n")
    assert holder.frames == [(message, s2)]
    assert reply_of(s2) == b"+PONG\r\n"


async def test_node_close_closes_pipelines_and_leases(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    node = make_node()
    p = node.connection(2, 1)
    await settle()
    lease, _conn = await ready_lease(net, node)
    s = slot()
    p.send(cmd("GET", "a"), s)
    node.close()
    assert p.state == CLOSED and lease.state == CLOSED
    assert all(c.transport.closed for c in server(net).conns)
    assert reply_of(s) == errors.reply(
        "shard_closed", shard="s1", node=ADDRESS, detail="node removed"
    )
    assert isinstance(p, Pipeline)


# -- connect attempts that outlive their connection ------------------------------------------


async def test_stale_connect_timeout_does_not_drop_a_healthy_pipeline(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    """The command timeout fails a pipeline still connecting; the backoff starts a second
    attempt, which connects. The first attempt's connect timeout, firing later, must not
    drop the healthy connection the second one made."""
    node = make_node(connect_timeout=0.15, command_timeout=0.03, backoff_min=0.01)
    srv = server(net)
    srv.hang = True  # the first attempt never completes
    p = node.connection(2, 1)
    s1 = slot()
    p.send(cmd("GET", "a"), s1)
    await wait_until(lambda: p.state == DOWN)
    assert reply_of(s1) == timeout_reply(30)
    srv.hang = False
    await wait_until(lambda: p.state == READY)  # the second attempt
    assert srv.attempts == 2 and len(srv.conns) == 1
    s2 = slot()
    p.send(cmd("GET", "b"), s2)
    await settle()
    assert srv.conn.received == cmd("GET", "b")
    srv.conn.answer(b"$1\r\nB\r\n")
    assert reply_of(s2) == b"$1\r\nB\r\n"
    healthy = srv.conn
    await asyncio.sleep(0.2)  # past the first attempt's connect timeout
    assert not healthy.transport.closed, "dropped by the stale attempt's connect timeout"
    assert p.transport is healthy.transport
    assert srv.conns == [healthy]
    assert node.errors == {"timeout": 1, "connection": 0, "protocol": 0}


async def test_overlapping_connect_attempts_leave_one_connection(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    """Two attempts in flight (the first outlived the command timeout, the backoff started a
    second): when both connect, the pipeline must keep one transport and close the other,
    not overwrite the first and leave it open (its replies would feed the same scanner)."""
    node = make_node(connect_timeout=1.0, command_timeout=0.03, backoff_min=0.01)
    srv = server(net)
    srv.delay = 0.08
    p = node.connection(2, 1)
    p.send(cmd("GET", "a"), slot())
    await wait_until(lambda: srv.attempts == 2)
    await asyncio.sleep(0.2)  # both attempts have connected
    assert p.state == READY
    assert len(srv.open_conns()) == 1, [c.transport.closed for c in srv.conns]
    assert p.transport is srv.open_conns()[0].transport


async def test_lease_connect_completing_after_its_deadline_is_closed(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    """A lease whose request deadline passes while it is still connecting is failed and
    forgotten by the pool; when the connect completes afterwards, that connection must be
    closed, not left open and owned by nobody."""
    node = make_node(connect_timeout=1.0, command_timeout=0.03)
    srv = server(net)
    srv.delay = 0.08
    lease = node.leases.acquire(2, None)
    assert lease is not None
    s = slot()
    lease.send(cmd("GET", "a"), s)
    await wait_until(lambda: reply_of(s) is not None)
    assert reply_of(s) == timeout_reply(30)
    assert node.leases.open_count() == 0
    await asyncio.sleep(0.1)  # past the connect's completion
    await settle()
    assert srv.open_conns() == [], f"lease {lease.state}: its late connection is left open"
    assert lease.state in (DOWN, CLOSED)


async def test_pushes_do_not_extend_the_command_timeout(
    net: FakeNetwork, make_node: MakeNode
) -> None:
    """A push answers no request: a node that keeps pushing but never answers the oldest
    request must still time out after command_timeout."""
    node = make_node(command_timeout=0.06, backoff_min=10.0)
    node.pushes = RecordingPushes()
    p = node.connection(3, 1)
    await settle()
    conn = server(net).conn
    conn.answer(HELLO3_REPLY)
    s = slot()
    p.send(cmd("GET", "a"), s)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while p.state == READY and loop.time() - t0 < 0.4:
        conn.answer(PUSH)
        await asyncio.sleep(0.02)
    assert p.state == DOWN, "the pushes kept the unanswered request alive"
    assert loop.time() - t0 < 0.3
    assert reply_of(s) == timeout_reply(60)
