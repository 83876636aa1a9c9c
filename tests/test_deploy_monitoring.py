"""The operator's monitoring files: Grafana dashboard, Prometheus scrape config and alert rules.

Static checks: every PromQL expression names only series the proxy exports (or Prometheus'
``up``), with label matchers those series have; the dashboard is importable and covers the
metrics operators need; ``promtool`` accepts the config and the rules; and ``promtool test
rules`` proves each alert fires in its failure scenario and stays quiet when all is well.

End to end: a real Prometheus scrapes a real proxy in front of a real redis-server, sees the
commands sent through it, loads and evaluates the alert rules (none firing), and answers every
dashboard query.

``promtool`` and ``prometheus`` come with Debian's ``prometheus`` package; these tests fail
(never skip) without them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardproxy.observe.metrics import METRICS, MetricDef
from tests.conftest import REPO, Proxy, RedisServer, free_port, wait_port

DASHBOARD = REPO / "deploy" / "grafana" / "shardproxy.json"
PROM_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

#: Metrics the dashboard must chart (the panel list operators asked for).
DASHBOARD_METRICS = (
    "shardproxy_commands_total",
    "shardproxy_command_duration_seconds",
    "shardproxy_backend_request_duration_seconds",
    "shardproxy_backend_up",
    "shardproxy_backend_errors_total",
    "shardproxy_backend_pending_requests",
    "shardproxy_replica_lag_bytes",
    "shardproxy_failovers_total",
    "shardproxy_config_reloads_total",
    "shardproxy_client_connections",
    "shardproxy_client_received_bytes_total",
    "shardproxy_client_sent_bytes_total",
    "shardproxy_hotkeys_top_share",
)

#: Queries the dashboard must contain (whitespace-insensitive regexes over its expressions).
DASHBOARD_QUERIES = (
    r"sum by \(command\) \(rate\(shardproxy_commands_total\{[^}]*\}\[",
    r"histogram_quantile\(0\.5, sum by \(command, le\) \(rate\(shardproxy_command_duration_seconds_bucket",
    r"histogram_quantile\(0\.99, sum by \(command, le\) \(rate\(shardproxy_command_duration_seconds_bucket",
    r"histogram_quantile\(0\.99, sum by \(shard, role, le\) \(rate\(shardproxy_backend_request_duration_seconds_bucket",
    r'shardproxy_commands_total\{[^}]*status="error"[^}]*\}\[[^]]*\]\)\) / sum',
)

#: Grafana's own variables that may appear in queries.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s"}

#: Each required alert, the labels it fires with in its unit-test scenario below.
FIRING = {
    "ShardproxyDown": {"severity": "critical", "job": "shardproxy", "instance": "p1:9121"},
    "ShardproxyShardWithoutPrimary": {"severity": "critical", "instance": "p1:9121", "shard": "s1"},
    "ShardproxyBackendDown": {
        "severity": "warning",
        "job": "shardproxy",
        "instance": "p1:9121",
        "shard": "s1",
        "node": "10.0.0.1:6379",
        "role": "primary",
    },
    "ShardproxyHighErrorRatio": {"severity": "warning", "instance": "p1:9121"},
    "ShardproxyReplicaLagHigh": {
        "severity": "warning",
        "job": "shardproxy",
        "instance": "p1:9121",
        "shard": "s1",
        "node": "10.0.0.2:6379",
    },
    "ShardproxyConfigReloadFailed": {
        "severity": "warning",
        "job": "shardproxy",
        "instance": "p1:9121",
        "result": "failure",
    },
}


def need(binary: str) -> str:
    path = shutil.which(binary)
    assert path is not None, f"{binary} not found: apt-get install -y prometheus"
    return path


# --- PromQL: which series does an expression read? ----------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_TOKEN = re.compile(
    r"(?P<num>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)[A-Za-z0-9]*)"
    r"|(?P<id>[A-Za-z_:][\w:]*)"
)
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip


def _strip(expr: str) -> str:
    """The expression without string literals and Grafana variables."""
    expr = _STRING.sub('""', expr)
    return _GRAFANA_VAR.sub(" 1 ", expr)


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (not functions, keywords or labels)."""
    assert "__name__" not in expr, f"select series by name, not by __name__: {expr}"
    s = _strip(expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = _GROUPING.sub(" ", s)  # by (...), on (...), group_left (...)
    names = set()
    for m in _TOKEN.finditer(s):
        ident = m.group("id")
        if ident is None or ident.lower() in _KEYWORDS:
            continue
        if s[m.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        names.add(ident)
    return names


def matcher_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names in its matchers) for each ``name{...}`` selector."""
    return [
        (name, set(_MATCHER_LABEL.findall(body))) for name, body in _SELECTOR.findall(_strip(expr))
    ]


def exported_series() -> dict[str, tuple[MetricDef | None, set[str]]]:
    """Every series name Prometheus stores from a scrape -> (its metric, its label names)."""
    series: dict[str, tuple[MetricDef | None, set[str]]] = {"up": (None, {"instance", "job"})}
    for m in METRICS:
        labels = {*m.labels, "instance", "job"}
        if m.type == "histogram":
            series[m.name + "_bucket"] = (m, labels | {"le"})
            series[m.name + "_sum"] = (m, labels)
            series[m.name + "_count"] = (m, labels)
        else:
            series[m.name] = (m, labels)  # counters' names already end in _total
    return series


def check_expr(expr: str) -> set[str]:
    """Assert ``expr`` reads only exported series with their own labels; return the metrics."""
    series = exported_series()
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - series.keys()
    assert not unknown, f"{expr!r} names series shardproxy does not export: {sorted(unknown)}"
    for name, labels in matcher_labels(expr):
        assert name in series, f"{expr!r}: unknown series {name}"
        extra = labels - series[name][1]
        assert not extra, f"{expr!r}: {name} has no label(s) {sorted(extra)}"
    metrics = set()
    for name in names:
        m = series[name][0]
        metrics.add(m.name if m is not None else name)
    return metrics


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (command) (rate(shardproxy_commands_total{status="error",'
            ' command="shardproxy_fake"}[$__rate_interval]))',
            {"shardproxy_commands_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(shardproxy_command_duration_seconds_bucket"
            '{instance=~"$instance"}[5m])))',
            {"shardproxy_command_duration_seconds_bucket"},
        ),
        ('up{job="shardproxy"} == 0', {"up"}),
        ("a / on (instance) group_left (shard) b offset 5m > bool 1e3", {"a", "b"}),
        ("shardproxy_x>0 and shardproxy_y", {"shardproxy_x", "shardproxy_y"}),
        ("sum(rate(x[1h30m:1m])) by (instance) / 0x1f", {"x"}),
        (
            'count(max by (shard) (shardproxy_backend_up{role="primary"}) == 0) or vector(0)',
            {"shardproxy_backend_up"},
        ),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_check_expr_rejects_unknown_series_and_labels() -> None:
    with pytest.raises(AssertionError, match="does not export"):
        check_expr("rate(shardproxy_commands[5m])")
    with pytest.raises(AssertionError, match="does not export"):
        check_expr("shardproxy_command_duration_seconds")  # a histogram has no bare series
    with pytest.raises(AssertionError, match="has no label"):
        check_expr('shardproxy_config_reloads_total{status="failure"}')
    assert check_expr("shardproxy_command_duration_seconds_count") == {
        "shardproxy_command_duration_seconds"
    }


# --- Grafana dashboard --------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    d = load_dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    assert d["uid"] == "shardproxy"
    assert d["title"]
    assert d.get("id") is None  # an exported dashboard carries no database id
    variables = {v["name"]: v for v in d["templating"]["list"]}
    inputs = {i["name"]: i for i in d.get("__inputs", [])}
    ds_vars = [n for n, v in variables.items() if v["type"] == "datasource"]
    ds_inputs = [n for n, i in inputs.items() if i.get("pluginId") == "prometheus"]
    assert len(ds_vars) + len(ds_inputs) == 1, "one Prometheus data source, as a variable or input"
    ds_name = (ds_vars or ds_inputs)[0]
    if ds_vars:
        assert variables[ds_name]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert re.fullmatch(
        r"label_values\(\s*shardproxy_\w+\s*,\s*instance\s*\)", instance["definition"]
    )

    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(d):
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p
    for p in graph_panels(d):
        assert p["title"], p["id"]
        sources = [p["datasource"], *(t["datasource"] for t in p["targets"])]
        for ds in sources:
            assert ds == {"type": "prometheus", "uid": f"${{{ds_name}}}"}, (p["title"], ds)

    defined = set(variables) | GRAFANA_BUILTINS
    for expr in [*dashboard_exprs(d), instance["definition"]]:
        used = {next(g for g in m.groups() if g) for m in _GRAFANA_VAR.finditer(expr)}
        assert used <= defined, f"{expr!r} uses undefined variable(s) {sorted(used - defined)}"
    for expr in dashboard_exprs(d):
        assert '=~"$instance"' in expr.replace(" ", ""), f"not filtered by $instance: {expr}"


def test_every_dashboard_panel_has_a_query() -> None:
    panels = graph_panels(load_dashboard())
    assert len(panels) >= 12
    for p in panels:
        targets = p.get("targets", [])
        assert targets, f"panel {p['title']!r} has no target"
        for t in targets:
            assert t["expr"].strip(), f"panel {p['title']!r} has an empty query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), p["title"]


def test_dashboard_queries_name_only_exported_metrics() -> None:
    d = load_dashboard()
    used: set[str] = set()
    for expr in dashboard_exprs(d):
        used |= check_expr(expr)
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\(\s*(\w+)\s*,\s*\w+\s*\)", v["definition"])
            assert m, v["definition"]
            used |= check_expr(m.group(1))
    missing = set(DASHBOARD_METRICS) - used
    assert not missing, f"the dashboard does not chart {sorted(missing)}"


def test_dashboard_has_the_expected_queries() -> None:
    exprs = [re.sub(r"\s+", " ", e) for e in dashboard_exprs(load_dashboard())]
    for pattern in DASHBOARD_QUERIES:
        assert any(re.search(pattern, e) for e in exprs), f"no dashboard query matches {pattern}"


# --- Prometheus config and alert rules -----------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def shardproxy_job(config: dict[str, Any]) -> dict[str, Any]:
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "shardproxy"]
    assert len(jobs) == 1
    job = jobs[0]
    assert isinstance(job, dict)
    return job


def test_prometheus_config_scrapes_shardproxy_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    job = shardproxy_job(config)
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:9121"]
    rule_files = [(PROM_CONFIG.parent / f).resolve() for f in config["rule_files"]]
    assert ALERTS.resolve() in rule_files


def test_alert_rules_are_complete() -> None:
    rules = load_rules()
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(FIRING) <= set(alerts)
    for name, rule in alerts.items():
        check_expr(rule["expr"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # Annotations may only use labels the alert really has (see its scenario below).
        referenced = set(re.findall(r"\$labels\.(\w+)", " ".join(annotations.values())))
        if name in FIRING:
            assert referenced <= set(FIRING[name]), (name, referenced - set(FIRING[name]))
    for rule in rules:
        if "record" in rule:
            check_expr(rule["expr"])


def test_promtool_check_config() -> None:
    r = subprocess.run(
        [need("promtool"), "check", "config", str(PROM_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_check_rules() -> None:
    r = subprocess.run(
        [need("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in r.stdout + r.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "shardproxy", "instance": "p1:9121", **labels}
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _expect(eval_time: str, alert: str, firing: bool) -> dict[str, Any]:
    return {
        "eval_time": eval_time,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": FIRING[alert]}] if firing else [],
    }


def alert_unit_tests() -> list[dict[str, Any]]:
    """promtool unit tests: each alert fires in its scenario and not before its ``for``."""
    primary = {"shard": "s1", "node": "10.0.0.1:6379", "role": "primary"}
    replica = {"shard": "s1", "node": "10.0.0.2:6379"}
    other = {"shard": "s2", "node": "10.0.0.3:6379", "role": "primary"}
    healthy = [
        _series("up", "1x80"),
        _series("shardproxy_backend_up", "1x80", **primary),
        _series("shardproxy_backend_up", "1x80", **replica, role="replica"),
        _series("shardproxy_backend_up", "1x80", **other),
        _series("shardproxy_commands_total", "0+100x80", command="get", status="ok"),
        _series("shardproxy_commands_total", "0+1x80", command="get", status="error"),
        _series("shardproxy_replica_lag_bytes", "1000x80", **replica),
        _series("shardproxy_config_reloads_total", "0+1x80", result="success"),
        _series("shardproxy_config_reloads_total", "0x80", result="failure"),
    ]
    return [
        {  # all is well: 1% errors, small lag, successful reloads only
            "interval": "15s",
            "input_series": healthy,
            "alert_rule_test": [_expect("15m", a, False) for a in FIRING],
        },
        {
            "interval": "15s",
            "input_series": [
                _series("up", "1 1 0x20"),
                _series("up", "1x22", instance="p2:9121"),
            ],
            "alert_rule_test": [
                _expect("1m", "ShardproxyDown", False),
                _expect("2m", "ShardproxyDown", True),
            ],
        },
        {  # s1's primary goes down at 30s; its replica and s2 stay up
            "interval": "15s",
            "input_series": [
                _series("shardproxy_backend_up", "1 1 0x20", **primary),
                _series("shardproxy_backend_up", "1x22", **replica, role="replica"),
                _series("shardproxy_backend_up", "1x22", **other),
            ],
            "alert_rule_test": [
                _expect("15s", "ShardproxyShardWithoutPrimary", False),
                _expect("1m30s", "ShardproxyShardWithoutPrimary", True),
                _expect("1m30s", "ShardproxyBackendDown", False),
                _expect("3m", "ShardproxyBackendDown", True),
            ],
        },
        {  # ~9% of the commands of p1 fail, 1% of p2's
            "interval": "15s",
            "input_series": [
                _series("shardproxy_commands_total", "0+100x60", command="get", status="ok"),
                _series("shardproxy_commands_total", "0+10x60", command="get", status="error"),
                _series("shardproxy_commands_total", "0+50x60", command="set", status="ok"),
                _series(
                    "shardproxy_commands_total",
                    "0+100x60",
                    instance="p2:9121",
                    command="get",
                    status="ok",
                ),
                _series(
                    "shardproxy_commands_total",
                    "0+1x60",
                    instance="p2:9121",
                    command="get",
                    status="error",
                ),
            ],
            "alert_rule_test": [
                _expect("3m", "ShardproxyHighErrorRatio", False),
                _expect("10m", "ShardproxyHighErrorRatio", True),
            ],
        },
        {
            "interval": "15s",
            "input_series": [
                _series("shardproxy_replica_lag_bytes", "0 0 50000000x40", **replica),
                _series("shardproxy_replica_lag_bytes", "1000x42", shard="s2", node="10.0.0.4:1"),
            ],
            "alert_rule_test": [
                _expect("3m", "ShardproxyReplicaLagHigh", False),
                _expect("6m", "ShardproxyReplicaLagHigh", True),
            ],
        },
        {  # one reload fails at 1m; alert until it leaves the window
            "interval": "15s",
            "input_series": [
                _series("shardproxy_config_reloads_total", "0x3 1x100", result="failure"),
                _series("shardproxy_config_reloads_total", "0+1x103", result="success"),
            ],
            "alert_rule_test": [
                _expect("30s", "ShardproxyConfigReloadFailed", False),
                _expect("1m30s", "ShardproxyConfigReloadFailed", True),
                _expect("20m", "ShardproxyConfigReloadFailed", False),
            ],
        },
    ]


def test_alerts_fire_in_their_scenarios(tmp_path: Path) -> None:
    # promtool compares annotations too; they are checked above, so test a copy without them.
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_copy = tmp_path / "alerts.yml"
    rules_copy.write_text(yaml.safe_dump(rules))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_copy)],
                "evaluation_interval": "15s",
                "tests": alert_unit_tests(),
            }
        )
    )
    r = subprocess.run(
        [need("promtool"), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


# --- end to end: a real Prometheus scraping a real proxy ------------------------------------


class PrometheusServer:
    """``prometheus`` in a subprocess on a free loopback port, with its own TSDB directory."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.port = free_port()
        self.data = workdir / "tsdb"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [
                need("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, timeout=30, proc=self.proc)
        self.wait(lambda: self.get("/-/ready")[0] == 200, "Prometheus never became ready")
        return self

    def get(self, path: str, **params: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def api(self, path: str, **params: str) -> Any:
        status, body = self.get("/api/v1/" + path, **params)
        assert status == 200, f"{path} {params}: {status} {body}\n{self.output()}"
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result = data["result"]
        assert isinstance(result, list)
        return result

    def wait(self, ready: Any, message: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            value = ready()
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"{message} after {timeout}s\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
            self._logf.close()


def test_real_prometheus_scrapes_the_proxy_and_evaluates_the_rules(tmp_path: Path) -> None:
    need("prometheus")
    redis_server = RedisServer(tmp_path)
    proxy = Proxy(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "admin": f"127.0.0.1:{free_port()}",
            "shards": [{"name": "s1", "primary": redis_server.address}],
        },
        tmp_path,
    )
    prometheus: PrometheusServer | None = None
    try:
        redis_server.start()
        proxy.start()
        with proxy.client(protocol=2) as c:
            for i in range(50):
                assert c.set(f"key:{i}", i)
        instance = f"127.0.0.1:{proxy.admin_port}"

        # The shipped config, pointed at this proxy and sped up.
        config = yaml.safe_load(PROM_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(ALERTS)]
        job = shardproxy_job(config)
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [instance]}]
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        prometheus = PrometheusServer(config_path, tmp_path).start()
        prom = prometheus

        def sets_seen() -> list[dict[str, Any]]:
            return [
                s
                for s in prom.query("shardproxy_commands_total")
                if s["metric"].get("command") == "set" and float(s["value"][1]) >= 50
            ]

        (seen,) = prom.wait(sets_seen, "Prometheus never saw the 50 SETs")
        assert seen["metric"]["status"] == "ok"
        assert seen["metric"]["job"] == "shardproxy"
        assert seen["metric"]["instance"] == instance
        (up,) = prom.query('up{job="shardproxy"}')
        assert up["value"][1] == "1"
        (primary,) = prom.query('shardproxy_backend_up{role="primary"}')
        assert primary["metric"]["shard"] == "s1"
        assert primary["metric"]["node"] == redis_server.address
        assert primary["value"][1] == "1"

        # The alert rules are loaded, evaluate without error, and nothing fires.
        def rules_evaluated() -> list[dict[str, Any]]:
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else []

        rules = prom.wait(rules_evaluated, "the alert rules were never evaluated")
        assert {r["name"] for r in rules} >= set(FIRING)
        assert len(rules) == len(load_rules())
        for r in rules:
            assert r["health"] == "ok", (r["name"], r.get("lastError"))
            assert r["state"] == "inactive", (r["name"], r["alerts"])
        assert prom.api("alerts")["alerts"] == []

        # Every dashboard query runs; the instance variable lists this proxy.
        d = load_dashboard()
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                metric = re.fullmatch(r"label_values\((\w+), instance\)", v["definition"])
                assert metric, v["definition"]
                assert instance in prom.api("label/instance/values", **{"match[]": metric[1]})
        escaped = re.escape(instance).replace("\\", "\\\\")  # as Grafana writes a regex value
        values = {"instance": escaped, "__rate_interval": "1m", "__interval": "15s"}
        values |= {"__interval_ms": "15000", "__range": "1h", "__range_s": "3600"}

        def substitute(expr: str) -> str:
            return _GRAFANA_VAR.sub(lambda m: values[next(g for g in m.groups() if g)], expr)

        for expr in dashboard_exprs(d):
            prom.query(substitute(expr))  # asserts status success
        rate = substitute(dashboard_exprs(d)[0])
        assert "shardproxy_commands_total" in rate
        prom.wait(
            lambda: any(s["metric"].get("command") == "set" for s in prom.query(rate)),
            f"no request rate for SET from {rate}",
        )
    finally:
        if prometheus is not None:
            prometheus.stop()
        proxy.stop()
        redis_server.stop()
