"""The README is the product's front door: its reference tables and commands must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from shardproxy.app import docs

ROOT = Path(__file__).resolve().parent.parent


def test_generated_sections_are_current() -> None:
    text = (ROOT / "README.md").read_text()
    assert docs.render(text) == text, "run: python -m shardproxy.app.docs README.md"
    for name in docs.SECTIONS:
        assert f"<!-- generated:{name} -->" in text


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") : readme.index("## How it works")]
    commands = re.findall(r"^(deploy/\S+)", quick, re.MULTILINE)
    assert commands == ["deploy/demo.sh", "deploy/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./deploy/test.sh" in ci.split()
    for script in commands:
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
