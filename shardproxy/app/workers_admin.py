"""The supervisor's admin HTTP (``--workers N``): answers by asking the workers.

Each worker serves the usual admin endpoints (admin.py) on a private unix socket; the supervisor
(supervisor.py) serves :func:`supervisor_routes` on the ``admin:`` address, which ask them and
combine the answers:

    GET /metrics    every worker's /metrics merged: samples with the same name and labels are
                    summed (counters, histograms) or combined by their METRICS ``merge`` rule
                    (gauges); the last counters seen from a worker that died are kept, so merged
                    counters do not go backwards when a worker restarts
    GET /healthz    200 while the supervisor runs
    GET /readyz     200 when every worker answers 200, else 503 with each worker's reason
    GET /topology   the first running worker's (worker 0's)
    POST /reload    every worker reloads; 200 when all succeeded, with each worker's result

What these need of the supervisor is :class:`WorkerPool`; this module imports nothing from
supervisor.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from shardproxy.app.http import Response, Routes, admin_routes, json_response
from shardproxy.observe.metrics import BY_NAME, METRICS

log = logging.getLogger("shardproxy.supervisor")

RELOAD_TIMEOUT = 30.0  # a worker's answer to POST /reload

#: Family name (as the Prometheus parser names it: counters without ``_total``) -> position in
#: METRICS, so the merged exposition keeps the table's order.
_ORDER = {
    (m.name.removesuffix("_total") if m.type == "counter" else m.name): i
    for i, m in enumerate(METRICS)
}


class WorkerAnswer(NamedTuple):
    """One worker's part of :meth:`WorkerPool.ask_all`."""

    worker: int  # its index
    pid: int | None  # the worker asked; None when none runs in that position (restarting)
    answer: tuple[int, bytes] | Exception  # (status, body), or why there is none


class WorkerPool(Protocol):
    """What the supervisor's admin routes need of the supervisor (supervisor.Supervisor).
    Workers are named by their index, 0 to N-1."""

    @property
    def stopping(self) -> bool:
        """SIGTERM/SIGINT arrived: the workers are draining."""

    @property
    def retired(self) -> list[Metric]:
        """The counter and histogram families of the workers that exited, summed."""

    def pids(self) -> list[int | None]:
        """Each worker's pid by index; None while that worker is being restarted."""

    def last_counters(self, worker: int) -> list[Metric]:
        """What :meth:`keep_counters` last kept for the worker running now (or nothing)."""

    def keep_counters(self, worker: int, families: list[Metric]) -> None:
        """The counter families of the running worker's latest scrape; added to ``retired``
        when it exits."""

    async def ask(
        self, worker: int, method: str, path: str, timeout: float = ...
    ) -> tuple[int, bytes]:
        """(status, body) of a worker's admin endpoint. Raises OSError, TimeoutError or
        ValueError when it does not answer properly."""

    async def ask_all(self, method: str, path: str, timeout: float = ...) -> list[WorkerAnswer]:
        """Every worker's answer (asked at once), by index."""

    def reload_file(self, trigger: str) -> bool:
        """Load the topology file for workers started from now on; True when it is valid."""


