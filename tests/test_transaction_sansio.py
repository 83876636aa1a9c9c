"""Transactions, WATCH and scripts, sans-IO: real ClientSession, modes, router, nodes, pipelines
and leases; fake sockets (harness: ``tests/sansio.py``).

Every test asserts the exact bytes a client or a node saw. What Redis does is the reference:
``MULTI`` is ``+OK``; each command is checked at queue time (``+QUEUED``, or the error, after
which ``EXEC`` answers ``-EXECABORT``); in the proxy nothing reaches a node before ``EXEC``,
then ``MULTI``, the queue and ``EXEC`` are written at once on a leased connection to the
shard's primary and ``EXEC``'s reply is forwarded raw.
"""

from __future__ import annotations

from typing import cast

import pytest

from shardproxy.backend.connection import CLOSED, READY, BackendSettings
from shardproxy.control.failover import MutableShard, switch_primary
from shardproxy.protocol import encode, errors
from shardproxy.session.modes import TRANSACTION, WATCHING
from shardproxy.session.queue import QueuedReply
from shardproxy.session.scripts import ScriptRegistry, sha1_hex
from tests.sansio import (
    A_PRIMARY,
    B_PRIMARY,
    CROSSSLOT,
    HELLO3_REPLY,
    OK,
    QUEUED,
    FakeHost,
    Limits,
    MakeHost,
    bulk,
    cmd,
    lease_conn,
    nothing_sent,
    reply_of,
    settle,
    the_lease,
    wait_until,
)

EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"


def results(host: FakeHost) -> dict[str, int]:
    """The transaction outcomes counted so far (only the non-zero ones)."""
    return {k: v for k, v in host.stats.transactions.items() if v}


def tx(*frames: bytes) -> bytes:
    """What a lease carries for one transaction: MULTI, the queued frames, EXEC."""
    return cmd("MULTI") + b"".join(frames) + cmd("EXEC")


def acks(n: int) -> bytes:
    """Redis's replies to MULTI and to ``n`` queued commands."""
    return OK + QUEUED * n


# -- queueing and EXEC -----------------------------------------------------------------------


async def test_queued_commands_reach_no_node_before_exec_then_go_at_once_on_a_lease(
    host: FakeHost,
) -> None:
    k1, k2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"MULTI"], [b"SET", k1, b"v"], [b"INCR", k2], [b"GET", k1])
    await settle()
    assert c.take() == OK + QUEUED * 3
    assert nothing_sent(host)
    assert c.session.mode is not None and c.session.mode.name == TRANSACTION

    c.send([b"EXEC"])
    await settle()
    conn = host.server("a").conn  # one connection to a's primary: the lease
    lease = the_lease(host, "a")
    assert lease.transport is conn.transport
    assert host.primary("a").leases.leased == {lease}
    assert conn.writes == [tx(cmd("SET", k1, "v"), cmd("INCR", k2), cmd("GET", k1))]  # one write
    assert host.server("b").conns == []
    assert c.session.mode is None

    conn.answer(acks(2))  # MULTI's and some queued replies: read and dropped
    assert c.take() == b""
    exec_reply = b"*3\r\n+OK\r\n:1\r\n$1\r\nv\r\n"
    conn.answer(QUEUED + exec_reply[:9])  # EXEC's reply in two reads
    assert c.take() == b""
    conn.answer(exec_reply[9:])
    assert c.take() == exec_reply  # EXEC's reply, raw, and nothing else
    pool = host.primary("a").leases
    assert pool.idle == [lease] and pool.leased == set()  # back in the pool once answered
    assert host.stats.transactions_started == 1
    assert results(host) == {"committed": 1}


async def test_the_next_transaction_reuses_the_lease_without_a_reset(host: FakeHost) -> None:
    k1, k2 = host.keys_on("b", 2)
    c = host.client()
    c.send([b"MULTI"], [b"SET", k1, b"1"], [b"EXEC"])
    await settle()
    conn = host.server("b").conn
    assert conn.take() == tx(cmd("SET", k1, "1"))
    conn.answer(acks(1) + b"*1\r\n+OK\r\n")
    await settle()
    assert conn.take() == b""  # no RESET: EXEC left the connection as MULTI found it
    lease = the_lease(host, "b")

    other = host.client()  # another client gets the very same connection
    other.send([b"MULTI"], [b"INCR", k2], [b"GET", k1], [b"EXEC"])
    await settle()
    assert host.server("b").conns == [conn]  # no new connection
    assert the_lease(host, "b") is lease
    assert conn.take() == tx(cmd("INCR", k2), cmd("GET", k1))  # and no RESET before it
    conn.answer(acks(2) + b"*2\r\n:1\r\n$1\r\n1\r\n")
    assert other.received == OK + QUEUED * 2 + b"*2\r\n:1\r\n$1\r\n1\r\n"
    assert c.received == OK + QUEUED + b"*1\r\n+OK\r\n"
    assert results(host) == {"committed": 2}


