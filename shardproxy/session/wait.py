"""WAIT: replication of this client's writes, asked of the shards it wrote to.

On one Redis, ``WAIT numreplicas timeout`` waits until that many replicas have acknowledged
every write the connection made. Through the proxy a client's writes travel on shared
pipelines, so WAIT goes, for each shard the client wrote to since its previous WAIT (every
shard if it wrote nowhere, or if a reload renumbered the shards), on a leased connection to
the shard's primary, after a ``PUBLISH __shardproxy:wait ""``: PUBLISH is replicated, so it
moves the lease's own replication offset past the client's earlier writes on that shard, and
the WAIT after it waits for them. The reply is the smallest count over those shards (the
number of replicas that have all of the client's writes on every shard it wrote to); an error
from one shard is the reply. Later requests of the client are not held back by a WAIT.
Subscribers of ``__shardproxy:wait`` (on the primaries and their replicas) see empty messages.
"""

from __future__ import annotations

from shardproxy.backend.lease import NO_DEADLINE
from shardproxy.backend.slots import IGNORE
from shardproxy.protocol import encode, errors, framing, replies
from shardproxy.session.fanout import Gather, Leg
from shardproxy.session.modes import ModeClient

PUBLISH = encode.encode_command([b"PUBLISH", b"__shardproxy:wait", b""])


def merge_min(g: Gather) -> bytes:
    err = g.first_error()
    if err is not None:
        return err
    return encode.integer(min(replies.parse_integer(r) for r in g.results))


def wait(client: ModeClient, argv: list[bytes], shards: list[int]) -> None:
    """WAIT numreplicas timeout, sent to ``shards`` (indexes of the live router)."""
    if not framing.is_long(argv[1]):
        client.reply_now(errors.reply("not_integer"))
        return
    if not framing.is_long(argv[2]):
        client.reply_now(b"-ERR timeout is not an integer or out of range\r\n")
        return
    timeout_ms = int(argv[2])
    if timeout_ms < 0:
        client.reply_now(b"-ERR timeout is negative\r\n")
        return
    router = client.host.router
    g = Gather(client, len(shards), merge_min, client.proto)
    client.add_slot(g)
    frame = encode.encode_command(argv)
    for leg, index in enumerate(shards):
        s = router.shards[index]
        node = s.primary
        lease = node.leases.acquire(client.proto, client.push_consumer())
        if lease is None:
            g.leg_done(leg, node.lease_limit_error())
            continue
        deadline = NO_DEADLINE if timeout_ms == 0 else timeout_ms / 1000
        lease.send(PUBLISH, IGNORE)
        lease.send(frame, Leg(g, leg), deadline + node.settings.command_timeout)
        lease.release(clean=True)
