"""The container fleet (tests/containers.py) without Docker: the image is compose.yaml's, each
container runs the process fixture's flags on the host's network, replicas follow their
primary's port, and the choice between processes and containers is made as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import conftest, containers
from tests.conftest import Fleet


def compose() -> dict[str, object]:
    return yaml.safe_load(containers.COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


def services() -> dict[str, dict[str, object]]:
    return compose()["services"]  # type: ignore[index, return-value]


def test_image_is_compose_yaml_image() -> None:
    """Every Redis node and Sentinel of the Compose stack runs the image the containers use."""
    redis_services = {
        name: svc
        for name, svc in services().items()
        if name.startswith(("s1-", "s2-", "s3-", "sentinel-"))
    }
    assert len(redis_services) == 9, sorted(redis_services)
    images = {name: svc["image"] for name, svc in redis_services.items()}
    assert set(images.values()) == {containers.SERVER_IMAGE}, images
    assert ":" in containers.SERVER_IMAGE and not containers.SERVER_IMAGE.endswith(":latest")


def _pairs(command: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """``--flag value...`` groups of a redis-server command line."""
    out: dict[str, list[str]] = {}
    flag = ""
    for arg in command[1:]:
        if arg.startswith("--"):
            flag = arg
            out[flag] = []
        else:
            out[flag].append(arg)
    return out


def test_specs_run_the_process_fixture_flags(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, shards=3, replicas=2)  # not started: only its command lines
    compose_flags = _pairs(services()["s1-primary"]["command"])  # type: ignore[arg-type]
    for shard in fleet.shards:
        for srv in (shard.primary, *shard.replicas):
            argv = srv.argv()
            spec = containers.server_spec(argv)
            assert spec.image == containers.SERVER_IMAGE
            assert spec.command[0] == "redis-server"  # the image's binary, on its PATH
            # the same flags, in the same order; only the host paths differ
            process, container = _pairs(argv), _pairs(spec.command)
            assert list(container) == list(process)
            for flag, values in process.items():
                if flag == "--dir":
                    assert container[flag] == ["/data"]
                elif flag == "--logfile":
                    assert container[flag] == [""]  # the log goes to stdout (docker logs)
                else:
                    assert container[flag] == values, flag
            assert container["--port"] == [str(srv.port)] and spec.port == srv.port
            assert container["--bind"] == ["127.0.0.1"]
            # persistence off exactly as the Compose nodes have it
            for flag in ("--save", "--appendonly"):
                assert container[flag] == compose_flags[flag], flag
            # reachable on the address the topology names: the host's network, nothing published
            kwargs = spec.run_kwargs()
            assert kwargs["network_mode"] == "host"
            assert "ports" not in kwargs
            assert kwargs["labels"][containers.LABEL] == "1"
        # replicaof wiring: each replica follows its shard's primary, the primary nobody
        assert "--replicaof" not in containers.server_spec(shard.primary.argv()).command
        assert containers.server_spec(shard.primary.argv()).replicaof is None
        for r in shard.replicas:
            spec = containers.server_spec(r.argv())
            assert spec.replicaof == shard.primary.port
            assert _pairs(spec.command)["--replicaof"] == ["127.0.0.1", str(shard.primary.port)]
    # and the compose file wires its replicas the same way, by service name
    for n in (1, 2, 3):
        flags = _pairs(services()[f"s{n}-replica"]["command"])  # type: ignore[arg-type]
        assert flags["--replicaof"] == [f"s{n}-primary", "6379"]


def test_spec_refuses_another_server() -> None:
    with pytest.raises(ValueError, match="redis-server"):
        containers.server_spec(["/usr/bin/valkey-server", "--port", "1"])


def _engine(ok: bool) -> containers.Engine:
    def engine() -> tuple[bool, str]:
        return (True, "27.5.1 at unix://fake") if ok else (False, "no socket")

    return engine


def _no_engine_call() -> tuple[bool, str]:
    raise AssertionError("the Docker engine must not be asked")


def test_choice_processes_when_the_binary_is_installed() -> None:
    mode, why = containers.choose_fleet(
        "", server_kind="redis", binary="/usr/bin/redis-server", engine=_no_engine_call
    )
    assert mode == "processes" and "/usr/bin/redis-server" in why


def test_choice_containers_without_the_binary() -> None:
    mode, why = containers.choose_fleet(
        "auto", server_kind="redis", binary=None, engine=_engine(True)
    )
    assert mode == "containers" and "not installed" in why and "27.5.1" in why
    mode, why = containers.choose_fleet("", server_kind="redis", binary=None, engine=_engine(False))
    assert mode == "processes" and "no Docker engine" in why and "will fail" in why


def test_choice_forced() -> None:
    mode, _ = containers.choose_fleet(
        "containers", server_kind="redis", binary="/usr/bin/redis-server", engine=_engine(True)
    )
    assert mode == "containers"
    with pytest.raises(pytest.UsageError, match="no Docker engine"):
        containers.choose_fleet(
            "containers", server_kind="redis", binary=None, engine=_engine(False)
        )
    with pytest.raises(pytest.UsageError, match="cannot run valkey"):
        containers.choose_fleet(
            "containers", server_kind="valkey", binary=None, engine=_engine(True)
        )
    mode, why = containers.choose_fleet(
        "processes", server_kind="redis", binary=None, engine=_no_engine_call
    )
    assert mode == "processes" and "NOT INSTALLED" in why
    with pytest.raises(pytest.UsageError, match="auto, processes or containers"):
        containers.choose_fleet("docker", server_kind="redis", binary=None, engine=_engine(True))


def test_choice_is_in_the_report_header() -> None:
    lines = conftest.pytest_report_header(None)  # type: ignore[arg-type]
    assert lines[0].startswith(f"servers: {conftest.SERVER_KIND}")
    assert lines[1] == f"fleet: {conftest.FLEET_MODE} (SHARDPROXY_TEST_FLEET): {conftest.FLEET_WHY}"
    if conftest.FLEET_MODE == "processes":
        assert conftest.REDIS_SERVER in lines[0]


def test_testcontainers_is_installed() -> None:
    """The container fixture's dependency is part of the test extras (no engine needed)."""
    from testcontainers.core.container import DockerContainer

    assert callable(DockerContainer.with_command)
