"""Live reload and zero-miss resharding, against real redis-server processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
import yaml

from shardproxy.routing.ring import Ring
from tests.conftest import REPO, Fleet, Proxy, RedisServer, free_port


def write_topology(p: Proxy, topology: dict[str, object]) -> None:
    p.topology = topology
    p.path.write_text(yaml.safe_dump(topology))


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def scrape_value(p: Proxy, sample: str) -> float:
    return p.scrape().get(sample, 0.0)


class Load:
    """Clients that keep writing and reading unique keys and check every reply."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.ops = 0
        self.wrong = 0
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        self.clients: list[redis.Redis] = []

    def _run(self, n: int) -> None:
        c = redis.Redis(port=self.port, protocol=3 if n % 2 else 2, socket_timeout=10)
        self.clients.append(c)
        pid_before = c.client_id()
        i = 0
        try:
            while not self.stop.is_set():
                key = f"load:{n}:{i}"
                try:
                    c.set(key, i)
                    if c.get(key) != str(i).encode():
                        self.wrong += 1
                    self.ops += 2
                except redis.RedisError as exc:
                    self.errors.append(f"{key}: {exc!r}")
                i += 1
            # the same connection the whole time: no reconnect happened
            assert c.client_id() == pid_before
        except AssertionError:
            self.errors.append(f"client {n} was reconnected")
        finally:
            c.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_reload_under_load_add_shard_remove_replica_change_weights(
    own_fleet: Fleet, make_proxy: object, tmp_path: Path
) -> None:
    topo = own_fleet.topology(admin=f"127.0.0.1:{free_port()}", migration={"window_s": 30})
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    extra = RedisServer(tmp_path).start()
    try:
        with Load(p.port) as load:
            accepted_before = scrape_value(p, "shardproxy_client_connections_accepted_total")
            steps = []
            # 1. add a shard (SIGHUP)
            shards = list(topo["shards"])  # type: ignore[call-overload]
            shards.append({"name": "s4", "primary": extra.address})
            write_topology(p, {**topo, "shards": shards})
            assert p.proc is not None
            p.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda: scrape_value(p, 'shardproxy_config_reloads_total{result="success"}') == 1,
                what="SIGHUP reload",
            )
            steps.append("add shard")
            time.sleep(0.5)
            # 2. remove a replica (POST /reload)
            shards[0] = {**shards[0], "replicas": []}
            write_topology(p, {**topo, "shards": shards})
            status, body = p.http("/reload", method="POST")
            assert status == 200, body
            result = json.loads(body)
            assert result["result"] == "success"
            assert result["nodes_removed"] == [own_fleet.shards[0].replicas[0].address]
            steps.append("remove replica")
            time.sleep(0.5)
            # 3. change weights
            shards[1] = {**shards[1], "weight": 3}
            write_topology(p, {**topo, "shards": shards})
            status, body = p.http("/reload", method="POST")
            assert status == 200 and json.loads(body)["keyspace_moved"] > 0, body
            steps.append("change weights")
            time.sleep(0.5)
        print(f"reloads under load: {steps}; {load.ops} commands, {len(load.errors)} errors, "
              f"{load.wrong} wrong replies")  # fmt: skip
        assert load.errors == []
        assert load.wrong == 0
        assert load.ops > 100
        # no client connection was dropped or re-made
        assert scrape_value(p, "shardproxy_client_connections_accepted_total") == accepted_before
        topology = json.loads(p.http("/topology")[1])
        assert [s["name"] for s in topology["shards"]] == ["s1", "s2", "s3", "s4"]
        assert topology["shards"][0]["replicas"] == []
        assert topology["shards"][1]["weight"] == 3
    finally:
        extra.stop()


def test_invalid_file_changes_nothing(fleet: Fleet, make_proxy: object) -> None:
    topo = fleet.topology(admin=f"127.0.0.1:{free_port()}")
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    with p.client(protocol=2) as c:
        c.set("keep", "1")
        bad_files = {
            "bad yaml": "shards: [\n",
            "unknown key": yaml.safe_dump({**topo, "bogus": 1}),
            "duplicate node": yaml.safe_dump(
                {
                    **topo,
                    "shards": [
                        *topo["shards"],
                        {"name": "s9", "primary": topo["shards"][0]["primary"]},
                    ],
                }  # type: ignore[index]
            ),
        }
        failures = 0
        for what, text in bad_files.items():
            p.path.write_text(text)
            status, body = p.http("/reload", method="POST")
            failures += 1
            result = json.loads(body)
            assert status == 400 and result["result"] == "failure", (what, body)
            print(what, "->", result["errors"])
            if what == "unknown key":
                assert any(e.startswith("bogus: unknown key") for e in result["errors"])
            if what == "duplicate node":
                assert any(
                    "shards[3].primary" in e and "already listed" in e for e in result["errors"]
                )
            if what == "bad yaml":
                assert any("invalid YAML" in e for e in result["errors"])
            assert c.get("keep") == b"1"
        # SIGHUP with a bad file: logged, counted, nothing changes
        assert p.proc is not None
        p.proc.send_signal(signal.SIGHUP)
        failures += 1
        wait_for(
            lambda: (
                scrape_value(p, 'shardproxy_config_reloads_total{result="failure"}') == failures
            ),
            what="failure counted",
        )
        assert c.get("keep") == b"1"
        assert scrape_value(p, 'shardproxy_config_reloads_total{result="success"}') == 0
    assert "reload (SIGHUP) refused" in p.output()


