"""Hot-key detection: the most requested keys of each shard, always on and cheap.

One single-key request in ``sample`` is counted (a countdown the session's fast path keeps:
one integer decrement per request, nothing else). Each shard keeps a Space-Saving sketch of
``CAPACITY`` keys: a key already tracked is counted; a new key takes the place of the least
counted one and inherits its count, so a key that is truly hot is never lost and counts are
over-estimates by at most the smallest count. Counts are halved whenever a shard's sample
count reaches ``DECAY_AT``, so the sketch follows what is hot now, not since the start.

Read by ``GET /hotkeys``, INFO's ``# Hotkeys`` section and the metric
``shardproxy_hotkeys_top_share`` (no key appears in a metric label).
"""

from __future__ import annotations

from typing import Final

CAPACITY: Final = 64  # keys tracked per shard
SAMPLE: Final = 16  # one request in this many is counted
TOP: Final = 10  # the keys whose share of their shard's requests the metric gives
DECAY_AT: Final = 1 << 16  # samples of a shard after which its counts are halved


class ShardSketch:
    """The Space-Saving sketch of one shard."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        self.total = 0  # samples counted (since the last halving, halved with the counts)

    def add(self, key: bytes) -> None:
        self.total += 1
        counts = self.counts
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
        elif len(counts) < CAPACITY:
            counts[key] = 1
        else:
            victim = min(counts, key=counts.__getitem__)
            floor = counts.pop(victim)
            counts[key] = floor + 1
        if self.total >= DECAY_AT:
            self.total //= 2
            for k in list(counts):
                half = counts[k] // 2
                if half:
                    counts[k] = half
                else:
                    del counts[k]

    def top(self, n: int) -> list[tuple[bytes, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class HotKeys:
    """Every shard's sketch, and the sampling countdown of the fast path."""

    __slots__ = ("countdown", "sample", "shards")

    def __init__(self, sample: int = SAMPLE) -> None:
        self.sample = sample
        self.countdown = sample  # requests until the next one is counted
        self.shards: dict[str, ShardSketch] = {}

    def record(self, shard: str, key: bytes) -> None:
        sketch = self.shards.get(shard)
        if sketch is None:
            sketch = ShardSketch()
            self.shards[shard] = sketch
        sketch.add(key)

    def top(self, n: int = 20) -> list[tuple[bytes, str, int]]:
        """(key, shard, estimated requests) of the hottest keys over every shard."""
        rows = [
            (key, shard, count * self.sample)
            for shard, sketch in self.shards.items()
            for key, count in sketch.top(n)
        ]
        rows.sort(key=lambda r: (-r[2], r[1], r[0]))
        return rows[:n]

    def top_share(self) -> dict[str, float]:
        """Per shard: the share of its counted requests that went to its TOP hottest keys."""
        out: dict[str, float] = {}
        for shard, sketch in self.shards.items():
            if sketch.total:
                hot = sum(c for _, c in sketch.top(TOP))
                out[shard] = min(1.0, hot / sketch.total)
        return out
