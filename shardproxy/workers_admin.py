"""The supervisor's admin HTTP (``--workers N``): answers by asking the workers.

Each worker serves the usual admin endpoints on a private unix socket; this module asks them
and combines the answers: ``/metrics`` merged by each metric's ``merge`` rule (METRICS),
``/readyz`` ready only when every worker is, ``/topology`` from one worker, ``POST /reload``
on every worker. See supervisor.py for the processes themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from shardproxy.admin import AdminServer, Response, json_response
from shardproxy.metrics import BY_NAME, METRICS

if TYPE_CHECKING:
    from shardproxy.supervisor import Supervisor

log = logging.getLogger("shardproxy.supervisor")

RELOAD_TIMEOUT = 30.0  # a worker's answer to POST /reload

#: Family name (as the Prometheus parser names it: counters without ``_total``) -> position in
#: METRICS, so the merged exposition keeps the table's order.
_ORDER = {
    (m.name.removesuffix("_total") if m.type == "counter" else m.name): i
    for i, m in enumerate(METRICS)
}


class SupervisorAdmin(AdminServer):
    """The supervisor's admin HTTP: AdminServer's HTTP handling, routes answered by asking the
    workers. It has no ProxyContext, so AdminServer.__init__ (which needs one) is not called."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.server: asyncio.AbstractServer | None = None

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on an already bound socket (bound before forking, without getaddrinfo)."""
        if sock.family == socket.AF_UNIX:
            self.server = await asyncio.start_unix_server(self._handle, sock=sock)
        else:
            self.server = await asyncio.start_server(self._handle, sock=sock)

    async def route(self, method: str, path: str) -> Response:
        path = path.split("?", 1)[0]
        endpoints = {"/metrics": self.metrics, "/healthz": self.healthz,
                     "/readyz": self.readyz, "/topology": self.topology}  # fmt: skip
        if path in endpoints:
            if method != "GET":
                return json_response(405, {"error": "use GET"})
            return await endpoints[path]()
        if path == "/reload":
            if method != "POST":
                return json_response(405, {"error": "use POST"})
            return await self.reload_all()
        return json_response(404, {"error": f"no such endpoint {path}",
                           "endpoints": [*endpoints, "/reload"]})  # fmt: skip

    async def healthz(self) -> Response:
        return 200, "text/plain", b"ok\n"

    async def metrics(self) -> Response:
        sup = self.sup
        scrapes: list[list[Metric]] = [sup.retired]
        for slot, pid, answer in await sup.ask_all("GET", "/metrics"):
            if pid is None or slot.pid != pid:
                continue  # died meanwhile: its last counters are in sup.retired
            if isinstance(answer, tuple) and answer[0] == 200:
                try:
                    families = list(text_string_to_metric_families(answer[1].decode()))
                except ValueError as exc:
                    log.warning("worker %d: unreadable /metrics: %s", slot.index, exc)
                else:
                    slot.counters = [f for f in families if f.type in _COUNTER_TYPES]
                    scrapes.append(families)
                    continue
            log.warning("worker %d (pid %d) did not answer /metrics: %s", slot.index, pid,
                        answer if isinstance(answer, Exception) else f"HTTP {answer[0]}")  # fmt: skip
            scrapes.append(slot.counters)  # its last counters, so that sums do not drop
        return 200, CONTENT_TYPE_LATEST, render_metrics(merge_metrics(scrapes))

    async def readyz(self) -> Response:
        if self.sup.state == "stopping":
            return json_response(503, {"ready": False, "reason": "draining"})
        workers = []
        for slot, pid, answer in await self.sup.ask_all("GET", "/readyz"):
            entry: dict[str, Any] = {"worker": slot.index, "pid": pid}
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

    async def topology(self) -> Response:
        for slot in self.sup.slots:
            if slot.pid is None:
                continue
            try:
                status, body = await self.sup.ask(slot, "GET", "/topology")
            except (OSError, TimeoutError, ValueError):
                continue
            return status, "application/json", body
        return json_response(503, {"error": "no worker answers"})

    async def reload_all(self) -> Response:
        sup = self.sup
        sup.reload_file("POST /reload")
        workers, errors = [], []
        unreachable = False
        for slot, pid, answer in await sup.ask_all("POST", "/reload", RELOAD_TIMEOUT):
            entry: dict[str, Any] = {"worker": slot.index, "pid": pid}
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
