"""The README's reference sections, generated from the tables they describe.

``python -m shardproxy.app.docs README.md`` rewrites every block between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` markers; ``--check`` exits 1 when
the README is stale (the test suite runs the same check).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from shardproxy import config
from shardproxy.commands import views as commands
from shardproxy.observe import metrics
from shardproxy.protocol import errors
from shardproxy.session import modes

SECTIONS: dict[str, Callable[[], str]] = {
    "topology": config.reference_markdown,
    "commands": commands.markdown_table,
    "modes": modes.markdown_table,
    "errors": errors.reference_markdown,
    "metrics": metrics.markdown_table,
}

_BLOCK = re.compile(r"(<!-- generated:(\w+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.DOTALL)


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""

    def fill(m: re.Match[str]) -> str:
        make = SECTIONS.get(m.group(2))
        if make is None:
            raise KeyError(f"unknown generated section {m.group(2)!r}")
        return m.group(1) + make().rstrip("\n") + "\n" + m.group(4)

    return _BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if a != "--check"] or ["README.md"]
    stale = False
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = render(text)
        if new != text:
            stale = True
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    if check and stale:
        print("README is stale: run python -m shardproxy.app.docs README.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