async def test_exec_reply_waits_in_order_behind_earlier_replies(host: FakeHost) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"GET", kb], [b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"], [b"GET", kb])
    await settle()
    b, a = host.server("b").conn, lease_conn(host, "a")
    assert b.received == cmd("GET", kb) + cmd("GET", kb)
    assert a.received == tx(cmd("SET", ka, "1"))
    a.answer(acks(1) + b"*1\r\n+OK\r\n")
    assert c.writes == []  # everything waits for the first GET
    b.answer(b"$1\r\nx\r\n")
    assert c.writes == [b"$1\r\nx\r\n" + OK + QUEUED + b"*1\r\n+OK\r\n"]
    b.answer(b"$1\r\ny\r\n")
    assert c.take().endswith(b"*1\r\n+OK\r\n$1\r\ny\r\n")


@pytest.mark.parametrize("form", ["inline", "multibulk"])
async def test_multi_pipelined_in_one_read_honours_the_mode_switch(
    host: FakeHost, form: str
) -> None:
    c = host.client()
    ka = host.key_on("a", prefix="a")
    if form == "inline":
        data = b"MULTI\r\nSET %s 1\r\nEXEC\r\nGET %s\r\n" % (ka, ka)
    else:
        data = cmd("MULTI") + cmd("SET", ka, "1") + cmd("EXEC") + cmd("GET", ka)
    c.send_raw(data)
    await settle()
    lease = the_lease(host, "a")
    lconn = lease_conn(host, "a")
    (shared,) = [x for x in host.server("a").conns if x is not lconn]
    assert lconn.received == tx(cmd("SET", ka, "1"))  # the fast-path SET was queued, not sent
    assert shared.received == cmd("GET", ka)  # the GET after EXEC: normal mode again
    assert lease.transport is not shared.transport
    shared.answer(b"$1\r\n1\r\n")
    assert c.received == OK + QUEUED  # the GET's reply waits for EXEC's
    lconn.answer(acks(1) + b"*1\r\n+OK\r\n")
    assert c.received == OK + QUEUED + b"*1\r\n+OK\r\n$1\r\n1\r\n"


async def test_keyless_commands_are_queued_and_run_on_the_transactions_shard(
    host: FakeHost,
) -> None:
    kb = host.key_on("b")
    c = host.client()
    c.send([b"MULTI"], [b"PING"], [b"SET", kb, b"1"], [b"ECHO", b"hi"], [b"TIME"], [b"EXEC"])
    await settle()
    assert c.take() == OK + QUEUED * 4  # PING and ECHO queued, not answered by the proxy
    assert host.server("a").conns == []
    conn = host.server("b").conn
    assert conn.received == tx(cmd("PING"), cmd("SET", kb, "1"), cmd("ECHO", "hi"), cmd("TIME"))
    reply = b"*4\r\n+PONG\r\n+OK\r\n$2\r\nhi\r\n*2\r\n$10\r\n1700000000\r\n$1\r\n5\r\n"
    conn.answer(acks(4) + reply)
    assert c.take() == reply


async def test_a_transaction_with_no_key_runs_on_one_shard(host: FakeHost) -> None:
    c = host.client()
    c.send([b"MULTI"], [b"PING"], [b"ECHO", b"x"], [b"EXEC"])
    await settle()
    used = [s for s in host.net.servers.values() if s.conns]
    assert len(used) == 1
    conn = used[0].conn
    assert conn.received == tx(cmd("PING"), cmd("ECHO", "x"))
    conn.answer(acks(2) + b"*2\r\n+PONG\r\n$1\r\nx\r\n")
    assert c.received == OK + QUEUED * 2 + b"*2\r\n+PONG\r\n$1\r\nx\r\n"


async def test_a_transaction_with_no_key_avoids_an_unusable_primary(host: FakeHost) -> None:
    host.primary("a").usable = False
    host.primary("b").usable = True
    c = host.client()
    c.send([b"MULTI"], [b"PING"], [b"EXEC"])
    await settle()
    assert host.server("a").conns == []
    assert host.server("b").conn.received == tx(cmd("PING"))


async def test_scripts_are_queued_by_their_declared_keys(host: FakeHost) -> None:
    kb = host.key_on("b")
    c = host.client()
    c.send(
        [b"MULTI"],
        [b"EVAL", b"return 1", b"1", kb],
        [b"EVAL", b"return 2", b"0"],  # no key: goes with the transaction
        [b"EXEC"],
    )
    await settle()
    assert c.take() == OK + QUEUED * 2
    assert host.server("a").conns == []
    assert host.server("b").conn.received == tx(
        cmd("EVAL", "return 1", "1", kb), cmd("EVAL", "return 2", "0")
    )


async def test_multi_key_commands_of_one_shard_are_queued_as_they_are(host: FakeHost) -> None:
    a1, a2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"MULTI"], [b"MSET", a1, b"1", a2, b"2"], [b"MGET", a1, a2], [b"DEL", a1, a2])
    c.send([b"EXEC"])
    await settle()
    assert c.take() == OK + QUEUED * 3
    assert host.server("a").conn.received == tx(
        cmd("MSET", a1, "1", a2, "2"), cmd("MGET", a1, a2), cmd("DEL", a1, a2)
    )


async def test_client_leaving_with_exec_outstanding_still_gives_the_lease_back_clean(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])
    await settle()
    conn = host.server("a").conn
    lease = the_lease(host, "a")
    c.hang_up()
    await settle()
    conn.answer(acks(1) + b"*1\r\n+OK\r\n")  # read and dropped
    await settle()
    assert c.transport.writes_after_close == []
    assert conn.received == tx(cmd("SET", ka, "1"))  # no RESET: EXEC was answered
    assert host.primary("a").leases.idle == [lease]
    assert results(host) == {"committed": 1}


async def test_multi_exec_with_nothing_between_is_an_empty_array(host: FakeHost) -> None:
    c = host.client()
    c.send([b"MULTI"], [b"EXEC"])
    await settle()
    assert c.writes == [OK + b"*0\r\n"]
    assert c.session.mode is None
    assert nothing_sent(host)
    assert results(host) == {"committed": 1}


async def test_unwatch_inside_multi_is_queued(host: FakeHost) -> None:
    # Redis queues UNWATCH inside MULTI (it has no no-multi flag) and runs it in EXEC
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"UNWATCH"], [b"EXEC"])
    await settle()
    assert c.take() == OK + QUEUED * 2
    assert host.server("a").conn.received == tx(cmd("SET", ka, "1"), cmd("UNWATCH"))


# -- refused while queueing ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,error",
    [
        (
            [b"NOSUCH", b"x", b"y"],
            b"-ERR unknown command 'NOSUCH', with args beginning with: 'x' 'y' \r\n",
        ),
        ([b"GET"], b"-ERR wrong number of arguments for 'get' command\r\n"),
        ([b"SET", b"k"], b"-ERR wrong number of arguments for 'set' command\r\n"),
        ([b"SAVE"], b"-ERR Command not allowed inside a transaction\r\n"),
        (
            [b"INFO"],
            b"-ERR command 'info' cannot be queued in a transaction through shardproxy\r\n",
        ),
        (
            [b"DBSIZE"],
            b"-ERR command 'dbsize' cannot be queued in a transaction through shardproxy\r\n",
        ),
        (
            [b"CLIENT", b"ID"],
            b"-ERR command 'client id' cannot be queued in a transaction through shardproxy\r\n",
        ),
        (
            [b"SCRIPT", b"LOAD", b"return 1"],
            b"-ERR command 'script load' cannot be queued in a transaction through shardproxy\r\n",
        ),
        ([b"CLIENT", b"NOSUCH"], b"-ERR unknown subcommand 'NOSUCH'. Try CLIENT HELP.\r\n"),
        ([b"READONLY"], b"-ERR command 'readonly' is not supported by shardproxy\r\n"),
        (
            [b"SUBSCRIBE", b"ch"],
            b"-ERR command 'subscribe' cannot be queued in a transaction through shardproxy\r\n",
        ),
    ],
    ids=[
        "unknown",
        "arity-get",
        "arity-set",
        "no-multi",
        "info",
        "dbsize",
        "client-id",
        "script-load",
        "unknown-subcommand",
        "unsupported",
        "subscribe",
    ],
)
async def test_a_command_refused_while_queueing_aborts_exec_and_nothing_is_sent(
    host: FakeHost, argv: list[bytes], error: bytes
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"1"], argv, [b"INCR", ka])
    assert c.take() == OK + QUEUED + error + QUEUED  # later commands are still queued
    c.send([b"EXEC"])
    await settle()
    assert c.take() == EXECABORT
    assert nothing_sent(host)
    assert c.session.mode is None
    assert results(host) == {"aborted": 1}

    c.send([b"GET", ka])  # normal mode again: forwarded
    await settle()
    assert host.server("a").conn.received == cmd("GET", ka)


async def test_keys_of_another_shard_are_crossslot_and_abort_exec(host: FakeHost) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send(
        [b"MULTI"],
        [b"SET", ka, b"1"],
        [b"SET", kb, b"1"],  # another shard than the first keyed command's
        [b"MGET", ka, kb],  # one command over two shards
        [b"PING"],
        [b"EXEC"],
    )
    await settle()
    assert c.received == OK + QUEUED + CROSSSLOT + CROSSSLOT + QUEUED + EXECABORT
    assert nothing_sent(host)
    assert results(host) == {"cross_shard_refused": 1}


