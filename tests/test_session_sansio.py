"""Client sessions, sans-IO: real ClientSession, router, nodes and pipelines; fake sockets.

Every test asserts the exact bytes a client or a node saw (harness: ``tests/sansio.py``).
"""

from __future__ import annotations

from shardproxy.backend.connection import DOWN, READY, BackendSettings
from shardproxy.protocol import encode, errors
from shardproxy.session.queue import QueuedReply
from tests.sansio import (
    HELLO3_REPLY,
    FakeHost,
    Limits,
    MakeHost,
    bulk,
    cmd,
    settle,
    wait_until,
)

WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


# -- ordering and fan-out --------------------------------------------------------------------


async def test_replies_leave_in_request_order_across_shards(host: FakeHost) -> None:
    ka, kb = host.key_on("a"), host.key_on("b")
    c = host.client()
    c.send([b"GET", ka], [b"GET", kb])
    await settle()
    a, b = host.server("a").conn, host.server("b").conn
    assert a.received == cmd("GET", ka)
    assert b.received == cmd("GET", kb)

    b.answer(b"$2\r\nvb\r\n")
    assert c.writes == []  # the first request is still unanswered
    a.answer(b"$2\r\nva\r\n")
    assert c.writes == [b"$2\r\nva\r\n$2\r\nvb\r\n"]  # both, in request order, one write
    assert len(c.session.queue) == 0


async def test_replies_of_one_backend_read_leave_in_one_write(host: FakeHost) -> None:
    k1, k2, k3 = host.keys_on("a", 3)
    c = host.client()
    c.send([b"GET", k1], [b"SET", k2, b"v"], [b"INCR", k3])
    await settle()
    conn = host.server("a").conn
    assert conn.writes == [cmd("GET", k1) + cmd("SET", k2, "v") + cmd("INCR", k3)]
    conn.answer(b"$-1\r\n+OK\r\n:7\r\n")
    assert c.writes == [b"$-1\r\n+OK\r\n:7\r\n"]


async def test_mget_splits_per_shard_and_merges_in_key_order(host: FakeHost) -> None:
    a1, a2 = host.keys_on("a", 2)
    b1, b2 = host.keys_on("b", 2)
    c = host.client()
    c.send([b"MGET", a1, b1, a2, b2])
    await settle()
    a, b = host.server("a").conn, host.server("b").conn
    assert a.received == cmd("MGET", a1, a2)
    assert b.received == cmd("MGET", b1, b2)

    b.answer(b"*2\r\n$2\r\nB1\r\n$-1\r\n")
    assert c.writes == []
    a.answer(b"*2\r\n$2\r\nA1\r\n$2\r\nA2\r\n")
    assert c.writes == [b"*4\r\n$2\r\nA1\r\n$2\r\nB1\r\n$2\r\nA2\r\n$-1\r\n"]


