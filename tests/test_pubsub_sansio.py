"""Pub/sub, sans-IO: real ClientSession, PubSub registry, PubSubCommands, SubscribedMode,
SubscriberConnections, router, nodes and pipelines; fake sockets (harness: ``tests/sansio.py``).
The specs are ``shardproxy/session/pubsub.py``, ``shardproxy/session/subscribed.py`` and
``shardproxy/backend/subscriber.py``.

Every channel and pattern is subscribed once on every shard primary, on the proxy's own RESP2
subscriber connection (made when the first client subscribes); a client's SUBSCRIBE is
confirmed once every one of those connections answered the PING written after it. Every test
asserts the exact bytes a client or a node saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest

from shardproxy.backend.connection import DOWN, BackendSettings
from shardproxy.control.failover import MutableShard, switch_primary
from shardproxy.routing.ring import Ring
from shardproxy.routing.router import Router
from shardproxy.session.modes import SUBSCRIBED
from shardproxy.session.pubsub import CHANNEL, PATTERN, SHARD, TICK_S
from tests.sansio import (
    HELLO3_REPLY,
    Arg,
    FakeClient,
    FakeHost,
    MakeHost,
    ServerConn,
    bulk,
    cmd,
    conn_of,
    nothing_sent,
    parse_requests,
    settle,
    wait_until,
)

PING = cmd("PING")
PONG = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"  # PING's answer on a subscribed RESP2 connection


def conf(word: str, name: Arg | None, count: int, proto: int = 2) -> bytes:
    """A (p|s)(un)subscribe confirmation, as the client gets it."""
    head = b">3\r\n" if proto == 3 else b"*3\r\n"
    if name is None:
        null = b"_\r\n" if proto == 3 else b"$-1\r\n"
        return head + bulk(word) + null + b":%d\r\n" % count
    return head + bulk(word) + bulk(name) + b":%d\r\n" % count


def message(channel: Arg, payload: Arg) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n" + bulk(channel) + bulk(payload)


def pmessage(pattern: Arg, channel: Arg, payload: Arg) -> bytes:
    return b"*4\r\n$8\r\npmessage\r\n" + bulk(pattern) + bulk(channel) + bulk(payload)


def smessage(channel: Arg, payload: Arg) -> bytes:
    return b"*3\r\n$8\r\nsmessage\r\n" + bulk(channel) + bulk(payload)


def push(frame: bytes) -> bytes:
    """A RESP2 pub/sub array as a RESP3 client gets it."""
    assert frame[:1] == b"*"
    return b">" + frame[1:]


def cant_execute(name: str) -> bytes:
    return (
        b"-ERR Can't execute '" + name.encode() + b"': only (P|S)SUBSCRIBE / "
        b"(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    )


def sub_conn(host: FakeHost, shard: str, index: int = 0) -> ServerConn:
    """The server side of the proxy's subscriber connection number ``index`` to ``shard``'s
    primary (as it is now: a reconnect makes a new one)."""
    up = host.hub.upstreams[shard]
    transport = up.conns[index].transport
    assert transport is not None, f"shard {shard}: subscriber connection {index} not connected"
    return conn_of(host, up.node, transport)


def pipeline_conn(host: FakeHost, shard_index: int, c: FakeClient) -> ServerConn:
    """The server side of the shared pipeline ``c``'s requests to a shard travel on."""
    node = host.router.shards[shard_index].primary
    transport = node.connection(c.session.proto, c.session.id).transport
    assert transport is not None
    return conn_of(host, node, transport)


def node_answers(s: ServerConn) -> bytes:
    """What a Redis node answers to what the proxy wrote on its subscriber connection since
    the last take(): a confirmation per name (the node's counts, which the proxy drops), and a
    ``pong`` per PING."""
    out: list[bytes] = []
    for argv in parse_requests(s.take()):
        verb = argv[0].lower()
        if verb == b"ping":
            out.append(PONG)
            continue
        for i, name in enumerate(argv[1:], 1):
            out.append(b"*3\r\n" + bulk(verb) + bulk(name) + b":%d\r\n" % i)
    return b"".join(out)


def answer_all(host: FakeHost) -> None:
    """Every subscriber connection's node answers what it was sent."""
    for up in host.hub.upstreams.values():
        for c in up.conns:
            if c.transport is not None:
                s = conn_of(host, up.node, c.transport)
                data = node_answers(s)
                if data:
                    s.answer(data)


async def subscribe(c: FakeClient, *argv: Arg) -> bytes:
    """``c`` sends a (p|s)subscribe; the nodes answer; what ``c`` got since its last take."""
    host = c.host
    c.send(argv)
    await settle()
    answer_all(host)
    await settle()
    return c.take()


async def hello3(c: FakeClient) -> None:
    c.send([b"HELLO", b"3"])
    await settle()
    assert c.take().startswith(b"%")


def mode_name(c: FakeClient) -> str | None:
    mode = c.session.mode
    return None if mode is None else mode.name


def other_shard(host: FakeHost, name: str) -> str:
    (other,) = [s.name for s in host.router.shards if s.name != name]
    return other


