"""shardproxy: a RESP proxy in front of a fleet of primary/replica Redis shards.

The package is layered (ARCHITECTURE.md); this file only names the version and the compile
boundary, and imports none of the sub-packages.
"""

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

COMPILED_PACKAGES = ("protocol", "commands", "routing", "backend", "session", "observe")
"""The sub-packages the build compiles with mypyc, every module in them (setup.py); the other
sub-packages (config, control, app) stay Python. The compile boundary is a folder boundary."""

_HERE = Path(__file__).resolve().parent


def compiled_module_names() -> list[str]:
    """Every module of :data:`COMPILED_PACKAGES`, dotted (``protocol.resp``), sorted."""
    return sorted(
        f"{pkg}.{path.stem}"
        for pkg in COMPILED_PACKAGES
        for path in (_HERE / pkg).glob("*.py")
        if path.name != "__init__.py"
    )


class _SourceOnly(MetaPathFinder):
    """``SHARDPROXY_PURE=1``: load this package's modules from their ``.py`` files even where
    a compiled build sits beside them (to test or profile the interpreted code)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.startswith(__name__ + ".") and path:
            return FileFinder(path[0], (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(fullname)
        return None


if os.environ.get("SHARDPROXY_PURE", "") not in ("", "0"):
    sys.meta_path.insert(0, _SourceOnly())


def compiled_modules() -> list[str]:
    """The modules of :func:`compiled_module_names` that run compiled in this process."""
    out = []
    for name in compiled_module_names():
        spec = find_spec(f"{__name__}.{name}")
        if spec is not None and spec.origin is not None and not spec.origin.endswith(".py"):
            out.append(name)
    return out
