"""Key distributions (ketama, modula) built from shard names and weights.

A :class:`Ring` maps a key to the index of a shard in ``Ring.names`` (the shard names, sorted):

    key --hash_tag--> hashed part --HASH_FUNCTIONS[function]--> 32-bit hash --> shard index

**ketama** reproduces nutcracker 0.5's continuum point for point, so a key lands on the shard
named like the server nutcracker picks for it (``servers: - host:port:weight name``):

* shard *i* gets ``floor(w_i / W * 160 / 4 * n + 1e-10) * 4`` points (``W`` the total weight,
  ``n`` the number of shards), evaluated in single precision as nutcracker does. So 25 (or 47,
  50, 55, ...) equal shards get 156 points each, not 160; a shard whose share rounds down to
  zero gets no points and no keys;
* for ``j`` in ``0 .. points/4 - 1`` the MD5 digest of ``"<name>-<j>"`` (UTF-8) gives four
  points, its four little-endian 32-bit words;
* the points are sorted; a key goes to the first point ``>= hash``, wrapping to the first point.

nutcracker formats ``"<name>-<j>"`` into an 86-byte buffer; when that string is longer than 85
bytes its behaviour is undefined (it hashes past the buffer). Here the whole string is hashed.

**modula**: ``weight`` consecutive slots per shard; a key goes to the slot ``hash % total_weight``.
The shards take their slots in nutcracker's server order, which is not the ``servers:`` order:
nutcracker sorts the list to find duplicate names, comparing lengths first and then bytes, and
keeps it sorted. So shorter names come first (``"s9"`` before ``"s10"``, ``"delta"`` before
``"charlie"``); ``Ring.names`` stays plainly sorted, only the slot order differs.

An empty hashed part hashes to 0, as in nutcracker. ``shard_index`` is the per-request path: a
bounded dict caches key -> index in front of tag extraction, hashing and the lookup.

:func:`moved_share` and :meth:`Ring.shares` assume hashes spread uniformly over the function's
output range (``HASH_BITS``: 15 bits for ``crc32``, 32 for the rest). With the same hash function
on both sides they are exact, by walking the intervals between continuum points (ketama) or the
residues of the slot counts (modula); otherwise they sample keys.
"""

from __future__ import annotations

import math
import random
import struct
from bisect import bisect_left
from collections.abc import Sequence
from hashlib import md5

from mypy_extensions import i64

from shardproxy.routing.hashing import (
    HASH_BITS,
    HASH_CODES,
    HASH_FUNCTIONS,
    hash_by_code,
    hash_tag,
    tag_part,
)

__all__ = [
    "CACHE_LIMIT",
    "CACHE_MAX_KEY_LEN",
    "DISTRIBUTIONS",
    "SAMPLE_KEYS",
    "Ring",
    "moved_share",
]

DISTRIBUTIONS = ("ketama", "modula")

COMPILED = not __file__.endswith(".py")
"""True when this module runs compiled (mypyc, see setup.py). Interpreted, hashing a key costs
about 1 µs, so shard_index keeps a key -> shard cache; compiled, hashing is cheaper than the
cache lookup (a miss in a large dict), so there is none."""

CACHE_LIMIT = 131072
"""The shard_index cache (interpreted only) is cleared when it holds this many keys."""

CACHE_MAX_KEY_LEN = 256
"""Longer keys are not cached (bounds the cache's memory; they are rare and hash slowly anyway)."""

SAMPLE_KEYS = 100_000
"""Keys sampled by moved_share when no exact method applies."""

# nutcracker's ketama constants: 160 points per server on average, 4 points per MD5 digest.
_KETAMA_POINTS_PER_SERVER = 160
_KETAMA_POINTS_PER_HASH = 4

_FLOAT32 = struct.Struct("<f")
_DIGEST_WORDS = struct.Struct("<4I")

# Modula rings whose slot counts have a larger least common multiple are compared by sampling.
_MAX_EXACT_MODULUS = 1 << 22


