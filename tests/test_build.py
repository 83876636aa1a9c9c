"""The build the tests run is the build users run: compiled (mypyc) unless told otherwise, and
never a stale compiled module shadowing an edited source."""

from __future__ import annotations

import os
from pathlib import Path

import shardproxy
from shardproxy import COMPILED_MODULES, compiled_modules

PKG = Path(shardproxy.__file__).parent
PURE = os.environ.get("SHARDPROXY_PURE", "") not in ("", "0")
NOT_COMPILED = os.environ.get("SHARDPROXY_COMPILE", "1") == "0"


def test_hot_path_modules_run_compiled_unless_told_otherwise() -> None:
    if PURE or NOT_COMPILED:
        assert compiled_modules() == []
    else:
        assert compiled_modules() == list(COMPILED_MODULES)


def test_no_compiled_module_is_older_than_its_source() -> None:
    for name in COMPILED_MODULES:
        source = PKG / f"{name}.py"
        for built in PKG.glob(f"{name}.*.so"):
            assert built.stat().st_mtime >= source.stat().st_mtime, (
                f"{built.name} is older than {source.name}: rebuild (deploy/setup.sh does)"
            )


def test_pure_mode_loads_the_sources() -> None:
    """SHARDPROXY_PURE=1 runs the .py files, compiled build or not (a subprocess, since this
    process has imported its modules already)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import shardproxy.session as s; print(s.__file__)"],
        env={**os.environ, "SHARDPROXY_PURE": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(PKG / "session.py")
