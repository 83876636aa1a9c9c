"""Client modes and identity, end to end: real redis-py clients (RESP2 and RESP3, sync and
asyncio) and raw sockets through the proxy in front of real redis-server shards.

The hazard these guard against: a transaction that tells the application one thing while the
shards did another. A transaction whose commands were all accepted runs, atomically, on its
shard; one with a command refused while queueing runs nothing at all, and EXEC says so
(``-EXECABORT``), exactly as Redis words it. Leaving a mode (EXEC, DISCARD, RESET, UNWATCH)
puts the connection back in normal sharded mode.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from shardproxy.protocol import encode
from tests.conftest import Fleet, Proxy

EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, proxy: Proxy, clean: Fleet) -> Iterator[redis.Redis]:
    c = proxy.client(protocol=request.param)
    yield c
    c.close()


def _on_any_shard(fleet: Fleet, key: str) -> bool:
    for s in fleet.shards:
        with s.primary.client() as c:
            if c.exists(key):
                return True
    return False


class Raw:
    """A client socket that sends requests and reads an exact number of bytes back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, *argv: bytes | str) -> None:
        self.sock.sendall(
            encode.encode_command([a if isinstance(a, bytes) else a.encode() for a in argv])
        )

    def expect(self, want: bytes) -> None:
        got = b""
        while len(got) < len(want):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            got += chunk
        assert got == want

    def close(self) -> None:
        self.sock.close()


def test_transaction_runs_atomically_on_its_shard(client: redis.Redis, fleet: Fleet) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.set("{tx}a", "1")
    pipe.incr("{tx}counter")
    pipe.get("{tx}a")
    assert pipe.execute() == [True, 1, b"1"]
    owner = fleet.owner("{tx}a")
    with owner.primary.client() as direct:
        assert direct.mget("{tx}a", "{tx}counter") == [b"1", b"1"]
    # the connection is back in normal mode
    assert client.set("tx:after", "x") is True
    assert client.get("tx:after") == b"x"


def test_transaction_with_a_refused_command_runs_nothing(client: redis.Redis, fleet: Fleet) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.set("{tx}refused", "1")
    pipe.dbsize()  # every shard's: it cannot be queued in one shard's transaction
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        pipe.execute()
    # redis-py reports the queue-time error (its EXEC was answered -EXECABORT)
    assert "command 'dbsize' cannot be queued in a transaction through shardproxy" in str(
        caught.value
    )
    assert not _on_any_shard(fleet, "{tx}refused")
    assert client.set("tx:after", "x") is True


def test_multi_exec_replies_as_redis_words_them(proxy: Proxy, clean: Fleet) -> None:
    c = Raw(proxy.port)
    try:
        for argv in (["MULTI"], ["MULTI"], ["WATCH", "k"], ["SET", "{m}k", "v"], ["EXEC"]):
            c.send(*argv)
        c.expect(
            b"+OK\r\n-ERR MULTI calls can not be nested\r\n"
            b"-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*1\r\n+OK\r\n"
        )
        c.send("EXEC")
        c.send("DISCARD")
        c.expect(b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n")
        c.send("MULTI")
        c.send("EXEC")
        c.expect(b"+OK\r\n*0\r\n")
        for argv in (["MULTI"], ["SET", "{m}k", "w"], ["NOSUCH", "x"], ["INFO"], ["EXEC"]):
            c.send(*argv)
        c.expect(
            b"+OK\r\n+QUEUED\r\n"
            b"-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n"
            b"-ERR command 'info' cannot be queued in a transaction through shardproxy\r\n"
            + EXECABORT
        )
        c.send("MULTI")
        c.send("SET", "{m}k", "z")
        c.send("DISCARD")
        c.send("GET", "{m}k")
        c.expect(b"+OK\r\n+QUEUED\r\n+OK\r\n$1\r\nv\r\n")  # neither later write ran
    finally:
        c.close()


async def test_asyncio_transaction_runs(proxy: Proxy, clean: Fleet) -> None:
    for protocol in (2, 3):
        c = aioredis.Redis(host="127.0.0.1", port=proxy.port, protocol=protocol)
        try:
            pipe = c.pipeline(transaction=True)
            pipe.set("{atx}k", "1")
            pipe.incrby("{atx}k", 2)
            assert await pipe.execute() == [True, 3]
            assert await c.get("{atx}k") == b"3"
            assert await c.delete("{atx}k") == 1
            assert await c.ping() is True
        finally:
            await c.aclose()


def test_reset_leaves_the_transaction_and_the_watch(proxy: Proxy, clean: Fleet) -> None:
    with proxy.client(protocol=2) as c:
        c.execute_command("MULTI")
        c.execute_command("SET", "after-reset", "in-multi")
        assert c.execute_command("RESET") in (b"RESET", "RESET")
        assert c.get("after-reset") is None  # the queued SET never ran
        assert c.set("after-reset", "1") is True
        assert c.get("after-reset") == b"1"
    with proxy.client(protocol=2) as c, proxy.client(protocol=2) as other:
        assert c.execute_command("WATCH", "{w}k") in (b"OK", True)
        assert c.execute_command("RESET") in (b"RESET", "RESET")
        other.set("{w}k", "changed")  # no longer watched: the transaction below commits
        c.execute_command("MULTI")
        c.execute_command("SET", "{w}k", "mine")
        assert c.execute_command("EXEC") == [b"OK"]
        assert c.get("{w}k") == b"mine"


def test_auth_is_redis_with_a_nopass_default_user(proxy: Proxy) -> None:
    with proxy.client(protocol=2) as c:
        assert c.execute_command("AUTH", "default", "anything") in (b"OK", True)
        with pytest.raises(redis.exceptions.AuthenticationError) as wrong:
            c.execute_command("AUTH", "bob", "secret")
        assert "WRONGPASS" in str(wrong.value) or "invalid username-password" in str(wrong.value)
        refused = (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError)
        with pytest.raises(refused) as nopass:
            c.execute_command("AUTH", "secret")
        assert "without any password configured" in str(nopass.value)
    # a client configured with a username other than default is refused at connect
    other = redis.Redis(host="127.0.0.1", port=proxy.port, username="bob", password="x")
    with pytest.raises(redis.exceptions.AuthenticationError):
        other.ping()
    other.close()
    ok = redis.Redis(host="127.0.0.1", port=proxy.port, username="default", password="x")
    assert ok.ping() is True
    ok.close()
