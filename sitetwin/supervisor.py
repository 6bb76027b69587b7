"""The supervisor of ``sitetwin run --workers N``: N collector processes on one shared subscription.

How many (``resolve_workers``).  Several processes split the stream only on a shared
subscription (``$share/<group>/...``); on a plain one each would receive - and store -
every message.  The default subscription is plain because Mosquitto does not restore a
shared subscription across its own restart (issue 11, docs/operations.md).  So ``auto``
is one worker per core when ``mqtt.shared_group`` is set and 1 otherwise, and an explicit
count above 1 with a plain subscription is refused, naming the setting.  One worker is
the plain single process of before, connected as ``mqtt.client_id`` itself.

Workers are subprocesses of the same command line (``sitetwin run --instance i``), not
``multiprocessing`` children: a worker is then exactly the process an operator could start
by hand, tested as such, with its own interpreter, logging and signal handling, and
its settings read from the same file and environment (nothing is pickled, secrets are not
passed on a pipe).  Worker i connects as ``<client_id>-<i>``, the same id at every
restart, so it resumes its own broker session and its own spool
(``<spool.path>/<client_id>-<i>/``).

Supervision.  SIGTERM and SIGINT are forwarded to every worker as SIGTERM: each seals
its batch, makes it durable and acknowledges it (or, with ``--retire``, leaves the group
for good).  A worker that exits while nobody asked it to (a crash, ``kill -9``, the
watchdog's status 3) is restarted after a back-off of ``RESTART_FIRST_S`` doubling to
``RESTART_MAX_S``, logged and counted; meanwhile the broker keeps its unacknowledged
messages in its session.  After ``MAX_QUICK_FAILURES`` failures of one worker in a row,
each within ``STABLE_AFTER_S`` of its start, the supervisor stops the others and exits
with ``EXIT_WORKERS_FAILED`` (a service manager may restart the whole).  Each worker holds
the read end of a pipe whose write end only the supervisor holds: if the supervisor
dies (even by ``kill -9``) the workers read end-of-file and stop cleanly instead of
living on unsupervised.

Work that must happen once - the rule scheduler, the notifier, the ``site_state``
snapshot written from the registry - runs in worker 0 only.  Every worker keeps the
twin's live state for the readings *it* receives (a per-site aggregate flushed as an
upsert that keeps the newest values, safe from several writers): that is sharded work,
not repeated work, and no reading reaches the twin twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sitetwin.errors import UserError

__all__ = [
    "EXIT_WORKERS_FAILED",
    "MAX_QUICK_FAILURES",
    "RESTART_FIRST_S",
    "RESTART_MAX_S",
    "STABLE_AFTER_S",
    "Supervisor",
    "WorkerCount",
    "available_cores",
    "resolve_workers",
]

log = logging.getLogger(__name__)

EXIT_WORKERS_FAILED = 4  # a worker kept crashing, or did not stop cleanly
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that ran this long before dying starts a new series of failures
MAX_QUICK_FAILURES = 5
STOP_TIMEOUT_S = 180.0  # a retiring worker may take 2 minutes to make its batches durable
STARTING_S = 30.0  # a worker killed by SIGTERM this soon may not have had its handler yet


@dataclass(frozen=True, slots=True)
class WorkerCount:
    """How many collector processes to run, and why (logged at start-up)."""

    count: int
    reason: str


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which ``taskset`` and cpusets narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(requested: int | str, *, shared_group: str, cores: int,
                    source: str = "collector.workers") -> WorkerCount:
    """``auto`` -> one per core with a shared group, else 1; N > 1 needs a shared group.

    ``source`` names where ``requested`` came from (``--workers`` or the config key) in the
    error.  Raises ``UserError`` for N > 1 on a plain subscription.
    """
    if requested == "auto":
        if not shared_group:
            return WorkerCount(1, "auto: mqtt.shared_group is empty, and on a plain subscription "
                                  "every process would receive every message")
        return WorkerCount(cores, f"auto: one per core ({cores}) on shared group {shared_group!r}")
    if not isinstance(requested, int) or requested < 1:
        raise UserError(f'{source} must be a positive number or "auto", not {requested!r}')
    if requested > 1 and not shared_group:
        raise UserError(f"{source} {requested} needs a shared subscription: set mqtt.shared_group "
                        "(with the plain default every worker would receive every message; on "
                        "Mosquitto read docs/operations.md on shared groups first)")
    return WorkerCount(requested, f"{source} {requested}")


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # when a crashed worker is due to start again
    quick_failures: int = 0
    restarts: int = 0


class Supervisor:
    """Runs ``count`` workers until stopped; ``argv(i, fd)`` is worker i's command line.

    ``run`` installs the SIGTERM/SIGINT handlers, so call it from the main thread.  The
    timings default to the module's constants (tests shorten them).
    """

    def __init__(self, count: int, argv: Callable[[int, int], Sequence[str]], *,
                 env: dict[str, str] | None = None, restart_first_s: float = RESTART_FIRST_S,
                 restart_max_s: float = RESTART_MAX_S, stable_after_s: float = STABLE_AFTER_S,
                 max_quick_failures: int = MAX_QUICK_FAILURES) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self._argv = argv
        self._env = env
        self._restart_first_s, self._restart_max_s = restart_first_s, restart_max_s
        self._stable_after_s, self._max_quick_failures = stable_after_s, max_quick_failures
        self._workers = [_Worker(i) for i in range(count)]
        self._stop = threading.Event()
        self._stopping = False
        self._signal_name = ""
        self._lifeline_r, self._lifeline_w = os.pipe()  # both ends stay with us (non-inheritable)

    @property
    def restarts(self) -> int:
        """Unexpected worker exits so far (each one restarted, or the last one given up on)."""
        return sum(w.restarts for w in self._workers)

    def stop(self, signame: str = "stop") -> None:
        """Ask every worker to stop cleanly; ``run`` returns once they have."""
        self._signal_name = signame
        self._stop.set()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop(signal.Signals(signum).name)

    def run(self) -> int:
        """Start the workers and supervise them until stopped; the process exit status."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for w in self._workers:
                self._start(w)
            status = self._supervise()
            return self._stop_all(status)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            os.close(self._lifeline_r)
            os.close(self._lifeline_w)

    def _start(self, w: _Worker) -> None:
        argv = list(self._argv(w.index, self._lifeline_r))
        w.proc = subprocess.Popen(argv, env=self._env, pass_fds=(self._lifeline_r,))
        w.started_at = time.monotonic()
        w.restart_at = None
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _supervise(self) -> int:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for w in self._workers:
                if w.proc is None:
                    if w.restart_at is not None and now >= w.restart_at:
                        self._start(w)
                    continue
                code = w.proc.poll()
                if code is None:
                    continue
                pid = w.proc.pid
                w.proc = None
                if self._stop.is_set():  # a signal came meanwhile: its exit is the stop's
                    break
                if now - w.started_at >= self._stable_after_s:
                    w.quick_failures = 0
                w.quick_failures += 1
                w.restarts += 1
                if w.quick_failures >= self._max_quick_failures:
                    log.critical("worker %d (pid %d) exited %s: %d failures in a row, each within "
                                 "%.3gs of starting; giving up: stopping the other workers",
                                 w.index, pid, _describe(code), w.quick_failures, self._stable_after_s)
                    return EXIT_WORKERS_FAILED
                delay = min(self._restart_max_s, self._restart_first_s * 2 ** (w.quick_failures - 1))
                w.restart_at = now + delay
                log.error("worker %d (pid %d) exited %s unexpectedly; restarting it in %.3gs "
                          "(restart %d of this worker, %d in all)", w.index, pid, _describe(code),
                          delay, w.restarts, self.restarts)
        return 0

    def _stop_all(self, status: int) -> int:
        running = [w for w in self._workers if w.proc is not None]
        log.info("%s: stopping %d worker(s); each makes its batches durable and acknowledges them",
                 self._signal_name or "giving up", len(running))
        for w in running:
            assert w.proc is not None
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in running:
            assert w.proc is not None
            try:
                code = w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop within %.0fs; killing it (the broker "
                          "redelivers what it had not acknowledged)", w.index, w.proc.pid, STOP_TIMEOUT_S)
                w.proc.kill()
                w.proc.wait()
                status = EXIT_WORKERS_FAILED
                continue
            if code == 0:
                log.info("worker %d stopped cleanly", w.index)
            elif code == -signal.SIGTERM and time.monotonic() - w.started_at < STARTING_S:
                # Stopped while still importing, before its handlers were in place: it had
                # connected to nothing, so there was nothing to make durable.
                log.info("worker %d stopped while starting", w.index)
            else:
                log.error("worker %d (pid %d) stopped %s", w.index, w.proc.pid, _describe(code))
                status = EXIT_WORKERS_FAILED
        if self.restarts:
            log.warning("workers restarted %d time(s) while running", self.restarts)
        return status


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"on signal {signal.Signals(-code).name}"
        except ValueError:
            return f"on signal {-code}"
    return f"with status {code}"
