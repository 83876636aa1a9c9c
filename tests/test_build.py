"""The build the tests run is the build users run: compiled (mypyc) unless told otherwise, and
never a stale compiled module shadowing an edited source."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import shardproxy
from shardproxy import compiled_module_names, compiled_modules
from tests.conftest import Proxy

PKG = Path(shardproxy.__file__).parent
PURE = os.environ.get("SHARDPROXY_PURE", "") not in ("", "0")
NOT_COMPILED = os.environ.get("SHARDPROXY_COMPILE", "1") == "0"


def test_hot_path_modules_run_compiled_unless_told_otherwise() -> None:
    if PURE or NOT_COMPILED:
        assert compiled_modules() == []
    else:
        assert compiled_modules() == compiled_module_names()


def test_no_compiled_module_is_older_than_its_source() -> None:
    """The compiled code lives in one library (the per-module files only import from it):
    it must be newer than every source it was built from."""
    if PURE or NOT_COMPILED:
        return
    spec = find_spec("shardproxy_native__mypyc")
    assert spec is not None and spec.origin is not None, "the compiled library is missing"
    built = Path(spec.origin).stat().st_mtime
    for name in compiled_module_names():
        source = PKG / (name.replace(".", "/") + ".py")
        assert built >= source.stat().st_mtime, (
            f"{source.name} changed after the last build: rebuild (deploy/setup.sh does)"
        )


def test_pure_mode_loads_the_sources() -> None:
    """SHARDPROXY_PURE=1 runs the .py files, compiled build or not (a subprocess, since this
    process has imported its modules already)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import shardproxy.session.client as s; print(s.__file__)"],
        env={**os.environ, "SHARDPROXY_PURE": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(PKG / "session" / "client.py")


def test_info_says_which_build_runs(proxy: Proxy) -> None:
    """Operators can tell from INFO whether the proxy runs the compiled build (the proxy is a
    subprocess with this process's environment, so it runs the same build as the tests)."""
    with proxy.client(protocol=2) as c:
        build = c.info("server")["shardproxy_build"]
    assert build == ("python" if PURE or NOT_COMPILED else "compiled")
