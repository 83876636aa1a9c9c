"""valkey-glide (the Python asyncio client, RESP3) through the proxy; one JSON line.

Usage: glide_client.py PLAN... (see _common.py)
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from _common import EVAL_SCRIPT, Plan, argv, emit, error, norm, plan
from glide import (
    Batch,
    GlideClient,
    GlideClientConfiguration,
    Logger,
    LogLevel,
    NodeAddress,
    Script,
)

SET_VALUE, VALUES, MESSAGE, ELEMENT = "hello", ("v1", "v2", "v3"), "hello", "x"


async def pubsub(c: GlideClient, pub: GlideClient, p: Plan) -> dict[str, Any]:
    """glide's own subscriptions (``subscribe`` waits for the server's confirmation)."""
    out: dict[str, Any] = {}
    try:
        await c.subscribe({p.channel}, timeout_ms=1000)
    except Exception as exc:
        out["subscribe"] = error(exc)
    try:
        out["publish"] = norm(await pub.publish(MESSAGE, p.channel))
    except Exception as exc:
        out["publish"] = error(exc)
    if "subscribe" not in out:
        try:
            message = await asyncio.wait_for(c.get_pubsub_message(), 2)
            out["subscribe"] = norm(message.message)
        except Exception as exc:
            out["subscribe"] = error(exc)
    # glide keeps trying to reach the desired subscriptions until they are dropped
    await c.unsubscribe({p.channel}, timeout_ms=1000)
    out["subscribe_then"] = norm(await c.get(p.keys[0]))
    return out


async def main() -> None:
    p = plan(argv())
    # stdout is for the JSON line; a refused SUBSCRIBE makes glide log one error per retry
    Logger.set_logger_config(LogLevel.OFF)
    config = GlideClientConfiguration([NodeAddress("127.0.0.1", p.port)], request_timeout=5000)
    c = await GlideClient.create(config)
    pub = await GlideClient.create(config)
    out: dict[str, Any] = {}
    out["set"] = norm(await c.set(p.keys[0], SET_VALUE))
    out["get"] = norm(await c.get(p.keys[0]))
    batch = Batch(is_atomic=False)
    for key, value in zip(p.keys, VALUES, strict=True):
        batch.set(key, value)
    for key in p.keys:
        batch.get(key)
    out["pipeline"] = norm(await c.exec(batch, raise_on_error=False))
    out["mget"] = norm(await c.mget([*p.keys, p.missing]))
    a, b = p.tagged
    tx = Batch(is_atomic=True)
    tx.set(a, "1").incr(a).set(b, "x").get(b)
    out["multi_exec"] = norm(await c.exec(tx, raise_on_error=False))
    out["eval"] = norm(await c.invoke_script(Script(EVAL_SCRIPT), keys=[p.script_key], args=["5"]))
    out.update(await pubsub(c, pub, p))
    await c.rpush(p.list_key, [ELEMENT])
    try:
        out["blpop"] = norm(await c.blpop([p.list_key], 1))
    except Exception as exc:
        out["blpop"] = error(exc)
    out["blpop_then"] = norm(await c.get(p.keys[0]))
    await c.close()
    await pub.close()
    emit("valkey-glide", version("valkey-glide"), out)


if __name__ == "__main__":
    asyncio.run(main())
