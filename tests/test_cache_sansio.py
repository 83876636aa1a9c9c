"""The near-cache, sans-IO: the exact frames of a fill, and the races a real server cannot be
made to lose on purpose (an invalidation overtaking its fill's reply)."""

from __future__ import annotations

from shardproxy.session.cache import OVERHEAD, NearCache
from tests.sansio import FakeClient, FakeHost, ServerConn, cmd, settle


async def cached(host: FakeHost, shard: str, max_memory: int = 1 << 20) -> NearCache:
    """A host with a near-cache whose node ``shard`` is tracked: as if its invalidation
    connection had said CLIENT ID 7; the RESP2 pipeline then asks CLIENT TRACKING first."""
    cache = NearCache((b"*",), max_memory, 60.0)
    host.cache = cache
    node = host.primary(shard)
    node.tracking_id = 7
    pipe = node.connection(2, 0)
    await settle()
    conn = host.server(shard).conn
    assert conn.take() == cmd("CLIENT", "TRACKING", "on", "REDIRECT", "7", "OPTIN")
    assert not pipe.tracks()  # not before the node said OK
    conn.answer(b"+OK\r\n")
    assert pipe.tracks()
    return cache


async def connected(host: FakeHost, shard: str) -> tuple[FakeClient, ServerConn]:
    """A client, and the connection its requests to ``shard`` arrive on."""
    c = host.client()
    await settle()
    return c, host.server(shard).conn


async def sent(c: FakeClient, conn: ServerConn, *requests: list[bytes]) -> bytes:
    """What ``conn`` received once ``c`` sent ``requests``."""
    c.send(*requests)
    await settle()
    return conn.take()


async def test_a_fill_is_caching_yes_get_pttl_and_the_second_get_is_answered_here(
    host: FakeHost,
) -> None:
    k = host.key_on("a")
    cache = await cached(host, "a")
    c, conn = await connected(host, "a")
    c.send([b"GET", k])
    await settle()
    assert conn.take() == cmd("CLIENT", "CACHING", "yes") + cmd("GET", k) + cmd("PTTL", k)
    conn.answer(b"+OK\r\n$1\r\nv\r\n:-1\r\n")
    assert c.take() == b"$1\r\nv\r\n"
    c.send([b"GET", k])
    await settle()
    assert c.take() == b"$1\r\nv\r\n"
    assert conn.take() == b""  # nothing sent: a hit
    assert (cache.hits, cache.misses) == (1, 1)


async def test_an_invalidation_before_the_fill_returns_spoils_the_fill(host: FakeHost) -> None:
    k = host.key_on("a")
    cache = await cached(host, "a")
    c, conn = await connected(host, "a")
    await sent(c, conn, [b"GET", k])
    cache.invalidate(host.primary("a"), [k])  # the node says k changed: the fill may be old
    conn.answer(b"+OK\r\n$3\r\nold\r\n:-1\r\n")
    assert c.take() == b"$3\r\nold\r\n"  # (the client still gets its reply)
    assert k not in cache.entries
    c.send([b"GET", k])
    await settle()
    assert conn.take().startswith(cmd("CLIENT", "CACHING", "yes"))  # not a hit: a new fill


async def test_a_write_through_the_proxy_drops_the_entry_before_it_is_sent(
    host: FakeHost,
) -> None:
    k = host.key_on("a")
    cache = await cached(host, "a")
    c, conn = await connected(host, "a")
    await sent(c, conn, [b"GET", k])
    conn.answer(b"+OK\r\n$2\r\nv1\r\n:-1\r\n")
    c.take()
    assert k in cache.entries
    c.send([b"SET", k, b"v2"], [b"GET", k])
    await settle()
    assert k not in cache.entries or cache.entries[k].value != b"$2\r\nv1\r\n"
    forwarded = conn.take()
    assert forwarded.startswith(cmd("SET", k, "v2"))  # then the GET is a fill, not a stale hit
    assert cmd("GET", k) in forwarded