async def test_a_transaction_larger_than_a_request_may_be_is_refused(
    make_host: MakeHost,
) -> None:
    host = make_host(limits=Limits(max_request_bytes=100))
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"x" * 40], [b"SET", ka, b"y" * 40], [b"EXEC"])
    await settle()
    assert c.received == (OK + QUEUED + errors.reply("tx_too_large", limit=100) + EXECABORT)
    assert nothing_sent(host)


async def test_nested_multi_and_watch_inside_multi_are_errors_that_do_not_abort(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"MULTI"], [b"WATCH", ka], [b"SET", ka, b"v"])
    assert c.take() == (
        OK
        + b"-ERR MULTI calls can not be nested\r\n"
        + b"-ERR WATCH inside MULTI is not allowed\r\n"
        + QUEUED
    )
    assert c.session.mode is not None and c.session.mode.name == TRANSACTION
    c.send([b"EXEC"])  # neither refused a command: as in Redis, EXEC runs
    await settle()
    conn = host.server("a").conn
    assert conn.received == tx(cmd("SET", ka, "v"))  # no WATCH was sent
    conn.answer(acks(1) + b"*1\r\n+OK\r\n")
    assert c.take() == b"*1\r\n+OK\r\n"
    assert host.stats.transactions_started == 1  # the nested MULTI began nothing


async def test_discard_answers_ok_and_sends_nothing(host: FakeHost) -> None:
    kb = host.key_on("b")
    c = host.client()
    c.send([b"MULTI"], [b"SET", kb, b"1"], [b"DISCARD"])
    await settle()
    assert c.take() == OK + QUEUED + OK
    assert c.session.mode is None
    assert nothing_sent(host)
    assert results(host) == {"discarded": 1}
    c.send([b"EXEC"])
    assert c.take() == b"-ERR EXEC without MULTI\r\n"
    c.send([b"SET", kb, b"1"])
    await settle()
    assert host.server("b").conn.received == cmd("SET", kb, "1")


async def test_exec_and_discard_without_multi(host: FakeHost) -> None:
    c = host.client()
    c.send([b"EXEC"], [b"DISCARD"], [b"exec"])
    assert c.received == (
        b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n-ERR EXEC without MULTI\r\n"
    )
    assert c.session.mode is None
    assert host.stats.transactions_started == 0


async def test_reset_inside_multi_leaves_the_mode_and_sends_nothing(host: FakeHost) -> None:
    k = host.key_on("a")
    c = host.client()
    c.send([b"HELLO", b"3"])
    c.take()
    c.send([b"MULTI"], [b"SET", k, b"v"], [b"RESET"])
    await settle()
    assert c.take() == OK + QUEUED + b"+RESET\r\n"
    assert c.session.mode is None
    assert c.session.proto == 2
    assert nothing_sent(host)
    c.send([b"EXEC"])
    assert c.take() == b"-ERR EXEC without MULTI\r\n"
    assert results(host) == {"discarded": 1}


async def test_client_leaving_mid_transaction_sends_nothing(host: FakeHost) -> None:
    k = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", k, b"v"])
    c.hang_up()
    await settle()
    assert c.session.mode is None
    assert len(host.registry) == 0
    assert nothing_sent(host)
    assert results(host) == {"discarded": 1}


# -- WATCH -----------------------------------------------------------------------------------


async def test_watch_takes_a_lease_and_sends_watch_on_it(host: FakeHost) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    lease = the_lease(host, "a")
    conn = host.server("a").conn  # the lease only: no shared pipeline was opened
    assert lease.transport is conn.transport and lease.leased
    assert conn.writes == [cmd("WATCH", ka)]
    assert host.server("b").conns == []
    assert c.writes == []  # Redis answers WATCH
    conn.answer(OK)
    assert c.take() == OK
    assert c.session.mode is not None and c.session.mode.name == WATCHING


async def test_while_watching_the_watched_shard_travels_on_the_lease(host: FakeHost) -> None:
    ka, ka2 = host.keys_on("a", 2)
    kb = host.key_on("b")
    c = host.client()
    c.send([b"WATCH", ka], [b"GET", ka], [b"GET", kb], [b"SET", ka2, b"x"], [b"WATCH", ka2])
    await settle()
    lconn = lease_conn(host, "a")
    assert host.server("a").conns == [lconn]  # a: the lease only
    assert lconn.received == (
        cmd("WATCH", ka) + cmd("GET", ka) + cmd("SET", ka2, "x") + cmd("WATCH", ka2)
    )
    assert host.server("b").conn.received == cmd("GET", kb)  # b: its shared pipeline
    host.server("b").conn.answer(b"$1\r\nB\r\n")
    assert c.writes == []
    lconn.answer(OK + b"$1\r\nA\r\n" + OK + OK)
    assert c.take() == OK + b"$1\r\nA\r\n$1\r\nB\r\n" + OK + OK


async def test_while_watching_multi_key_reads_of_the_watched_shard_travel_on_the_lease(
    host: FakeHost,
) -> None:
    """WATCH k then MGET k (or DEL k): sent on a shared pipeline, it may run before the
    WATCH (a new lease is still connecting when the pipeline writes), so the value read may
    predate the WATCH and a lost update goes unnoticed by EXEC (or the client's own DEL does
    not abort EXEC, as it would in Redis). The watched shard's commands must travel on the
    lease, after the WATCH, as GET and SET do."""
    ka, ka2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"WATCH", ka], [b"MGET", ka, ka2], [b"EXISTS", ka], [b"DEL", ka])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.received == (
        cmd("WATCH", ka) + cmd("MGET", ka, ka2) + cmd("EXISTS", ka) + cmd("DEL", ka)
    )
    assert host.server("a").conns == [lconn]


async def test_while_watching_reads_of_the_watched_shard_skip_the_replicas(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1, read_policy="prefer-replica")
    ka = host.key_on("a")
    ka2 = host.keys_on("a", 2)[1]
    c = host.client()
    c.send([b"WATCH", ka], [b"GET", ka2])
    await settle()
    assert host.server("a", replica=0).conns == []
    assert lease_conn(host, "a").received == cmd("WATCH", ka) + cmd("GET", ka2)


async def test_watch_of_keys_on_two_shards_is_crossslot_and_takes_no_lease(
    host: FakeHost,
) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"WATCH", ka, kb])
    await settle()
    assert c.take() == CROSSSLOT
    assert c.session.mode is None  # nothing is watched
    assert nothing_sent(host)
    assert host.primary("a").leases.open_count() == host.primary("b").leases.open_count() == 0


async def test_a_second_watch_on_another_shard_is_crossslot_and_keeps_watching(
    host: FakeHost,
) -> None:
    ka, ka2 = host.keys_on("a", 2)
    kb = host.key_on("b")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "a")
    lconn.answer(OK)
    c.send([b"WATCH", kb], [b"WATCH", ka2])
    await settle()
    assert host.server("b").conns == []
    assert lconn.take() == cmd("WATCH", ka) + cmd("WATCH", ka2)
    lconn.answer(OK)
    assert c.take() == OK + CROSSSLOT + OK
    assert c.session.mode is not None and c.session.mode.name == WATCHING


