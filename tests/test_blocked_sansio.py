"""Blocked mode, sans-IO: real ClientSession, BlockedMode, router, nodes, pipelines and leases;
fake sockets (harness: ``tests/sansio.py``). The spec is ``shardproxy/session/blocked.py``.

A blocking command (BLPOP ... XREAD/XREADGROUP with BLOCK) goes on a lease of its own to the
primary of its keys' shard, preceded the first time by ``CLIENT ID`` (what ``CLIENT UNBLOCK``
names later); the client's later requests wait until its reply, then run in order. Every test
asserts the exact bytes a client or a node saw.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import cast

import pytest

from shardproxy.backend.connection import BackendSettings
from shardproxy.backend.lease import Lease
from shardproxy.backend.node import Node
from shardproxy.control.failover import MutableShard, switch_primary
from shardproxy.protocol import errors
from shardproxy.routing.ring import Ring
from shardproxy.routing.router import Router, ShardNodes
from shardproxy.session import blocked
from shardproxy.session.modes import BLOCKED, WATCHING
from tests.sansio import (
    A_PRIMARY,
    B_PRIMARY,
    CROSSSLOT,
    HELLO3_REPLY,
    OK,
    QUEUED,
    Arg,
    FakeClient,
    FakeHost,
    Limits,
    MakeHost,
    ServerConn,
    bulk,
    cmd,
    conn_of,
    lease_conn,
    nothing_sent,
    settle,
    the_lease,
    wait_until,
)

UNBLOCKED = (
    b"-UNBLOCKED force unblock from blocking operation, instance state changed "
    b"(master -> replica?)\r\n"
)
READONLY = b"-READONLY You can't write against a read only replica.\r\n"
CLIENT_ID = cmd("CLIENT", "ID")
NOT_FLOAT = b"-ERR timeout is not a float or out of range\r\n"
NOT_INTEGER = b"-ERR timeout is not an integer or out of range\r\n"
NEGATIVE = b"-ERR timeout is negative\r\n"


# -- helpers ---------------------------------------------------------------------------------


def leases(host: FakeHost, shard: str) -> list[Lease]:
    pool = host.primary(shard).leases
    return [*pool.leased, *pool.idle]


def shared_conns(host: FakeHost, node: Node) -> list[ServerConn]:
    """The server sides of the node's shared pipelines opened so far."""
    transports = [p.transport for p in node.connections()]
    return [c for c in host.net.server_of(node).conns if c.transport in transports]


def no_lease_anywhere(host: FakeHost) -> bool:
    return all(n.leases.open_count() == 0 for n in host.nodes)


def secs(t: float) -> bytes:
    """A seconds timeout as the proxy writes it in a re-issue (the first sending is the
    client's own bytes)."""
    return b"%.3f" % t


def element(key: bytes, value: bytes = b"v") -> bytes:
    """BLPOP's reply with an element: [key, value]."""
    return b"*2\r\n" + bulk(key) + bulk(value)


def publish(host: FakeHost, names: Sequence[str]) -> None:
    """A reload that leaves only the shards ``names`` on the ring (same nodes): the new
    router is published and the registry told, as the root does (app/proxy.py)."""
    by_name = {s.name: s for s in host.router.shards}
    ring = Ring.build([(n, 1) for n in names])
    shards: list[ShardNodes[Node]] = [by_name[n] for n in ring.names]
    host.router = Router(ring, shards, "primary")
    host.registry.router_changed()


async def start_block(
    host: FakeHost,
    c: FakeClient,
    shard: str,
    argv: Sequence[Arg],
    sent: bytes,
    server_id: int = 42,
    proto: int = 2,
) -> ServerConn:
    """``c`` sends ``argv``; its lease to ``shard`` (the only one) carries CLIENT ID then
    ``sent``, in one write (after HELLO 3 for a RESP3 client); the node answers the id."""
    c.send(argv)
    await settle()
    lconn = lease_conn(host, shard)
    if proto == 3:
        assert lconn.take() == cmd("HELLO", "3")
        lconn.answer(HELLO3_REPLY)
        await settle()
    assert lconn.take() == CLIENT_ID + sent
    lconn.answer(b":%d\r\n" % server_id)
    assert the_lease(host, shard).server_id == server_id
    return lconn


def mode_name(c: FakeClient) -> str | None:
    mode = c.session.mode
    return None if mode is None else mode.name


# -- every blocking command, on a lease ----------------------------------------------------


