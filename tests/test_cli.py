"""The command line, run as operators run it: ``python -m shardproxy ...`` in a subprocess."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

import shardproxy
from shardproxy.app import cli
from shardproxy.config import load
from shardproxy.routing.ring import Ring

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "shardproxy.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardproxy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def topology(tmp_path: pathlib.Path, name: str, shards: int, **extra: str) -> str:
    """A file with ``shards`` equal shards s1..sN (primary on port 7000+2i-1)."""
    lines = [f"{key}: {value}" for key, value in extra.items()] + ["shards:"]
    for i in range(1, shards + 1):
        lines += [f"  - name: s{i}", f"    primary: 127.0.0.1:{7000 + 2 * i - 1}"]
        lines += [f"    replicas: [127.0.0.1:{7000 + 2 * i}]"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def demo_ring() -> Ring:
    config = load(str(DEMO))
    return Ring.build(
        [(s.name, s.weight) for s in config.shards],
        function=config.hash.function,
        distribution=config.hash.distribution,
        tag=config.hash.tag,
    )


# --- --version and usage --------------------------------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"shardproxy {shardproxy.__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: shardproxy" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check"]) == 2  # -c is required
    assert "-c/--config" in capsys.readouterr().err


# --- check ----------------------------------------------------------------------------------------


def test_check_valid() -> None:
    result = run("check", "-c", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    for name, primary, replica in [
        ("s1", "127.0.0.1:7001", "127.0.0.1:7002"),
        ("s2", "127.0.0.1:7003", "127.0.0.1:7004"),
        ("s3", "127.0.0.1:7005", "127.0.0.1:7006"),
    ]:
        (line,) = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert line.split()[1:4] == ["1", primary, replica]
    assert "127.0.0.1:6380" in out
    assert "127.0.0.1:9121" in out
    assert "fnv1a_64" in out and "ketama" in out
    # each shard's share of the keyspace, as the ring computes it
    for name, share in demo_ring().shares().items():
        assert f"{share * 100:.2f}%" in out, name


def test_check_every_shipped_example() -> None:
    for path in sorted((REPO / "config").glob("*.yaml")):
        result = run("check", "-c", str(path))
        assert result.returncode == 0, (path, result.stderr)


def test_check_invalid(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "hash: {function: nope}\n"
        "timeouts: {command_ms: 0}\n"
        "shards:\n"
        "  - {name: s1, primary: '127.0.0.1:7001'}\n"
        "  - {name: s1, primary: '127.0.0.1:7003'}\n"
    )
    result = run("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert any(line.startswith("hash.function: unknown hash function 'nope'") for line in lines)
    assert any(line.startswith("timeouts.command_ms: must be a positive integer") for line in lines)
    assert "shards[1].name: duplicate shard name 's1'" in lines


def test_check_missing_file(tmp_path: pathlib.Path) -> None:
    result = run("check", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_run_refuses_an_invalid_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("shards: []\n")
    result = run("run", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["shards: must list at least one shard"]


# --- locate ---------------------------------------------------------------------------------------

KEYS = ["foo", "bar", "user:1000", "{user1}.a", "{user1}.b", "a{b}c", "{}x", "ключ"]


def test_locate_matches_the_ring() -> None:
    result = run("locate", "-c", str(DEMO), "--json", *KEYS)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    ring = demo_ring()
    config = load(str(DEMO))
    assert [entry["key"] for entry in found] == KEYS
    for entry in found:
        key = entry["key"].encode()
        assert entry["shard"] == ring.shard_name(key)
        assert entry["hashed"] == ring.hashed_part(key).decode()
        shard = config.shard(entry["shard"])
        assert entry["primary"] == str(shard.primary)
        assert entry["replicas"] == [str(r) for r in shard.replicas]
    by_key = {entry["key"]: entry for entry in found}
    assert by_key["{user1}.a"]["hashed"] == "user1"
    assert by_key["{user1}.a"]["shard"] == by_key["{user1}.b"]["shard"]
    assert by_key["a{b}c"]["hashed"] == "b"


def test_locate_table() -> None:
    result = run("locate", "-c", str(DEMO), "{user1}.a", "{user1}.b", "foo")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["key", "hashed", "shard", "primary", "replicas"]
    ring = demo_ring()
    for row, key in zip(rows, ["{user1}.a", "{user1}.b", "foo"], strict=True):
        cells = row.split()
        assert cells[0] == key
        assert cells[2] == ring.shard_name(key.encode())
    # aligned: every row's shard column starts where the header's does
    column = header.index("shard")
    assert all(row[column:].split()[0] == row.split()[2] for row in rows)


# --- diff -----------------------------------------------------------------------------------------


def test_diff_adding_a_shard(tmp_path: pathlib.Path) -> None:
    old = topology(tmp_path, "old.yaml", 3)
    new = topology(tmp_path, "new.yaml", 4)
    result = run("diff", old, new)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "shards added: s4" in out
    assert "shards removed: none" in out
    (total_line,) = [line for line in out.splitlines() if line.split()[:1] == ["total"]]
    total = float(total_line.split()[1].rstrip("%")) / 100
    assert 0.2 < total < 0.3  # ketama moves about 1/4 of the keys to the new shard

    result = run("diff", "--json", old, new)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [s["name"] for s in report["shards_added"]] == ["s4"]
    assert report["shards_removed"] == []
    assert report["weight_changes"] == {}
    assert report["node_changes"] == {}
    moved = report["moved_share"]
    assert 0.2 < moved["total"] < 0.3
    assert f"{moved['total'] * 100:.2f}%" in total_line
    assert set(moved["by_shard"]) == {"s1", "s2", "s3"}
    assert sum(moved["by_shard"].values()) == pytest.approx(moved["total"])


def test_diff_nodes_weights_and_settings(tmp_path: pathlib.Path) -> None:
    old = topology(tmp_path, "old.yaml", 2)
    new_path = tmp_path / "new.yaml"
    new_path.write_text(
        "timeouts: {command_ms: 250}\n"
        "shards:\n"
        "  - {name: s1, primary: '127.0.0.1:7002', replicas: ['127.0.0.1:7001']}\n"
        "  - {name: s2, weight: 2, primary: '127.0.0.1:7003', replicas: ['127.0.0.1:7004']}\n"
    )
    result = run("diff", "--json", old, str(new_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["node_changes"] == {
        "s1": {
            "primary": ["127.0.0.1:7001", "127.0.0.1:7002"],
            "replicas_added": ["127.0.0.1:7001"],
            "replicas_removed": ["127.0.0.1:7002"],
        }
    }
    assert report["weight_changes"] == {"s2": {"old": 1, "new": 2}}
    assert report["setting_changes"] == {"timeouts.command_ms": {"old": "1000", "new": "250"}}
    # a failover-style swap moves no key; only the weight change does
    assert report["moved_share"]["by_shard"]["s2"] == 0.0
    assert 0 < report["moved_share"]["total"] < 0.5

    text = run("diff", old, str(new_path)).stdout
    assert "s1: primary 127.0.0.1:7001 -> 127.0.0.1:7002" in text
    assert "s2: 1 -> 2" in text
    assert "timeouts.command_ms: 1000 -> 250" in text


def test_diff_same_file_moves_nothing() -> None:
    result = run("diff", "--json", str(DEMO), str(DEMO))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["moved_share"]["total"] == 0.0


def test_diff_invalid_file_names_it(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("shards: []\n")
    result = run("diff", str(DEMO), str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{bad}: shards: must list at least one shard"]
