"""Build hook: compiles the per-request sub-packages with mypyc (README: Performance).

Every module of the sub-packages named in ``shardproxy.COMPILED_PACKAGES`` is ordinary, fully
typed Python; mypyc turns them into C extensions that run the same code several times faster.
``SHARDPROXY_COMPILE=0`` installs them as plain Python, and ``SHARDPROXY_PURE=1`` runs the
``.py`` files even where a compiled build is present.
"""

import ast
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def compiled_sources() -> list[str]:
    """The modules of shardproxy.COMPILED_PACKAGES, found without importing the package."""
    tree = ast.parse((ROOT / "shardproxy" / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", "") == "COMPILED_PACKAGES"
        ):
            packages = ast.literal_eval(node.value)
            return sorted(
                str(path.relative_to(ROOT))
                for pkg in packages
                for path in (ROOT / "shardproxy" / pkg).glob("*.py")
                if path.name != "__init__.py"
            )
    raise SystemExit("shardproxy/__init__.py: COMPILED_PACKAGES not found")


ext_modules = []
if os.environ.get("SHARDPROXY_COMPILE", "1") != "0":
    from mypyc.build import mypycify

    ext_modules = mypycify(compiled_sources(), opt_level="3", group_name="shardproxy_native")

setup(ext_modules=ext_modules)