async def test_watch_then_multi_exec_runs_on_the_same_lease(host: FakeHost) -> None:
    ka, ka2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"WATCH", ka], [b"GET", ka])
    await settle()
    lconn = lease_conn(host, "a")
    lease = the_lease(host, "a")
    lconn.answer(OK + b"$1\r\n1\r\n")
    assert lconn.take() == cmd("WATCH", ka) + cmd("GET", ka)
    c.send([b"MULTI"], [b"SET", ka, b"2"], [b"INCR", ka2], [b"PING"], [b"EXEC"])
    await settle()
    assert host.server("a").conns == [lconn]  # still the one connection
    assert lconn.take() == tx(cmd("SET", ka, "2"), cmd("INCR", ka2), cmd("PING"))
    lconn.answer(acks(3) + b"*3\r\n+OK\r\n:1\r\n+PONG\r\n")
    assert c.received == OK + b"$1\r\n1\r\n" + OK + QUEUED * 3 + b"*3\r\n+OK\r\n:1\r\n+PONG\r\n"
    await settle()
    assert lconn.take() == b""  # EXEC unwatched everything: given back without a RESET
    assert host.primary("a").leases.idle == [lease]
    assert c.session.mode is None
    assert results(host) == {"committed": 1}


async def test_watch_then_multi_with_nothing_queued_still_runs_exec(host: FakeHost) -> None:
    # (EXEC answers null if the watched key changed: the proxy cannot answer *0 itself)
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka], [b"MULTI"], [b"EXEC"])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.received == cmd("WATCH", ka) + tx()
    lconn.answer(OK + OK + b"*-1\r\n")
    assert c.received == OK + OK + b"*-1\r\n"


async def test_watch_then_a_key_of_another_shard_inside_multi_is_crossslot(
    make_host: MakeHost,
) -> None:
    host = make_host(per_shard_transactions=True)  # not even per shard: WATCH pins one shard
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"WATCH", ka], [b"MULTI"], [b"SET", kb, b"1"], [b"EXEC"])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.received == cmd("WATCH", ka)
    lconn.answer(OK)
    assert c.received == OK + OK + CROSSSLOT + EXECABORT
    assert host.server("b").conns == []
    await settle()
    assert lconn.take() == cmd("WATCH", ka) + cmd("RESET")  # nothing ran; the WATCH is reset
    assert results(host) == {"cross_shard_refused": 1}


@pytest.mark.parametrize("proto,null", [(2, b"*-1\r\n"), (3, b"_\r\n")], ids=["resp2", "resp3"])
async def test_exec_null_reply_after_a_watched_key_changed_is_forwarded(
    host: FakeHost, proto: int, null: bytes
) -> None:
    ka = host.key_on("a")
    c = host.client()
    if proto == 3:
        c.send([b"HELLO", b"3"])
        c.take()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "a")
    if proto == 3:
        assert lconn.take() == cmd("HELLO", "3")  # a RESP3 lease for a RESP3 client
        lconn.answer(HELLO3_REPLY)
        await settle()
    assert lconn.take() == cmd("WATCH", ka)
    lconn.answer(OK)
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])
    await settle()
    assert lconn.take() == tx(cmd("SET", ka, "1"))
    lconn.answer(acks(1) + null)
    assert c.take() == OK + OK + QUEUED + null
    assert results(host) == {"watch_aborted": 1}


async def test_unwatch_resets_the_lease_and_gives_it_back(host: FakeHost) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "a")
    lease = the_lease(host, "a")
    c.send([b"UNWATCH"])
    await settle()
    assert lconn.take() == cmd("WATCH", ka)  # the RESET waits for the WATCH's reply
    lconn.answer(OK)
    await settle()
    assert c.take() == OK + OK
    assert c.session.mode is None
    assert lconn.take() == cmd("RESET")  # RESP2, no password: RESET, no handshake after
    assert host.primary("a").leases.idle == []  # not lendable until the reset is answered
    lconn.answer(b"+RESET\r\n")
    await settle()
    assert host.primary("a").leases.idle == [lease]
    c.send([b"GET", ka])  # normal mode: the shared pipeline
    await settle()
    (shared,) = [x for x in host.server("a").conns if x is not lconn]
    assert shared.received == cmd("GET", ka)
    assert lconn.take() == b""


async def test_unwatch_without_watch_is_ok(host: FakeHost) -> None:
    c = host.client()
    c.send([b"UNWATCH"])
    assert c.take() == OK
    assert nothing_sent(host)


async def test_exec_and_discard_without_multi_while_watching_keep_watching(
    host: FakeHost,
) -> None:
    ka, ka2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"WATCH", ka], [b"EXEC"], [b"DISCARD"], [b"GET", ka2])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.received == cmd("WATCH", ka) + cmd("GET", ka2)  # the GET still on the lease
    lconn.answer(OK + b"$-1\r\n")
    assert c.take() == (
        OK + b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n" + b"$-1\r\n"
    )
    assert c.session.mode is not None and c.session.mode.name == WATCHING


async def test_multi_and_unwatch_with_arguments_while_watching_are_arity_errors(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI", b"x"], [b"UNWATCH", b"x"])  # normal mode: as Redis
    assert c.take() == (
        b"-ERR wrong number of arguments for 'multi' command\r\n"
        b"-ERR wrong number of arguments for 'unwatch' command\r\n"
    )
    c.send([b"WATCH", ka])
    await settle()
    lease_conn(host, "a").answer(OK)
    assert c.take() == OK
    c.send([b"MULTI", b"x"])  # watching: the same errors, still watching
    assert c.take() == b"-ERR wrong number of arguments for 'multi' command\r\n"
    assert c.session.mode is not None and c.session.mode.name == WATCHING
    c.send([b"UNWATCH", b"x"])
    assert c.take() == b"-ERR wrong number of arguments for 'unwatch' command\r\n"
    assert c.session.mode is not None and c.session.mode.name == WATCHING


async def test_hello_3_while_watching_gets_resp3_replies_from_the_watched_shard(
    host: FakeHost,
) -> None:
    """The lease was taken in RESP2 by the first WATCH; a client that then switches to RESP3
    (HELLO 3) must not get the watched shard's replies in RESP2 (HGETALL as a flat array, a
    null as ``*-1``) while every other shard answers it in RESP3."""
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka], [b"HELLO", b"3"], [b"HGETALL", ka])
    await settle()
    for x in host.server("a").conns:
        if x.received == cmd("HELLO", "3"):  # the lease, still connecting, shakes hands in RESP3
            x.answer(b"%1\r\n+proto\r\n:3\r\n")
    await settle()
    if c.session.proto == 3:  # HELLO 3 was accepted
        (conn,) = [x for x in host.server("a").conns if cmd("HGETALL", ka) in x.received]
        before = conn.received.split(cmd("HGETALL", ka))[0]
        assert cmd("HELLO", "3") in before, "HGETALL of a RESP3 client sent on a RESP2 lease"


