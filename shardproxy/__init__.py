"""shardproxy: a RESP proxy in front of a fleet of primary/replica Redis shards."""

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from importlib.util import find_spec
from types import ModuleType

__version__ = "0.1.0"

COMPILED_MODULES = (
    "resp",
    "session",
    "backend",
    "router",
    "ring",
    "hashing",
    "commands",
    "fanout",
    "metrics",
    "fifo",
)
"""The per-request modules the build compiles with mypyc (setup.py); the rest stay Python."""


class _SourceOnly(MetaPathFinder):
    """``SHARDPROXY_PURE=1``: load this package's modules from their ``.py`` files even where
    a compiled build sits beside them (to test or profile the interpreted code)."""

    finder = FileFinder(os.path.dirname(__file__), (SourceFileLoader, SOURCE_SUFFIXES))

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.startswith(__name__ + ".") and fullname.count(".") == 1:
            return self.finder.find_spec(fullname)
        return None


if os.environ.get("SHARDPROXY_PURE", "") not in ("", "0"):
    sys.meta_path.insert(0, _SourceOnly())


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` that run compiled in this process's build."""
    out = []
    for name in COMPILED_MODULES:
        spec = find_spec(f"{__name__}.{name}")
        if spec is not None and spec.origin is not None and not spec.origin.endswith(".py"):
            out.append(name)
    return out
