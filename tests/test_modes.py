"""Client modes and identity, end to end: real redis-py clients (RESP2 and RESP3, sync and
asyncio) through the proxy in front of real redis-server shards.

The hazard these guard against: a proxy that refused MULTI but then ran the commands after it
told the application its transaction failed while its writes were applied. Now nothing after
MULTI runs, and EXEC says the transaction was discarded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from shardproxy.protocol import errors
from tests.conftest import Fleet, Proxy


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


def test_transaction_runs_nothing_and_exec_says_so(client: redis.Redis, fleet: Fleet) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.set("tx:a", "1")
    pipe.incr("tx:counter")
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        pipe.execute()
    assert "not queued" in str(caught.value) or "EXECABORT" in str(caught.value)
    assert not _on_any_shard(fleet, "tx:a")
    assert not _on_any_shard(fleet, "tx:counter")
    # the connection is back in normal mode
    assert client.set("tx:after", "x") is True
    assert client.get("tx:after") == b"x"


def test_multi_exec_replies_as_redis_words_them(proxy: Proxy, clean: Fleet) -> None:
    with proxy.client(protocol=2) as c:
        assert c.execute_command("MULTI") in (b"OK", True)
        with pytest.raises(redis.exceptions.ResponseError) as nested:
            c.execute_command("MULTI")
        assert str(nested.value) == "MULTI calls can not be nested"
        with pytest.raises(redis.exceptions.ResponseError) as queued:
            c.execute_command("SET", "k", "v")
        assert str(queued.value) == errors.message("not_queued", name="set")[4:]
        with pytest.raises(redis.exceptions.ExecAbortError):
            c.execute_command("EXEC")
        with pytest.raises(redis.exceptions.ResponseError) as lone:
            c.execute_command("EXEC")
        assert str(lone.value) == "EXEC without MULTI"
        assert c.execute_command("MULTI") in (b"OK", True)
        assert c.execute_command("EXEC") == []  # nothing was sent: nothing to discard
        assert c.execute_command("MULTI") in (b"OK", True)
        assert c.execute_command("DISCARD") in (b"OK", True)
        with pytest.raises(redis.exceptions.ResponseError) as discard:
            c.execute_command("DISCARD")
        assert str(discard.value) == "DISCARD without MULTI"
        assert c.exists("k") == 0


async def test_asyncio_transaction_is_discarded(proxy: Proxy, clean: Fleet) -> None:
    for protocol in (2, 3):
        c = aioredis.Redis(host="127.0.0.1", port=proxy.port, protocol=protocol)
        try:
            pipe = c.pipeline(transaction=True)
            pipe.set("atx", "1")
            with pytest.raises(redis.exceptions.ResponseError):
                await pipe.execute()
            assert await c.get("atx") is None
            assert await c.ping() is True
        finally:
            await c.aclose()


def test_reset_leaves_the_transaction(proxy: Proxy, clean: Fleet) -> None:
    with proxy.client(protocol=2) as c:
        c.execute_command("MULTI")
        assert c.execute_command("RESET") in (b"RESET", "RESET")
        assert c.set("after-reset", "1") is True
        assert c.get("after-reset") == b"1"


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