async def test_hello_3_on_a_connected_lease_switches_it_and_keeps_the_watch(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "a")
    assert lconn.take() == cmd("WATCH", ka)
    lconn.answer(OK)
    c.send([b"HELLO", b"3"], [b"HGETALL", ka])
    await settle()
    # HELLO (not RESET) on the lease: the protocol changes, the watched keys stay watched
    assert lconn.take() == cmd("HELLO", "3") + cmd("HGETALL", ka)
    lconn.answer(HELLO3_REPLY + b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n")
    out = c.take()
    assert out.startswith(OK) and out.endswith(b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n")
    assert HELLO3_REPLY not in out  # the lease's HELLO reply is the proxy's, not the client's
    assert the_lease(host, "a").proto == 3


async def test_reset_while_watching_resets_the_lease(host: FakeHost) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "a")
    lconn.answer(OK)
    c.send([b"RESET"])
    await settle()
    assert c.take() == OK + b"+RESET\r\n"
    assert c.session.mode is None
    assert lconn.take() == cmd("WATCH", ka) + cmd("RESET")


async def test_client_leaving_mid_transaction_after_watch_resets_the_lease(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"HELLO", b"3"])
    c.take()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "a")
    lease = the_lease(host, "a")
    assert lconn.take() == cmd("HELLO", "3")
    lconn.answer(HELLO3_REPLY)
    await settle()
    assert lconn.take() == cmd("WATCH", ka)
    lconn.answer(OK)
    c.send([b"MULTI"], [b"SET", ka, b"1"])
    assert c.take() == OK + OK + QUEUED
    c.hang_up()
    await settle()
    # nothing of the transaction was sent; the lease is reset: RESET, then the handshake
    assert lconn.take() == cmd("RESET") + cmd("HELLO", "3")
    assert lconn.writes[-1] == cmd("RESET") + cmd("HELLO", "3")  # in one write
    assert host.primary("a").leases.idle == []
    lconn.answer(b"+RESET\r\n" + HELLO3_REPLY)
    await settle()
    assert host.primary("a").leases.idle == [lease] and lease.state == READY
    assert results(host) == {"discarded": 1}
    assert len(host.registry) == 0


async def test_client_leaving_while_watching_resets_the_lease(host: FakeHost) -> None:
    ka = host.key_on("b")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    lconn = lease_conn(host, "b")
    c.hang_up()
    await settle()
    assert lconn.take() == cmd("WATCH", ka)  # the reset waits for the WATCH's reply
    lconn.answer(OK)
    await settle()
    assert lconn.take() == cmd("RESET")
    assert c.transport.writes_after_close == []  # the WATCH's reply was dropped


# -- what fails --------------------------------------------------------------------------------


async def test_lease_limit_answers_tryagain_for_exec_and_watch(make_host: MakeHost) -> None:
    host = make_host(settings=BackendSettings(max_leases=1))
    ka, ka2 = host.keys_on("a", 2)
    holder = host.client()
    holder.send([b"WATCH", ka])  # holds a's one lease
    await settle()
    limit = errors.reply("lease_limit", shard="a", node=A_PRIMARY, limit=1)
    assert limit == (
        b"-TRYAGAIN shard a: all 1 dedicated connections to node 10.0.0.1:6379 are in use\r\n"
    )
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka2, b"1"], [b"EXEC"])
    await settle()
    assert c.take() == OK + QUEUED + limit
    assert c.session.mode is None
    c.send([b"WATCH", ka2])
    await settle()
    assert c.take() == limit
    assert c.session.mode is None
    assert host.server("a").conn.received == cmd("WATCH", ka)  # only the holder's
    assert results(host) == {"failed": 1}


async def test_lease_lost_before_exec_is_answered_names_the_shard_and_resends_nothing(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])
    await settle()
    conn = host.server("a").conn
    assert conn.take() == tx(cmd("SET", ka, "1"))
    conn.answer(acks(1))  # MULTI and SET acknowledged; EXEC's reply never comes
    conn.hang_up()
    await settle()
    assert c.take() == OK + QUEUED + errors.reply(
        "shard_closed", shard="a", node=A_PRIMARY, detail="connection closed by server"
    )
    await settle()
    assert host.server("a").conns == [conn]  # no new connection: never sent again
    assert conn.take() == b""
    assert host.primary("a").leases.open_count() == 0  # the lease is gone
    assert results(host) == {"failed": 1}


async def test_watch_lease_lost_before_exec_answers_an_error_and_sends_nothing(
    host: FakeHost,
) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    conn = host.server("a").conn
    conn.answer(OK)
    conn.hang_up()  # the watched connection is gone: the WATCH with it
    await settle()
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])
    await settle()
    assert c.take() == OK + OK + QUEUED + errors.reply(
        "shard_unavailable", shard="a", node=A_PRIMARY, detail="connection closed by server"
    )
    assert host.server("a").conns == [conn]
    assert conn.take() == cmd("WATCH", ka)  # nothing after the WATCH, anywhere
    assert results(host) == {"failed": 1}


async def test_lease_timeout_before_exec_is_answered_names_the_shard(
    make_host: MakeHost,
) -> None:
    host = make_host(settings=BackendSettings(command_timeout=0.05))
    ka = host.key_on("a")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])
    await settle()
    conn = host.server("a").conn
    await wait_until(lambda: conn.transport.closed)
    await settle()
    assert c.take() == OK + QUEUED + errors.reply("shard_timeout", shard="a", node=A_PRIMARY, ms=50)
    assert host.server("a").conns == [conn]  # never sent again
    assert conn.received == tx(cmd("SET", ka, "1"))
    assert host.primary("a").leases.open_count() == 0
    assert results(host) == {"failed": 1}


async def test_watch_refused_by_a_down_node_can_be_retried_once_it_is_back(
    host: FakeHost,
) -> None:
    """The first WATCH's lease never connected, so nothing is watched; the client is told
    -TRYAGAIN. Trying again once the node is back must reach it, not fail forever on the dead
    lease (a lease never reconnects) until the client happens to send UNWATCH."""
    ka = host.key_on("a")
    host.server("a").refuse = True
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    assert c.take() == errors.reply(
        "shard_unavailable", shard="a", node=A_PRIMARY, detail="Connection refused"
    )
    host.server("a").refuse = False
    c.send([b"WATCH", ka])
    await settle()
    assert host.server("a").received == cmd("WATCH", ka)


async def test_failover_between_watch_and_exec_runs_nothing(make_host: MakeHost) -> None:
    host = make_host(replicas=1)
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    old = host.server("a").conn
    old.answer(OK)
    shard = host.shard("a")
    promoted = shard.replicas[0]
    # what a failover does (control/failover.py): in place, the shard keeps its ring place
    switch_primary(cast("MutableShard", shard), promoted)
    assert host.primary("a") is promoted

    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])
    await settle()
    assert c.take() == OK + OK + QUEUED + errors.reply(
        "tx_primary_changed", shard="a", node=A_PRIMARY
    )
    assert c.take() == b""
    assert host.net.server_of(promoted).received == b""  # nothing on the new primary
    assert old.take() == cmd("WATCH", ka) + cmd("RESET")  # the old lease is only reset
    assert results(host) == {"failed": 1}


async def test_after_a_failover_the_watched_shard_is_routed_normally(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1)
    ka = host.key_on("a")
    c = host.client()
    c.send([b"WATCH", ka])
    await settle()
    old = host.server("a").conn
    old.answer(OK)
    shard = host.shard("a")
    promoted = shard.replicas[0]
    switch_primary(cast("MutableShard", shard), promoted)
    c.send([b"GET", ka])
    await settle()
    assert host.net.server_of(promoted).conn.received == cmd("GET", ka)
    assert old.take() == cmd("WATCH", ka)  # not on the lease to the demoted node


