"""The near-cache: GET, and each key of an MGET, answered from the proxy's memory for the hottest
keys, kept coherent by Redis's server-assisted client tracking.

The guarantee: **a GET served from the cache returns a value the node held after every write
the node had made visible more than one invalidation delay earlier**: an entry is dropped as
soon as the proxy forwards a write of its key, and as soon as the node says the key changed.

How it stays coherent (``cache.enabled``)::

    fill:  CLIENT CACHING yes │ GET k │ PTTL k     on the client's own pipeline to the node
           (the pipeline runs CLIENT TRACKING on REDIRECT <invalidation client> OPTIN, so the
           GET, and only it, is tracked); the entry is stored when PTTL answers, for at most
           the key's TTL and ``cache.max_age_ms``; an MGET fills the keys asked for before
           (:meth:`NearCache.warm`) the same way, one GET each, and sends the others in one
           MGET per shard, not kept
    drop:  a write through the proxy (before it is sent) │ an invalidation message from the
           node (backend/invalidation.py) │ FLUSHALL (a null invalidation)
    race:  a key dropped while one of its fills is in flight is marked spoiled: that fill is
           not stored (its value may predate the write)
    flush: the invalidation connection of a node lost (its entries: changes may be unseen
           until it is back), a failover, a reload (everything)

Admission favours hot keys: a count-min sketch counts every lookup of a cacheable key; when the
cache is full a new key takes the place of the oldest unreferenced entry (CLOCK) only if it was
asked for more often. ``max_memory`` bounds keys, values and a per-entry overhead.
"""

from __future__ import annotations

import logging
from time import perf_counter as clock
from typing import Final

from shardproxy.backend.connection import NodeBase
from shardproxy.backend.invalidation import InvalidationConnection, InvalidationOwner
from shardproxy.backend.node import Node
from shardproxy.backend.slots import Recipient, ReplySlot
from shardproxy.protocol import encode, glob
from shardproxy.routing.router import Router

log = logging.getLogger("shardproxy.cache")

OVERHEAD: Final = 260  # bytes per entry besides its key and value (as the RSS grows)
CACHING_YES: Final = encode.encode_command([b"CLIENT", b"CACHING", b"yes"])
_WIDTH: Final = 4096  # count-min sketch: counters per row (4 rows)


class Entry:
    __slots__ = ("expires", "ref", "shard", "size", "value")

    def __init__(self, value: bytes, expires: float, shard: str, size: int) -> None:
        self.value = value  # the GET reply, a bulk string, as the node sent it
        self.expires = expires  # clock() after which it is not served
        self.shard = shard
        self.size = size
        self.ref = False  # read since the CLOCK hand last passed it


