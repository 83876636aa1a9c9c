"""Ring: ketama and modula placement, shares and moved_share.

Exact placement against nutcracker itself is in test_nutcracker_compat.py; these are the
properties that hold for any correct ring.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shardproxy.routing import ring as ring_module
from shardproxy.routing.hashing import HASH_FUNCTIONS
from shardproxy.routing.ring import Ring, moved_share

SAMPLE = 100_000


def _keys(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [b"%x" % rng.getrandbits(64) for _ in range(count)]


def _equal(count: int) -> list[tuple[str, int]]:
    return [(f"shard-{i}", 1) for i in range(count)]


def _sampled_move(old: Ring, new: Ring, keys: list[bytes]) -> float:
    return sum(old.shard_name(key) != new.shard_name(key) for key in keys) / len(keys)


def test_names_sorted_and_input_order_irrelevant() -> None:
    shards = [("charlie", 1), ("alpha", 3), ("bravo", 2), ("s10", 1), ("s9", 1)]
    ring = Ring.build(shards)
    assert ring.names == ("alpha", "bravo", "charlie", "s10", "s9")
    assert ring.weights == (3, 2, 1, 1, 1)
    for distribution in ("ketama", "modula"):
        one = Ring.build(shards, distribution=distribution)
        other = Ring.build(list(reversed(shards)), distribution=distribution)
        assert one.names == other.names
        for key in _keys(2000):
            assert one.shard_index(key) == other.shard_index(key)
            assert one.shard_name(key) == one.names[one.shard_index(key)]


def test_deterministic_across_builds() -> None:
    keys = _keys(2000, seed=2)
    first = Ring.build(_equal(5), function="md5")
    again = Ring.build(_equal(5), function="md5")
    assert [first.shard_index(k) for k in keys] == [again._locate(k) for k in keys]


@pytest.mark.parametrize(
    ("weights", "points"),
    [
        ((1, 1, 1, 1), 640),
        ((1, 1, 1), 480),
        ((1, 1, 5), 68 + 68 + 340),  # floor(float32(1/7 * 160 / 4 * 3)) * 4 = 68
        ((1, 2, 3, 4), 64 + 128 + 192 + 256),
    ],
)
def test_ketama_points(weights: tuple[int, ...], points: int) -> None:
    ring = Ring.build([(f"s{i}", w) for i, w in enumerate(weights)])
    assert ring.points == points


@pytest.mark.parametrize(
    ("weights", "tolerance"),
    [
        ((1, 1, 1, 1), 0.15),
        ((1, 2, 3, 4), 0.15),
        ((1,) * 8, 0.15),
        ((1, 1), 0.15),
        # Small weights get few points (a weight-1 shard here has 56), so more spread.
        ((5, 1, 1, 2, 3, 8, 2, 1, 1, 4), 0.25),
    ],
)
def test_shares_respect_weights(weights: tuple[int, ...], tolerance: float) -> None:
    ring = Ring.build([(f"s{i:02d}", w) for i, w in enumerate(weights)])
    shares = ring.shares()
    total = sum(weights)
    for name, weight in zip(ring.names, ring.weights, strict=True):
        expected = weight / total
        assert abs(shares[name] - expected) < tolerance * expected, (name, shares[name], expected)


@pytest.mark.parametrize("function", ["fnv1a_64", "md5", "murmur", "one_at_a_time", "crc32a"])
def test_keys_follow_shares(function: str) -> None:
    ring = Ring.build([("a", 1), ("b", 2), ("c", 3), ("d", 4)], function=function)
    counts = Counter(ring.shard_name(key) for key in _keys(SAMPLE, seed=3))
    for name, share in ring.shares().items():
        assert abs(counts[name] / SAMPLE - share) < 0.01, (name, counts[name] / SAMPLE, share)


@pytest.mark.parametrize("distribution", ["ketama", "modula"])
@pytest.mark.parametrize("function", sorted(HASH_FUNCTIONS))
def test_shares_sum_to_one(distribution: str, function: str) -> None:
    ring = Ring.build([("a", 1), ("b", 3), ("c", 2)], function=function, distribution=distribution)
    shares = ring.shares()
    assert set(shares) == set(ring.names)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= share <= 1.0 for share in shares.values())


def test_crc32_ketama_puts_nearly_everything_on_one_shard() -> None:
    # crc32 is 15 bits wide: all keys hash below the first few continuum points (as nutcracker).
    ring = Ring.build(_equal(4), function="crc32")
    shares = ring.shares()
    owner = max(shares, key=lambda name: shares[name])
    assert shares[owner] > 0.9
    counts = Counter(ring.shard_name(key) for key in _keys(20_000, seed=4))
    for name, share in shares.items():
        assert abs(counts[name] / 20_000 - share) < 0.02


def test_modula_slot_order_is_nutcrackers() -> None:
    # nutcracker orders servers by name length first, then bytes: s1, s9, s10.
    ring = Ring.build([("s10", 2), ("s9", 1), ("s1", 1)], distribution="modula", tag="")
    assert ring.names == ("s1", "s10", "s9")
    slots = ["s1", "s9", "s10", "s10"]
    assert ring.points == 4
    for key in _keys(2000, seed=5):
        assert ring.shard_name(key) == slots[HASH_FUNCTIONS["fnv1a_64"](key) % 4]


def test_modula_shares_exact() -> None:
    ring = Ring.build([("a", 1), ("b", 2)], distribution="modula")
    shares = ring.shares()
    space = 1 << 32
    assert shares["a"] == (space // 3 + 1) / space  # 2**32 % 3 == 1: slot 0 gets one more
    assert shares["b"] == 2 * (space // 3) / space


def test_hash_tags() -> None:
    ring = Ring.build(_equal(8))
    assert ring.hashed_part(b"{user42}:profile") == b"user42"
    assert ring.hashed_part(b"plain") == b"plain"
    for key in _keys(200, seed=6):
        tagged = [b"{%s}:a" % key, b"{%s}:b" % key, b"x:{%s}" % key, key]
        assert len({ring.shard_index(k) for k in tagged}) == 1
    untagged = Ring.build(_equal(8), tag="")
    assert untagged.hashed_part(b"{user42}:profile") == b"{user42}:profile"
    spread = {untagged.shard_index(b"{same}:%d" % i) for i in range(100)}
    assert len(spread) > 1
    dollars = Ring.build(_equal(8), tag="$$")
    assert dollars.hashed_part(b"a$b$c") == b"b"


def test_tagged_and_empty_keys_are_placed_by_their_hashed_part() -> None:
    ring = Ring.build(_equal(3), function="murmur")
    assert ring.hashed_part(b"{abc}def") == b"abc"
    assert ring.hashed_part(b"{}") == b"{}"
    assert ring.shard_name(b"{abc}def") == ring.shard_name(b"abc")
    assert HASH_FUNCTIONS["murmur"](b"") == 0
    assert ring.shard_name(b"") in ring.names


def test_moved_share_identical_rings_move_nothing() -> None:
    for distribution in ("ketama", "modula"):
        old = Ring.build(_equal(3), distribution=distribution)
        new = Ring.build(list(reversed(_equal(3))), distribution=distribution)
        total, per_shard = moved_share(old, new)
        assert total == 0.0
        assert per_shard == dict.fromkeys(old.names, 0.0)


def test_moved_share_adding_a_fourth_shard_moves_a_quarter() -> None:
    old = Ring.build(_equal(3))
    new = Ring.build(_equal(4))
    total, per_shard = moved_share(old, new)
    assert abs(total - 0.25) < 0.05
    assert set(per_shard) == set(old.names)
    assert sum(per_shard.values()) == pytest.approx(total)
    # Keys only move to the new shard: the same as the new shard's share.
    assert total == pytest.approx(new.shares()["shard-3"])


def test_moved_share_removing_a_shard_moves_only_its_keys() -> None:
    # With equal weights every shard keeps its 160 points, so only the removed shard's keys move.
    old = Ring.build([("a", 1), ("b", 1), ("c", 1), ("d", 1)])
    new = Ring.build([("a", 1), ("b", 1), ("d", 1)])
    total, per_shard = moved_share(old, new)
    assert per_shard["a"] == per_shard["b"] == per_shard["d"] == 0.0
    assert total == per_shard["c"] == pytest.approx(old.shares()["c"])


def test_moved_share_removing_a_weighted_shard_also_rescales_the_others() -> None:
    # nutcracker gives each shard points in proportion to weight * shard count / total weight,
    # so removing a shard of unequal weight changes the others' point counts too.
    old = Ring.build([("a", 1), ("b", 2), ("c", 1), ("d", 3)])
    new = Ring.build([("a", 1), ("b", 2), ("d", 3)])
    total, per_shard = moved_share(old, new)
    assert per_shard["c"] == pytest.approx(old.shares()["c"])
    assert 0.0 < total - per_shard["c"] < 0.1


def test_equal_weights_can_get_156_points() -> None:
    # float32 rounding in nutcracker: 1/25 * 160 / 4 * 25 is just below 40, so 39 * 4 points.
    assert Ring.build(_equal(25)).points == 25 * 156
    assert Ring.build(_equal(24)).points == 24 * 160


def test_moved_share_modula_exact() -> None:
    old = Ring.build(_equal(3), distribution="modula")
    new = Ring.build(_equal(4), distribution="modula")
    total, _ = moved_share(old, new)
    # Residues mod 12: a key stays only when hash % 3 == hash % 4, i.e. hash % 12 in {0, 1, 2}.
    assert total == pytest.approx(0.75, abs=1e-6)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(Ring.build(_equal(3)), Ring.build(_equal(4)), id="ketama-add-shard"),
        pytest.param(
            Ring.build([("a", 1), ("b", 1), ("c", 1)], function="md5"),
            Ring.build([("a", 2), ("b", 1), ("c", 3)], function="md5"),
            id="ketama-reweight",
        ),
        pytest.param(
            Ring.build([("a", 1), ("b", 2)], distribution="modula"),
            Ring.build([("a", 1), ("b", 2), ("c", 2)], distribution="modula"),
            id="modula-add-shard",
        ),
        pytest.param(
            Ring.build(_equal(4), function="fnv1a_64"),
            Ring.build(_equal(4), function="murmur"),
            id="sampled-function-change",
        ),
        pytest.param(
            Ring.build(_equal(4)),
            Ring.build(_equal(4), distribution="modula"),
            id="sampled-distribution-change",
        ),
    ],
)
def test_moved_share_agrees_with_sampling(old: Ring, new: Ring) -> None:
    total, per_shard = moved_share(old, new)
    assert sum(per_shard.values()) == pytest.approx(total)
    sampled = _sampled_move(old, new, _keys(SAMPLE, seed=7))
    assert abs(total - sampled) < 0.01, (total, sampled)


def test_shard_index_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_module, "CACHE_LIMIT", 100)
    ring = Ring.build(_equal(5))
    keys = _keys(1000, seed=8)
    for key in keys:
        assert ring.shard_index(key) == ring._locate(key)
        assert len(ring._cache) <= 100
    for key in keys:  # hits and misses agree
        assert ring.shard_index(key) == ring._locate(key)
    long_key = b"k" * (ring_module.CACHE_MAX_KEY_LEN + 1)
    ring.shard_index(long_key)
    assert long_key not in ring._cache


def test_ring_is_immutable() -> None:
    ring = Ring.build(_equal(2))
    with pytest.raises(AttributeError):
        ring.names = ("x",)
    with pytest.raises(TypeError):
        Ring()


@pytest.mark.parametrize(
    ("shards", "options"),
    [
        ([], {}),
        ([("a", 1), ("a", 2)], {}),
        ([("", 1)], {}),
        ([("a", 0)], {}),
        ([("a", -1)], {}),
        ([("a", True)], {}),
        ([("a", 1.5)], {}),
        ([("a", 1)], {"function": "sha1"}),
        ([("a", 1)], {"distribution": "random"}),
        ([("a", 1)], {"tag": "{"}),
        ([("a", 1)], {"tag": "{}}"}),
        ([("a", 1)], {"tag": "«»"}),
    ],
)
def test_build_rejects(shards: list[tuple[str, object]], options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Ring.build(shards, **options)
