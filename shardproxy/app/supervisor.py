"""Worker processes: one supervisor, N serving workers, the same listen addresses.

``shardproxy run --workers N`` (or ``workers: N``) makes this process a supervisor. It serves no
client itself: it forks N workers (:func:`shardproxy.app.server.serve_worker`, each with its own
uvloop, backend connections and counters), restarts a worker that dies, relays signals, and
answers the admin HTTP port for all of them.

How the workers share the listen addresses:

    TCP, fixed port      each worker binds it with SO_REUSEPORT; the kernel spreads new
                         connections over the workers' sockets
    TCP port 0, unix:    the supervisor binds one socket before forking; every worker accepts
                         on that inherited socket

The supervisor's state changes only in its control loop (:meth:`Supervisor._step`), never in a
signal handler (handlers append to a list and wake the loop)::

    STARTING ──every worker's admin socket exists──▶ RUNNING
       │                                                │
       │ a worker exits before it serves (port taken,   │ SIGTERM / SIGINT
       │ ...): stop the others, exit 1                  ▼
       └───────── SIGTERM / SIGINT ───────────────▶ STOPPING ──every worker reaped──▶ exit
                                                     SIGTERM to each worker, which drains;
                                                     exit 0 when all exited 0; past the
                                                     deadline (drain timeout + grace):
                                                     SIGKILL the rest, exit 1

One WorkerSlot (a worker position), while RUNNING::

    spawn ─▶ running (pid) ──exits (not STOPPING)──▶ backoff ──restart_at reached──▶ spawn
                                                     0.1 s, doubled per quick death, at most
                                                     5 s; back to 0.1 s once a worker has
                                                     lived 10 s

SIGHUP and ``POST /reload`` reach every worker, and each reloads the file itself. The supervisor
loads the file too, so that a worker it starts later serves the current topology (with the
listen addresses it started with). A worker that is not serving yet gets the SIGHUP once it is.

Forking safely. The supervisor has one stdlib asyncio loop, for the admin HTTP, and no threads
(it binds its sockets itself, so no getaddrinfo runs in an executor thread). It forks only from
the control loop, between ``run_until_complete`` calls, so no loop runs in the child, and with
the signals it handles blocked. The child then drops what it inherited, except stdio and the
listen sockets: the signal wakeup fd, the signal handlers and every other fd (the supervisor's
selector, self-pipe and admin connections), before ``serve_worker`` starts a fresh uvloop. Each
worker asks the kernel for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so even a
supervisor killed with SIGKILL leaves no worker behind.

Admin HTTP (``admin:``) is the supervisor's: workers_admin.py's routes (the endpoints are
listed there), which answer by asking the workers. Each worker has a private admin socket,
``<rundir>/worker-<i>.sock`` (rundir is a fresh 0700 temp directory), that the supervisor asks
(:meth:`Supervisor.ask`). What those routes use of the supervisor is workers_admin.WorkerPool,
the public methods under "for the admin HTTP" below.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client.metrics_core import Metric

from shardproxy.app.http import HttpServer, unix_request
from shardproxy.app.server import serve_worker
from shardproxy.app.workers_admin import WorkerAnswer, merge_metrics, supervisor_routes
from shardproxy.config import Address, Config, ConfigError, load
from shardproxy.observe import log as logsetup

log = logging.getLogger("shardproxy.supervisor")

STARTING, RUNNING, STOPPING = "starting", "running", "stopping"

BACKOFF_MIN = 0.1  # seconds before restarting a worker that died
BACKOFF_MAX = 5.0  # ... at most, when it keeps dying soon after each start
STABLE_AFTER = 10.0  # a worker that lived this long restarts after BACKOFF_MIN again
STOP_GRACE = 5.0  # on top of shutdown.drain_timeout_ms, before stragglers get SIGKILL
ASK_TIMEOUT = 5.0  # a worker's answer on its admin socket
IDLE_WAKE = 1.0  # the control loop runs at least this often (a safety net for lost SIGCHLD)
READY_POLL = 0.02  # while a worker is starting, how often its admin socket is looked for
BACKLOG = 1024

#: The signals the supervisor handles; blocked across fork() so none reaches a half-set child.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
PR_SET_PDEATHSIG = 1


def run_supervisor(config: Config, config_path: str | None, workers: int, log_level: str) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; returns the exit code.

    Logging is already set up (launch.serve); each worker sets it up again with its index in
    every line."""
    return Supervisor(config, config_path, workers, log_level).run()