def _f32(value: float) -> float:
    """Round a double to the nearest single-precision value, as a C ``(float)`` cast does."""
    return _FLOAT32.unpack(_FLOAT32.pack(value))[0]


def _ketama_points(weight: int, total_weight: int, nservers: int) -> int:
    """Continuum points nutcracker 0.5 gives a server (a multiple of 4), in float32 arithmetic."""
    # Every product and quotient of two float32 values, computed in double precision and then
    # rounded to float32, equals the float32 operation: doubles carry more than 2 * 24 + 2 bits.
    pct = _f32(_f32(weight) / _f32(total_weight))
    x = _f32(pct * _KETAMA_POINTS_PER_SERVER)
    x = _f32(x / 4)
    x = _f32(x * _f32(nservers))
    x = _f32(x + 0.0000000001)  # the constant is a double: added in double, cast back to float
    return math.floor(x) * _KETAMA_POINTS_PER_HASH


class Ring:
    """An immutable distribution of keys over named, weighted shards. Build with :meth:`build`.

    Attributes (read-only):
        names: shard names, sorted; every index this class returns indexes this tuple.
        weights: the weight of each shard, aligned with ``names``.
        function, distribution, tag: as given to :meth:`build`.
    """

    __slots__ = (
        "_cache",
        "_close",
        "_close_byte",
        "_distribution",
        "_first",
        "_function",
        "_hcode",
        "_names",
        "_nslots",
        "_open",
        "_open_byte",
        "_owners",
        "_points",
        "_shift",
        "_slots",
        "_tag",
        "_weights",
    )

    def __init__(
        self,
        names: tuple[str, ...],
        weights: tuple[int, ...],
        function: str,
        distribution: str,
        tag: str,
        points: list[int],
        owners: list[int],
        slots: list[int],
    ) -> None:
        """Use :meth:`build`, which validates the shards and computes the continuum."""
        self._names = names
        self._weights = weights
        self._function = function
        self._distribution = distribution
        self._tag = tag
        # Hash function of the hashed part.
        self._hcode = HASH_CODES[function]
        # Hash-tag delimiters as 1-byte strings; _open is None when tags are disabled.
        tag_bytes = tag.encode()
        self._open: bytes | None = tag_bytes[:1] or None
        self._close = tag_bytes[1:]
        self._open_byte: i64 = tag_bytes[0] if tag_bytes else -1
        self._close_byte: i64 = tag_bytes[1] if tag_bytes else -1
        # ketama: sorted continuum values plus a 2**32 sentinel, and the shard index of each
        # (the sentinel repeats the first point's shard, which implements the wrap). Empty for
        # modula.
        self._points = points
        self._owners = owners
        # ketama look-up table: _first[h >> _shift] is the first point >= the lowest hash of
        # h's bucket, so a look-up walks the few points inside one bucket instead of
        # bisecting the continuum (about four buckets per point, at most 2**14 buckets)
        bits = 4
        while bits < 14 and (1 << bits) < 4 * len(points):
            bits += 1
        self._shift: i64 = 32 - bits
        first: list[int] = []
        at = 0
        for b in range(1 << bits if points else 0):
            while points[at] < b << self._shift:
                at += 1
            first.append(at)
        self._first = first
        # modula: the shard index of every slot, and the slot count. Empty / 0 for ketama.
        self._slots = slots
        self._nslots = len(slots)
        # shard_index cache: key -> index. The only mutable state; never shared between rings.
        self._cache: dict[bytes, int] = {}

    # The public fields are read-only: a ring never changes once built.
    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def weights(self) -> tuple[int, ...]:
        return self._weights

    @property
    def function(self) -> str:
        return self._function

    @property
    def distribution(self) -> str:
        return self._distribution

    @property
    def tag(self) -> str:
        return self._tag

    @classmethod
    def build(
        cls,
        shards: Sequence[tuple[object, object]],
        *,
        function: str = "fnv1a_64",
        distribution: str = "ketama",
        tag: str = "{}",
    ) -> Ring:
        """A ring over ``shards`` (name, weight) pairs in any order.

        Raises ValueError for no shards, an empty or duplicate name, a weight that is not a
        positive int, an unknown function or distribution, or a tag that is not "" or two bytes.
        """
        if not shards:
            raise ValueError("a ring needs at least one shard")
        if function not in HASH_FUNCTIONS:
            raise ValueError(f"unknown hash function {function!r}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}")
        tag_bytes = tag.encode()
        if len(tag_bytes) not in (0, 2):
            raise ValueError(f'hash tag must be "" or two single-byte characters, not {tag!r}')
        weight_of: dict[str, int] = {}
        for name, weight in shards:
            if not isinstance(name, str) or not name:
                raise ValueError(f"shard name must be a non-empty string, not {name!r}")
            if name in weight_of:
                raise ValueError(f"duplicate shard name {name!r}")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(f"shard {name!r}: weight must be a positive int, not {weight!r}")
            weight_of[name] = weight
        names = tuple(sorted(weight_of))
        weights = tuple(weight_of[name] for name in names)

        points: list[int] = []
        owners: list[int] = []
        slots: list[int] = []
        if distribution == "ketama":
            total = sum(weights)
            continuum: list[tuple[int, int]] = []
            for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
                npoints = _ketama_points(weight, total, len(names))
                prefix = name.encode()
                for j in range(npoints // _KETAMA_POINTS_PER_HASH):
                    digest = md5(b"%s-%d" % (prefix, j)).digest()
                    continuum.extend((value, index) for value in _DIGEST_WORDS.unpack(digest))
            continuum.sort()
            points = [value for value, _ in continuum]
            owners = [index for _, index in continuum]
            points.append(1 << 32)
            owners.append(owners[0])
        else:
            by_length = sorted(range(len(names)), key=lambda i: (len(names[i].encode()), names[i]))
            for index in by_length:
                slots.extend([index] * weights[index])

        return cls(names, weights, function, distribution, tag, points, owners, slots)

    def __repr__(self) -> str:
        return (
            f"<Ring {self.distribution}/{self.function} tag={self.tag!r} "
            f"shards={dict(zip(self.names, self.weights, strict=True))}>"
        )

    @property
    def points(self) -> int:
        """Continuum points (ketama) or slots (modula)."""
        return len(self._points) - 1 if self.distribution == "ketama" else self._nslots

    def shard_index(self, key: bytes) -> int:
        """Index into ``names`` of the shard that owns ``key``."""
        if COMPILED:
            return self._locate(key)  # hashing compiled is faster than a cache lookup
        index = self._cache.get(key)
        if index is None:
            index = self._locate(key)
            if len(key) <= CACHE_MAX_KEY_LEN:
                cache = self._cache
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[key] = index
        return index

    def shard_name(self, key: bytes) -> str:
        """Name of the shard that owns ``key``."""
        return self.names[self.shard_index(key)]

    def hashed_part(self, key: bytes) -> bytes:
        """The part of ``key`` that is hashed (its hash-tag content, or the whole key)."""
        return hash_tag(key, self.tag.encode())

    def _locate(self, key: bytes) -> int:
        """shard_index without the cache."""
        if self._open is not None:
            key = tag_part(key, self._open_byte, self._close_byte)
        h: i64 = hash_by_code(self._hcode, key)
        if self._nslots:
            return self._slots[h % self._nslots]
        # the first continuum point >= h (bisect_left, from h's bucket of the table: the
        # 2**32 sentinel ends every walk)
        points = self._points
        lo: i64 = self._first[h >> self._shift]
        while points[lo] < h:
            lo += 1
        return self._owners[lo]

    def _segments(self) -> list[tuple[int, int]]:
        """ketama: (last hash, shard index) of each run of hashes owned by one point, in order.

        Hashes ``prev_last + 1 .. last`` belong to the shard; the runs cover ``0 .. 2**32 - 1``.
        """
        return list(zip(self._points, self._owners, strict=True))

    def shares(self) -> dict[str, float]:
        """Share of the key space owned by each shard (summing to 1), exactly."""
        space = 1 << HASH_BITS[self.function]
        counts = [0] * len(self.names)
        if self._nslots:
            slots, nslots = self._slots, self._nslots
            base, extra = divmod(space, nslots)
            for slot in range(nslots):
                counts[slots[slot]] += base + (slot < extra)
        else:
            previous = -1
            for last, owner in self._segments():
                counts[owner] += _overlap(previous, last, space)
                previous = last
        return {name: count / space for name, count in zip(self.names, counts, strict=True)}


def _overlap(previous: int, last: int, space: int) -> int:
    """How many hashes ``previous + 1 .. last`` are below ``space``."""
    return max(0, min(last, space - 1) - previous)


def moved_share(old: Ring, new: Ring) -> tuple[float, dict[str, float]]:
    """Share of the key space that changes shard (by name) between ``old`` and ``new``.

    Returns the total and, per ``old`` shard name, the share of the whole key space that leaves
    that shard (so the values sum to the total). Exact when both rings use the same hash function
    (and, for two modula rings, the slot counts' least common multiple is at most 2**22);
    otherwise estimated from :data:`SAMPLE_KEYS` deterministic pseudo-random keys. The hash tag is
    not modelled: the figure is for keys without tags (a tag change also moves tagged keys).
    """
    moved = [0.0] * len(old.names)
    if old.function == new.function and old.distribution == new.distribution == "ketama":
        space = 1 << HASH_BITS[old.function]
        counts = _moved_ketama(old, new, space)
        moved = [count / space for count in counts]
    elif (
        old.function == new.function
        and old.distribution == new.distribution == "modula"
        and math.lcm(old._nslots, new._nslots) <= _MAX_EXACT_MODULUS
    ):
        space = 1 << HASH_BITS[old.function]
        counts = _moved_modula(old, new, space)
        moved = [count / space for count in counts]
    else:
        rng = random.Random(0x5EED)
        for _ in range(SAMPLE_KEYS):
            key = b"%x" % rng.getrandbits(64)
            before = old._locate(key)
            if old.names[before] != new.names[new._locate(key)]:
                moved[before] += 1
        moved = [count / SAMPLE_KEYS for count in moved]
    return sum(moved), dict(zip(old.names, moved, strict=True))


def _moved_ketama(old: Ring, new: Ring, space: int) -> list[int]:
    """Per old shard index: how many hashes below ``space`` change shard name (ketama rings)."""
    old_points, old_owners = old._points, old._owners
    new_points, new_owners = new._points, new._owners
    translate = [new.names.index(name) if name in new.names else -1 for name in old.names]
    counts = [0] * len(old.names)
    previous = -1
    # Between two consecutive boundaries of either continuum both owners are constant; the
    # owner of a run is the owner of its last hash.
    for last in sorted(set(old_points) | set(new_points)):
        if previous >= space - 1:
            break
        owner = old_owners[bisect_left(old_points, last)]
        if translate[owner] != new_owners[bisect_left(new_points, last)]:
            counts[owner] += _overlap(previous, last, space)
        previous = last
    return counts


def _moved_modula(old: Ring, new: Ring, space: int) -> list[int]:
    """Per old shard index: how many hashes below ``space`` change shard name (modula rings)."""
    modulus = math.lcm(old._nslots, new._nslots)
    base, extra = divmod(space, modulus)
    translate = [new.names.index(name) if name in new.names else -1 for name in old.names]
    counts = [0] * len(old.names)
    old_slots, old_n = old._slots, old._nslots
    new_slots, new_n = new._slots, new._nslots
    for residue in range(modulus):
        owner = old_slots[residue % old_n]
        if translate[owner] != new_slots[residue % new_n]:
            counts[owner] += base + (residue < extra)
    return counts
