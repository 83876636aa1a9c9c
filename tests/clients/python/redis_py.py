"""redis-py or valkey-py (sync) through the proxy; one JSON line of results.

Usage: redis_py.py redis|valkey 2|3|default PLAN... (see _common.py)
"""

from __future__ import annotations

import importlib
import time
from importlib.metadata import version
from typing import Any

from _common import EVAL_SCRIPT, Plan, argv, emit, error, norm, plan

SET_VALUE, VALUES, MESSAGE, ELEMENT = "hello", ("v1", "v2", "v3"), "hello", "x"


def next_message(ps: Any, kind: str) -> Any:
    """The next message of type ``kind`` within 2 s, or None."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = ps.get_message(timeout=0.2)
        if message is not None and message["type"] == kind:
            return message
    return None


def pubsub(c: Any, pub: Any, p: Plan) -> dict[str, Any]:
    """The library's PubSub (a connection of its own), a PUBLISH from another client."""
    out: dict[str, Any] = {}
    ps = c.pubsub(ignore_subscribe_messages=True)
    try:
        ps.subscribe(p.channel)
        ps.get_message(timeout=1)  # the confirmation (ignored), or the error raised
    except Exception as exc:
        out["subscribe"] = error(exc)
    try:
        out["publish"] = norm(pub.publish(p.channel, MESSAGE))
    except Exception as exc:
        out["publish"] = error(exc)
    if "subscribe" not in out:
        message = next_message(ps, "message")
        out["subscribe"] = norm(message["data"]) if message else {"error": "no message"}
    ps.ping()  # the subscriber's own connection still answers
    pong = next_message(ps, "pong")
    ps.close()
    if not pong or pong["type"] != "pong":
        out["subscribe_then"] = {"error": f"PING on the subscriber connection: {pong!r}"}
    else:
        out["subscribe_then"] = norm(c.get(p.keys[0]))
    return out


def main() -> None:
    module_name, protocol, *rest = argv()
    p = plan(rest)
    lib = importlib.import_module(module_name)
    cls = lib.Redis if module_name == "redis" else lib.Valkey
    kw: dict[str, Any] = {} if protocol == "default" else {"protocol": int(protocol)}
    c = cls(host="127.0.0.1", port=p.port, socket_timeout=10, **kw)
    pub = cls(host="127.0.0.1", port=p.port, socket_timeout=10, **kw)
    out: dict[str, Any] = {}
    out["set"] = norm(c.set(p.keys[0], SET_VALUE))
    out["get"] = norm(c.get(p.keys[0]))
    pipe = c.pipeline(transaction=False)
    for key, value in zip(p.keys, VALUES, strict=True):
        pipe.set(key, value)
    for key in p.keys:
        pipe.get(key)
    out["pipeline"] = norm(pipe.execute(raise_on_error=False))
    out["mget"] = norm(c.mget([*p.keys, p.missing]))
    a, b = p.tagged
    tx = c.pipeline(transaction=True)
    tx.set(a, 1).incr(a).set(b, "x").get(b)
    out["multi_exec"] = norm(tx.execute(raise_on_error=False))
    out["eval"] = norm(c.eval(EVAL_SCRIPT, 1, p.script_key, 5))
    out.update(pubsub(c, pub, p))
    c.rpush(p.list_key, ELEMENT)
    try:
        out["blpop"] = norm(c.blpop([p.list_key], timeout=1))
    except Exception as exc:
        out["blpop"] = error(exc)
    out["blpop_then"] = norm(c.get(p.keys[0]))
    c.close()
    pub.close()
    emit(module_name, version(module_name), out)


if __name__ == "__main__":
    main()
