"""``shardproxy run``: one serving process, or a supervisor and N worker processes.

    workers (--workers N, else the config's workers:) ── 1 ──▶ server.serve_worker: this
                                 │                             process serves
                                 └──────────────────── >1 ──▶ supervisor.run_supervisor: this
                                                               process forks and watches N
                                                               workers, each serve_worker

This is the one module that knows both; server.py knows nothing of the supervisor.
"""

from __future__ import annotations

from shardproxy.app.server import serve_worker
from shardproxy.app.supervisor import run_supervisor
from shardproxy.config import Config
from shardproxy.observe import log as logsetup


def serve(
    config: Config,
    config_path: str | None = None,
    workers: int | None = None,
    log_level: str = "info",
) -> int:
    """Run the proxy until SIGTERM/SIGINT; returns the exit code.

    With more than one worker (``--workers`` or ``workers:``), a supervisor process runs the
    workers (see supervisor.py); otherwise this process serves."""
    logsetup.setup(log_level)
    n = workers if workers is not None else config.workers
    if n > 1:
        return run_supervisor(config, config_path, n, log_level)
    return serve_worker(config, config_path)
