"""redis-py's asyncio client (redis.asyncio) through the proxy; one JSON line of results.

Usage: redis_py_asyncio.py PLAN... (see _common.py)
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import version
from typing import Any

import redis.asyncio as aredis
from _common import EVAL_SCRIPT, Plan, argv, emit, error, norm, plan

SET_VALUE, VALUES, MESSAGE, ELEMENT = "hello", ("v1", "v2", "v3"), "hello", "x"


async def next_message(ps: Any, kind: str) -> Any:
    """The next message of type ``kind`` within 2 s, or None."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = await ps.get_message(timeout=0.2)
        if message is not None and message["type"] == kind:
            return message
    return None


async def pubsub(c: aredis.Redis, pub: aredis.Redis, p: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ps = c.pubsub(ignore_subscribe_messages=True)
    try:
        await ps.subscribe(p.channel)
        await ps.get_message(timeout=1)  # the confirmation (ignored), or the error raised
    except Exception as exc:
        out["subscribe"] = error(exc)
    try:
        out["publish"] = norm(await pub.publish(p.channel, MESSAGE))
    except Exception as exc:
        out["publish"] = error(exc)
    if "subscribe" not in out:
        message = await next_message(ps, "message")
        out["subscribe"] = norm(message["data"]) if message else {"error": "no message"}
    await ps.ping()  # the subscriber's own connection still answers
    pong = await next_message(ps, "pong")
    await ps.aclose()
    if not pong or pong["type"] != "pong":
        out["subscribe_then"] = {"error": f"PING on the subscriber connection: {pong!r}"}
    else:
        out["subscribe_then"] = norm(await c.get(p.keys[0]))
    return out


async def main() -> None:
    p = plan(argv())
    c = aredis.Redis(host="127.0.0.1", port=p.port, socket_timeout=10)
    pub = aredis.Redis(host="127.0.0.1", port=p.port, socket_timeout=10)
    out: dict[str, Any] = {}
    out["set"] = norm(await c.set(p.keys[0], SET_VALUE))
    out["get"] = norm(await c.get(p.keys[0]))
    async with c.pipeline(transaction=False) as pipe:
        for key, value in zip(p.keys, VALUES, strict=True):
            pipe.set(key, value)
        for key in p.keys:
            pipe.get(key)
        out["pipeline"] = norm(await pipe.execute(raise_on_error=False))
    out["mget"] = norm(await c.mget([*p.keys, p.missing]))
    a, b = p.tagged
    async with c.pipeline(transaction=True) as tx:
        tx.set(a, 1)
        tx.incr(a)
        tx.set(b, "x")
        tx.get(b)
        out["multi_exec"] = norm(await tx.execute(raise_on_error=False))
    out["eval"] = norm(await c.eval(EVAL_SCRIPT, 1, p.script_key, 5))
    out.update(await pubsub(c, pub, p))
    await c.rpush(p.list_key, ELEMENT)
    try:
        out["blpop"] = norm(await c.blpop([p.list_key], timeout=1))
    except Exception as exc:
        out["blpop"] = error(exc)
    out["blpop_then"] = norm(await c.get(p.keys[0]))
    await c.aclose()
    await pub.aclose()
    emit("redis.asyncio", version("redis"), out)


if __name__ == "__main__":
    asyncio.run(main())