class SupervisorAdmin:
    """The supervisor's admin endpoints, answered by asking the workers of ``pool``."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def routes(self) -> Routes:
        return admin_routes(self)

    async def metrics(self) -> Response:
        pool = self.pool
        scrapes: list[list[Metric]] = [pool.retired]
        answers = await pool.ask_all("GET", "/metrics")
        pids = pool.pids()
        for worker, pid, answer in answers:
            if pid is None or pids[worker] != pid:
                continue  # died meanwhile: its last counters are in pool.retired
            if isinstance(answer, tuple) and answer[0] == 200:
                try:
                    families = list(text_string_to_metric_families(answer[1].decode()))
                except ValueError as exc:
                    log.warning("worker %d: unreadable /metrics: %s", worker, exc)
                else:
                    pool.keep_counters(worker, [f for f in families if f.type in _COUNTER_TYPES])
                    scrapes.append(families)
                    continue
            log.warning("worker %d (pid %d) did not answer /metrics: %s", worker, pid,
                        answer if isinstance(answer, Exception) else f"HTTP {answer[0]}")  # fmt: skip
            scrapes.append(pool.last_counters(worker))  # so that sums do not drop
        return Response(200, CONTENT_TYPE_LATEST, render_metrics(merge_metrics(scrapes)))

    async def readyz(self) -> Response:
        if self.pool.stopping:
            return json_response(503, {"ready": False, "reason": "draining"})
        workers = []
        for worker, pid, answer in await self.pool.ask_all("GET", "/readyz"):
            entry: dict[str, Any] = {"worker": worker, "pid": pid}
            if isinstance(answer, Exception):
                entry.update(ready=False, reason=f"no answer: {answer}" if pid else "restarting")
            else:
                entry.update(_body_json(answer[1]))
                entry["ready"] = answer[0] == 200
            workers.append(entry)
        not_ready = [w["worker"] for w in workers if not w["ready"]]
        if not_ready:
            return json_response(503, {"ready": False, "reason": f"workers not ready: {not_ready}",
                               "workers": workers})  # fmt: skip
        return json_response(200, {"ready": True, "workers": workers})

    async def hotkeys(self) -> Response:
        """Every worker's hottest keys, counts of the same key added."""
        merged: dict[tuple[str, str], int] = {}
        for _, _, answer in await self.pool.ask_all("GET", "/hotkeys"):
            if isinstance(answer, tuple) and answer[0] == 200:
                for row in json.loads(answer[1]).get("keys", []):
                    k = (row["key"], row["shard"])
                    merged[k] = merged.get(k, 0) + int(row["count"])
        rows = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        return json_response(
            200, {"keys": [{"key": k, "shard": s, "count": c} for (k, s), c in rows]}
        )

    async def topology(self) -> Response:
        for worker, pid in enumerate(self.pool.pids()):
            if pid is None:
                continue
            try:
                status, body = await self.pool.ask(worker, "GET", "/topology")
            except (OSError, TimeoutError, ValueError):
                continue
            return Response(status, "application/json", body)
        return json_response(503, {"error": "no worker answers"})

    async def reload(self) -> Response:
        pool = self.pool
        pool.reload_file("POST /reload")
        workers, errors = [], []
        unreachable = False
        for worker, pid, answer in await pool.ask_all("POST", "/reload", RELOAD_TIMEOUT):
            entry: dict[str, Any] = {"worker": worker, "pid": pid}
            if isinstance(answer, Exception):
                ok = pid is None  # restarting: it starts with the file as loaded above
                unreachable = unreachable or not ok
                entry.update(status=None, result="restarting" if ok else f"no answer: {answer}")
            else:
                result = _body_json(answer[1])
                ok = answer[0] == 200 and result.get("result") == "success"
                errors += [e for e in result.get("errors", []) if e not in errors]
                entry.update(status=answer[0], result=result)
            entry["ok"] = ok
            workers.append(entry)
        if all(w["ok"] for w in workers):
            return json_response(200, {"result": "success", "workers": workers})
        return json_response(503 if unreachable else 400,
                     {"result": "failure", "errors": errors, "workers": workers})  # fmt: skip


def supervisor_routes(pool: WorkerPool) -> Routes:
    """The route table of the supervisor's admin HTTP."""
    return SupervisorAdmin(pool).routes()


# --- merging the workers' metrics ---------------------------------------------------------------

_COUNTER_TYPES = frozenset({"counter", "histogram", "summary"})


def merge_metrics(scrapes: Iterable[Iterable[Metric]], counters_only: bool = False) -> list[Metric]:
    """Several processes' metric families as one process's: the same sample (name and labels)
    summed, or for a gauge combined by its METRICS ``merge`` rule (sum or max; sum for a gauge
    not in the table). ``_created`` samples are dropped. Families in METRICS order."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Any]] = {}
    for families in scrapes:
        for fam in families:
            if counters_only and fam.type not in _COUNTER_TYPES:
                continue
            if fam.name not in merged:
                merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            rule = _merge_rule(fam)
            acc = values[fam.name]
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                prev = acc.get(key)
                if prev is None:
                    acc[key] = s
                elif rule == "max":
                    acc[key] = prev._replace(value=max(prev.value, s.value))
                else:
                    acc[key] = prev._replace(value=prev.value + s.value)
    for name, fam in merged.items():
        fam.samples = list(values[name].values())
    return sorted(merged.values(), key=lambda f: _ORDER.get(f.name, len(_ORDER)))


def _merge_rule(fam: Metric) -> str:
    if fam.type != "gauge":
        return "sum"
    m = BY_NAME.get(fam.name)
    return m.merge if m is not None else "sum"


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render_metrics(families: list[Metric]) -> bytes:
    """Prometheus text format, as the workers' own /metrics writes it."""
    return generate_latest(_Families(families))


# --- small helpers ------------------------------------------------------------------------------


def _body_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {"body": body.decode(errors="replace")}
    return value if isinstance(value, dict) else {"body": value}