def _commands(host: FakeHost) -> list[tuple[list[bytes], bytes, bytes]]:
    """(argv, what the lease carries after CLIENT ID, a reply with an element)."""
    q, q2 = host.keys_on("a", 2, prefix="q")
    z = host.key_on("a", prefix="z")
    s, s2 = host.keys_on("a", 2, prefix="s")
    stream_reply = (
        b"*1\r\n*2\r\n" + bulk(s) + b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    )
    return [
        ([b"BLPOP", q, q2, b"1"], cmd("BLPOP", q, q2, "1"), element(q)),
        ([b"BRPOP", q, b"2.5"], cmd("BRPOP", q, "2.5"), element(q)),
        ([b"BRPOPLPUSH", q, q2, b"1"], cmd("BRPOPLPUSH", q, q2, "1"), bulk("v")),
        (
            [b"BLMOVE", q, q2, b"LEFT", b"RIGHT", b"1"],
            cmd("BLMOVE", q, q2, "LEFT", "RIGHT", "1"),
            bulk("v"),
        ),
        (
            [b"BLMPOP", b"1", b"2", q, q2, b"LEFT", b"COUNT", b"2"],
            cmd("BLMPOP", "1", "2", q, q2, "LEFT", "COUNT", "2"),
            b"*2\r\n" + bulk(q) + b"*1\r\n" + bulk("v"),
        ),
        (
            [b"BZPOPMIN", z, b"1"],
            cmd("BZPOPMIN", z, "1"),
            b"*3\r\n" + bulk(z) + bulk("m") + bulk("1"),
        ),
        (
            [b"BZPOPMAX", z, b"1"],
            cmd("BZPOPMAX", z, "1"),
            b"*3\r\n" + bulk(z) + bulk("m") + bulk("1"),
        ),
        (
            [b"BZMPOP", b"1", b"1", z, b"MIN"],
            cmd("BZMPOP", "1", "1", z, "MIN"),
            b"*2\r\n" + bulk(z) + b"*1\r\n*2\r\n" + bulk("m") + bulk("1"),
        ),
        (
            [b"XREAD", b"COUNT", b"1", b"BLOCK", b"1000", b"STREAMS", s, s2, b"0-0", b"0-0"],
            cmd("XREAD", "COUNT", "1", "BLOCK", "1000", "STREAMS", s, s2, "0-0", "0-0"),
            stream_reply,
        ),
        (
            [b"XREADGROUP", b"GROUP", b"g", b"c", b"BLOCK", b"100", b"STREAMS", s, b">"],
            cmd("XREADGROUP", "GROUP", "g", "c", "BLOCK", "100", "STREAMS", s, ">"),
            stream_reply,
        ),
    ]


COMMAND_NAMES = [
    "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax", "bzmpop",
    "xread", "xreadgroup",
]  # fmt: skip


@pytest.mark.parametrize("which", range(len(COMMAND_NAMES)), ids=COMMAND_NAMES)
async def test_each_blocking_command_goes_on_a_new_lease_to_its_shards_primary(
    host: FakeHost, which: int
) -> None:
    argv, sent, reply = _commands(host)[which]
    kb = host.key_on("b")
    c = host.client()
    c.send([b"GET", kb])  # opens b's shared pipeline, so "not on the shared one" means something
    await settle()
    c.send(argv)
    await settle()
    assert host.server("b").conn.received == cmd("GET", kb)  # nothing else on shard b
    lease = the_lease(host, "a")
    conns = host.server("a").conns
    assert len(conns) == 1 and conns[0].transport is lease.transport  # no shared pipeline to a
    assert conns[0].writes == [CLIENT_ID + sent]  # one write: CLIENT ID, then the command
    assert host.primary("a").leases.leased == {lease}
    assert mode_name(c) == BLOCKED
    assert host.registry.blocked() == {"a": 1}
    assert host.stats.blocks == 1

    conns[0].answer(b":42\r\n")
    assert lease.server_id == 42
    host.server("b").conn.answer(b"$1\r\nx\r\n")
    assert c.take() == b"$1\r\nx\r\n"  # CLIENT ID's reply is the proxy's, not the client's
    conns[0].answer(reply)
    assert c.take() == reply
    await settle()
    assert conns[0].take() == CLIENT_ID + sent  # and nothing after: no RESET (released clean)
    pool = host.primary("a").leases
    assert pool.idle == [lease] and pool.leased == set()
    assert mode_name(c) is None
    assert host.registry.blocked() == {}


async def test_a_second_block_on_the_reused_lease_sends_no_client_id(host: FakeHost) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"1"], cmd("BLPOP", q, "1"))
    lconn.answer(b"*-1\r\n")
    assert c.take() == b"*-1\r\n"
    lease = the_lease(host, "a")
    c.send([b"BRPOP", q, b"0"])
    await settle()
    assert the_lease(host, "a") is lease  # the same connection, lent again
    assert lconn.take() == cmd("BRPOP", q, "0")  # the id is remembered: no CLIENT ID
    lconn.answer(element(q))
    other = host.client()  # another client gets the same connection, id and all
    other.send([b"BLPOP", q, b"0"])
    await settle()
    assert lconn.take() == cmd("BLPOP", q, "0")
    assert host.server("a").conns == [lconn]
    assert c.take() == element(q)
    assert host.stats.blocks == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["BLPOP", "{A}", "{B}", "1"],
        ["BLMOVE", "{A}", "{B}", "LEFT", "LEFT", "1"],
        ["BRPOPLPUSH", "{A}", "{B}", "1"],
        ["BLMPOP", "1", "2", "{A}", "{B}", "LEFT"],
        ["BZMPOP", "1", "2", "{A}", "{B}", "MAX"],
        ["XREAD", "BLOCK", "0", "STREAMS", "{A}", "{B}", "$", "$"],
    ],
    ids=lambda a: a[0].lower(),
)
async def test_keys_on_two_shards_are_crossslot_and_take_no_lease(
    host: FakeHost, argv: list[str]
) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    real = [ka if a == "{A}" else kb if a == "{B}" else a for a in argv]
    c = host.client()
    c.send(real)
    await settle()
    assert c.take() == CROSSSLOT
    assert nothing_sent(host)
    assert no_lease_anywhere(host)
    assert mode_name(c) is None
    assert host.stats.blocks == 0