async def test_a_key_with_a_ttl_and_a_key_gone_before_pttl(host: FakeHost) -> None:
    ka, kb = host.keys_on("a", 2)
    cache = await cached(host, "a")
    c, conn = await connected(host, "a")
    c.send([b"GET", ka], [b"GET", kb])
    await settle()
    conn.take()
    conn.answer(b"+OK\r\n$1\r\nx\r\n:250\r\n+OK\r\n$1\r\ny\r\n:-2\r\n")
    assert c.take() == b"$1\r\nx\r\n$1\r\ny\r\n"
    assert ka in cache.entries and kb not in cache.entries  # kb expired between GET and PTTL
    from time import perf_counter

    left = cache.entries[ka].expires - perf_counter()
    assert 0 < left <= 0.25  # its own TTL, not max_age (60 s)


async def test_an_untracked_node_is_read_without_filling(host: FakeHost) -> None:
    k = host.key_on("b")
    await cached(host, "a")  # only a is tracked
    c = host.client()
    c.send([b"GET", k])
    await settle()
    assert host.server("b").conn.take() == cmd("GET", k)


async def test_the_memory_bound_evicts_the_oldest_cold_entry(host: FakeHost) -> None:
    keys = host.keys_on("a", 3)
    value = b"$8\r\n" + b"v" * 8 + b"\r\n"
    room = sum(len(k) + len(value) + OVERHEAD for k in keys[1:])  # room for two of the three
    cache = await cached(host, "a", max_memory=room)
    c, conn = await connected(host, "a")
    for k in keys:
        c.send([b"GET", k])
        await settle()
        conn.take()
        conn.answer(b"+OK\r\n$8\r\n" + b"v" * 8 + b"\r\n:-1\r\n")
        c.take()
    assert cache.used <= cache.max_memory
    assert list(cache.entries) == keys[1:]  # the oldest went (read no more often than the rest)
    assert cache.evictions == 1


async def test_mget_takes_hits_here_fills_warm_keys_and_sends_cold_ones_in_one_mget(
    host: FakeHost,
) -> None:
    hit, warm, cold, other = host.keys_on("a", 4)
    cache = await cached(host, "a")
    c, conn = await connected(host, "a")
    await sent(c, conn, [b"GET", hit])
    conn.answer(b"+OK\r\n$1\r\nh\r\n:-1\r\n")
    await sent(c, conn, [b"GET", warm])  # asked once: warm (this fill fails: not stored)
    conn.answer(b"+OK\r\n-ERR busy\r\n:-2\r\n")
    assert c.take() == b"$1\r\nh\r\n-ERR busy\r\n"
    assert list(cache.entries) == [hit]
    got = await sent(c, conn, [b"MGET", cold, hit, warm, other])
    # the cold keys in one MGET; the warm one a fill of its own; the hit not sent at all
    assert got == (
        cmd("MGET", cold, other) + cmd("CLIENT", "CACHING", "yes") + cmd("GET", warm)
        + cmd("PTTL", warm)
    )  # fmt: skip
    conn.answer(b"*2\r\n$1\r\nc\r\n$-1\r\n")
    assert c.take() == b""  # (the fill is still out)
    conn.answer(b"+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
    conn.answer(b":-1\r\n")
    assert c.take() == b"*4\r\n$1\r\nc\r\n$1\r\nh\r\n$-1\r\n$-1\r\n"  # MGET's nil, in order
    await sent(c, conn, [b"MGET", hit, hit])
    assert c.take() == b"*2\r\n$1\r\nh\r\n$1\r\nh\r\n"  # every key here: nothing sent
    got = await sent(c, conn, [b"MGET", warm, cold])  # cold was asked before too: both fills
    fill = cmd("CLIENT", "CACHING", "yes")
    assert got == fill + cmd("GET", warm) + cmd("PTTL", warm) + fill + cmd("GET", cold) + cmd(
        "PTTL", cold
    )
    conn.answer(b"+OK\r\n$1\r\nw\r\n:-1\r\n+OK\r\n$1\r\nc\r\n:-1\r\n")
    assert c.take() == b"*2\r\n$1\r\nw\r\n$1\r\nc\r\n"
    assert list(cache.entries) == [hit, warm, cold]
