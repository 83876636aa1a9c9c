"""ARCHITECTURE.md is the plan of the code: it must name every sub-package and every module
in it, and the layering it draws must be the one .importlinter checks."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import shardproxy

REPO = Path(__file__).resolve().parent.parent
PKG = Path(shardproxy.__file__).resolve().parent
PLAN = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")


def _rows() -> dict[str, str]:
    """sub-package -> its row in the table of sub-packages."""
    rows = {}
    for line in PLAN.splitlines():
        m = re.match(r"\| `(\w+)/` \|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def test_every_subpackage_and_module_is_in_the_plan() -> None:
    rows = _rows()
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert sorted(rows) == packages
    for pkg in packages:
        for module in sorted((PKG / pkg).glob("*.py")):
            if module.name != "__init__.py":
                assert f"`{module.stem}`" in rows[pkg], f"{pkg}/{module.name} is not in its row"


def test_the_drawn_layers_are_the_checked_ones() -> None:
    contracts = configparser.ConfigParser()
    contracts.read(REPO / ".importlinter")
    layers = contracts["importlinter:contract:layers"]["layers"].split()
    checked = [name.removeprefix("shardproxy.") for name in layers if name != "|"]
    diagram = PLAN.split("## Layers", 1)[1].split("```")[1]
    drawn = re.findall(r"^(\w+) +.*\((compiled|Python)\)", diagram, re.M)
    assert sorted(name for name, _ in drawn) == sorted(checked)
    compiled = sorted(name for name, build in drawn if build == "compiled")
    assert compiled == sorted(shardproxy.COMPILED_PACKAGES)