@pytest.mark.parametrize(
    "argv,reply",
    [
        (["BLPOP", "q", "abc"], NOT_FLOAT),
        (["BLPOP", "q", "nan"], NOT_FLOAT),
        (["BLPOP", "q", ""], NOT_FLOAT),
        (["BLPOP", "q", "-1"], NEGATIVE),
        (["BRPOP", "q", "-0.5"], NEGATIVE),
        (["BLMOVE", "q", "q", "LEFT", "LEFT", "x"], NOT_FLOAT),
        (["BLMPOP", "abc", "1", "q", "LEFT"], NOT_FLOAT),
        (["BLMPOP", "-1", "1", "q", "LEFT"], NEGATIVE),
        (["BZMPOP", "-2", "1", "q", "MIN"], NEGATIVE),
        (["BZPOPMIN", "q", "1s"], NOT_FLOAT),
        (["XREAD", "BLOCK", "abc", "STREAMS", "q", "0"], NOT_INTEGER),
        (["XREAD", "BLOCK", "1.5", "STREAMS", "q", "0"], NOT_INTEGER),
        (["XREAD", "BLOCK", "+5", "STREAMS", "q", "0"], NOT_INTEGER),
        (["XREAD", "BLOCK", "05", "STREAMS", "q", "0"], NOT_INTEGER),
        (["XREAD", "BLOCK", "-1", "STREAMS", "q", "0"], NEGATIVE),
        (["XREAD", "COUNT", "2", "BLOCK", "-7", "STREAMS", "q", "0"], NEGATIVE),
        (["XREADGROUP", "GROUP", "g", "c", "BLOCK", "x", "STREAMS", "q", ">"], NOT_INTEGER),
        (["XREADGROUP", "GROUP", "g", "c", "BLOCK", "-1", "STREAMS", "q", ">"], NEGATIVE),
        # redis-server 7.0: string2ll refuses "-0" (only "0" itself may start with 0)
        (["XREAD", "BLOCK", "-0", "STREAMS", "q", "0"], NOT_INTEGER),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
async def test_bad_timeouts_are_the_errors_redis_gives_and_send_nothing(
    host: FakeHost, argv: list[str], reply: bytes
) -> None:
    c = host.client()
    c.send(argv)
    await settle()
    assert c.take() == reply
    assert nothing_sent(host)
    assert no_lease_anywhere(host)
    assert mode_name(c) is None
    assert host.stats.blocks == 0


async def test_a_hex_float_timeout_is_accepted_as_redis_accepts_it(host: FakeHost) -> None:
    # redis-server parses seconds with strtold: BLPOP q 0x1 blocks one second there
    q = host.key_on("a", prefix="q")
    c = host.client()
    c.send([b"BLPOP", q, b"0x1"])
    await settle()
    assert c.take() == b""
    assert mode_name(c) == BLOCKED


async def test_xread_block_milliseconds_reach_the_node_as_the_client_wrote_them(
    host: FakeHost,
) -> None:
    s = host.key_on("a", prefix="s")
    c = host.client()
    await start_block(
        host,
        c,
        "a",
        [b"XREAD", b"BLOCK", b"2007", b"STREAMS", s, b"$"],
        cmd("XREAD", "BLOCK", "2007", "STREAMS", s, "$"),  # not 2008: 2007/1000*1000 > 2007
    )


# -- the client's later requests -----------------------------------------------------------


async def test_later_requests_wait_for_the_block_then_run_and_replies_keep_their_order(
    make_host: MakeHost,
) -> None:
    host = make_host("a", "b", "c")
    q = host.key_on("c", prefix="q")
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"GET", ka], [b"BLPOP", q, b"1"], [b"GET", kb])
    await settle()
    a = host.server("a").conn
    assert a.received == cmd("GET", ka)  # before the block: sent at once
    assert host.server("b").conns == []  # after it: kept
    lconn = lease_conn(host, "c")
    assert lconn.received == CLIENT_ID + cmd("BLPOP", q, "1")
    assert c.transport.reading  # still read: a client that hangs up is seen at once
    a.answer(b"$2\r\nva\r\n")
    assert c.take() == b"$2\r\nva\r\n"
    lconn.answer(b":42\r\n")
    await settle()
    assert host.server("b").conns == []
    lconn.answer(element(q))
    assert c.take() == element(q)
    await settle()
    b = host.server("b").conn
    assert b.received == cmd("GET", kb)  # now, on b's shared pipeline
    b.answer(b"$2\r\nvb\r\n")
    assert c.received == b"$2\r\nva\r\n" + element(q) + b"$2\r\nvb\r\n"
    assert mode_name(c) is None


