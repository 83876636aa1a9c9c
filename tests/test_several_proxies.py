"""Two proxies with ``failover.mode: promote`` in front of one fleet (README: Running several
proxies), against real servers: one shard's primary is SIGKILLed while both proxies write to
it, and both must end up writing to the same new primary, with exactly one node of the shard
reporting ``role:master``. The times to converge are printed (run with ``-s``).

Each shard has two replicas, so the proxies have a choice to agree on (with one replica there
is only one candidate). The old primary then comes back, empty, and must become a replica of
the new primary without either proxy changing its mind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fleet, Proxy, RedisServer, free_port
from tests.test_failover import (
    Writer,
    failovers,
    keys_by_shard,
    missing_on,
    replication,
    restart,
    ring_of,
    shard_view,
    wait_all_up,
    wait_for,
)

MakeProxy = Callable[[dict[str, object]], Proxy]


@pytest.fixture
def fleet3(tmp_path: Path) -> Iterator[Fleet]:
    """Two shards of a primary and two replicas each, every replica linked."""
    f = Fleet(tmp_path / "fleet", shards=2, replicas=2).start()
    try:
        f.wait_replication()
        yield f
    finally:
        f.stop()


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for w in started:
        w.halt.set()
    for w in started:
        w.join(15)


def roles(servers: list[RedisServer]) -> dict[str, dict[str, Any]]:
    """What each live server of a shard says about itself (INFO replication)."""
    out: dict[str, dict[str, Any]] = {}
    for srv in servers:
        r = replication(srv)
        out[srv.address] = {
            "role": r["role"],
            "master": f"{r['master_host']}:{r['master_port']}" if r["role"] == "slave" else None,
            "link": r.get("master_link_status"),
        }
    return out


def one_primary(servers: list[RedisServer]) -> str | None:
    """The shard's only master if exactly one server says master and every other one is a
    replica of it with its link up; otherwise None."""
    seen = roles(servers)
    masters = [a for a, r in seen.items() if r["role"] == "master"]
    if len(masters) != 1:
        return None
    others = [r for a, r in seen.items() if a != masters[0]]
    if all(r["master"] == masters[0] and r["link"] == "up" for r in others):
        return masters[0]
    return None


def test_two_promote_proxies_converge_on_one_primary(
    fleet3: Fleet, make_proxy: MakeProxy, writers: list[Writer]
) -> None:
    topo = fleet3.topology(
        admin=f"127.0.0.1:{free_port()}",
        failover={"mode": "promote"},
        health={"interval_ms": 200, "failures": 2, "successes": 1},
        timeouts={"connect_ms": 300, "command_ms": 500},
    )
    p1 = make_proxy(topo)
    # the same file, only its own ports (two hosts behind a load balancer)
    p2 = make_proxy(
        {**topo, "listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"}
    )
    wait_all_up(p1)
    wait_all_up(p2)
    ring = ring_of(fleet3)
    victim = fleet3.shards[0]
    old = victim.primary
    survivors = list(victim.replicas)
    w1 = Writer(p1, ring, "p1")
    w2 = Writer(p2, ring, "p2")
    for w in (w1, w2):
        writers.append(w)
        w.start()
    time.sleep(0.8)

    old.kill()
    t_kill = time.monotonic()
    switched: dict[str, float] = {}
    agreed: float | None = None
    fleet_ok: float | None = None
    views: list[tuple[float, str, str]] = []  # (t, proxy, primary it names), each change

    def converged() -> bool:
        nonlocal agreed, fleet_ok
        now = time.monotonic() - t_kill
        primaries = {}
        for name, p in (("p1", p1), ("p2", p2)):
            primaries[name] = shard_view(p, victim.name)["primary"]
            last = next((v for t, n, v in reversed(views) if n == name), old.address)
            if primaries[name] != last:
                views.append((now, name, primaries[name]))
            if primaries[name] != old.address and name not in switched:
                switched[name] = now
        if agreed is None and primaries["p1"] == primaries["p2"] != old.address:
            agreed = now
        if fleet_ok is None and one_primary(survivors) is not None:
            fleet_ok = time.monotonic() - t_kill
        return agreed is not None and fleet_ok is not None

    wait_for("both proxies name one new primary, and the fleet has one", converged, 15, 0.01)
    new_address = shard_view(p1, victim.name)["primary"]
    new = next(s for s in survivors if s.address == new_address)

    def writes_ok(w: Writer) -> bool:
        return any(o.ok and o.shard == victim.name and o.t0 > t_kill for o in list(w.ops))

    wait_for(
        "writes through both proxies succeed again", lambda: writes_ok(w1) and writes_ok(w2), 10
    )
    time.sleep(2.0)  # ten more health rounds: nobody changes its mind
    for w in (w1, w2):
        w.finish()

    first_ok = {
        name: min(o.t1 for o in w.ops if o.ok and o.shard == victim.name and o.t0 > t_kill) - t_kill
        for name, w in (("p1", w1), ("p2", w2))
    }
    counts = {
        name: {r: failovers(p, victim.name, r) for r in ("success", "adopted", "failure")}
        for name, p in (("p1", p1), ("p2", p2))
    }
    print(
        f"\n[several proxies] kill -> p1 names a new primary {switched['p1'] * 1000:.0f} ms, "
        f"p2 {switched['p2'] * 1000:.0f} ms; both name {new.address} {agreed * 1000:.0f} ms; "
        f"one master in the fleet {fleet_ok * 1000:.0f} ms; first acknowledged write through "
        f"p1 {first_ok['p1'] * 1000:.0f} ms, p2 {first_ok['p2'] * 1000:.0f} ms"
    )
    print(f"[several proxies] views: {views}; failovers: {counts}")
    print(f"[several proxies] fleet: {roles(survivors)}")

    # one view, held: each proxy switched once, to the same node, and kept it
    assert [v for _, _, v in views] == [new.address, new.address], views
    for name, p in (("p1", p1), ("p2", p2)):
        assert shard_view(p, victim.name)["primary"] == new.address, name
        assert counts[name]["success"] + counts[name]["adopted"] == 1, counts
    assert one_primary(survivors) == new.address, roles(survivors)
    assert sum(c["failure"] for c in counts.values()) == 0, counts
    assert sum(c["success"] for c in counts.values()) >= 1, counts
    # after both switched, every write through either proxy is acknowledged by the new primary
    for name, w in (("p1", w1), ("p2", w2)):
        late = [o for o in w.ops if o.shard == victim.name and o.t0 > t_kill + first_ok[name]]
        assert late and all(o.ok for o in late), [o.error for o in late if not o.ok][:3]
        assert missing_on(new, [o.key for o in late]) == [], f"{name}'s writes are not on {new}"
    for s in fleet3.shards[1:]:
        assert w1.errors(s.name) == [] and w2.errors(s.name) == []

    # the old primary returns empty, as a master: both proxies keep the new primary, and it
    # becomes a replica of the new primary (two proxies may both send it REPLICAOF: same one)
    t_back = time.monotonic()
    restart(old)
    wait_for(
        "old primary replicates the new one",
        lambda: one_primary([*survivors, old]) == new.address,
        10,
        0.05,
    )
    rejoined = time.monotonic() - t_back
    time.sleep(1.0)
    print(
        f"[several proxies] old primary restarted -> replica of {new.address} in {rejoined:.2f} s"
    )
    assert one_primary([*survivors, old]) == new.address, roles([*survivors, old])
    for p in (p1, p2):
        view = shard_view(p, victim.name)
        assert view["primary"] == new.address, view
        assert sorted(view["replicas"]) == sorted(
            s.address for s in [*survivors, old] if s is not new
        )
    keys = keys_by_shard(ring, "after")[victim.name][:20]
    with p1.client(protocol=2) as c1, p2.client(protocol=2) as c2:
        for i, k in enumerate(keys):
            assert (c1 if i % 2 else c2).set(k, k)
    assert missing_on(new, keys) == []
    assert time.monotonic() - t_back < 15
    for p in (p1, p2):  # the return changed no proxy's mind
        assert failovers(p, victim.name, "success") + failovers(p, victim.name, "adopted") == 1