@dataclass
class WorkerSlot:
    """One worker position. The supervisor owns it; only the control loop changes pid/state."""

    index: int
    admin: str  # the worker's private admin socket path
    pid: int | None = None  # the running worker; None while no worker runs in this slot
    started: float = 0.0  # time.monotonic() of the last spawn
    ready: bool = False  # its admin socket exists: it listens and its signal handlers are set
    quick_deaths: int = 0  # consecutive deaths within STABLE_AFTER of a start (backoff exponent)
    restart_at: float | None = None  # when to spawn again; None: no restart scheduled
    reload_pending: bool = False  # a SIGHUP arrived before it was ready; sent once it is
    #: Counter and histogram families of this worker's last successful scrape (see /metrics).
    counters: list[Metric] = field(default_factory=list)


class Supervisor:
    """Starts, watches, restarts and stops the workers; serves the merged admin HTTP."""

    def __init__(
        self, config: Config, config_path: str | None, workers: int, log_level: str = "info"
    ) -> None:
        self.log_level = log_level
        #: What a worker started now serves: the startup config, replaced by each successful
        #: reload of the file (keeping the listen addresses the supervisor started with).
        self.config = config
        self.config_path = config_path
        self.rundir = _private_dir()
        self.slots = [
            WorkerSlot(i, os.path.join(self.rundir, f"worker-{i}.sock")) for i in range(workers)
        ]
        self.state = STARTING
        self.exit_code = 0
        self.restarts = 0  # workers restarted since the start (each is logged)
        #: Listen sockets the supervisor bound (unix and TCP port 0), by str(address); every
        #: worker inherits them. TCP listeners with a fixed port are not here: workers bind those.
        self.sockets: dict[str, socket.socket] = {}
        self.unix_paths: list[str] = []  # socket files to remove at exit
        self.admin_sock: socket.socket | None = None  # config.admin, bound before any fork
        self.admin: HttpServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # created in run(), admin HTTP only
        self.wake = asyncio.Event()  # set by signal callbacks: the control loop has work
        self.signals: list[int] = []  # signals received and not yet handled, in order
        self.stop_deadline = float("inf")  # STOPPING: when the remaining workers get SIGKILL
        #: Counter/histogram families of workers that died (summed): kept in merged /metrics.
        self.retired: list[Metric] = []

    # -- the control loop --------------------------------------------------------------------

    def run(self) -> int:
        try:
            if not self._bind():
                return 1
            self.loop = loop = asyncio.new_event_loop()
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, sig)
            if self.admin_sock is not None:
                self.admin = HttpServer(
                    supervisor_routes(self),
                    self.config.admin_token,
                    self.config.admin_token_everywhere,
                )
                loop.run_until_complete(self.admin.start_on(self.admin_sock))
                log.info(
                    "admin HTTP on %s (merging %d workers)", self.config.admin, len(self.slots)
                )
            for slot in self.slots:
                self._spawn(slot)
            while self._step():
                loop.run_until_complete(self._sleep(self._timeout()))
            log.info("stopped (exit code %d, %d worker restarts)", self.exit_code, self.restarts)
            return self.exit_code
        finally:
            self._cleanup()

    def _on_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.wake.set()

    async def _sleep(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [s.restart_at for s in self.slots if s.pid is None and s.restart_at is not None]
        if self.state == STOPPING:
            due.append(self.stop_deadline)
        timeout = min([IDLE_WAKE, *(t - now for t in due)])
        if any(s.pid is not None and not s.ready for s in self.slots):
            timeout = min(timeout, READY_POLL)
        return max(0.0, timeout)

    def _step(self) -> bool:
        """One pass: reap, handle signals, notice ready workers, restart. False when done."""
        self.wake.clear()
        self._reap()
        signals, self.signals = self.signals, []
        for sig in signals:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._stop(0, f"received {signal.Signals(sig).name}")
            elif sig == signal.SIGHUP:
                self.reload_file("SIGHUP")
                self._signal_workers(signal.SIGHUP)
        self._check_ready()
        now = time.monotonic()
        if self.state == STOPPING:
            running = [s for s in self.slots if s.pid is not None]
            if not running:
                return False
            if now >= self.stop_deadline:
                for slot in running:
                    log.error(
                        "worker %d (pid %d) did not stop in time: SIGKILL", slot.index, slot.pid
                    )
                    _kill(slot.pid, signal.SIGKILL)
                self.exit_code = 1
                self.stop_deadline = float("inf")
            return True
        for slot in self.slots:
            if slot.pid is None and slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
        return True

    def _stop(self, code: int, why: str) -> None:
        self.exit_code = max(self.exit_code, code)
        if self.state == STOPPING:
            log.info("%s: already stopping", why)
            return
        self.state = STOPPING
        drain = self.config.shutdown.drain_timeout_ms / 1000
        self.stop_deadline = time.monotonic() + drain + STOP_GRACE
        log.info(
            "%s: stopping %d workers (they drain for up to %.1fs)", why, len(self.slots), drain
        )
        for slot in self.slots:
            slot.restart_at = None
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, sig: int) -> None:
        for slot in self.slots:
            if slot.pid is None:
                continue
            if sig == signal.SIGHUP and not slot.ready:
                slot.reload_pending = True  # its handler may not be installed yet
                continue
            _kill(slot.pid, sig)

    def _check_ready(self) -> None:
        for slot in self.slots:
            if slot.pid is not None and not slot.ready and os.path.exists(slot.admin):
                slot.ready = True
                log.info("worker %d (pid %d) serving", slot.index, slot.pid)
                if slot.reload_pending:
                    slot.reload_pending = False
                    _kill(slot.pid, signal.SIGHUP)
        if self.state == STARTING and all(s.ready for s in self.slots):
            self.state = RUNNING
            log.info("%d workers serving", len(self.slots))

    # -- children ------------------------------------------------------------------------------

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.pid is None:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # not ours any more: nothing to learn about how it ended
                pid, status = slot.pid, 1 << 8
            if pid != 0:
                self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: WorkerSlot, code: int) -> None:
        pid, lived = slot.pid, time.monotonic() - slot.started
        slot.pid, slot.ready, slot.reload_pending = None, False, False
        if slot.counters:
            self.retired = merge_metrics([self.retired, slot.counters], counters_only=True)
            slot.counters = []
        how = f"exited with code {code}" if code >= 0 else f"was killed by {_signame(-code)}"
        if self.state == STOPPING:
            if code != 0:
                self.exit_code = 1
                log.warning("worker %d (pid %d) %s", slot.index, pid, how)
            else:
                log.info("worker %d (pid %d) stopped", slot.index, pid)
            return
        if self.state == STARTING:
            log.error("worker %d (pid %d) %s before it served", slot.index, pid, how)
            self._stop(1, "a worker could not start")
            return
        slot.quick_deaths = 0 if lived >= STABLE_AFTER else slot.quick_deaths + 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** max(0, slot.quick_deaths - 1))
        slot.restart_at = time.monotonic() + delay
        self.restarts += 1
        log.warning(
            "worker %d (pid %d) %s after %.1fs; restarting it in %.1fs (restart #%d)",
            slot.index, pid, how, lived, delay, self.restarts,
        )  # fmt: skip

    def _spawn(self, slot: WorkerSlot) -> None:
        """Fork a worker into ``slot``. Called only while the loop is not running."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(slot.admin)  # its appearance is how the supervisor sees the worker serve
        if threading.active_count() > 1:  # a thread could hold a lock the child would inherit
            log.warning("forking with %d threads running", threading.active_count())
        config, parent = self.config, os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()  # or the child would write the parent's buffered output again
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(slot, config, parent, mask)  # never returns
        except OSError as exc:
            log.error("cannot fork worker %d: %s", slot.index, exc)
            if self.state == STARTING:
                self._stop(1, "a worker could not start")
            else:
                slot.restart_at = time.monotonic() + BACKOFF_MAX
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.pid, slot.started, slot.ready, slot.restart_at = pid, time.monotonic(), False, None
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _child(self, slot: WorkerSlot, config: Config, parent: int, mask: Iterable[int]) -> None:
        """The forked worker: forget the supervisor, serve, exit. Never returns."""
        code = 1
        try:
            # Signals are blocked: nothing can run the supervisor's handlers meanwhile.
            signal.set_wakeup_fd(-1)  # it is the supervisor loop's self-pipe
            signal.signal(signal.SIGTERM, _exit_now)  # until serve_worker installs its own
            signal.signal(signal.SIGINT, _exit_now)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # sent again once this one is ready
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _die_with_parent()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if os.getppid() != parent:  # the supervisor died before PR_SET_PDEATHSIG was set
                code = 0
                return
            keep = {s.fileno() for s in self.sockets.values()}
            _close_fds(keep)  # the supervisor's selector, self-pipe, admin sockets, ...
            # The supervisor's objects stay in memory, referring to fds closed above (numbers
            # this process will reuse): keep the cyclic GC from ever finalizing them.
            gc.freeze()
            asyncio.set_event_loop(None)
            logsetup.setup(self.log_level, tag=f"worker {slot.index}")
            code = serve_worker(
                config,
                self.config_path,
                sockets=dict(self.sockets),
                reuse_port=True,
                admin_address=Address(unix=slot.admin),
                worker=slot.index,
            )
        except BaseException:
            log.exception("worker %d failed", slot.index)
            code = 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    # -- reload ----------------------------------------------------------------------------------

    def reload_file(self, trigger: str) -> bool:
        """Load the file for workers started from now on; True when it is valid."""
        if self.config_path is None:
            return False
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.warning(
                "reload (%s): %s is invalid (%d problems); workers restarted from now on keep "
                "the previous topology",
                trigger, self.config_path, len(exc.problems),
            )  # fmt: skip
            return False
        self.config = dataclasses.replace(new, listen=self.config.listen)
        log.info("reload (%s): sent to %d workers", trigger, len(self.slots))
        return True

    # -- sockets -------------------------------------------------------------------------------

    def _bind(self) -> bool:
        """Bind what must be bound once, before forking. False (logged) when one cannot be."""
        address: Address | None = None
        try:
            for address in (*self.config.listen, *self.config.tls.listen):
                if address.unix:
                    self.sockets[str(address)] = _unix_listener(address.unix)
                    self.unix_paths.append(address.unix)
                elif address.port == 0:
                    sock = _tcp_listener(address.host, 0)
                    self.sockets[str(address)] = sock
                    log.info("%s is port %d for every worker", address, sock.getsockname()[1])
                else:
                    # Workers bind with SO_REUSEPORT, which would also let them join another
                    # process's group on the port: make sure the port is free first.
                    _tcp_listener(address.host, address.port).close()
            address = self.config.admin
            if address is not None:
                if address.unix:
                    self.admin_sock = _unix_listener(address.unix)
                    self.unix_paths.append(address.unix)
                else:
                    self.admin_sock = _tcp_listener(address.host, address.port)
        except OSError as exc:
            log.error("cannot listen on %s: %s", address, exc)
            return False
        return True

    def _cleanup(self) -> None:
        """Whatever happened: no worker left running, sockets and the run directory removed."""
        running = [s for s in self.slots if s.pid is not None]
        for slot in running:
            _kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown.drain_timeout_ms / 1000 + STOP_GRACE
        for slot in running:
            assert slot.pid is not None
            while not _reaped(slot.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not _reaped(slot.pid):
                _kill(slot.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(slot.pid, 0)
            slot.pid = None
        loop = self.loop
        if loop is not None:
            if self.admin is not None:
                self.admin.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()  # also restores the default signal handlers
        for sock in [*self.sockets.values(), *([self.admin_sock] if self.admin_sock else [])]:
            sock.close()
        for path in self.unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        shutil.rmtree(self.rundir, ignore_errors=True)

    # -- for the admin HTTP (workers_admin.WorkerPool) -------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.state == STOPPING

    def pids(self) -> list[int | None]:
        return [slot.pid for slot in self.slots]

    def last_counters(self, worker: int) -> list[Metric]:
        return self.slots[worker].counters

    def keep_counters(self, worker: int, families: list[Metric]) -> None:
        self.slots[worker].counters = families

    async def ask(
        self, worker: int, method: str, path: str, timeout: float = ASK_TIMEOUT
    ) -> tuple[int, bytes]:
        """(status, body) of a worker's admin endpoint. Raises OSError, TimeoutError or
        ValueError when it does not answer properly."""
        slot = self.slots[worker]
        answer = unix_request(slot.admin, method, path, host=f"worker-{slot.index}")
        return await asyncio.wait_for(answer, timeout)

    async def ask_all(
        self, method: str, path: str, timeout: float = ASK_TIMEOUT
    ) -> list[WorkerAnswer]:
        """Every worker: (index, pid asked or None when none runs, answer or the error)."""

        async def one(slot: WorkerSlot) -> WorkerAnswer:
            pid = slot.pid
            if pid is None:
                return WorkerAnswer(slot.index, None, ConnectionError("restarting"))
            try:
                return WorkerAnswer(
                    slot.index, pid, await self.ask(slot.index, method, path, timeout)
                )
            except (OSError, TimeoutError, ValueError) as exc:
                return WorkerAnswer(slot.index, pid, exc)

        return list(await asyncio.gather(*(one(s) for s in self.slots)))


def _private_dir() -> str:
    """A fresh 0700 directory for the workers' admin sockets (short: sun_path is ~107 bytes)."""
    path = tempfile.mkdtemp(prefix="shardproxy-")
    if len(path) > 80 and os.path.isdir("/tmp"):
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="shardproxy-", dir="/tmp")
    return path


def _unix_listener(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, not SO_REUSEPORT), resolved in this thread."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _close_fds(keep: set[int]) -> None:
    """Close every fd above stderr except ``keep``."""
    try:
        top = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        top = 65536
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, max(low, top))


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    """A worker told to stop before it serves has nothing to drain."""
    os._exit(0)


def _kill(pid: int | None, sig: int) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