# -- per-shard transactions (transactions.cross_shard: per-shard) ------------------------------


async def test_per_shard_exec_runs_one_transaction_per_shard_merged_in_order(
    make_host: MakeHost,
) -> None:
    host = make_host(per_shard_transactions=True)
    a1, a2 = host.keys_on("a", 2)
    b1 = host.key_on("b")
    c = host.client()
    c.send(
        [b"MULTI"],
        [b"SET", a1, b"1"],
        [b"SET", b1, b"2"],
        [b"GET", a2],
        [b"PING"],  # keyless: goes with the first shard
        [b"INCR", b1],
        [b"EXEC"],
    )
    await settle()
    assert c.take() == OK + QUEUED * 5
    a, b = lease_conn(host, "a"), lease_conn(host, "b")
    assert a.writes == [tx(cmd("SET", a1, "1"), cmd("GET", a2), cmd("PING"))]
    assert b.writes == [tx(cmd("SET", b1, "2"), cmd("INCR", b1))]
    b.answer(acks(2) + b"*2\r\n+OK\r\n:3\r\n")
    assert c.take() == b""
    a.answer(acks(3) + b"*3\r\n+OK\r\n$1\r\nx\r\n+PONG\r\n")
    assert c.take() == b"*5\r\n+OK\r\n+OK\r\n$1\r\nx\r\n+PONG\r\n:3\r\n"
    await settle()
    assert host.primary("a").leases.idle and host.primary("b").leases.idle
    assert a.take() == tx(cmd("SET", a1, "1"), cmd("GET", a2), cmd("PING"))  # no RESET after
    assert results(host) == {"committed": 1}


async def test_per_shard_exec_puts_a_failed_shards_error_at_its_positions(
    make_host: MakeHost,
) -> None:
    host = make_host(per_shard_transactions=True)
    a1 = host.key_on("a")
    b1, b2 = host.keys_on("b", 2)
    c = host.client()
    c.send([b"MULTI"], [b"SET", b1, b"1"], [b"SET", a1, b"2"], [b"GET", b2], [b"EXEC"])
    await settle()
    a, b = lease_conn(host, "a"), lease_conn(host, "b")
    assert b.received == tx(cmd("SET", b1, "1"), cmd("GET", b2))
    assert a.received == tx(cmd("SET", a1, "2"))
    a.answer(acks(1) + b"*1\r\n+OK\r\n")
    b.answer(acks(2))
    b.hang_up()
    await settle()
    err = errors.reply(
        "shard_closed", shard="b", node=B_PRIMARY, detail="connection closed by server"
    )
    assert c.take() == OK + QUEUED * 3 + b"*3\r\n" + err + b"+OK\r\n" + err
    assert results(host) == {"failed": 1}


async def test_per_shard_exec_with_a_shard_answering_execabort(make_host: MakeHost) -> None:
    host = make_host(per_shard_transactions=True)
    a1, b1 = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"MULTI"], [b"SET", a1, b"1"], [b"INCR", b1], [b"EXEC"])
    await settle()
    lease_conn(host, "a").answer(acks(1) + b"*1\r\n+OK\r\n")
    lease_conn(host, "b").answer(OK + b"-ERR some refusal\r\n" + EXECABORT)
    assert c.take() == OK + QUEUED * 2 + b"*2\r\n+OK\r\n" + EXECABORT


async def test_per_shard_exec_without_a_free_lease_runs_nothing(make_host: MakeHost) -> None:
    host = make_host(per_shard_transactions=True, settings=BackendSettings(max_leases=1))
    a1, b1 = host.key_on("a"), host.key_on("b")
    b2 = host.keys_on("b", 2)[1]
    holder = host.client()
    holder.send([b"WATCH", b2])  # b's one lease
    await settle()
    c = host.client()
    c.send([b"MULTI"], [b"SET", a1, b"1"], [b"SET", b1, b"1"], [b"EXEC"])
    await settle()
    assert c.take() == OK + QUEUED * 2 + errors.reply(
        "lease_limit", shard="b", node=B_PRIMARY, limit=1
    )
    assert host.server("a").received == b""  # a's lease was taken, nothing written on it
    assert host.server("b").received == cmd("WATCH", b2)
    await settle()
    assert host.primary("a").leases.leased == set()  # given back, as it was
    assert len(host.primary("a").leases.idle) == 1
    assert results(host) == {"failed": 1}


# -- counters ----------------------------------------------------------------------------------


async def test_transaction_counters(host: FakeHost) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])  # committed
    await settle()
    lease_conn(host, "a").answer(acks(1) + b"*1\r\n+OK\r\n")
    c.send([b"MULTI"], [b"NOSUCH"], [b"EXEC"])  # aborted
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"SET", kb, b"1"], [b"EXEC"])  # cross-shard
    c.send([b"MULTI"], [b"DISCARD"])  # discarded
    c.send([b"MULTI"], [b"SET", ka, b"1"], [b"EXEC"])  # Redis refuses it at EXEC: aborted
    await settle()
    lease_conn(host, "a").answer(acks(1) + EXECABORT)
    c.send([b"MULTI"])  # discarded when the client leaves
    c.hang_up()
    await settle()
    assert host.stats.transactions_started == 6
    assert host.stats.transactions == {
        "committed": 1,
        "watch_aborted": 0,
        "aborted": 2,
        "cross_shard_refused": 1,
        "discarded": 2,
        "failed": 0,
    }


# -- leases given back by transactions ---------------------------------------------------------


async def test_lease_released_clean_with_exec_outstanding_goes_back_once_answered(
    host: FakeHost,
) -> None:
    c = host.client()
    lease = host.primary("a").leases.acquire(2, c.session.push_consumer())
    assert lease is not None
    await settle()
    conn = host.server("a").conn
    slot = QueuedReply(None, 0, 0.0)
    lease.send(cmd("EXEC"), slot)
    lease.release(clean=True)
    await settle()
    assert conn.take() == cmd("EXEC")
    assert lease.holder is None
    assert host.primary("a").leases.idle == []  # still answering
    conn.answer(b"*0\r\n")
    assert reply_of(slot) == b"*0\r\n"
    await settle()
    assert host.primary("a").leases.idle == [lease]
    assert conn.take() == b""  # clean: no RESET


async def test_lease_released_with_a_reply_outstanding_waits_then_resets(
    host: FakeHost,
) -> None:
    lease = host.primary("a").leases.acquire(2, None)
    assert lease is not None
    await settle()
    conn = host.server("a").conn
    slot = QueuedReply(None, 0, 0.0)
    lease.send(cmd("WATCH", "k"), slot)
    lease.release()
    await settle()
    assert conn.take() == cmd("WATCH", "k")  # no RESET before the WATCH is answered
    assert not conn.transport.closed
    conn.answer(OK)
    assert reply_of(slot) == OK
    await settle()
    assert conn.take() == cmd("RESET")
    conn.answer(b"+RESET\r\n")
    await settle()
    assert host.primary("a").leases.idle == [lease]


