"""coredis (asyncio, RESP3) through the proxy; one JSON line of results.

Usage: coredis_client.py PLAN... (see _common.py)
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import version
from typing import Any

import coredis
from _common import EVAL_SCRIPT, Plan, argv, emit, error, norm, plan

SET_VALUE, VALUES, MESSAGE, ELEMENT = "hello", ("v1", "v2", "v3"), "hello", "x"


async def pubsub(c: coredis.Redis[str], pub: coredis.Redis[str], p: Plan) -> dict[str, Any]:
    """coredis's PubSub (a pool connection of its own, RESP3 pushes), PUBLISH from another."""
    out: dict[str, Any] = {}
    try:
        async with c.pubsub(ignore_subscribe_messages=True, subscription_timeout=1) as ps:
            await ps.subscribe(p.channel)
            try:
                out["publish"] = norm(await pub.publish(p.channel, MESSAGE))
            except Exception as exc:
                out["publish"] = error(exc)
            message = None
            deadline = time.monotonic() + 2
            while message is None and time.monotonic() < deadline:
                # None for the (ignored) confirmation, then the message
                message = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
            out["subscribe"] = norm(message["data"]) if message else {"error": "no message"}
            await ps.unsubscribe(p.channel)
    except BaseException as exc:  # an ExceptionGroup from its task group
        out["subscribe"] = error(exc)
    if "publish" not in out:
        try:
            out["publish"] = norm(await pub.publish(p.channel, MESSAGE))
        except Exception as exc:
            out["publish"] = error(exc)
    out["subscribe_then"] = norm(await c.get(p.keys[0]))
    return out


async def main() -> None:
    p = plan(argv())
    c: coredis.Redis[str] = coredis.Redis(port=p.port, decode_responses=True)
    pub: coredis.Redis[str] = coredis.Redis(port=p.port, decode_responses=True)
    out: dict[str, Any] = {}
    async with c, pub:
        out["set"] = norm(await c.set(p.keys[0], SET_VALUE))
        out["get"] = norm(await c.get(p.keys[0]))
        async with c.pipeline(transaction=False) as pipe:
            sets = [pipe.set(key, value) for key, value in zip(p.keys, VALUES, strict=True)]
            gets = [pipe.get(key) for key in p.keys]
        out["pipeline"] = [norm(await r) for r in (*sets, *gets)]
        out["mget"] = norm(await c.mget([*p.keys, p.missing]))
        a, b = p.tagged
        async with c.pipeline(transaction=True) as tx:
            queued = [tx.set(a, "1"), tx.incr(a), tx.set(b, "x"), tx.get(b)]
        out["multi_exec"] = [norm(await r) for r in queued]
        out["eval"] = norm(await c.eval(EVAL_SCRIPT, [p.script_key], [5]))
        out.update(await pubsub(c, pub, p))
        await c.rpush(p.list_key, [ELEMENT])
        try:
            out["blpop"] = norm(await c.blpop([p.list_key], 1))
        except Exception as exc:
            out["blpop"] = error(exc)
        out["blpop_then"] = norm(await c.get(p.keys[0]))
    emit("coredis", version("coredis"), out)


if __name__ == "__main__":
    asyncio.run(main())