async def test_requests_read_while_blocked_are_kept_even_for_the_same_shard(
    host: FakeHost,
) -> None:
    q, k = host.keys_on("a", 2, prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    c.send([b"SET", k, b"1"], [b"PING"])  # a later read, fast-path command first
    c.send([b"GET", k])
    await settle()
    assert host.server("a").conns == [lconn]  # nothing sent: no shared pipeline opened
    assert c.take() == b""  # even PING, which the proxy answers itself, waits its turn
    assert c.transport.reading  # a few kept requests do not stop reading
    lconn.answer(element(q))
    await settle()
    (shared,) = shared_conns(host, host.primary("a"))
    assert shared.received == cmd("SET", k, "1") + cmd("GET", k)
    assert lconn.take() == b""  # not on the lease
    shared.answer(OK + b"$1\r\n1\r\n")
    assert c.received == element(q) + OK + b"+PONG\r\n" + b"$1\r\n1\r\n"


async def test_reading_pauses_once_enough_requests_are_kept_and_resumes_after(
    make_host: MakeHost,
) -> None:
    host = make_host(limits=Limits(max_pending_per_client=4))
    q, k = host.keys_on("a", 2, prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    c.send([b"GET", k], [b"GET", k], [b"GET", k])
    await settle()
    assert c.transport.reading and c.transport.pauses == 0  # 3 kept: below the limit
    c.send([b"GET", k])
    await settle()
    assert not c.transport.reading  # 4 kept: reading paused
    assert c.transport.pauses == 1
    lconn.answer(element(q))
    await settle()
    # the block returned and the 4 kept GETs are sent: 4 outstanding, more than half the
    # limit, so reading stays paused (the usual backpressure) until they are answered
    assert not c.transport.reading
    (shared,) = shared_conns(host, host.primary("a"))
    assert shared.received == cmd("GET", k) * 4
    shared.answer(b"$1\r\n1\r\n" * 4)
    assert c.received == element(q) + b"$1\r\n1\r\n" * 4
    await settle()
    assert c.transport.reading and c.transport.resumes == 1


async def test_kept_requests_beyond_the_pending_limit_still_hold_reading_after_the_block(
    make_host: MakeHost,
) -> None:
    """Backpressure (session/client.py): reading pauses while more than
    limits.max_pending_per_client requests are outstanding and resumes at half. The block's
    eight kept requests are all outstanding once it returns: reading must stay paused."""
    host = make_host(limits=Limits(max_pending_per_client=4))
    q, k = host.keys_on("a", 2, prefix="q")
    c = host.client()
    c.send([b"BLPOP", q, b"0"], *([b"GET", k] for _ in range(8)))
    await settle()
    lconn = lease_conn(host, "a")
    assert not c.transport.reading
    lconn.answer(b":42\r\n" + element(q))
    await settle()
    (shared,) = shared_conns(host, host.primary("a"))
    assert shared.received == cmd("GET", k) * 8
    assert len(c.session.queue) == 8
    assert not c.transport.reading, "8 outstanding requests with a limit of 4, yet reading"
    shared.answer(b"$1\r\n1\r\n" * 6)
    assert c.transport.reading  # 2 left: at half the limit, reading resumes


async def test_a_kept_blocking_command_blocks_again_and_keeps_the_rest(
    host: FakeHost,
) -> None:
    q1, q2 = host.keys_on("a", 2, prefix="q")
    kb = host.key_on("b")
    c = host.client()
    c.send([b"BLPOP", q1, b"1"], [b"GET", kb], [b"BRPOP", q2, b"0"], [b"INCR", kb])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.take() == CLIENT_ID + cmd("BLPOP", q1, "1")
    lconn.answer(b":42\r\n" + element(q1))
    await settle()
    b = host.server("b").conn
    assert b.received == cmd("GET", kb)  # the GET ran; the INCR waits behind the BRPOP
    assert lconn.take() == cmd("BRPOP", q2, "0")  # blocked again, on the same lease
    assert mode_name(c) == BLOCKED
    assert host.stats.blocks == 2
    b.answer(b"$1\r\n5\r\n")
    assert c.take() == element(q1) + b"$1\r\n5\r\n"
    lconn.answer(element(q2))
    await settle()
    assert b.take() == cmd("GET", kb) + cmd("INCR", kb)
    b.answer(b":6\r\n")
    assert c.take() == element(q2) + b":6\r\n"
    assert mode_name(c) is None


# -- deadlines -------------------------------------------------------------------------------


async def test_the_lease_deadline_is_the_block_timeout_plus_the_command_timeout(
    make_host: MakeHost,
) -> None:
    host = make_host(settings=BackendSettings(command_timeout=0.1))
    q = host.key_on("a", prefix="q")
    c = host.client()
    loop = host.loop
    t0 = loop.time()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0.2"], cmd("BLPOP", q, "0.2"))
    await wait_until(lambda: loop.time() - t0 >= 0.25)
    assert c.received == b""  # past the block's own 0.2 s, within the 0.1 s of grace
    assert not lconn.transport.closed
    await wait_until(lambda: c.received != b"", timeout=1.0)
    elapsed = loop.time() - t0
    assert 0.29 <= elapsed < 0.6
    m = re.fullmatch(
        rb"-TRYAGAIN shard a: node 10\.0\.0\.1:6379 did not answer within (\d+) ms\r\n",
        c.received,
    )
    assert m is not None, c.received
    assert 280 <= int(m.group(1)) <= 300
    assert lconn.transport.closed  # a deadline passed: the lease's state is unknown
    assert no_lease_anywhere(host)
    assert mode_name(c) is None
    assert host.stats.blocks_reissued == 0


async def test_a_block_of_timeout_zero_is_never_timed_out(make_host: MakeHost) -> None:
    host = make_host(settings=BackendSettings(command_timeout=0.05))
    q = host.key_on("a", prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    loop = host.loop
    t0 = loop.time()
    await wait_until(lambda: loop.time() - t0 >= 0.3)  # six command timeouts
    assert c.received == b""
    assert not lconn.transport.closed
    assert mode_name(c) == BLOCKED
    lconn.answer(element(q))
    assert c.take() == element(q)


# -- the client leaves -----------------------------------------------------------------------


async def test_client_leaving_while_blocked_sends_client_unblock_on_the_shared_pipeline(
    host: FakeHost,
) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    lconn = await start_block(
        host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"), server_id=1234
    )
    lease = the_lease(host, "a")
    c.hang_up()
    await settle()
    (shared,) = shared_conns(host, host.primary("a"))
    assert shared.received == cmd("CLIENT", "UNBLOCK", "1234")
    assert lconn.take() == b""  # nothing more on the lease itself
    shared.answer(b":1\r\n")
    lconn.answer(b"*-1\r\n")  # CLIENT UNBLOCK ends the block as a timeout would
    await settle()
    pool = host.primary("a").leases
    assert pool.idle == [lease] and not lconn.transport.closed  # back, clean
    assert lconn.take() == b""
    assert host.stats.block_replies_orphaned == 0
    assert host.registry.blocked() == {}


async def test_an_element_popped_as_the_client_left_is_counted_and_logged(
    host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    q = host.key_on("a", prefix="jobs")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    c.hang_up()
    await settle()
    (shared,) = shared_conns(host, host.primary("a"))
    assert shared.received == cmd("CLIENT", "UNBLOCK", "42")
    with caplog.at_level(logging.WARNING, logger="shardproxy.session"):
        lconn.answer(element(q, b"job-1"))  # the race: popped just before the UNBLOCK
        shared.answer(b":0\r\n")
    assert host.stats.block_replies_orphaned == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "BLPOP" in text and repr(q) in text and "job-1" in text
    assert c.received == b""  # of course: it has gone


async def test_unblock_answered_zero_closes_the_lease_after_a_grace_if_still_waiting(
    host: FakeHost,
) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    c.hang_up()
    await settle()
    (shared,) = shared_conns(host, host.primary("a"))
    shared.answer(b":0\r\n")  # nothing blocked (yet): the BLPOP may still be on its way
    await settle()
    assert not lconn.transport.closed  # not at once: its reply may be in flight
    await wait_until(lambda: lconn.transport.closed, timeout=1.0)
    assert no_lease_anywhere(host)
    assert host.stats.block_replies_orphaned == 0


async def test_unblock_answered_zero_does_not_close_the_lease_once_another_client_has_it(
    host: FakeHost,
) -> None:
    """The block ended on its own (its element was popped in the race) before CLIENT UNBLOCK
    found nothing to unblock; the clean lease went back to the pool and another client is
    now blocked on it. The grace timer must not close that client's block (closing a lease
    with a BLPOP outstanding can lose the element it pops)."""
    q, q2 = host.keys_on("a", 2, prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    lease = the_lease(host, "a")
    c.hang_up()
    await settle()
    (shared,) = shared_conns(host, host.primary("a"))
    lconn.answer(element(q))  # popped as the client left: orphaned, the lease given back
    assert host.primary("a").leases.idle == [lease]
    shared.answer(b":0\r\n")
    other = host.client()
    other.send([b"BLPOP", q2, b"0"])
    await settle()
    assert the_lease(host, "a") is lease
    assert lconn.take() == cmd("BLPOP", q2, "0")
    loop = host.loop
    t0 = loop.time()
    await wait_until(lambda: loop.time() - t0 >= blocked._UNBLOCK_GRACE_S + 0.15)
    assert not lconn.transport.closed, "another client's block was cancelled"
    assert host.stats.blocks_reissued == 0
    lconn.answer(element(q2))
    assert other.take() == element(q2)


async def test_client_leaving_before_the_lease_connected_closes_it_and_sends_nothing(
    host: FakeHost,
) -> None:
    q = host.key_on("a", prefix="q")
    host.server("a").delay = 0.05  # the lease's connect completes later
    c = host.client()
    c.send([b"BLPOP", q, b"0"])
    await settle()
    assert host.primary("a").leases.open_count() == 1
    c.hang_up()
    await settle()
    loop = host.loop
    t0 = loop.time()
    await wait_until(lambda: loop.time() - t0 >= 0.1)
    assert no_lease_anywhere(host)
    assert host.server("a").conns == []  # the connect was abandoned: nothing sent anywhere
    assert host.net.total_received() == b""
    assert host.server("a").attempts == 1  # and no pipeline opened for a CLIENT UNBLOCK


async def test_client_leaving_before_client_id_is_answered_closes_the_lease(
    host: FakeHost,
) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    c.send([b"BLPOP", q, b"0"])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.take() == CLIENT_ID + cmd("BLPOP", q, "0")
    c.hang_up()  # no id to name in a CLIENT UNBLOCK: closing the lease ends the block
    await settle()
    assert lconn.transport.closed
    assert shared_conns(host, host.primary("a")) == []
    assert no_lease_anywhere(host)


# -- failover ----------------------------------------------------------------------------------


async def test_lease_lost_then_failover_reissues_on_the_new_primary_with_the_time_left(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1)
    q = host.key_on("a", prefix="q")
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"1"], cmd("BLPOP", q, "1"))
    shard = host.shard("a")
    promoted = shard.replicas[0]
    old.hang_up()  # the primary went away with the block
    switch_primary(cast("MutableShard", shard), promoted)
    new_srv = host.net.server_of(promoted)
    await wait_until(lambda: len(new_srv.conns) == 1, timeout=1.0)
    await settle()
    new = new_srv.conn
    (id_req, again) = new.requests()
    assert id_req == [b"CLIENT", b"ID"]  # a new lease: its own id
    assert again[:2] == [b"BLPOP", q]
    left = again[2]
    assert re.fullmatch(rb"0\.\d{3}", left), left  # the time left, as %.3f seconds
    assert 0.5 < float(left) < 1.0
    assert host.stats.blocks_reissued == 0  # counted once the node answers CLIENT ID
    assert host.stats.blocks == 1
    assert host.registry.blocked() == {"a": 1}
    assert c.received == b""  # no error in between
    new.answer(b":7\r\n" + element(q))
    assert host.stats.blocks_reissued == 1  # the re-issued block reached the node
    assert c.take() == element(q)
    assert mode_name(c) is None
    assert promoted.leases.idle != []  # given back clean on the new primary


async def test_lease_lost_then_the_same_node_back_reissues_to_it(host: FakeHost) -> None:
    s = host.key_on("a", prefix="s")
    c = host.client()
    old = await start_block(
        host,
        c,
        "a",
        [b"XREAD", b"BLOCK", b"1000", b"STREAMS", s, b"$"],
        cmd("XREAD", "BLOCK", "1000", "STREAMS", s, "$"),
    )
    node = host.primary("a")
    old.hang_up()
    node.usable = False  # what health would say of a node that went away
    loop = host.loop
    t0 = loop.time()
    await wait_until(lambda: loop.time() - t0 >= 0.15)  # several 50 ms polls
    assert host.server("a").conns == [old]  # nothing sent while there is no usable primary
    assert c.received == b""
    node.usable = True
    await wait_until(lambda: len(host.server("a").conns) == 2, timeout=1.0)
    await settle()
    new = host.server("a").conns[1]
    (id_req, again) = new.requests()
    assert id_req == [b"CLIENT", b"ID"]
    assert again[:2] == [b"XREAD", b"BLOCK"] and again[3:] == [b"STREAMS", s, b"$"]
    assert re.fullmatch(rb"[1-9][0-9]*", again[2]), again[2]  # whole milliseconds
    assert 500 < int(again[2]) < 1000
    assert host.stats.blocks_reissued == 0  # counted once the node answers CLIENT ID
    new.answer(b":8\r\n*-1\r\n")
    assert host.stats.blocks_reissued == 1  # the re-issued block reached the node
    assert c.take() == b"*-1\r\n"


async def test_unblocked_reply_of_a_demoted_node_reissues_on_the_new_primary(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1)
    q = host.key_on("a", prefix="q")
    c = host.client()
    old = await start_block(host, c, "a", [b"BRPOP", q, b"0"], cmd("BRPOP", q, "0"))
    shard = host.shard("a")
    promoted = shard.replicas[0]
    switch_primary(cast("MutableShard", shard), promoted)
    old.answer(UNBLOCKED)  # REPLICAOF on the old primary ends every block on it
    assert c.received == b""
    new_srv = host.net.server_of(promoted)
    await wait_until(lambda: len(new_srv.conns) == 1, timeout=1.0)
    await settle()
    assert new_srv.conn.received == CLIENT_ID + cmd("BRPOP", q, "0")  # forever stays forever
    assert old.take() == b""
    assert host.stats.blocks_reissued == 0  # counted once the node answers CLIENT ID
    new_srv.conn.answer(b":9\r\n" + element(q))
    assert host.stats.blocks_reissued == 1  # the re-issued block reached the node
    assert c.take() == element(q)


@pytest.mark.parametrize("answer", [UNBLOCKED, READONLY], ids=["unblocked", "readonly"])
async def test_a_demoted_node_gets_no_reissue_the_new_primary_does(
    make_host: MakeHost, answer: bytes
) -> None:
    """-UNBLOCKED (blocked, then demoted) or -READONLY (already a replica when the block
    arrived) before the proxy knows of the failover: nothing is sent again to that node,
    still listed as the primary; the block waits for another primary and runs there. The
    client was promised the block survives a failover, not an error."""
    host = make_host(replicas=1)
    q = host.key_on("a", prefix="q")
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    old.answer(answer)
    await asyncio.sleep(0.2)  # a few polls
    assert old.take() == b"", "sent again to the node that said it is no primary"
    assert c.received == b"", "the client got the demoted node's error"
    shard = host.shard("a")
    promoted = shard.replicas[0]
    switch_primary(cast("MutableShard", shard), promoted)
    new_srv = host.net.server_of(promoted)
    await wait_until(lambda: len(new_srv.conns) == 1, timeout=1.0)
    await settle()
    assert new_srv.conn.take() == CLIENT_ID + cmd("BLPOP", q, "0")
    new_srv.conn.answer(b":9\r\n" + element(q))
    assert c.take() == element(q)
    assert host.stats.blocks_reissued == 1  # the re-issued block reached the node


@pytest.mark.parametrize(
    "proto,argv,null",
    [
        (2, ["BLPOP", "{q}", "0.2"], b"*-1\r\n"),
        (2, ["BLMOVE", "{q}", "{q}", "LEFT", "RIGHT", "0.2"], b"$-1\r\n"),
        (2, ["BRPOPLPUSH", "{q}", "{q}", "0.2"], b"$-1\r\n"),
        (2, ["BZMPOP", "0.2", "1", "{q}", "MIN"], b"*-1\r\n"),
        (2, ["XREAD", "BLOCK", "200", "STREAMS", "{q}", "$"], b"*-1\r\n"),
        (3, ["BLPOP", "{q}", "0.2"], b"_\r\n"),
        (3, ["BLMOVE", "{q}", "{q}", "LEFT", "RIGHT", "0.2"], b"_\r\n"),
    ],
    ids=["blpop-resp2", "blmove-resp2", "brpoplpush-resp2", "bzmpop-resp2", "xread-resp2",
         "blpop-resp3", "blmove-resp3"],
)  # fmt: skip
async def test_the_blocks_own_timeout_passing_while_awaiting_a_primary_is_its_null_reply(
    host: FakeHost, proto: int, argv: list[str], null: bytes
) -> None:
    q = host.key_on("a", prefix="q")
    real = [q if a == "{q}" else a for a in argv]
    c = host.client()
    if proto == 3:
        c.send([b"HELLO", b"3"])
        await settle()
        c.take()
    c.send(real)
    await settle()
    lconn = lease_conn(host, "a")
    if proto == 3:
        assert lconn.take() == cmd("HELLO", "3")
        lconn.answer(HELLO3_REPLY)
        await settle()
    loop = host.loop
    t0 = loop.time()
    lconn.answer(b":42\r\n")
    lconn.hang_up()
    host.primary("a").usable = False
    seen = len(c.received)  # (HELLO's reply, for a RESP3 client)
    await wait_until(lambda: len(c.received) > seen, timeout=1.0)
    assert c.take() == null
    assert 0.15 <= loop.time() - t0 < 0.5
    assert host.server("a").conns == [lconn]  # never sent again
    assert host.stats.blocks_reissued == 0
    assert mode_name(c) is None


async def test_no_usable_primary_for_the_recovery_time_is_the_error(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blocked, "RECOVERY_S", 0.15)
    q = host.key_on("a", prefix="q")
    c = host.client()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    lconn.hang_up()
    host.primary("a").usable = False
    loop = host.loop
    t0 = loop.time()
    await wait_until(lambda: c.received != b"", timeout=1.0)
    assert loop.time() - t0 >= 0.15
    assert c.received.startswith(b"-TRYAGAIN shard a: node 10.0.0.1:6379 is unreachable (")
    assert c.received.endswith(b")\r\n") and c.received.count(b"\r\n") == 1
    assert host.server("a").conns == [lconn]
    assert mode_name(c) is None
    c.send([b"PING"])  # the client is in normal mode again
    await settle()
    assert c.received.endswith(b"+PONG\r\n")


# -- a reload moves the keys -----------------------------------------------------------------


async def test_a_reload_moving_the_keys_unblocks_the_old_node_and_follows_them(
    host: FakeHost,
) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"5"], cmd("BLPOP", q, "5"))
    node_a = host.primary("a")
    publish(host, ["b"])  # shard a leaves the ring: q is b's now
    await settle()
    (shared,) = shared_conns(host, node_a)
    assert shared.received == cmd("CLIENT", "UNBLOCK", "42")
    assert host.server("b").conns == []  # not before the old block has ended
    shared.answer(b":1\r\n")
    old.answer(b"*-1\r\n")  # unblocked as a timeout: nothing was popped
    await settle()
    assert c.received == b""
    lb = lease_conn(host, "b")
    (id_req, again) = lb.requests()
    assert id_req == [b"CLIENT", b"ID"]
    assert again[:2] == [b"BLPOP", q] and re.fullmatch(rb"[0-4]\.\d{3}", again[2])
    assert 4.0 < float(again[2]) < 5.0  # the time left
    assert host.stats.blocks_reissued == 0  # counted once the node answers CLIENT ID
    assert host.registry.blocked() == {"b": 1}
    assert node_a.leases.idle != []  # the old lease went back clean
    lb.answer(b":5\r\n" + element(q))
    assert host.stats.blocks_reissued == 1  # the re-issued block reached the node
    assert c.take() == element(q)
    assert host.registry.blocked() == {}


async def test_an_element_answered_instead_of_the_unblock_is_forwarded(host: FakeHost) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    node_a = host.primary("a")
    publish(host, ["b"])
    await settle()
    (shared,) = shared_conns(host, node_a)
    old.answer(element(q))  # popped before the UNBLOCK arrived
    shared.answer(b":0\r\n")
    assert c.take() == element(q)
    await settle()
    assert host.server("b").conns == []  # never sent to the new owner
    assert host.stats.blocks_reissued == 0
    assert host.stats.block_replies_orphaned == 0
    assert mode_name(c) is None


async def test_a_reload_that_keeps_the_keys_shard_leaves_the_block_alone(
    make_host: MakeHost,
) -> None:
    host = make_host("a", "b", "c")
    publish_to = ["a", "b"]
    later = Ring.build([(n, 1) for n in publish_to])
    q = next(k for k in host.keys_on("a", 50, prefix="q") if later.shard_name(k) == "a")
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    publish(host, publish_to)  # shard c removed; q stays on a
    await settle()
    assert shared_conns(host, host.primary("a")) == []  # no CLIENT UNBLOCK
    assert old.take() == b""
    old.answer(element(q))
    assert c.take() == element(q)


async def test_a_reissue_refused_at_the_lease_limit_is_answered(make_host: MakeHost) -> None:
    host = make_host(settings=BackendSettings(max_leases=1))
    q, kb = host.key_on("a", prefix="q"), host.key_on("b")
    holder = host.client()
    holder.send([b"WATCH", kb])  # holds b's one lease
    await settle()
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"5"], cmd("BLPOP", q, "5"))
    node_a = host.primary("a")
    publish(host, ["b"])
    await settle()
    (shared,) = shared_conns(host, node_a)
    shared.answer(b":1\r\n")
    old.answer(b"*-1\r\n")
    await settle()
    assert c.take() == errors.reply("lease_limit", shard="b", node=B_PRIMARY, limit=1)
    assert mode_name(c) is None


