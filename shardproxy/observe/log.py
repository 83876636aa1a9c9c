"""Logger setup. A leaf module: imports nothing from the package."""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error", "critical")


def setup(level: str = "info", tag: str = "") -> None:
    """Log to stderr, one line per event, with the time and the component (and ``tag``, the
    worker's number, in worker processes)."""
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[{tag}] " if tag else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    )
    root = logging.getLogger("shardproxy")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