async def test_lease_released_while_connecting_is_reset_once_connected(
    make_host: MakeHost,
) -> None:
    host = make_host(settings=BackendSettings(password="pw"))
    lease = host.primary("a").leases.acquire(2, None)
    assert lease is not None
    lease.release()
    assert lease.state != CLOSED
    await settle()
    conn = host.server("a").conn
    assert conn.take() == cmd("AUTH", "pw")  # the handshake first
    conn.answer(OK)
    await settle()
    assert conn.take() == cmd("RESET") + cmd("AUTH", "pw")
    conn.answer(b"+RESET\r\n" + OK)
    await settle()
    assert host.primary("a").leases.idle == [lease]


# -- scripts: routing ------------------------------------------------------------------------

BODY = b"return redis.call('GET', KEYS[1])"
SHA = sha1_hex(BODY)


def noscript() -> bytes:
    return b"-NOSCRIPT No matching script. Please use EVAL.\r\n"


@pytest.mark.parametrize("name", [b"EVAL", b"EVALSHA", b"FCALL"])
async def test_scripts_go_to_the_primary_of_their_keys_shard(host: FakeHost, name: bytes) -> None:
    b1, b2 = host.keys_on("b", 2)
    first = SHA if name == b"EVALSHA" else (b"myfn" if name == b"FCALL" else BODY)
    c = host.client()
    c.send([name, first, b"2", b1, b2, b"arg"])
    await settle()
    assert host.server("a").conns == []
    conn = host.server("b").conn
    assert conn.received == cmd(name, first, "2", b1, b2, "arg")
    conn.answer(b":7\r\n")
    assert c.take() == b":7\r\n"


@pytest.mark.parametrize("name", [b"EVAL", b"EVALSHA_RO", b"FCALL"])
async def test_script_keys_on_two_shards_are_crossslot(host: FakeHost, name: bytes) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([name, b"x", b"2", ka, kb])
    await settle()
    assert c.take() == CROSSSLOT
    assert nothing_sent(host)


@pytest.mark.parametrize("name", [b"EVAL", b"FCALL_RO"])
async def test_a_script_with_no_key_runs_where_its_first_argument_hashes(
    host: FakeHost, name: bytes
) -> None:
    bodies = [b"return %d" % i for i in range(20)]
    on = {host.router.ring.shard_name(x) for x in bodies}
    assert on == {"a", "b"}  # the bodies below land on both shards
    c = host.client()
    for body in bodies:
        c.send([name, body, b"0"])
    await settle()
    for shard in ("a", "b"):
        expect = [body for body in bodies if host.router.ring.shard_name(body) == shard]
        assert host.server(shard).conn.requests() == [[name, x, b"0"] for x in expect]


async def test_read_only_scripts_go_to_a_replica_with_prefer_replica(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1, read_policy="prefer-replica")
    ka = host.key_on("a")
    c = host.client()
    c.send(
        [b"EVAL_RO", BODY, b"1", ka],
        [b"EVALSHA_RO", SHA, b"1", ka],
        [b"FCALL_RO", b"f", b"1", ka],
        [b"EVAL", BODY, b"1", ka],  # may write: the primary
    )
    await settle()
    assert host.server("a", replica=0).conn.received == (
        cmd("EVAL_RO", BODY, "1", ka)
        + cmd("EVALSHA_RO", SHA, "1", ka)
        + cmd("FCALL_RO", "f", "1", ka)
    )
    assert host.server("a").conn.received == cmd("EVAL", BODY, "1", ka)


# -- scripts: the script cache of every node ---------------------------------------------------


async def test_script_load_goes_to_every_primary_and_merges_same(host: FakeHost) -> None:
    c = host.client()
    c.send([b"SCRIPT", b"LOAD", BODY])
    await settle()
    a, b = host.server("a").conn, host.server("b").conn
    assert a.received == b.received == cmd("SCRIPT", "LOAD", BODY)
    a.answer(bulk(SHA))
    assert c.take() == b""
    b.answer(bulk(SHA))
    assert c.take() == bulk(SHA)
    assert host.scripts.registry.get(SHA) == BODY


async def test_script_load_answered_differently_is_an_error(host: FakeHost) -> None:
    c = host.client()
    c.send([b"SCRIPT", b"LOAD", BODY])
    await settle()
    host.server("a").conn.answer(bulk(SHA))
    host.server("b").conn.answer(bulk(b"0" * 40))
    assert c.take() == (
        b"-ERR shardproxy could not merge the shard replies: the nodes answered differently\r\n"
    )


async def test_script_load_error_from_one_node_is_the_reply(host: FakeHost) -> None:
    c = host.client()
    c.send([b"SCRIPT", b"LOAD", b"syntax("])
    await settle()
    err = b"-ERR Error compiling script (new function): user_script:1: syntax error\r\n"
    host.server("a").conn.answer(bulk(sha1_hex(b"syntax(")))
    host.server("b").conn.answer(err)
    assert c.take() == err


async def test_script_load_reaches_the_replicas_when_reads_may_go_there(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1, read_policy="prefer-replica")
    c = host.client()
    c.send([b"SCRIPT", b"LOAD", BODY])
    await settle()
    servers = [host.server(s, r) for s in ("a", "b") for r in (-1, 0)]
    for srv in servers:
        assert srv.conn.received == cmd("SCRIPT", "LOAD", BODY)
    for srv in servers[:-1]:
        srv.conn.answer(bulk(SHA))
    assert c.take() == b""
    servers[-1].conn.answer(bulk(SHA))
    assert c.take() == bulk(SHA)


async def test_script_load_skips_the_replicas_with_read_policy_primary(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1)
    c = host.client()
    c.send([b"SCRIPT", b"LOAD", BODY])
    await settle()
    assert host.server("a", replica=0).conns == host.server("b", replica=0).conns == []
    host.server("a").conn.answer(bulk(SHA))
    host.server("b").conn.answer(bulk(SHA))
    assert c.take() == bulk(SHA)


async def test_script_exists_is_the_element_wise_and(host: FakeHost) -> None:
    c = host.client()
    c.send([b"SCRIPT", b"EXISTS", SHA, b"f" * 40, b"e" * 40])
    await settle()
    a, b = host.server("a").conn, host.server("b").conn
    assert a.received == b.received == cmd("SCRIPT", "EXISTS", SHA, "f" * 40, "e" * 40)
    a.answer(b"*3\r\n:1\r\n:0\r\n:1\r\n")
    b.answer(b"*3\r\n:1\r\n:1\r\n:0\r\n")
    assert c.take() == b"*3\r\n:1\r\n:0\r\n:0\r\n"


NOTBUSY = b"-NOTBUSY No scripts in execution right now.\r\n"
UNKILLABLE = (
    b"-UNKILLABLE Sorry the script already executed write commands against the dataset. "
    b"You can either wait the script termination or kill the server in a hard way using "
    b"the SHUTDOWN NOSAVE command.\r\n"
)


