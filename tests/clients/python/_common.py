"""What the Python client scripts share: the plan from argv, normalising replies, the JSON line.

The arguments, in order (tests/clients/matrix.py, ``Plan.argv``): PORT K1 K2 K3 MISSING
TAG_A TAG_B SCRIPT_KEY LIST_KEY CHANNEL.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

EVAL_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@dataclass(frozen=True)
class Plan:
    port: int
    keys: list[str]
    missing: str
    tagged: list[str]
    script_key: str
    list_key: str
    channel: str


def plan(args: list[str]) -> Plan:
    port, k1, k2, k3, missing, tag_a, tag_b, script_key, list_key, channel = args
    return Plan(int(port), [k1, k2, k3], missing, [tag_a, tag_b], script_key, list_key, channel)


def norm(value: Any) -> Any:
    """A reply as JSON: bytes as text, SET's True as "OK", tuples and sets as lists."""
    if value is True:
        return "OK"
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    if isinstance(value, BaseException):
        return error(value)
    return value


def error(exc: BaseException) -> dict[str, str]:
    """An exception as the matrix records it; an exception group by its first exception."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return {"error": str(exc)}


def emit(library: str, version: str, result: dict[str, Any]) -> None:
    print(json.dumps({"library": library, "version": version, **result}), flush=True)


def argv() -> list[str]:
    return sys.argv[1:]
