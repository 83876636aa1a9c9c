"""The benchmark tool end to end: ``python -m bench.run --quick --rounds 1`` on a real fleet.

It starts redis-server, nutcracker and two shardproxy processes itself; this test checks the
JSON it writes (every configuration, a positive rps for every target, the ratios), the chart,
and that every process it recorded is gone once it has exited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.nutcracker

CONFIGURATIONS = {
    "set-c50-P1",
    "get-c50-P1",
    "set-c200-P1",
    "get-c200-P1",
    "set-c50-P16",
    "get-c50-P16",
    "mget10-c50-P1",
    "get-read-heavy-prefer-replica",
}
TARGETS = ("direct", "nutcracker", "shardproxy")


def _running(pid: int, start_time: int) -> bool:
    """The process ``pid`` that started at ``start_time`` still exists (and is no zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[19]) == start_time and fields[0] not in ("Z", "X")


def test_quick_benchmark_writes_results_and_leaves_nothing_running(tmp_path: Path) -> None:
    for binary in ("redis-server", "redis-benchmark"):
        assert shutil.which(binary), f"{binary} is needed"
    assert shutil.which("nutcracker") or os.access("/usr/sbin/nutcracker", os.X_OK)
    out = tmp_path / "results"
    done = run_bench("bench.run", "--quick", "--rounds", "1", "--out", str(out), timeout=100)

    results = json.loads((out / "results.json").read_text())
    confs = {conf["key"]: conf for conf in results["configurations"]}
    assert set(confs) == CONFIGURATIONS
    for key, conf in confs.items():
        for target in TARGETS:
            median = conf["targets"][target]
            assert median["rps"] > 0, (key, target, conf["runs"][target])
            assert median["p50_ms"] > 0 and median["p99_ms"] >= median["p50_ms"], (key, target)
            assert median["runs_ok"] == 1 and median["runs_failed"] == 0
            assert median["cpu_us_per_request"] is not None
        for pair in ("shardproxy/nutcracker", "shardproxy/direct"):
            ratio = conf["ratios"][pair]["rps"]
            expected = (
                conf["targets"]["shardproxy"]["rps"] / conf["targets"][pair.split("/")[1]]["rps"]
            )
            assert ratio == pytest.approx(expected), (key, pair)
    assert confs["get-read-heavy-prefer-replica"]["read_policy"] == "prefer-replica"

    memory = results["memory"]
    for proxy in ("nutcracker", "shardproxy"):
        assert memory[proxy]["connections_accepted"] == memory["idle_connections"] > 0
        assert memory[proxy]["rss_kib_idle"] > 0
        assert memory[proxy]["kib_per_connection"] is not None
    assert memory["ratio_kib_per_connection"] is not None

    machine = results["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] and machine["kernel"]
    assert (out / "rps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "shardproxy/nutcracker" in done.stdout and "direct" in done.stdout

    processes = results["processes"]
    names = {p["name"] for p in processes}
    assert {"nutcracker", "shardproxy (primary)", "shardproxy (prefer-replica)"} <= names
    assert sum(name.startswith("redis-") for name in names) == 6
    deadline = time.monotonic() + 5
    alive = [p for p in processes if _running(p["pid"], p["start_time"])]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p["pid"], p["start_time"])]
    assert not alive, f"still running after the benchmark exited: {alive}"


def run_bench(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` from the repository; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return done


def test_transaction_benchmark_runs_and_reports_the_ratio() -> None:
    done = run_bench("bench.transactions", "--quick", "--seconds", "0.5", timeout=100)
    out = done.stdout
    rates = {
        name: float(line.split("median")[1].split("tx/s")[0])
        for line in out.splitlines()
        for name in ("direct", "shardproxy")
        if line.strip().startswith(name) and "median" in line
    }
    assert rates["direct"] > 0 and rates["shardproxy"] > 0, out
    ratio = float(out.split("shardproxy/direct: ")[1].split("x")[0])
    assert ratio == pytest.approx(rates["shardproxy"] / rates["direct"], abs=0.01)
    connections = int(out.split("through the proxy: ")[1].split()[0])
    assert 0 < connections <= 3 * 50  # leases are pooled: at most one per client per primary


def test_pubsub_benchmark_delivers_every_message_on_both_targets() -> None:
    done = run_bench("bench.pubsub", "--quick", "--json", timeout=100)
    out = done.stdout
    summary = {
        line.split()[0]: line
        for line in out.split("delivery check")[1].splitlines()
        if line.strip().startswith(("direct ", "proxy "))
    }
    assert set(summary) == {"direct", "proxy"}, out
    for line in summary.values():
        assert "lost 0 " in line and "duplicated 0 " in line and "out of order 0" in line, line
    figures = json.loads(out.strip().splitlines()[-1])
    for target in ("direct", "proxy"):
        median = figures["medians"][target]
        assert median["p99_ms"] >= median["p50_ms"] > 0, (target, median)
        assert median["published_per_s"] > 0 and median["delivered_per_s"] > 0, (target, median)
    ratio = figures["ratios_proxy_direct"]["published_per_s"]
    assert ratio == pytest.approx(
        figures["medians"]["proxy"]["published_per_s"]
        / figures["medians"]["direct"]["published_per_s"]
    )


def test_tls_benchmark_measures_every_configuration_and_the_ratios() -> None:
    done = run_bench("bench.tls", "--quick", "--json", timeout=110)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    configurations = figures["configurations"]
    assert set(configurations) == {
        "redis-plain",
        "redis-tls",
        "proxy-plain",
        "proxy-tls",
        "proxy-tls-tls",
        "proxy-auth",
    }
    for key, conf in configurations.items():
        assert conf["rps"] > 0 and conf["runs_failed"] == 0, (key, conf)
    pairs = {
        "proxy TLS / proxy plain": ("proxy-tls", "proxy-plain"),
        "proxy TLS+TLS / proxy plain": ("proxy-tls-tls", "proxy-plain"),
        "Redis TLS / Redis plain": ("redis-tls", "redis-plain"),
        "proxy TLS / Redis TLS": ("proxy-tls", "redis-tls"),
        "proxy auth / proxy plain": ("proxy-auth", "proxy-plain"),
    }
    for name, (a, b) in pairs.items():
        expected = configurations[a]["rps"] / configurations[b]["rps"]
        assert figures["ratios"][name] == pytest.approx(expected), name
        assert name in done.stdout  # and printed in the table
    assert figures["get_misses"] == 0  # every GET hit a pre-written key


def test_cache_benchmark_measures_every_target_and_reads_nothing_stale() -> None:
    assert shutil.which("gcc"), "gcc is needed (bench.cache compiles bench/loadgen.c)"
    done = run_bench("bench.cache", "--quick", "--json", timeout=150)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for target in ("direct", "nutcracker", "cache_off", "cache_on"):
        median = figures["medians"][target]
        assert median["requests_per_s"] > 0, (target, figures["runs"][target])
        assert median["runs_ok"] == median["runs"] > 0, (target, figures["runs"][target])
    assert figures["cache"]["hit_ratio"] > 0.5, figures["cache"]
    coherence = figures["coherence"]
    assert coherence["reads"] > 0 and coherence["writes"] > 0, coherence
    assert coherence["stale_reads"] == 0 and coherence["invalid_reads"] == 0, coherence
    assert "cache on / nutcracker" in done.stdout and "stale" in done.stdout
