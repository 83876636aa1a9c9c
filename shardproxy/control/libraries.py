"""Function libraries follow the fleet: a shard that a reload adds gets them before it takes keys.

Redis functions (FUNCTION LOAD) live in each primary and replicate to its replicas, so a
failover keeps them; but a shard added by a reload starts empty, and an FCALL routed to it
would fail. Before the new topology is applied, the libraries of a shard already serving are
copied to every added shard's primary::

    FUNCTION DUMP on the first reachable old primary ─▶ (no library: nothing to do)
        ─▶ FUNCTION RESTORE <payload> REPLACE on each added shard's primary

A shard whose copy fails is reported in the reload's result and logged; the reload still
applies (refusing it would leave the operator unable to add a shard whose primary is down),
and FCALL on that shard answers Redis's own error until the library is loaded.
"""

from __future__ import annotations

import logging

from shardproxy.backend.connection import BackendSettings
from shardproxy.backend.dial import ControlConnection, Endpoint
from shardproxy.config import Config
from shardproxy.config.model import ShardConfig
from shardproxy.control.fleet import backend_context, backend_settings
from shardproxy.protocol import replies

log = logging.getLogger("shardproxy.reload")


def _endpoint(shard: ShardConfig, settings: BackendSettings) -> Endpoint:
    a = shard.primary
    return Endpoint(a.host, a.port, a.unix, settings.tls, settings.tls_server_name)


async def copy_libraries(old: Config, new: Config) -> dict[str, str]:
    """Copy the function libraries to the shards ``new`` adds; shard name -> what happened."""
    old_names = {s.name for s in old.shards}
    added = [s for s in new.shards if s.name not in old_names]
    if not added:
        return {}
    settings = backend_settings(new, backend_context(new))
    timeout = max(settings.command_timeout, settings.connect_timeout)
    payload: bytes | None = None
    for s in old.shards:
        try:
            conn = await ControlConnection.open(
                _endpoint(s, settings), settings.credentials, timeout=timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("function libraries: shard %s unreachable (%s)", s.name, exc)
            continue
        try:
            listed = await conn.call(b"FUNCTION", b"LIST")
            if replies.is_error(listed):
                continue
            if not replies.split_aggregate(listed):
                return {}  # the fleet has no library
            dumped = await conn.call(b"FUNCTION", b"DUMP")
            payload = replies.parse_bulk(dumped) if not replies.is_error(dumped) else None
        except (OSError, TimeoutError, replies.ReplyError) as exc:
            log.warning("function libraries: FUNCTION DUMP on %s failed (%s)", s.name, exc)
        finally:
            conn.close()
        if payload is not None:
            break
    result: dict[str, str] = {}
    if payload is None:
        for s in added:
            result[s.name] = "no shard could give its function libraries"
        log.warning("function libraries: none copied to %s", [s.name for s in added])
        return result
    for s in added:
        try:
            conn = await ControlConnection.open(
                _endpoint(s, settings), settings.credentials, timeout=timeout
            )
            try:
                answer = await conn.call(b"FUNCTION", b"RESTORE", payload, b"REPLACE")
            finally:
                conn.close()
        except (OSError, TimeoutError, replies.ReplyError) as exc:
            answer = b"-ERR " + str(exc).encode() + b"\r\n"
        if replies.is_error(answer):
            result[s.name] = "failed: " + replies.error_text(answer)
            log.warning("function libraries: copy to shard %s %s", s.name, result[s.name])
        else:
            result[s.name] = "copied"
            log.info("function libraries copied to shard %s", s.name)
    return result