async def test_a_reissue_after_a_failover_refused_at_the_lease_limit_is_answered(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1, settings=BackendSettings(max_leases=1))
    q = host.key_on("a", prefix="q")
    shard = host.shard("a")
    promoted = shard.replicas[0]
    taken = promoted.leases.acquire(2, None)  # someone else holds the new primary's one lease
    assert taken is not None
    c = host.client()
    old = await start_block(host, c, "a", [b"BLPOP", q, b"0"], cmd("BLPOP", q, "0"))
    old.hang_up()
    switch_primary(cast("MutableShard", shard), promoted)
    limit = errors.reply("lease_limit", shard="a", node=promoted.address, limit=1)
    await wait_until(lambda: promoted.leases.refused > 0, timeout=1.0)
    await settle()
    assert c.take() == limit
    assert mode_name(c) is None


# -- leases, transactions, WATCH, RESP3, counters ----------------------------------------------


async def test_at_the_lease_limit_a_block_is_tryagain(make_host: MakeHost) -> None:
    host = make_host(settings=BackendSettings(max_leases=1))
    ka = host.key_on("a")
    q = host.key_on("a", prefix="q")
    holder = host.client()
    holder.send([b"WATCH", ka])
    await settle()
    c = host.client()
    c.send([b"BLPOP", q, b"0"], [b"PING"])
    await settle()
    limit = errors.reply("lease_limit", shard="a", node=A_PRIMARY, limit=1)
    assert limit.startswith(b"-TRYAGAIN ") and b"dedicated connections" in limit
    assert c.take() == limit + b"+PONG\r\n"  # and the next request runs at once
    assert mode_name(c) is None
    assert host.server("a").conn.received == cmd("WATCH", ka)  # only the holder's lease
    assert host.registry.blocked() == {}


