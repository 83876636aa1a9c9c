"""The test fleet as containers, for a laptop with Docker and no redis-server installed.

conftest's ``RedisServer`` runs here when ``FLEET_MODE`` is ``containers``: each server is a
container of the image ``deploy/docker/compose.yaml`` runs its Redis nodes from, with the very
flags the process fixture passes (``RedisServer.argv()``), on the host's network, so the
proxy, the tests and the servers see the same ``127.0.0.1:<port>`` addresses as with
processes, and replicas follow ``127.0.0.1 <primary port>`` (a promoted replica's REPLICAOF and
the roles INFO reports name the addresses in the topology). Only ``--dir`` (``/data``, the
image's) and ``--logfile`` (stdout, ``docker logs``) differ.

Host networking needs a Linux Docker engine, or Docker Desktop 4.34 or later with host
networking turned on. CI has no engine and runs processes; ``tests/test_containers_spec.py``
checks these specs without Docker.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "deploy" / "docker" / "compose.yaml"
# the image of compose.yaml's Redis nodes and Sentinels (a test keeps the two equal)
SERVER_IMAGE = "redis:7.2-bookworm"
LABEL = "org.shardproxy.tests"

Engine = Callable[[], tuple[bool, str]]


def docker_engine() -> tuple[bool, str]:
    """(answers, what): whether the Docker engine testcontainers would use answers a ping."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        return False, "testcontainers is not installed (pip install -e '.[test]')"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # docker-py leaves a socket to the GC when it fails
        try:
            client = DockerClient().client
            try:
                client.ping()
                version = client.version().get("Version", "?")
                return True, f"{version} at {client.api.base_url}"
            finally:
                client.close()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"


def choose_fleet(
    setting: str, *, server_kind: str, binary: str | None, engine: Engine
) -> tuple[str, str]:
    """("processes" | "containers", why) for SHARDPROXY_TEST_FLEET=``setting``.

    ``binary`` is the installed server binary (None: not installed); ``engine`` is asked only
    when the answer depends on it."""
    mode = setting.strip().lower() or "auto"
    name = f"{server_kind}-server"
    if mode == "processes":
        return "processes", f"as set; {name}: {binary or 'NOT INSTALLED, server tests will fail'}"
    if mode == "containers":
        if server_kind != "redis":
            raise pytest.UsageError(
                f"SHARDPROXY_TEST_FLEET=containers runs compose.yaml's {SERVER_IMAGE}: "
                f"it cannot run {server_kind}"
            )
        ok, detail = engine()
        if not ok:
            raise pytest.UsageError(
                f"SHARDPROXY_TEST_FLEET=containers: no Docker engine ({detail})"
            )
        return "containers", f"as set; Docker engine {detail}"
    if mode != "auto":
        raise pytest.UsageError(
            f"SHARDPROXY_TEST_FLEET={setting!r}: must be auto, processes or containers"
        )
    if binary is not None:
        return "processes", (
            f"{name} is installed ({binary}); containers are used only when it is not "
            "and a Docker engine answers"
        )
    if server_kind != "redis":
        return "processes", f"{name} is not installed; containers run Redis only"
    ok, detail = engine()
    if ok:
        return "containers", f"{name} is not installed; Docker engine {detail} answers"
    return "processes", (
        f"{name} is not installed and no Docker engine answers ({detail}): "
        "the tests that need servers will fail"
    )


@dataclass(frozen=True)
class ServerSpec:
    """One server container: what ``docker run`` gets."""

    image: str
    command: tuple[str, ...]
    port: int
    replicaof: int | None
    labels: dict[str, str] = field(default_factory=dict)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for testcontainers' DockerContainer (docker-py's run)."""
        return {"network_mode": "host", "labels": {LABEL: "1", **self.labels}}


def _flag(argv: list[str], name: str) -> list[str]:
    """The values after ``name`` (as many as until the next ``--flag``)."""
    i = argv.index(name)
    end = i + 1
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    return argv[i + 1 : end]


def server_spec(argv: list[str]) -> ServerSpec:
    """The container equivalent of the process command line ``argv`` (RedisServer.argv())."""
    if Path(argv[0]).name != "redis-server":
        raise ValueError(f"containers run redis-server, not {argv[0]}")
    command = ["redis-server"]
    i = 1
    while i < len(argv):
        arg = argv[i]
        command.append(arg)
        if arg in ("--dir", "--logfile"):
            command.append("/data" if arg == "--dir" else "")  # the image's dir; stdout
            i += 2
            continue
        i += 1
    port = int(_flag(argv, "--port")[0])
    replicaof = int(_flag(argv, "--replicaof")[1]) if "--replicaof" in argv else None
    return ServerSpec(SERVER_IMAGE, tuple(command), port, replicaof, {f"{LABEL}.port": str(port)})


class ServerContainer:
    """A running server container; stopped and removed by ``stop`` or ``kill``."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self._container: Any = None

    def start(self) -> ServerContainer:
        from testcontainers.core.container import DockerContainer

        c = DockerContainer(self.spec.image, **self.spec.run_kwargs())
        self._container = c.with_command(list(self.spec.command)).start()
        return self

    def signal(self, sig: int) -> None:
        """The signal to the server (PID 1 of the container: the image execs redis-server)."""
        if self._container is not None:
            self._container.get_wrapped_container().kill(signal=signal.Signals(sig).name)

    def kill(self) -> None:
        if self._container is not None:
            self.signal(signal.SIGKILL)
            self._container.stop()  # removes it
            self._container = None

    def stop(self) -> None:
        if self._container is not None:
            wrapped = self._container.get_wrapped_container()
            wrapped.kill(signal="SIGCONT")
            wrapped.stop(timeout=10)  # SIGTERM, as the process fixture sends
            self._container.stop()
            self._container = None
