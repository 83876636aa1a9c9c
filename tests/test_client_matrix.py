"""The client compatibility matrix: every client library of tests/clients/matrix.py, run for
real through the proxy in front of three shards, must give exactly the declared results.

Each client connects through a recording relay (tests/clients/relay.py), so the test also
asserts what the library sends on connect, which protocol it negotiates, and that the proxy
closed none of its connections (not even after a refused command). A missing interpreter,
library or header fails the test with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from shardproxy.routing.ring import Ring
from tests.clients import matrix
from tests.clients.matrix import CLIENTS, Client, Plan
from tests.clients.relay import Relay
from tests.conftest import Fleet, Proxy

ROOT = Path(__file__).resolve().parent.parent
RING = Ring.build([("s1", 1), ("s2", 1), ("s3", 1)])  # the shared fleet's ring


def key_on(shard: str, prefix: str) -> str:
    for i in itertools.count():
        key = f"{prefix}k{i}"
        if RING.shard_name(key.encode()) == shard:
            return key
    raise AssertionError("unreachable")


def make_plan(client: Client, port: int) -> Plan:
    prefix = f"matrix:{client.id}:{uuid.uuid4().hex[:8]}:"
    k1, k2, k3 = (key_on(s, prefix) for s in ("s1", "s2", "s3"))
    tag = "{" + prefix + "user1}"
    return Plan(
        port, (k1, k2, k3), f"{prefix}missing", (f"{tag}.a", f"{tag}.b"), f"{prefix}n",
        f"{prefix}list", f"{prefix}ch",
    )  # fmt: skip


def _substitute(args: tuple[str, ...]) -> list[str]:
    return [sys.executable if a == matrix.PY else a for a in args]


def missing_tools(client: Client) -> list[str]:
    missing = []
    for tool in client.tools:
        if tool.check[0].startswith("file:"):
            present = Path(tool.check[0][5:]).is_file()
        else:
            try:
                done = subprocess.run(
                    _substitute(tool.check), capture_output=True, timeout=60, cwd=ROOT
                )
                present = done.returncode == 0
            except FileNotFoundError:
                present = False
        if not present:
            missing.append(f"{tool.what} is missing: install it with `{tool.install}`")
    return missing


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-matrix")


def command(client: Client, build_dir: Path) -> list[str]:
    """The client's command line before the plan (a C client is compiled first)."""
    if not client.compiled:
        return _substitute(client.run)
    compiler, source = client.run
    binary = build_dir / Path(source).stem
    done = subprocess.run(
        [compiler, "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(binary), source, "-lhiredis"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"compiling {source} failed:\n{done.stderr}"
    return [str(binary)]


def handshake(relay: Relay, plan: Plan) -> list[str]:
    """What the client sent on its first connection before the check's first SET."""
    commands = relay.first_connection().commands
    out: list[str] = []
    for cmd in commands:
        if cmd[0].upper() == b"SET" and cmd[1:2] == [plan.keys[0].encode()]:
            return out
        out.append(matrix.describe(cmd))
    raise AssertionError(f"the client never sent SET {plan.keys[0]}: {commands}")


def installed_version_ok(client: Client, version: str) -> str | None:
    """Why ``version`` (what the script reports) is not the one the matrix declares."""
    if client.pinned_by == "pyproject":
        requirement = Requirement(client.version)
        if not requirement.specifier.contains(version, prereleases=True):
            return f"{client.package} {version} is installed, the matrix pins {client.version}"
    elif client.pinned_by == "package-lock.json" and version != client.version:
        return (
            f"{client.package} {version} is installed, the lockfile pins {client.version}: npm ci"
        )
    return None


@pytest.mark.parametrize("client", CLIENTS, ids=[c.id for c in CLIENTS])
def test_client(client: Client, proxy: Proxy, fleet: Fleet, build_dir: Path) -> None:
    problems = missing_tools(client)
    if problems:
        pytest.fail(f"{client.name}: " + "; ".join(problems))
    argv = command(client, build_dir)
    with Relay(proxy.port) as relay:
        plan = make_plan(client, relay.port)
        done = subprocess.run(
            argv + plan.argv(), capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert done.returncode == 0, f"{client.name} failed:\n{done.stdout}\n{done.stderr}"
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, f"{client.name} printed no JSON line:\n{done.stdout}\n{done.stderr}"
        result: dict[str, Any] = json.loads(lines[-1])
        shake = handshake(relay, plan)
        connections = list(relay.all())

    problem = installed_version_ok(client, result.pop("version"))
    assert problem is None, problem
    result.pop("library")
    assert result == matrix.expected(client, plan)
    # what the library sends on connect, and the protocol it asks for
    assert shake == list(client.handshake), (
        f"{client.name} now sends {shake} on connect; check that the proxy answers it, then "
        "update its handshake in tests/clients/matrix.py"
    )
    assert ("HELLO 3" in shake) == (client.protocol == 3), shake
    # the proxy hung up on nobody: a connection it closed first must have asked with QUIT
    for conn in connections:
        assert conn.unparsed == b"", f"connection {conn.number} sent non-RESP bytes"
        if conn.closed_by == "proxy":
            assert conn.names()[-1:] == ["QUIT"], (
                f"the proxy closed connection {conn.number} after {conn.names()[-3:]}"
            )
    # the pipeline really went to three shards, the transaction to one
    for shard, key in zip(("s1", "s2", "s3"), plan.keys, strict=True):
        assert fleet.owner(key).name == shard
    assert fleet.owner(plan.tagged[0]).name == fleet.owner(plan.tagged[1]).name


def test_declared_versions_are_the_pinned_ones() -> None:
    """The README's versions are the repository's pins: the lockfile, pyproject, setup.sh."""
    lock = json.loads((matrix.NODE_DIR / "package-lock.json").read_text())
    package = json.loads((matrix.NODE_DIR / "package.json").read_text())
    with (ROOT / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]["test"]
    setup = (ROOT / "deploy" / "setup.sh").read_text()
    for client in CLIENTS:
        if client.pinned_by == "package-lock.json":
            assert client.package in package["dependencies"], client.package
            locked = lock["packages"][f"node_modules/{client.package}"]["version"]
            assert locked == client.version, (client.id, locked)
        elif client.pinned_by == "pyproject":
            assert client.version in extras, (client.id, client.version)
        else:
            assert client.pinned_by == "Debian 12", client.id
            assert re.search(rf"need\+=\([^)]*\b{re.escape(client.package)}\b", setup), (
                f"deploy/setup.sh does not install {client.package}"
            )


def test_readme_client_matrix_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    assert matrix.render(text) == text, "run: python -m tests.clients.matrix README.md"
    clients = text.index("\n## Clients\n")
    section = text.index("\n### Client compatibility\n")
    block = text.index(f"<!-- generated:{matrix.SECTION} -->")
    assert clients < section < block < text.index("\n## Deploy\n")
    assert "\n## " not in text[clients + 1 : block]


def test_every_check_is_declared_once() -> None:
    keys = [k for check in matrix.CHECKS for k in check.results]
    assert len(keys) == len(set(keys))
    plan = make_plan(CLIENTS[0], 1)
    for client in CLIENTS:
        assert sorted(matrix.expected(client, plan)) == sorted(keys), client.id
        assert set(client.seen) <= {k for check in matrix.CHECKS for k in check.refusals}
    assert len({c.id for c in CLIENTS}) == len(CLIENTS)