class NearCache(InvalidationOwner):
    """The cache of one worker process, and its invalidation connections."""

    __slots__ = (
        "_additions",
        "_freq",
        "conns",
        "entries",
        "everything",
        "evictions",
        "fills",
        "hits",
        "inflight",
        "invalidations",
        "max_age",
        "max_memory",
        "misses",
        "patterns",
        "spoiled",
        "stored",
        "used",
    )

    def __init__(self, patterns: tuple[bytes, ...], max_memory: int, max_age: float) -> None:
        self.patterns = patterns
        self.everything = patterns == (b"*",)
        self.max_memory = max_memory
        self.max_age = max_age  # seconds
        self.entries: dict[bytes, Entry] = {}  # in CLOCK order (oldest first)
        self.used = 0
        self.inflight: dict[bytes, int] = {}  # key -> fills under way
        self.spoiled: set[bytes] = set()  # keys dropped while a fill of theirs was under way
        self.conns: dict[str, InvalidationConnection] = {}  # node address -> its connection
        self._freq = [0] * (4 * _WIDTH)
        self._additions = 0
        self.hits = self.misses = self.fills = self.stored = 0
        self.invalidations = self.evictions = 0

    # -- the request path ------------------------------------------------------------------

    def cacheable(self, key: bytes) -> bool:
        if self.everything:
            return True
        for p in self.patterns:
            if glob.match(p, key):
                return True
        return False

    def lookup(self, key: bytes, now: float) -> bytes | None:
        """The cached GET reply of ``key``, or None (a miss: fill it)."""
        self._count(key)
        e = self.entries.get(key)
        if e is not None:
            if now < e.expires:
                e.ref = True
                self.hits += 1
                return e.value
            self._remove(key, e)
        self.misses += 1
        return None

    def warm(self, key: bytes) -> bool:
        """Whether ``key`` was looked up before (by the sketch): then a miss of it in an MGET
        is worth a fill of its own, where a key asked once rides the shard's MGET."""
        return self._estimate(key) >= 2

    def drop(self, key: bytes) -> None:
        """``key`` changes (a write through the proxy, or the node says so)."""
        e = self.entries.pop(key, None)
        if e is not None:
            self.used -= e.size
        if key in self.inflight:
            self.spoiled.add(key)

    def fill(self, key: bytes, shard: str, client_slot: ReplySlot) -> tuple[ReplySlot, ReplySlot]:
        """The slots of a fill: the GET's (the client's reply passes through it) and the
        PTTL's (which stores the entry)."""
        self.fills += 1
        self.inflight[key] = self.inflight.get(key, 0) + 1
        f = Fill(self, key, shard, client_slot)
        return f.reply, f

    def finish(self, fill: Fill, value: bytes | None, ttl_ms: int) -> None:
        key = fill.key
        n = self.inflight.get(key, 1) - 1
        spoiled = key in self.spoiled
        if n:
            self.inflight[key] = n
        else:
            self.inflight.pop(key, None)
            self.spoiled.discard(key)
        if spoiled or value is None or ttl_ms == -2:
            return
        now = clock()
        life = self.max_age if ttl_ms < 0 else min(self.max_age, ttl_ms / 1000)
        self._store(key, value, now + life, fill.shard)

    # -- memory ----------------------------------------------------------------------------

    def _store(self, key: bytes, value: bytes, expires: float, shard: str) -> None:
        size = len(key) + len(value) + OVERHEAD
        if size > self.max_memory:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.used -= old.size
        want = self._estimate(key)
        while self.used + size > self.max_memory and self.entries:
            victim_key = next(iter(self.entries))
            victim = self.entries[victim_key]
            if victim.ref:  # CLOCK: a second chance, to the back of the line
                victim.ref = False
                del self.entries[victim_key]
                self.entries[victim_key] = victim
                continue
            if self._estimate(victim_key) > want:  # TinyLFU: the colder key stays out
                return
            self._remove(victim_key, victim)
            self.evictions += 1
        self.entries[key] = Entry(value, expires, shard, size)
        self.used += size
        self.stored += 1

    def _remove(self, key: bytes, e: Entry) -> None:
        del self.entries[key]
        self.used -= e.size

    def _rows(self, key: bytes) -> tuple[int, int, int, int]:
        h = hash(key)
        return (
            h & (_WIDTH - 1),
            _WIDTH + ((h >> 12) & (_WIDTH - 1)),
            2 * _WIDTH + ((h >> 24) & (_WIDTH - 1)),
            3 * _WIDTH + ((h >> 36) & (_WIDTH - 1)),
        )

    def _count(self, key: bytes) -> None:
        freq = self._freq
        for i in self._rows(key):
            if freq[i] < 15:
                freq[i] += 1
        self._additions += 1
        if self._additions >= 10 * _WIDTH:  # age: halve every counter
            self._additions = 0
            for i in range(len(freq)):
                freq[i] >>= 1

    def _estimate(self, key: bytes) -> int:
        freq = self._freq
        return min(freq[i] for i in self._rows(key))

    # -- flushes ---------------------------------------------------------------------------

    def flush(self, shard: str | None = None) -> None:
        """Forget the entries of ``shard`` (every entry with None); fills under way are not
        stored."""
        if shard is None:
            self.entries.clear()
            self.used = 0
        else:
            for k in [k for k, e in self.entries.items() if e.shard == shard]:
                self._remove(k, self.entries[k])
        self.spoiled.update(self.inflight)

    # -- invalidation connections (backend/invalidation.py) --------------------------------

    def router_changed(self, router: Router[Node]) -> None:
        """A reload: every node the cache may fill from has an invalidation connection;
        everything cached is forgotten (keys may have moved)."""
        wanted: dict[str, Node] = {}
        for s in router.shards:
            for node in s.nodes():
                wanted[node.address] = node
        for address in list(self.conns):
            if address not in wanted:
                self.conns.pop(address).close()
        for address, node in wanted.items():
            if address not in self.conns:
                conn = InvalidationConnection(node, self)
                self.conns[address] = conn
                conn.start()
        self.flush()

    def primary_switched(self) -> None:
        """A failover: what a replica now primary holds may differ; start again."""
        self.flush()

    def tracking(self, node: NodeBase, client_id: int) -> None:
        if isinstance(node, Node):
            node.track(client_id)

    def untracked(self, node: NodeBase) -> None:
        node.tracking_id = 0
        self.flush(node.shard)

    def invalidate(self, node: NodeBase, keys: list[bytes] | None) -> None:
        if keys is None:
            self.invalidations += 1
            self.flush(node.shard)
            return
        self.invalidations += len(keys)
        for k in keys:
            self.drop(k)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


class Fill(ReplySlot):
    """A fill's PTTL reply slot (it stores the entry); ``reply`` is the GET's."""

    __slots__ = ("cache", "key", "reply", "shard", "value")

    def __init__(self, cache: NearCache, key: bytes, shard: str, client: ReplySlot) -> None:
        self.cache = cache
        self.key = key
        self.shard = shard
        self.value: bytes | None = None  # the GET's bulk reply, once it came
        self.reply = FillReply(self, client)

    def complete(self, reply: bytes) -> Recipient | None:
        ttl = int(reply[1:-2]) if reply[:1] == b":" else -2
        self.cache.finish(self, self.value, ttl)
        return None

    def fail(self, reply: bytes) -> Recipient | None:
        self.cache.finish(self, None, -2)
        return None


class FillReply(ReplySlot):
    """A fill's GET reply: to the client as it is; kept if it is a value."""

    __slots__ = ("client", "fill")

    def __init__(self, fill: Fill, client: ReplySlot) -> None:
        self.fill = fill
        self.client = client

    def complete(self, reply: bytes) -> Recipient | None:
        if reply[:1] == b"$" and reply[1:2] != b"-":
            self.fill.value = reply
        return self.client.complete(reply)

    def fail(self, reply: bytes) -> Recipient | None:
        return self.client.fail(reply)