async def test_inside_multi_a_blocking_command_is_queued_and_takes_no_lease(
    host: FakeHost,
) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    c.send([b"MULTI"], [b"BLPOP", q, b"0"])
    await settle()
    assert c.take() == OK + QUEUED
    assert nothing_sent(host) and no_lease_anywhere(host)
    assert host.stats.blocks == 0
    c.send([b"EXEC"])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.received == cmd("MULTI") + cmd("BLPOP", q, "0") + cmd("EXEC")  # no CLIENT ID
    lconn.answer(OK + QUEUED + b"*1\r\n*-1\r\n")  # in MULTI, BLPOP does not block
    assert c.take() == b"*1\r\n*-1\r\n"
    assert host.stats.blocks == 0


async def test_watch_survives_a_block_and_exec_runs_on_the_watched_lease(
    host: FakeHost,
) -> None:
    k = host.key_on("a")
    q = host.key_on("a", prefix="q")
    c = host.client()
    c.send([b"WATCH", k])
    await settle()
    wconn = lease_conn(host, "a")
    assert wconn.take() == cmd("WATCH", k)
    wconn.answer(OK)
    assert c.take() == OK
    watched = the_lease(host, "a")
    c.send([b"BLPOP", q, b"1"])
    await settle()
    (block_lease,) = [x for x in leases(host, "a") if x is not watched]  # a second lease
    bconn = conn_of(host, host.primary("a"), block_lease.transport)
    assert bconn.take() == CLIENT_ID + cmd("BLPOP", q, "1")
    assert wconn.take() == b""
    assert mode_name(c) == BLOCKED
    bconn.answer(b":42\r\n" + element(q))
    assert c.take() == element(q)
    assert mode_name(c) == WATCHING  # back where it came from, watch and all
    c.send([b"MULTI"], [b"SET", k, b"1"], [b"EXEC"])
    await settle()
    assert wconn.take() == cmd("MULTI") + cmd("SET", k, "1") + cmd("EXEC")
    assert bconn.take() == b""
    wconn.answer(OK + QUEUED + b"*1\r\n+OK\r\n")
    assert c.take() == OK + QUEUED + b"*1\r\n+OK\r\n"
    assert mode_name(c) is None