def shard_of(host: FakeHost, channel: bytes) -> tuple[int, str]:
    i = host.router.shard_index(channel)
    return i, host.router.shards[i].name


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def hosts(make_host: MakeHost) -> AsyncIterator[MakeHost]:
    """``make_host``, and at the end every client gone and the registry reconciled: nothing is
    subscribed, so every subscriber connection is closed and the tick stops (Node.close does
    not close them)."""
    made: list[FakeHost] = []

    def make(*names: str, **kw: Any) -> FakeHost:
        h = make_host(*names, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        for c in h.clients:
            if not c.transport.lost:
                c.hang_up()
        h.hub.reconcile()
    await settle(2)


@pytest.fixture
async def host(hosts: MakeHost) -> FakeHost:
    """A FakeHost with shards "a" and "b"."""
    return hosts()


# -- 1. SUBSCRIBE and its confirmation ---------------------------------------------------------


async def test_subscribe_is_confirmed_once_every_primary_answered_its_ping(
    host: FakeHost,
) -> None:
    c = host.client()
    c.send([b"SUBSCRIBE", b"a", b"b"])
    await settle()
    assert sorted(host.hub.upstreams) == ["a", "b"]
    subs = {name: sub_conn(host, name) for name in ("a", "b")}
    for name, s in subs.items():
        assert host.server(name).conns == [s]  # the subscriber connection, and nothing else
        assert s.writes == [cmd("SUBSCRIBE", "a", "b") + PING]  # in one write
        s.take()
    assert c.received == b""

    node_confs = (
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
    )
    subs["a"].answer(node_confs + PONG)
    await settle()
    assert c.received == b""  # b's PING is still unanswered
    subs["b"].answer(node_confs)
    await settle()
    assert c.received == b""  # the confirmations are the node's, not the barrier
    subs["b"].answer(PONG)
    assert c.writes == [
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
    ]
    assert mode_name(c) == SUBSCRIBED
    assert host.hub.upstreams["a"].conns[0].confirmations == 2
    await settle()
    assert subs["a"].take() == subs["b"].take() == b""  # nothing more went upstream


async def test_requests_after_a_subscribe_wait_for_its_confirmation(host: FakeHost) -> None:
    c = host.client()
    c.send([b"SUBSCRIBE", b"a"], [b"PING"], [b"GET", b"k"], [b"PING", b"x"])
    await settle()
    assert c.received == b""
    answer_all(host)
    assert c.writes == [
        conf("subscribe", "a", 1) + PONG + cant_execute("get") + b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n"
    ]


async def test_subscribing_again_counts_each_name_once(host: FakeHost) -> None:
    c = host.client()
    assert await subscribe(c, "SUBSCRIBE", "a", "a") == (
        conf("subscribe", "a", 1) + conf("subscribe", "a", 1)
    )
    assert await subscribe(c, "PSUBSCRIBE", "p*", "a") == (
        conf("psubscribe", "p*", 2) + conf("psubscribe", "a", 3)
    )
    assert await subscribe(c, "SUBSCRIBE", "a", "b") == (
        conf("subscribe", "a", 3) + conf("subscribe", "b", 4)
    )


async def test_a_resp3_client_gets_its_confirmations_as_pushes(host: FakeHost) -> None:
    c = host.client()
    await hello3(c)
    assert await subscribe(c, "SUBSCRIBE", "a", "b") == (
        conf("subscribe", "a", 1, 3) + conf("subscribe", "b", 2, 3)
    )
    assert mode_name(c) is None  # a RESP3 client stays in its mode


async def test_two_subscriber_connections_per_primary_share_the_names_by_hash(
    hosts: MakeHost,
) -> None:
    host = hosts(pubsub_connections=2)
    by_slot: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(64):
        name = b"n%d" % i
        by_slot[hash(name) % 2].append(name)
        if len(by_slot[0]) >= 2 and len(by_slot[1]) >= 2:
            break
    names = by_slot[0][:2] + by_slot[1][:2]
    c = host.client()
    c.send([b"SUBSCRIBE", *names])
    await settle()
    for shard in ("a", "b"):
        assert len(host.server(shard).conns) == 2
        for j in (0, 1):
            assert sub_conn(host, shard, j).take() == cmd("SUBSCRIBE", *by_slot[j][:2]) + PING
    sub_conn(host, "a", 0).answer(PONG)
    sub_conn(host, "a", 1).answer(PONG)
    sub_conn(host, "b", 0).answer(PONG)
    assert c.received == b""  # every connection that carries one of them
    sub_conn(host, "b", 1).answer(PONG)
    assert c.take() == b"".join(conf("subscribe", n.decode(), i + 1) for i, n in enumerate(names))

    c.send([b"SUBSCRIBE", by_slot[1][0]])  # already subscribed: only its connection's PING
    await settle()
    for shard in ("a", "b"):
        assert sub_conn(host, shard, 0).take() == b""
        assert sub_conn(host, shard, 1).take() == PING
        sub_conn(host, shard, 1).answer(PONG)
    assert c.take() == conf("subscribe", by_slot[1][0].decode(), 4)
    frame = message(by_slot[0][1], "x")
    sub_conn(host, "b", 0).answer(frame)
    assert c.take() == frame


# -- 2. messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("proto", [2, 3])
async def test_a_message_from_any_primary_reaches_the_client_whole(
    host: FakeHost, proto: int
) -> None:
    c = host.client()
    if proto == 3:
        await hello3(c)
    await subscribe(c, "SUBSCRIBE", "news")
    for shard in ("a", "b"):
        frame = message("news", f"from {shard}")
        sub_conn(host, shard).answer(frame)
        assert c.writes[-1] == (frame if proto == 2 else push(frame))
    assert c.take() == (
        message("news", "from a") + message("news", "from b")
        if proto == 2
        else push(message("news", "from a")) + push(message("news", "from b"))
    )
    assert host.stats.pubsub_messages == 2


@pytest.mark.parametrize("proto", [2, 3])
async def test_a_pmessage_reaches_the_pattern_subscriber_whole(host: FakeHost, proto: int) -> None:
    c = host.client()
    if proto == 3:
        await hello3(c)
    got = await subscribe(c, "PSUBSCRIBE", "news.*")
    assert got == conf("psubscribe", "news.*", 1, proto)
    assert sub_conn(host, "a").received == cmd("PSUBSCRIBE", "news.*") + PING
    frame = pmessage("news.*", "news.art", "hello")
    sub_conn(host, "b").answer(frame)
    assert c.take() == (frame if proto == 2 else push(frame))


async def test_a_message_nobody_local_wants_is_dropped(host: FakeHost) -> None:
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    await subscribe(c, "PSUBSCRIBE", "p*")
    s = sub_conn(host, "a")
    # another channel; a pattern message for a pattern not subscribed (its channel matches
    # p*, but Redis sends one pmessage per pattern: ours comes on its own)
    s.answer(message("zz", "x") + pmessage("q*", "pq", "x") + message("a", "yes"))
    assert c.writes[-1] == message("a", "yes")
    assert c.take() == message("a", "yes")
    assert host.stats.pubsub_messages == 1


async def test_messages_of_one_read_leave_in_one_write_and_split_frames_are_joined(
    host: FakeHost,
) -> None:
    c1, c3 = host.client(), host.client()
    await hello3(c3)
    await subscribe(c1, "SUBSCRIBE", "a")
    await subscribe(c3, "SUBSCRIBE", "a")
    s = sub_conn(host, "b")
    m1, m2 = message("a", "one"), message("a", "two" * 20)
    n1, n3 = len(c1.writes), len(c3.writes)
    s.answer(m1 + m2[:9])  # m2 cut inside its header
    assert c1.writes[n1:] == [m1]
    assert c3.writes[n3:] == [push(m1)]
    s.answer(m2[9:30])
    assert len(c1.writes) == n1 + 1  # half a frame is never written
    s.answer(m2[30:] + m1)
    assert c1.writes[n1:] == [m1, m2 + m1]
    assert c3.writes[n3:] == [push(m1), push(m2) + push(m1)]


# -- 3. reference counting -------------------------------------------------------------------


async def test_two_subscribers_of_a_channel_subscribe_it_upstream_once(host: FakeHost) -> None:
    c1, c2 = host.client(), host.client()
    await subscribe(c1, "SUBSCRIBE", "a")
    subs = [sub_conn(host, "a"), sub_conn(host, "b")]
    for s in subs:
        assert s.received == cmd("SUBSCRIBE", "a") + PING

    c2.send([b"SUBSCRIBE", b"a"])
    await settle()
    for s in subs:
        assert s.take() == PING  # only the barrier: a is in effect already
    assert c2.received == b""
    for s in subs:
        s.answer(PONG)
    assert c2.take() == conf("subscribe", "a", 1)
    assert set(host.hub.interest[CHANNEL][b"a"]) == {c1.session.subs, c2.session.subs}

    c1.send([b"UNSUBSCRIBE", b"a"])
    await settle()
    assert c1.take() == conf("unsubscribe", "a", 0)
    for s in subs:
        assert s.take() == b""  # c2 still wants it
    c2.send([b"UNSUBSCRIBE", b"a"])
    await settle()
    assert c2.take() == conf("unsubscribe", "a", 0)
    for s in subs:
        assert s.take() == cmd("UNSUBSCRIBE", "a")  # the last one: upstream, unconfirmed
    assert host.hub.interest == [{}, {}, {}]
    assert mode_name(c1) is None and mode_name(c2) is None


async def test_a_client_leaving_counts_as_unsubscribing(host: FakeHost) -> None:
    c1, c2 = host.client(), host.client()
    await subscribe(c1, "SUBSCRIBE", "a", "b")
    await subscribe(c2, "SUBSCRIBE", "b")
    await subscribe(c2, "PSUBSCRIBE", "p*")
    subs = [sub_conn(host, "a"), sub_conn(host, "b")]
    c1.hang_up()
    await settle()
    for s in subs:
        assert s.take() == cmd("UNSUBSCRIBE", "a")  # b: c2 still wants it
    c2.hang_up()
    await settle()
    for s in subs:
        assert s.take() == cmd("UNSUBSCRIBE", "b") + cmd("PUNSUBSCRIBE", "p*")
    assert host.hub.interest == [{}, {}, {}]
    assert host.hub.subscribed == {}


async def test_the_subscriber_connections_close_once_nothing_is_subscribed(
    host: FakeHost,
) -> None:
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    old = [sub_conn(host, "a"), sub_conn(host, "b")]
    c.send([b"UNSUBSCRIBE"])
    await settle()
    assert c.take() == conf("unsubscribe", "a", 0)
    for s in old:
        assert s.take() == cmd("UNSUBSCRIBE", "a")
    await wait_until(lambda: all(s.transport.closed for s in old), timeout=4 * TICK_S)
    assert host.hub.upstreams == {}
    assert all(n.subscribers == [] for n in host.nodes)

    # subscribing again opens new ones
    assert await subscribe(c, "SUBSCRIBE", "z") == conf("subscribe", "z", 1)
    for name in ("a", "b"):
        (fresh,) = host.server(name).open_conns()
        assert fresh.received == cmd("SUBSCRIBE", "z") + PING


# -- 4. RESP2 subscribed mode ----------------------------------------------------------------


async def test_resp2_subscribed_mode_allows_only_pubsub_ping_quit_reset(host: FakeHost) -> None:
    k = host.key_on("a")
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a", "b")
    assert mode_name(c) == SUBSCRIBED

    c.send([b"GET", k])
    assert c.take() == cant_execute("get")
    c.send([b"SET", k, b"v"])
    assert c.take() == cant_execute("set")
    c.send([b"PUBSUB", b"NUMPAT"])
    assert c.take() == cant_execute("pubsub|numpat")
    c.send([b"PING"])
    assert c.take() == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    c.send([b"PING", b"x"])
    assert c.take() == b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n"
    c.send([b"FOO"])
    assert c.take() == b"-ERR unknown command 'FOO', with args beginning with: \r\n"
    c.send([b"FOO", b"bar"])
    assert c.take() == b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n"
    c.send([b"GET"])
    assert c.take() == b"-ERR wrong number of arguments for 'get' command\r\n"
    await settle()
    assert all(n.connections() == [] for n in host.nodes)  # no pipeline was ever opened

    c.send([b"UNSUBSCRIBE"])
    await settle()
    assert c.take() == conf("unsubscribe", "a", 1) + conf("unsubscribe", "b", 0)
    assert mode_name(c) is None
    for name in ("a", "b"):
        assert sub_conn(host, name).take() == cmd("UNSUBSCRIBE", "a", "b")

    c.send([b"GET", k])  # normal mode again: forwarded
    await settle()
    p = pipeline_conn(host, host.router.shard_index(k), c)
    assert p.received == cmd("GET", k)
    p.answer(b"$1\r\nv\r\n")
    assert c.take() == b"$1\r\nv\r\n"


async def test_resp2_stays_subscribed_while_a_pattern_is_left(host: FakeHost) -> None:
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    await subscribe(c, "PSUBSCRIBE", "p*")
    c.send([b"UNSUBSCRIBE", b"a"], [b"GET", b"k"])
    assert c.take() == conf("unsubscribe", "a", 1) + cant_execute("get")
    assert mode_name(c) == SUBSCRIBED
    c.send([b"PUNSUBSCRIBE"], [b"PING"])
    assert c.take() == conf("punsubscribe", "p*", 0) + b"+PONG\r\n"
    assert mode_name(c) is None


async def test_reset_while_subscribed_unsubscribes_upstream(host: FakeHost) -> None:
    k = host.key_on("b")
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    await subscribe(c, "PSUBSCRIBE", "p*")
    c.send([b"RESET"])
    await settle()
    assert c.take() == b"+RESET\r\n"
    assert mode_name(c) is None
    assert c.session.subs is not None and c.session.subs.total() == 0
    for name in ("a", "b"):
        assert sub_conn(host, name).take() == cmd("UNSUBSCRIBE", "a") + cmd("PUNSUBSCRIBE", "p*")
    assert host.hub.interest == [{}, {}, {}]
    sub_conn(host, "a").answer(message("a", "late"))  # in flight before the UNSUBSCRIBE
    assert c.received.endswith(b"+RESET\r\n")

    c.send([b"GET", k])
    await settle()
    p = pipeline_conn(host, host.router.shard_index(k), c)
    assert p.received == cmd("GET", k)
    p.answer(b"$-1\r\n")
    assert c.take() == b"$-1\r\n"


async def test_quit_while_subscribed_says_ok_and_unsubscribes(host: FakeHost) -> None:
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    c.send([b"QUIT"])
    await settle()
    assert c.take() == b"+OK\r\n"
    assert c.transport.closed
    for name in ("a", "b"):
        assert sub_conn(host, name).take() == cmd("UNSUBSCRIBE", "a")


# -- 5. RESP3: commands and messages interleaved -----------------------------------------------


async def test_hello_2_while_subscribed_enters_the_subscribed_context_and_hello_3_leaves_it(
    host: FakeHost,
) -> None:
    k = host.key_on("a")
    c = host.client()
    await hello3(c)
    await subscribe(c, "SUBSCRIBE", "ch")
    c.send([b"HELLO", b"2"])
    await settle()
    c.take()
    assert mode_name(c) == "subscribed"
    c.send([b"GET", k])
    await settle()
    assert c.take() == cant_execute("get")
    c.send([b"RESET"])
    await settle()
    assert c.take() == b"+RESET\r\n"
    assert mode_name(c) is None and not host.hub.subscribed


async def test_resp3_subscriber_runs_commands_and_messages_never_split_replies(
    host: FakeHost,
) -> None:
    k = host.key_on("a")
    c = host.client()
    await hello3(c)
    await subscribe(c, "SUBSCRIBE", "ch")

    c.send([b"GET", k])  # forwarded as usual: no subscribed mode in RESP3
    await settle()
    p = pipeline_conn(host, host.router.shard_index(k), c)
    assert p.take() == cmd("HELLO", "3")
    p.answer(HELLO3_REPLY)
    await settle()
    assert p.take() == cmd("GET", k)

    m1, m2, m3 = message("ch", "m1"), message("ch", "m2"), message("ch", "m3")
    n = len(c.writes)
    sub_conn(host, "b").answer(m1)  # while GET is outstanding: behind its reply
    assert len(c.writes) == n
    p.answer(b"$5\r\nhel")  # half the reply
    sub_conn(host, "a").answer(m2)
    assert len(c.writes) == n
    p.answer(b"lo\r\n")
    assert c.writes[n:] == [b"$5\r\nhello\r\n" + push(m1) + push(m2)]  # whole frames, one write

    sub_conn(host, "a").answer(m3)  # nothing outstanding: at once
    assert c.writes[-1] == push(m3)

    c.send([b"GET", k])
    await settle()
    assert p.take() == cmd("GET", k)
    p.answer(b"$1\r\nv\r\n")
    sub_conn(host, "b").answer(m1)  # after the reply: after it
    assert c.writes[-2:] == [b"$1\r\nv\r\n", push(m1)]
    assert c.take() == (
        b"$5\r\nhello\r\n" + push(m1) + push(m2) + push(m3) + b"$1\r\nv\r\n" + push(m1)
    )


# -- 6. UNSUBSCRIBE with nothing subscribed --------------------------------------------------


@pytest.mark.parametrize("proto", [2, 3])
@pytest.mark.parametrize("verb", ["unsubscribe", "punsubscribe", "sunsubscribe"])
async def test_unsubscribe_with_nothing_subscribed(host: FakeHost, proto: int, verb: str) -> None:
    c = host.client()
    if proto == 3:
        await hello3(c)
    c.send([verb.upper()])
    await settle()
    literal = {
        2: b"*3\r\n$%d\r\n%s\r\n$-1\r\n:0\r\n",
        3: b">3\r\n$%d\r\n%s\r\n_\r\n:0\r\n",
    }[proto] % (len(verb), verb.encode())
    if verb == "unsubscribe":
        assert literal == (
            b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
            if proto == 2
            else b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"
        )
    assert c.take() == literal
    c.send([verb.upper(), b"x"])
    await settle()
    assert c.take() == conf(verb, "x", 0, proto)
    assert mode_name(c) is None
    assert nothing_sent(host)
    assert host.hub.subscribed == {}


# -- 7. shard channels -------------------------------------------------------------------------


async def test_ssubscribe_goes_to_the_shard_of_the_channel_only(host: FakeHost) -> None:
    _, owner = shard_of(host, b"c")
    other = other_shard(host, owner)
    c = host.client()
    c.send([b"SSUBSCRIBE", b"c"])
    await settle()
    assert sub_conn(host, owner).writes == [cmd("SSUBSCRIBE", "c") + PING]
    sub_conn(host, owner).take()
    assert sub_conn(host, other).received == b""  # connected, nothing to subscribe there
    assert c.received == b""
    sub_conn(host, owner).answer(b"*3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n" + PONG)
    assert c.take() == b"*3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n"
    assert mode_name(c) == SUBSCRIBED
    assert host.hub.shard_of == {b"c": owner}

    frame = smessage("c", "hi")
    sub_conn(host, owner).answer(frame)
    assert c.take() == frame

    c.send([b"SUNSUBSCRIBE", b"c"])
    await settle()
    assert c.take() == conf("sunsubscribe", "c", 0)
    assert sub_conn(host, owner).take() == cmd("SUNSUBSCRIBE", "c")
    assert sub_conn(host, other).received == b""
    assert host.hub.shard_of == {}
    assert mode_name(c) is None


async def test_shard_channels_are_counted_apart_from_channels(host: FakeHost) -> None:
    c = host.client()
    assert await subscribe(c, "SUBSCRIBE", "x") == conf("subscribe", "x", 1)
    assert await subscribe(c, "SSUBSCRIBE", "c") == conf("ssubscribe", "c", 1)
    assert await subscribe(c, "SSUBSCRIBE", "c", "d") == (
        conf("ssubscribe", "c", 1) + conf("ssubscribe", "d", 2)
    )
    assert await subscribe(c, "PSUBSCRIBE", "y*") == conf("psubscribe", "y*", 2)
    c.send([b"SUNSUBSCRIBE", b"d"], [b"UNSUBSCRIBE", b"x"])
    assert c.take() == conf("sunsubscribe", "d", 1) + conf("unsubscribe", "x", 1)


async def test_ssubscribe_of_channels_on_both_shards_waits_for_both(host: FakeHost) -> None:
    ca, cb = host.key_on("a", prefix="s"), host.key_on("b", prefix="s")
    assert shard_of(host, ca)[1] == "a" and shard_of(host, cb)[1] == "b"
    c = host.client()
    c.send([b"SSUBSCRIBE", ca, cb])
    await settle()
    assert sub_conn(host, "a").take() == cmd("SSUBSCRIBE", ca) + PING
    assert sub_conn(host, "b").take() == cmd("SSUBSCRIBE", cb) + PING
    sub_conn(host, "a").answer(PONG)
    assert c.received == b""
    sub_conn(host, "b").answer(PONG)
    assert c.take() == conf("ssubscribe", ca, 1) + conf("ssubscribe", cb, 2)


# -- 8. PUBLISH ------------------------------------------------------------------------------


async def test_publish_goes_to_the_channels_shard_with_the_count_adjusted(
    host: FakeHost,
) -> None:
    i, owner = shard_of(host, b"ch")
    other = other_shard(host, owner)
    s1, s2, s3, pub = host.client(), host.client(), host.client(), host.client()

    pub.send([b"PUBLISH", b"ch", b"m"])  # nobody local: the node's count as it is
    await settle()
    p = pipeline_conn(host, i, pub)
    assert p.take() == cmd("PUBLISH", "ch", "m")
    p.answer(b":5\r\n")
    assert pub.take() == b":5\r\n"

    await subscribe(s1, "SUBSCRIBE", "ch")
    pub.send([b"PUBLISH", b"ch", b"m"])
    await settle()
    assert p.take() == cmd("PUBLISH", "ch", "m")  # the ordinary pipeline
    assert host.server(owner).conns == [p, sub_conn(host, owner)]
    assert host.server(other).conns == [sub_conn(host, other)]  # never sent elsewhere
    p.answer(b":1\r\n")  # the proxy's own subscriber connection
    assert pub.take() == b":1\r\n"  # -> the one local subscriber

    await subscribe(s2, "SUBSCRIBE", "ch")
    pub.send([b"PUBLISH", b"ch", b"m"])
    await settle()
    assert p.take() == cmd("PUBLISH", "ch", "m")
    p.answer(b":2\r\n")  # one direct subscriber + the proxy
    assert pub.take() == b":3\r\n"  # one direct + two local

    await subscribe(s3, "PSUBSCRIBE", "c*")
    pub.send([b"PUBLISH", b"ch", b"m"])
    await settle()
    p.answer(b":3\r\n")  # one direct + the proxy's channel and pattern subscriptions
    assert pub.take() == b":4\r\n"  # one direct + three local

    pub.send([b"PUBLISH", b"ch", b"m"])
    await settle()
    p.answer(b"-ERR nope\r\n")
    assert pub.take() == b"-ERR nope\r\n"


async def test_spublish_goes_to_the_shard_channels_shard_with_the_count_adjusted(
    host: FakeHost,
) -> None:
    cb = host.key_on("b", prefix="s")
    i, owner = shard_of(host, cb)
    assert owner == "b"
    s1, s2, pub = host.client(), host.client(), host.client()
    await subscribe(s1, "SSUBSCRIBE", cb)
    await subscribe(s2, "SSUBSCRIBE", cb)
    pub.send([b"SPUBLISH", cb, b"m"])
    await settle()
    p = pipeline_conn(host, i, pub)
    assert p.take() == cmd("SPUBLISH", cb, "m")
    assert host.server("a").conns == [sub_conn(host, "a")]
    p.answer(b":1\r\n")  # the proxy's subscriber connection
    assert pub.take() == b":2\r\n"


async def test_pubsub_introspection_counts_the_proxys_clients_once(host: FakeHost) -> None:
    c1, c2, q = host.client(), host.client(), host.client()
    await subscribe(c1, "SUBSCRIBE", "a")
    await subscribe(c2, "SUBSCRIBE", "a")
    await subscribe(c2, "PSUBSCRIBE", "p*")
    shards = range(len(host.router.shards))

    q.send([b"PUBSUB", b"NUMSUB", b"a", b"x"])
    await settle()
    for i in shards:
        p = pipeline_conn(host, i, q)
        assert p.take() == cmd("PUBSUB", "NUMSUB", "a", "x")
    # shard 0: the proxy alone; shard 1: the proxy and one direct subscriber of each
    pipeline_conn(host, 0, q).answer(b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nx\r\n:0\r\n")
    assert q.received == b""
    pipeline_conn(host, 1, q).answer(b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nx\r\n:1\r\n")
    assert q.take() == b"*4\r\n$1\r\na\r\n:3\r\n$1\r\nx\r\n:1\r\n"

    q.send([b"PUBSUB", b"NUMPAT"])
    await settle()
    for i in shards:
        p = pipeline_conn(host, i, q)
        assert p.take() == cmd("PUBSUB", "NUMPAT")
        p.answer(b":1\r\n")  # the proxy's p*
    assert q.take() == b":1\r\n"

    q.send([b"PUBSUB", b"CHANNELS"])
    await settle()
    pipeline_conn(host, 0, q).answer(b"*1\r\n$1\r\na\r\n")
    pipeline_conn(host, 1, q).answer(b"*2\r\n$1\r\na\r\n$5\r\nother\r\n")
    assert q.take() == b"*2\r\n$1\r\na\r\n$5\r\nother\r\n"

    q.send([b"PUBSUB", b"CHANNELS", b"a", b"b"])
    assert q.take() == (
        b"-ERR unknown subcommand or wrong number of arguments for 'channels'. Try PUBSUB HELP.\r\n"
    )


# -- 9. reconnects and failovers -------------------------------------------------------------


async def test_a_dropped_subscriber_connection_reconnects_with_the_whole_set(
    host: FakeHost,
) -> None:
    _, sa = shard_of(host, b"s")
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a", "b")
    await subscribe(c, "PSUBSCRIBE", "p*")
    await subscribe(c, "SSUBSCRIBE", "s")
    srv = host.server(sa)
    old = sub_conn(host, sa)
    untouched = sub_conn(host, other_shard(host, sa))
    loop = host.loop
    t0 = loop.time()
    old.hang_up()
    await wait_until(lambda: len(srv.conns) == 2, timeout=1.0)
    assert loop.time() - t0 >= host.settings.backoff_min * 0.9
    await settle()
    new = srv.conns[1]
    assert new is sub_conn(host, sa)
    assert new.writes == [
        cmd("SUBSCRIBE", "a", "b") + cmd("PSUBSCRIBE", "p*") + cmd("SSUBSCRIBE", "s")
    ]
    assert untouched.take() == b""
    assert untouched.transport.closed is False
    assert c.take() == b""  # nothing said to the client

    new.answer(node_answers(new) + message("a", "again"))
    assert c.take() == message("a", "again")


async def test_a_failover_moves_the_subscriber_connection_to_the_new_primary(
    hosts: MakeHost,
) -> None:
    host = hosts("a", "b", replicas=1)
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a", "b")
    await subscribe(c, "PSUBSCRIBE", "p*")
    shard = host.shard("a")
    old_primary = shard.primary
    promoted = shard.replicas[0]
    old = sub_conn(host, "a")
    untouched = sub_conn(host, "b")
    assert host.net.server_of(promoted).conns == []  # replicas are never subscribed

    switch_primary(cast("MutableShard", shard), promoted)
    new_srv = host.net.server_of(promoted)
    await wait_until(lambda: len(new_srv.conns) == 1, timeout=4 * TICK_S)
    await settle()
    assert old.transport.closed
    assert old.take() == b""
    assert new_srv.conn.writes == [cmd("SUBSCRIBE", "a", "b") + cmd("PSUBSCRIBE", "p*")]
    assert host.hub.upstreams["a"].node is promoted
    assert old_primary.subscribers == []
    assert untouched.transport.closed is False and untouched.take() == b""

    new_srv.conn.answer(node_answers(new_srv.conn) + pmessage("p*", "pq", "x"))
    assert c.take() == pmessage("p*", "pq", "x")


async def test_a_subscribe_while_a_subscriber_connection_is_down_waits_only_for_the_others(
    hosts: MakeHost,
) -> None:
    host = hosts(settings=BackendSettings(backoff_min=0.3, backoff_max=0.3))
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    down = sub_conn(host, "a")
    down.hang_up()
    await settle()
    assert host.hub.upstreams["a"].conns[0].state == DOWN
    c.send([b"SUBSCRIBE", b"b"])
    await settle()
    assert sub_conn(host, "b").take() == cmd("SUBSCRIBE", "b") + PING
    assert c.received.endswith(conf("subscribe", "a", 1))  # b's PING is outstanding
    c.take()
    sub_conn(host, "b").answer(PONG)
    assert c.take() == conf("subscribe", "b", 2)
    assert down.take() == b""  # nothing written to a connection that is down

    srv = host.server("a")
    host.primary("a").reconnect_now()  # the health check sees the node again: no backoff
    await settle()
    assert len(srv.conns) == 2
    assert srv.conns[1].writes == [cmd("SUBSCRIBE", "a", "b")]  # the whole set, b included


async def test_an_unanswered_ping_drops_the_subscriber_connection(hosts: MakeHost) -> None:
    host = hosts(settings=BackendSettings(command_timeout=0.1))
    c = host.client()
    c.send([b"SUBSCRIBE", b"a"])
    await settle()
    silent, sb = sub_conn(host, "a"), sub_conn(host, "b")
    sb.answer(node_answers(sb))
    assert silent.take() == cmd("SUBSCRIBE", "a") + PING
    loop = host.loop
    t0 = loop.time()
    await wait_until(lambda: c.received != b"", timeout=1.0)
    assert loop.time() - t0 >= 0.09
    assert c.take() == conf("subscribe", "a", 1)  # confirmed: the proxy's set is the truth
    assert silent.transport.aborted
    srv = host.server("a")
    await wait_until(lambda: len(srv.conns) == 2, timeout=1.0)
    await settle()
    assert srv.conns[1].writes == [cmd("SUBSCRIBE", "a")]
    assert sb.take() == b""


async def test_a_reload_that_removes_a_shard_moves_its_shard_channels(host: FakeHost) -> None:
    cb = host.key_on("b", prefix="s")
    c = host.client()
    await subscribe(c, "SSUBSCRIBE", cb)
    await subscribe(c, "SUBSCRIBE", "x")
    sa, sb = sub_conn(host, "a"), sub_conn(host, "b")
    ring = Ring.build([("a", 1)])
    host.router = Router(ring, [host.shard("a")], "primary")
    host.hub.router_changed(host.router)
    await settle()
    assert sb.transport.closed  # the shard left: its subscriber connection is closed
    assert sa.take() == cmd("SSUBSCRIBE", cb)  # the channel's new shard
    assert host.hub.shard_of == {cb: "a"}
    assert list(host.hub.upstreams) == ["a"]
    sa.answer(smessage(cb, "moved"))
    assert c.take() == smessage(cb, "moved")
    c.send([b"SUNSUBSCRIBE"])
    await settle()
    assert c.take() == conf("sunsubscribe", cb.decode(), 0)  # shard channels only
    assert sa.take() == cmd("SUNSUBSCRIBE", cb)


# -- 10. slow subscribers --------------------------------------------------------------------


async def test_a_slow_subscriber_over_the_hard_limit_is_disconnected(
    hosts: MakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = hosts(pubsub_hard_limit=1000)
    slow, fine = host.client(), host.client()
    seen = await subscribe(slow, "SUBSCRIBE", "a", "b")
    await subscribe(fine, "SUBSCRIBE", "a")
    monkeypatch.setattr(slow.transport, "get_write_buffer_size", lambda: 1001)
    frame = message("a", "x")
    sub_conn(host, "a").answer(frame)
    assert slow.take() == frame  # written, then the socket is found over the limit
    assert slow.transport.aborted
    assert fine.take() == frame and not fine.transport.closed
    assert host.stats.pubsub_slow_disconnects == 1
    assert slow.session.subs is not None and slow.session.subs.total() == 0
    assert set(host.hub.interest[CHANNEL]) == {b"a"}  # fine's; b was slow's alone
    assert list(host.hub.interest[CHANNEL][b"a"]) == [fine.session.subs]
    await settle()
    assert slow.transport.lost
    for name in ("a", "b"):
        assert sub_conn(host, name).take() == cmd("UNSUBSCRIBE", "b")

    sub_conn(host, "b").answer(frame)
    assert fine.take() == frame
    assert slow.received == seen + frame and slow.transport.writes_after_close == []
    assert host.stats.pubsub_slow_disconnects == 1


async def test_a_slow_subscriber_at_the_hard_limit_stays(
    hosts: MakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = hosts(pubsub_hard_limit=1000)
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    monkeypatch.setattr(c.transport, "get_write_buffer_size", lambda: 1000)
    sub_conn(host, "a").answer(message("a", "x"))
    assert c.take() == message("a", "x")
    assert not c.transport.closed
    assert host.stats.pubsub_slow_disconnects == 0
    assert list(host.hub.interest[CHANNEL][b"a"]) == [c.session.subs]


async def test_a_slow_subscriber_above_the_soft_limit_for_too_long_is_disconnected(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.hub.soft_limit = 100
    host.hub.soft_seconds = 0.2
    c = host.client()
    await subscribe(c, "SUBSCRIBE", "a")
    await subscribe(c, "PSUBSCRIBE", "p*")
    size = [500]
    monkeypatch.setattr(c.transport, "get_write_buffer_size", lambda: size[0])
    s = sub_conn(host, "a")
    s.answer(message("a", "1"))  # above: the clock starts
    await asyncio.sleep(0.1)
    s.answer(message("a", "2"))
    assert not c.transport.closed
    size[0] = 50  # drained below: the clock stops
    s.answer(message("a", "3"))
    size[0] = 500
    s.answer(message("a", "4"))  # above again: a new clock (message 1 is 100 ms old)
    await asyncio.sleep(0.1)
    s.answer(message("a", "5"))
    assert not c.transport.closed
    await asyncio.sleep(0.12)
    s.answer(message("a", "6"))  # over 200 ms above since message 4
    assert c.transport.aborted
    assert host.stats.pubsub_slow_disconnects == 1
    assert c.take() == b"".join(message("a", str(n)) for n in range(1, 7))
    assert host.hub.interest[CHANNEL] == {} and host.hub.interest[PATTERN] == {}
    assert host.hub.interest[SHARD] == {}
    await settle()
    for name in ("a", "b"):
        assert sub_conn(host, name).take() == cmd("UNSUBSCRIBE", "a") + cmd("PUNSUBSCRIBE", "p*")


# -- the harness's own ends ------------------------------------------------------------------


def _names(argvs: Sequence[list[bytes]]) -> list[bytes]:
    return [a[0] for a in argvs]


async def test_node_answers_mirrors_what_was_sent(host: FakeHost) -> None:
    c = host.client()
    c.send([b"SUBSCRIBE", b"a", b"b"])
    await settle()
    s = sub_conn(host, "a")
    assert _names(s.requests()) == [b"SUBSCRIBE", b"PING"]
    assert node_answers(s) == (
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
        + PONG
    )
    assert node_answers(s) == b""  # taken