async def test_mget_on_one_shard_is_forwarded_as_is(host: FakeHost) -> None:
    a1, a2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"mget", a1, a2])
    await settle()
    assert host.server("a").conn.received == cmd("mget", a1, a2)
    assert host.net.server_of(host.primary("b")).conns == []
    host.server("a").conn.answer(b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n")
    assert c.received == b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n"


async def test_del_across_shards_sums(host: FakeHost) -> None:
    a1, a2 = host.keys_on("a", 2)
    (b1,) = host.keys_on("b", 1)
    c = host.client()
    c.send([b"DEL", b1, a1, a2], [b"PING"])
    await settle()
    a, b = host.server("a").conn, host.server("b").conn
    assert a.received == cmd("DEL", a1, a2)
    assert b.received == cmd("DEL", b1)
    a.answer(b":2\r\n")
    assert c.writes == []
    b.answer(b":1\r\n")
    assert c.writes == [b":3\r\n+PONG\r\n"]  # the merged reply, then the PING behind it


async def test_fanout_error_names_the_first_failing_shard(host: FakeHost) -> None:
    (a1,) = host.keys_on("a", 1)
    (b1,) = host.keys_on("b", 1)
    c = host.client()
    c.send([b"DEL", a1, b1])
    await settle()
    host.server("b").conn.answer(b"-ERR b is sad\r\n")
    host.server("a").conn.answer(b":1\r\n")
    assert c.received == b"-ERR b is sad\r\n"


# -- backpressure ----------------------------------------------------------------------------


async def test_backpressure_pauses_over_the_limit_and_resumes_at_half(
    make_host: MakeHost,
) -> None:
    host = make_host(limits=Limits(max_pending_per_client=4))
    keys = host.keys_on("a", 5)
    c = host.client()
    c.send(*[[b"GET", k] for k in keys])  # 5 outstanding > 4
    assert c.transport.reading is False
    assert c.transport.pauses == 1
    await settle()
    conn = host.server("a").conn
    assert conn.requests() == [[b"GET", k] for k in keys]

    conn.answer(b"$1\r\n0\r\n$1\r\n1\r\n")  # 3 left: above half (2)
    assert c.writes == [b"$1\r\n0\r\n$1\r\n1\r\n"]
    assert c.transport.reading is False
    conn.answer(b"$1\r\n2\r\n")  # 2 left: at half, reading resumes
    assert c.transport.reading is True
    assert c.transport.resumes == 1
    conn.answer(b"$1\r\n3\r\n$1\r\n4\r\n")
    assert c.received == b"".join(b"$1\r\n%d\r\n" % i for i in range(5))
    assert (c.transport.pauses, c.transport.resumes) == (1, 1)


async def test_backpressure_at_the_limit_does_not_pause(make_host: MakeHost) -> None:
    host = make_host(limits=Limits(max_pending_per_client=4))
    c = host.client()
    c.send(*[[b"GET", k] for k in host.keys_on("a", 4)])
    assert c.transport.reading is True
    assert c.transport.pauses == 0


# -- a client leaving ------------------------------------------------------------------------


async def test_client_leaving_mid_pipeline_does_not_desync_the_shared_pipeline(
    host: FakeHost,
) -> None:
    k1, k2, k3 = host.keys_on("a", 3)
    gone, stays = host.client(), host.client()
    gone.send([b"GET", k1], [b"GET", k2])
    stays.send([b"GET", k3])
    await settle()
    conn = host.server("a").conn  # one shared pipeline carries both clients
    assert conn.requests() == [[b"GET", k1], [b"GET", k2], [b"GET", k3]]

    outstanding = list(gone.session.queue)
    gone.hang_up()
    assert gone.session.transport is None
    assert len(gone.session.queue) == 0
    assert [slot.session for slot in outstanding] == [None, None]  # detached
    assert len(host.registry) == 1

    conn.answer(b"$2\r\nv1\r\n")  # read and dropped
    conn.answer(b"$2\r\nv2\r\n$2\r\nv3\r\n")
    assert gone.writes == [] and gone.transport.writes_after_close == []
    assert stays.writes == [b"$2\r\nv3\r\n"]
    pipeline = host.primary("a").connection(2, stays.session.id)
    assert pipeline.state == READY
    assert len(pipeline.pending) == 0
    assert len(host.server("a").conns) == 1  # no reconnect was needed

    stays.send([b"GET", k1])
    await settle()
    conn.answer(b"$2\r\nv1\r\n")
    assert stays.take() == b"$2\r\nv3\r\n$2\r\nv1\r\n"


async def test_client_leaving_with_a_fanout_outstanding(host: FakeHost) -> None:
    (a1,) = host.keys_on("a", 1)
    (b1,) = host.keys_on("b", 1)
    gone, stays = host.client(), host.client()
    gone.send([b"MGET", a1, b1])
    await settle()
    gone.hang_up()
    stays.send([b"GET", b1])
    await settle()
    host.server("a").conn.answer(b"*1\r\n$1\r\nx\r\n")
    host.server("b").conn.answer(b"*1\r\n$1\r\ny\r\n$1\r\nz\r\n")
    assert gone.writes == []
    assert stays.writes == [b"$1\r\nz\r\n"]


# -- read replicas ---------------------------------------------------------------------------


async def test_replica_read_is_retried_on_the_primary_when_the_replica_fails(
    make_host: MakeHost,
) -> None:
    host = make_host("a", replicas=1, read_policy="prefer-replica")
    k = host.key_on("a")
    c = host.client()
    c.send([b"GET", k])
    await settle()
    replica = host.server("a", replica=0).conn
    assert replica.received == cmd("GET", k)
    assert host.server("a").conns == []
    replica.hang_up()  # lost before the reply
    await settle()
    primary = host.server("a").conn
    assert primary.received == cmd("GET", k)
    assert c.writes == []
    primary.answer(b"$1\r\np\r\n")
    assert c.writes == [b"$1\r\np\r\n"]


async def test_replica_reads_retried_on_a_primary_that_is_down_fail_at_once_in_order(
    make_host: MakeHost,
) -> None:
    host = make_host("a", replicas=1, read_policy="prefer-replica")
    host.server("a").refuse = True
    k1, k2 = host.keys_on("a", 2)
    c = host.client()
    c.send([b"SET", k1, b"v"])  # the primary's pipeline tries to connect, and is DOWN
    await settle()
    assert c.take().startswith(b"-")
    c.send([b"GET", k1], [b"GET", k2])
    await settle()
    replica = host.server("a", replica=0).conn
    assert replica.received == cmd("GET", k1) + cmd("GET", k2)
    replica.hang_up()  # both lost: each is retried once, on a primary that fails it at once
    await settle()
    replies = c.take()
    assert replies.count(b"\r\n") == 2 and replies.startswith(b"-")  # two errors, nothing else
    assert all(b"shard a" in line for line in replies.split(b"\r\n")[:2]), replies
    assert host.server("a").conns == [] or host.server("a").conn.received == b""


async def test_replica_write_goes_to_the_primary_and_is_never_retried(
    make_host: MakeHost,
) -> None:
    host = make_host("a", replicas=1, read_policy="prefer-replica")
    k = host.key_on("a")
    c = host.client()
    c.send([b"SET", k, b"v"])
    await settle()
    primary = host.server("a").conn
    assert primary.received == cmd("SET", k, "v")
    primary.hang_up()
    await settle()
    assert c.received == errors.reply(
        "shard_closed",
        shard="a",
        node="10.0.0.1:6379",
        detail="connection closed by server",
    )
    assert host.server("a").conn.received == cmd("SET", k, "v")  # sent once
    assert host.server("a", replica=0).conns == []


async def test_replica_refusing_connections_sends_the_read_to_the_primary(
    make_host: MakeHost,
) -> None:
    host = make_host("a", replicas=1, read_policy="prefer-replica")
    host.server("a", replica=0).refuse = True
    k = host.key_on("a")
    c = host.client()
    c.send([b"GET", k])
    await settle()
    assert host.server("a").conn.received == cmd("GET", k)
    host.server("a").conn.answer(b"$1\r\np\r\n")
    assert c.writes == [b"$1\r\np\r\n"]


async def test_read_your_writes_sends_reads_after_a_write_to_the_primary(
    make_host: MakeHost,
) -> None:
    host = make_host("a", replicas=1, read_policy="prefer-replica", read_your_writes=60.0)
    k = host.key_on("a")
    reader, writer = host.client(), host.client()
    reader.send([b"GET", k])
    writer.send([b"SET", k, b"v"], [b"GET", k])
    await settle()
    assert host.server("a", replica=0).conn.received == cmd("GET", k)  # the reader's
    assert host.server("a").conn.received == cmd("SET", k, "v") + cmd("GET", k)  # the writer's


# (MULTI, EXEC, WATCH and scripts: tests/test_transaction_sansio.py)


# -- AUTH / HELLO without client authentication ------------------------------------------------


async def test_auth_without_client_auth_configured(host: FakeHost) -> None:
    c = host.client()
    c.send([b"AUTH", b"default", b"x"])
    assert c.take() == b"+OK\r\n"
    c.send([b"AUTH", b"bob", b"x"])
    assert c.take() == WRONGPASS
    c.send([b"AUTH", b"x"])
    assert c.take() == (
        b"-ERR AUTH <password> called without any password configured for the default user. "
        b"Are you sure your configuration is correct?\r\n"
    )
    c.send([b"AUTH", b"a", b"b", b"c"])
    assert c.take() == b"-ERR syntax error\r\n"
    assert host.net.total_received() == b""


async def test_hello_auth_as_another_user_is_refused_and_keeps_resp2(host: FakeHost) -> None:
    c = host.client()
    c.send([b"HELLO", b"3", b"AUTH", b"bob", b"x"])
    assert c.take() == WRONGPASS
    assert c.session.proto == 2
    c.send([b"CLIENT", b"GETNAME"])
    assert c.take() == b"$-1\r\n"  # a RESP2 null: still RESP2
    c.send([b"HELLO", b"3", b"AUTH", b"default", b"x", b"SETNAME", b"app"])
    reply = c.take()
    assert reply.startswith(b"%8\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in reply
    assert c.session.proto == 3 and c.session.name == b"app"
    c.send([b"CLIENT", b"GETNAME"])
    assert c.take() == b"$3\r\napp\r\n"


async def test_resp3_client_gets_resp3_pipelines(host: FakeHost) -> None:
    k = host.key_on("a")
    c = host.client()
    c.send([b"HELLO", b"3"], [b"GET", k])
    await settle()
    conn = host.server("a").conn
    assert conn.writes == [cmd("HELLO", "3")]  # the RESP3 pipeline's handshake first
    conn.answer(b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    await settle()
    assert conn.writes == [cmd("HELLO", "3"), cmd("GET", k)]
    conn.answer(b"_\r\n")
    assert c.received.endswith(b"_\r\n")


# -- pushes from a leased connection -----------------------------------------------------------

PUSH = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"


async def test_push_reaches_the_client_before_the_reply_it_preceded(host: FakeHost) -> None:
    c = host.client()
    s = c.session
    node = host.primary("a")
    lease = node.leases.acquire(3, s.push_consumer())
    assert lease is not None
    slot = QueuedReply(s, 0, 0.0)
    s.queue.append(slot)
    lease.send(cmd("SUBSCRIBE", "ch"), slot)
    await settle()
    conn = host.server("a").conn
    assert conn.writes == [cmd("HELLO", "3")]
    conn.answer(HELLO3_REPLY)
    await settle()
    assert conn.take() == cmd("HELLO", "3") + cmd("SUBSCRIBE", "ch")

    conn.answer(PUSH + b"+OK\r\n")
    assert c.writes == [PUSH + b"+OK\r\n"]  # the push first, then the reply, one write
    assert len(s.queue) == 0


async def test_push_with_nothing_pending_never_overtakes_earlier_replies(
    host: FakeHost,
) -> None:
    kb = host.key_on("b")
    c = host.client()
    s = c.session
    c.send([b"GET", kb])  # unanswered, on b's shared pipeline
    lease = host.primary("a").leases.acquire(3, s.push_consumer())
    assert lease is not None
    await settle()
    lconn = host.server("a").conn
    lconn.answer(HELLO3_REPLY)
    await settle()

    lconn.answer(PUSH)  # nothing pending on the lease: queued after the GET
    assert c.writes == []
    c.send([b"PING"])  # after the push
    assert c.writes == []
    host.server("b").conn.answer(b"$1\r\nv\r\n")
    assert c.writes == [b"$1\r\nv\r\n" + PUSH + b"+PONG\r\n"]


async def test_push_for_a_client_that_left_is_dropped(host: FakeHost) -> None:
    c = host.client()
    lease = host.primary("a").leases.acquire(3, c.session.push_consumer())
    assert lease is not None
    await settle()
    conn = host.server("a").conn
    conn.answer(HELLO3_REPLY)
    await settle()
    c.hang_up()
    conn.answer(PUSH)
    assert c.writes == [] and c.transport.writes_after_close == []
    assert len(c.session.queue) == 0


# -- the rest of a session's life ------------------------------------------------------------


async def test_quit_answers_then_closes_after_earlier_replies(host: FakeHost) -> None:
    k = host.key_on("a")
    c = host.client()
    c.send([b"GET", k], [b"QUIT"], [b"PING"])  # nothing after QUIT is read
    await settle()
    assert host.server("a").conn.received == cmd("GET", k)
    assert c.writes == [] and not c.transport.closed
    host.server("a").conn.answer(b"$1\r\nv\r\n")
    assert c.writes == [b"$1\r\nv\r\n+OK\r\n"]
    assert c.transport.closed
    await settle(2)
    assert len(host.registry) == 0


async def test_protocol_error_answers_and_closes(host: FakeHost) -> None:
    c = host.client()
    c.send_raw(cmd("PING") + b"*1\r\n$x\r\n")
    assert c.received == b"+PONG\r\n" + errors.reply("protocol", detail="invalid bulk length")
    assert c.transport.closed


async def test_client_refused_over_max_clients(make_host: MakeHost) -> None:
    host = make_host(limits=Limits(max_clients=1))
    host.client()
    c2 = host.client()
    assert c2.received == b"-ERR max number of clients reached\r\n"
    assert c2.transport.closed
    assert c2.session.transport is None
    assert host.stats.connections_rejected == 1


async def test_down_node_fails_at_once_naming_the_shard(host: FakeHost) -> None:
    host.server("b").refuse = True
    kb = host.key_on("b")
    c = host.client()
    c.send([b"GET", kb])
    await settle()
    detail = "Connection refused"
    assert c.received == errors.reply(
        "shard_unavailable", shard="b", node="10.0.1.1:6379", detail=detail
    )
    c.send([b"GET", kb])  # DOWN: fails at once, no queueing
    assert c.take().endswith(
        errors.reply("shard_unavailable", shard="b", node="10.0.1.1:6379", detail=detail)
    )
    assert host.primary("b").usable is False


async def test_info_merges_the_keyspace_of_every_shard(host: FakeHost) -> None:
    c = host.client()
    c.send([b"INFO", b"keyspace"])
    await settle()
    for name, n in (("a", 3), ("b", 4)):
        conn = host.server(name).conn
        assert conn.received == cmd("INFO", "keyspace")
        conn.answer(bulk(f"# Keyspace\r\ndb0:keys={n},expires=1,avg_ttl=0\r\n"))
    assert host.telemetry.keyspaces == [{"db0": {"keys": 7, "expires": 2}}]
    assert c.received == encode.bulk(b"# Keyspace\r\ndb0:keys=7,expires=2\r\n")


# -- a node that answers more than it was asked ------------------------------------------------


async def test_extra_reply_from_a_node_still_delivers_the_replies_before_it(
    make_host: MakeHost,
) -> None:
    """Replies read in the same batch before a reply nobody asked for are good: the client
    must get them; and the client must not be left marked as already flushed (``dirty``),
    which would stop every later backend reply from reaching it."""
    host = make_host(settings=BackendSettings(backoff_min=0.01))
    k1, k2, k3 = host.keys_on("a", 3)
    c = host.client()
    c.send([b"GET", k1], [b"GET", k2])
    await settle()
    first = host.server("a").conn
    first.answer(b"$1\r\nA\r\n$1\r\nB\r\n:1\r\n")  # three replies for two requests
    assert c.writes == [b"$1\r\nA\r\n$1\r\nB\r\n"]
    assert first.transport.aborted  # the pipeline cannot be trusted any more
    await settle()
    pipeline = host.primary("a").connection(2, c.session.id)
    await wait_until(lambda: pipeline.state == READY)  # reconnected
    c.send([b"GET", k3])
    await settle()
    second = host.server("a").conns[1]
    assert second.received == cmd("GET", k3)
    second.answer(b"$1\r\nC\r\n")
    assert c.take() == b"$1\r\nA\r\n$1\r\nB\r\n$1\r\nC\r\n"


async def test_extra_reply_on_a_lease_still_delivers_the_replies_before_it(
    host: FakeHost,
) -> None:
    c = host.client()
    s = c.session
    lease = host.primary("a").leases.acquire(2, s.push_consumer())
    assert lease is not None
    await settle()
    conn = host.server("a").conn
    slot = QueuedReply(s, 0, 0.0)
    s.queue.append(slot)
    lease.send(cmd("PING"), slot)
    await settle()
    conn.answer(b"+PONG\r\n+PONG\r\n")  # two replies for one request
    assert c.writes == [b"+PONG\r\n"]
    assert lease.state == DOWN
    assert s.dirty is False