async def test_client_leaving_while_blocked_in_watch_gives_both_leases_back(
    host: FakeHost,
) -> None:
    k = host.key_on("a")
    q = host.key_on("a", prefix="q")
    c = host.client()
    c.send([b"WATCH", k])
    await settle()
    wconn = lease_conn(host, "a")
    watched = the_lease(host, "a")
    wconn.answer(OK)
    c.send([b"BLPOP", q, b"0"])
    await settle()
    (block_lease,) = [x for x in leases(host, "a") if x is not watched]
    bconn = conn_of(host, host.primary("a"), block_lease.transport)
    bconn.answer(b":42\r\n")
    c.hang_up()
    await settle()
    assert wconn.take() == cmd("WATCH", k) + cmd("RESET")  # the watch is reset
    (shared,) = shared_conns(host, host.primary("a"))
    assert shared.received == cmd("CLIENT", "UNBLOCK", "42")  # the block is cancelled


async def test_a_resp3_client_blocks_on_a_resp3_lease(host: FakeHost) -> None:
    q = host.key_on("a", prefix="q")
    c = host.client()
    c.send([b"HELLO", b"3"])
    await settle()
    c.take()
    lconn = await start_block(host, c, "a", [b"BLPOP", q, b"1"], cmd("BLPOP", q, "1"), proto=3)
    assert the_lease(host, "a").proto == 3
    lconn.answer(b"_\r\n")  # the node's RESP3 null, forwarded raw
    assert c.take() == b"_\r\n"
    await settle()
    assert lconn.take() == b""  # no RESET, no HELLO again: released clean
    assert host.primary("a").leases.idle == [the_lease(host, "a")]


async def test_counters_and_the_blocked_report(make_host: MakeHost) -> None:
    host = make_host("a", "b", "c")
    qa, qb = host.key_on("a", prefix="q"), host.key_on("b", prefix="q")
    c1, c2, c3 = host.client(), host.client(), host.client()
    c1.send([b"BLPOP", qa, b"0"])
    c2.send([b"BLPOP", qa, b"0"])
    c3.send([b"BZPOPMIN", qb, b"0"])
    await settle()
    assert host.registry.blocked() == {"a": 2, "b": 1}
    assert host.stats.blocks == 3
    lb = host.server("b").conn
    lb.answer(b":1\r\n*-1\r\n")
    assert c3.take() == b"*-1\r\n"
    assert host.registry.blocked() == {"a": 2}
    c1.hang_up()
    await settle()
    assert host.registry.blocked() == {"a": 1}
    assert host.stats.blocks == 3
    assert host.stats.blocks_reissued == 0
    assert host.stats.block_replies_orphaned == 0
