"""Build hook: compiles the per-request modules with mypyc (README: Performance).

The modules are ordinary, fully typed Python; mypyc turns them into C extensions that run the
same code several times faster. ``SHARDPROXY_COMPILE=0`` installs them as plain Python, and
``SHARDPROXY_PURE=1`` runs the ``.py`` files even where a compiled build is present.
"""

import ast
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """shardproxy.COMPILED_MODULES, read without importing the package."""
    tree = ast.parse((ROOT / "shardproxy" / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", "") == "COMPILED_MODULES"
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit("shardproxy/__init__.py: COMPILED_MODULES not found")


ext_modules = []
if os.environ.get("SHARDPROXY_COMPILE", "1") != "0":
    from mypyc.build import mypycify

    ext_modules = mypycify(
        [f"shardproxy/{name}.py" for name in compiled_modules()],
        opt_level="3",
        group_name="shardproxy_native",
    )

setup(ext_modules=ext_modules)