@pytest.mark.parametrize(
    "a_reply,b_reply,merged",
    [
        (NOTBUSY, OK, OK),
        (OK, NOTBUSY, OK),
        (NOTBUSY, NOTBUSY, NOTBUSY),
        (NOTBUSY, UNKILLABLE, UNKILLABLE),
    ],
    ids=["b-killed", "a-killed", "none-busy", "unkillable"],
)
async def test_script_kill_merge(
    host: FakeHost, a_reply: bytes, b_reply: bytes, merged: bytes
) -> None:
    c = host.client()
    c.send([b"SCRIPT", b"KILL"])
    await settle()
    assert host.server("a").conn.received == host.server("b").conn.received == cmd("SCRIPT", "KILL")
    host.server("a").conn.answer(a_reply)
    host.server("b").conn.answer(b_reply)
    assert c.take() == merged


# -- scripts: NOSCRIPT recovery ----------------------------------------------------------------


async def load_script(host: FakeHost, body: bytes = BODY) -> None:
    """SCRIPT LOAD through a client of its own, answered by every node."""
    c = host.client()
    c.send([b"SCRIPT", b"LOAD", body])
    await settle()
    for srv in host.net.servers.values():
        for conn in srv.conns:
            if conn.take():
                conn.answer(bulk(sha1_hex(body)))
    assert c.take() == bulk(sha1_hex(body))


async def test_evalsha_noscript_of_a_loaded_script_loads_it_and_runs_it_again(
    host: FakeHost,
) -> None:
    await load_script(host)
    ka = host.key_on("a")
    c = host.client()
    c.send([b"EVALSHA", SHA, b"1", ka])
    await settle()
    conn = host.server("a").conns[-1]
    assert conn.take() == cmd("EVALSHA", SHA, "1", ka)
    conn.answer(noscript())
    await settle()
    assert c.take() == b""  # the client never sees the first NOSCRIPT
    assert conn.take() == cmd("SCRIPT", "LOAD", BODY) + cmd("EVALSHA", SHA, "1", ka)
    assert host.server("b").conns[-1].take() == b""  # a's nodes only
    conn.answer(bulk(SHA) + b"$1\r\nv\r\n")
    assert c.take() == b"$1\r\nv\r\n"
    assert host.stats.noscript_recoveries == 1


async def test_a_script_seen_in_eval_is_recovered_too(host: FakeHost) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"EVAL", BODY, b"1", ka])
    await settle()
    conn = host.server("a").conn
    assert conn.take() == cmd("EVAL", BODY, "1", ka)
    conn.answer(b"$-1\r\n")
    c.send([b"evalsha", SHA.upper(), b"1", ka])  # any case, as Redis accepts
    await settle()
    assert conn.take() == cmd("evalsha", SHA.upper(), "1", ka)
    conn.answer(noscript())
    await settle()
    assert conn.take() == cmd("SCRIPT", "LOAD", BODY) + cmd("evalsha", SHA.upper(), "1", ka)
    conn.answer(bulk(SHA) + b":1\r\n")
    assert c.take() == b"$-1\r\n:1\r\n"


async def test_noscript_recovery_loads_on_every_node_of_the_shard(
    make_host: MakeHost,
) -> None:
    host = make_host(replicas=1, read_policy="prefer-replica")
    await load_script(host)
    ka = host.key_on("a")
    c = host.client()
    c.send([b"EVALSHA_RO", SHA, b"1", ka])
    await settle()
    replica = host.server("a", replica=0).conns[-1]
    primary = host.server("a").conns[-1]
    assert replica.take() == cmd("EVALSHA_RO", SHA, "1", ka)
    replica.answer(noscript())
    await settle()
    assert primary.take() == cmd("SCRIPT", "LOAD", BODY)
    assert replica.take() == cmd("SCRIPT", "LOAD", BODY) + cmd("EVALSHA_RO", SHA, "1", ka)
    primary.answer(bulk(SHA))
    replica.answer(bulk(SHA) + b"$1\r\nr\r\n")
    assert c.take() == b"$1\r\nr\r\n"


async def test_a_second_noscript_is_forwarded(host: FakeHost) -> None:
    await load_script(host)
    kb = host.key_on("b")
    c = host.client()
    c.send([b"EVALSHA", SHA, b"1", kb])
    await settle()
    conn = host.server("b").conns[-1]
    conn.take()
    conn.answer(noscript())
    await settle()
    assert conn.take() == cmd("SCRIPT", "LOAD", BODY) + cmd("EVALSHA", SHA, "1", kb)
    conn.answer(b"-ERR loading failed\r\n" + noscript())
    await settle()
    assert c.take() == noscript()
    assert conn.take() == b""  # no loop
    assert host.stats.noscript_recoveries == 1


async def test_noscript_of_an_unknown_script_is_forwarded(host: FakeHost) -> None:
    ka = host.key_on("a")
    c = host.client()
    c.send([b"EVALSHA", b"a" * 40, b"1", ka])
    await settle()
    conn = host.server("a").conn
    conn.answer(noscript())
    await settle()
    assert c.take() == noscript()
    assert conn.received == cmd("EVALSHA", "a" * 40, "1", ka)
    assert host.stats.noscript_recoveries == 0


async def test_script_flush_through_the_proxy_forgets_the_scripts(host: FakeHost) -> None:
    await load_script(host)
    assert len(host.scripts.registry) == 1
    c = host.client()
    c.send([b"SCRIPT", b"FLUSH"])
    await settle()
    for shard in ("a", "b"):
        conn = host.server(shard).conns[-1]
        assert conn.take() == cmd("SCRIPT", "FLUSH")
        conn.answer(OK)
    assert c.take() == OK
    assert len(host.scripts.registry) == 0
    ka = host.key_on("a")
    c.send([b"EVALSHA", SHA, b"1", ka])
    await settle()
    conn = host.server("a").conns[-1]
    assert conn.take() == cmd("EVALSHA", SHA, "1", ka)
    conn.answer(noscript())
    await settle()
    assert c.take() == noscript()  # as Redis after SCRIPT FLUSH
    assert conn.take() == b""


# -- the script registry ---------------------------------------------------------------------


def test_script_registry_is_bounded_in_bytes_least_recently_used_out_first() -> None:
    r = ScriptRegistry(10)
    a, b, c = b"aaaa", b"bbbb", b"cccc"
    assert r.remember(a) == sha1_hex(a)
    r.remember(b)
    assert r.size == 8 and len(r) == 2
    assert r.get(sha1_hex(a)) == a  # a is now the most recently used
    r.remember(c)  # 12 bytes > 10: the least recently used (b) goes
    assert r.get(sha1_hex(b)) is None
    assert r.get(sha1_hex(a)) == a and r.get(sha1_hex(c)) == c
    assert r.size == 8 and len(r) == 2
    r.remember(c)  # known already: not counted twice
    assert r.size == 8
    assert r.get(sha1_hex(c).upper()) == c  # Redis takes SHAs in any case
    assert r.remember(b"x" * 11) == sha1_hex(b"x" * 11)  # larger than the whole registry
    assert r.get(sha1_hex(b"x" * 11)) is None and r.size == 8 and len(r) == 2
    r.clear()
    assert r.size == 0 and len(r) == 0 and r.get(sha1_hex(a)) is None


def test_sha1_hex_is_redis_lower_case_hex() -> None:
    assert sha1_hex(b"return 1") == b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    assert encode.bulk(sha1_hex(b"")) == b"$40\r\nda39a3ee5e6b4b0d3255bfef95601890afd80709\r\n"