def _session_store(own_fleet: Fleet, make_proxy: object, tmp_path: Path, copy: str) -> None:
    topo = own_fleet.topology(
        admin=f"127.0.0.1:{free_port()}", migration={"window_s": 120, "copy": copy, "rate": 20000}
    )
    p: Proxy = make_proxy(topo)  # type: ignore[operator]
    extra = RedisServer(tmp_path).start()
    n = 10_000
    try:
        with p.client(protocol=2) as c:
            pipe = c.pipeline(transaction=False)
            for i in range(n):
                pipe.set(f"session:{i}", f"v{i}", ex=3600 if i % 2 else 600)
            pipe.execute()
            shards = [*topo["shards"], {"name": "s4", "primary": extra.address}]  # type: ignore[misc]
            new_topo = {**topo, "shards": shards}
            write_topology(p, new_topo)
            status, body = p.http("/reload", method="POST")
            assert status == 200, body
            old_ring = Ring.build([(s.name, 1) for s in own_fleet.shards])
            new_ring = Ring.build([(s["name"], 1) for s in shards])
            moved = [
                i
                for i in range(n)
                if old_ring.shard_name(f"session:{i}".encode())
                != new_ring.shard_name(f"session:{i}".encode())
            ]
            print(
                f"{len(moved)} of {n} keys change shard ({copy} copy); reload said {json.loads(body)['keyspace_moved']:.3f}"
            )
            assert 0.15 * n < len(moved) < 0.35 * n
            if copy == "background":
                wait_for(
                    lambda: json.loads(p.http("/topology")[1])["migration"]["active"] is False,
                    60,
                    "background copy",
                )
                status_ = json.loads(p.http("/topology")[1])["migration"]
                print("background copy:", status_)
                assert status_["keys_moved_background"] == len(moved)
                # every moved key lives on its new owner and nowhere else
                with extra.client() as direct:
                    assert direct.dbsize() == len(moved)
                for s in own_fleet.shards:
                    with s.primary.client() as direct:
                        assert direct.dbsize() == sum(
                            1
                            for i in range(n)
                            if new_ring.shard_name(f"session:{i}".encode()) == s.name
                        )
            missing = 0
            ttl_off = 0
            pipe = c.pipeline(transaction=False)
            for i in range(n):
                pipe.get(f"session:{i}")
                pipe.ttl(f"session:{i}")
            replies = pipe.execute()
            for i in range(n):
                value, ttl = replies[2 * i], replies[2 * i + 1]
                if value != f"v{i}".encode():
                    missing += 1
                expected = 3600 if i % 2 else 600
                if not expected - 5 <= ttl <= expected:
                    ttl_off += 1
            print(
                f"after adding a shard: {missing} missing, {ttl_off} TTLs off by more than the test's runtime"
            )
            assert missing == 0
            assert ttl_off == 0
            if copy == "none":
                moved_metric = scrape_value(
                    p, 'shardproxy_migration_keys_moved_total{how="access"}'
                )
                assert moved_metric == len(moved)
                with extra.client() as direct:
                    assert direct.dbsize() == len(moved)
    finally:
        extra.stop()


def test_session_store_survives_adding_a_shard(
    own_fleet: Fleet, make_proxy: object, tmp_path: Path
) -> None:
    _session_store(own_fleet, make_proxy, tmp_path, "none")


def test_session_store_background_copy(
    own_fleet: Fleet, make_proxy: object, tmp_path: Path
) -> None:
    _session_store(own_fleet, make_proxy, tmp_path, "background")


def test_diff_agrees_with_what_moved(fleet: Fleet, tmp_path: Path) -> None:
    old = fleet.topology()
    new = {**old, "shards": [*old["shards"], {"name": "s4", "primary": f"127.0.0.1:{free_port()}"}]}  # type: ignore[misc]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(new))
    out = subprocess.run(
        [sys.executable, "-m", "shardproxy", "diff", "--json", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    share = json.loads(out.stdout)["moved_share"]["total"]
    old_ring = Ring.build([(s.name, 1) for s in fleet.shards])
    new_ring = Ring.build([(s["name"], 1) for s in new["shards"]])  # type: ignore[index]
    keys = [f"k:{i}:{i * 7919}".encode() for i in range(50_000)]
    actual = sum(old_ring.shard_name(k) != new_ring.shard_name(k) for k in keys) / len(keys)
    print(f"diff says {share:.4f} of the keyspace moves; {actual:.4f} of 50,000 keys did")
    assert abs(share - actual) < 0.02
