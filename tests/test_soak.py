"""The soak tool end to end: ``python -m bench.soak --minutes 1 --seed 1 --json`` on a real fleet.

It starts 6 redis-server processes and shardproxy itself, kills, stalls and reloads under a
checked mixed workload, and stops them all. This test asserts its verdict (exit 0, no wrong
value, no hung request), that it did real work (thousands of requests, faults injected), and
prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_one_minute_soak_has_no_wrong_value_and_no_hung_request() -> None:
    assert shutil.which("redis-server"), "redis-server is needed"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "1", "--seed", "1", "--json"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    print(done.stderr[-3000:])
    print(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line; exit {done.returncode}"
    res = json.loads(lines[-1])
    print(
        f"\n[soak] {res['requests']} requests, {res['ok']} ok, errors {res['errors']}, "
        f"wrong {res['wrong']}, hung {res['hung']}, lost_by_failover {res['lost_by_failover']}, "
        f"faults {res['faults']}, proxy failovers {res['proxy_failovers']}, "
        f"RSS {res['rss_kb_per_min']} KB/min, fds {res['fds_per_min']}/min"
    )
    assert res["wrong"] == 0, res["wrong_list"]
    assert res["hung"] == 0, res["hung_list"]
    assert res["problems"] == []
    assert done.returncode == 0
    assert res["requests"] > 5000
    assert res["faults_injected"] > 0
    assert res["faults"].get("kill", 0) > 0 and res["faults"].get("stop", 0) > 0
    assert res["queue"]["popped"] > 0 and res["pubsub"]["delivered"] > 0
    assert len(res["samples"]) >= 10
