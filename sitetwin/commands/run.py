"""``sitetwin run``: collectors, twin updates and scheduled rules, until stopped.

With one worker (the default on a plain subscription) everything runs in this process,
connected as ``mqtt.client_id``.  With several (``--workers N|auto``, ``[collector]
workers``) this process only supervises ``sitetwin.supervisor``'s workers, each one
``sitetwin run --instance i`` started by it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from connectors.errors import SpoolLocked
from sitetwin.config import Settings
from sitetwin.errors import SitetwinError, UserError

log = logging.getLogger("sitetwin.run")


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f'a number or "auto", not {value!r}') from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return n


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("run", help="collect telemetry, update the twin and run rules until stopped")
    p.add_argument("--workers", type=_workers, default=None, metavar="N|auto",
                   help="collector processes (default: collector.workers, \"auto\" = one per core "
                        "with mqtt.shared_group set, else 1); several need a shared group")
    p.add_argument("--instance", type=int, default=None,
                   help="collector number, appended to mqtt.client_id (one per process started by "
                        "hand; this process is then a single collector)")
    p.add_argument("--no-rules", action="store_true", help="do not schedule the rules in this process")
    p.add_argument("--no-twin", action="store_true", help="do not update the twin's live state")
    p.add_argument("--retire", action="store_true",
                   help="on SIGTERM/Ctrl-C leave for good: drain, then end the broker session "
                        "(expiry 0) so this instance takes no further share of the stream "
                        "(with several workers: every worker)")
    # A worker of the supervisor: the read end of its lifeline pipe (EOF = the supervisor is gone).
    p.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=run, default_verbosity=1)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.supervisor_fd is None:
        count = _worker_count(args, settings)
        if count > 1:
            return _supervise(args, settings, count)
        return _run_here(args, settings)
    _name_the_worker(args.instance)
    try:
        return _run_here(args, settings)
    except SitetwinError as exc:  # the one line names the worker, like the rest of its log
        log.error("%s", exc)
        return 1


def _worker_count(args: argparse.Namespace, settings: Settings) -> int:
    from sitetwin.supervisor import available_cores, resolve_workers

    if args.instance is not None:
        if args.workers not in (None, 1):
            raise UserError(f"--instance runs one collector in this process; drop --workers "
                            f"{args.workers} or --instance")
        return 1
    source = "--workers" if args.workers is not None else "collector.workers ="
    requested = args.workers if args.workers is not None else settings.collector.workers
    plan = resolve_workers(requested, shared_group=settings.mqtt.shared_group,
                           cores=available_cores(), source=source)
    log.info("%d collector worker(s) (%s)", plan.count, plan.reason)
    return plan.count


def _supervise(args: argparse.Namespace, settings: Settings, count: int) -> int:
    from sitetwin.supervisor import Supervisor
    from sitetwin.wiring import preflight

    preflight(settings, rules=not args.no_rules)  # a bad rule table or channel: one error, no workers
    config = getattr(args, "config", None)
    verbose = getattr(args, "verbose", 0) or 0

    def argv(i: int, fd: int) -> list[str]:
        out = [sys.executable, "-m", "sitetwin", "run", "--workers", "1", "--instance", str(i),
               "--supervisor-fd", str(fd)]
        if config is not None:
            out += ["--config", config]
        if verbose:
            out.append("-" + "v" * verbose)
        if args.no_rules or i > 0:  # rules and the notifier run once, in worker 0
            out.append("--no-rules")
        if args.no_twin:
            out.append("--no-twin")
        if args.retire:
            out.append("--retire")
        return out

    log.info("supervising %d workers as %s-0..%d; Ctrl-C or SIGTERM stops them all",
             count, settings.mqtt.client_id, count - 1)
    return Supervisor(count, argv).run()


def _name_the_worker(index: int) -> None:
    """Every log line of a worker says which one it is."""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(fmt)


def _watch_lifeline(fd: int, on_gone) -> None:
    """Stop when the supervisor's end of the pipe closes (it exited or was killed)."""
    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        log.warning("the supervisor is gone; stopping")
        on_gone()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _run_here(args: argparse.Namespace, settings: Settings) -> int:
    from sitetwin.wiring import Pipeline

    supervised = args.supervisor_fd is not None
    client_id = settings.mqtt.client_id
    if args.instance is not None:
        client_id = f"{client_id}-{args.instance}"
    stop = threading.Event()
    pipeline = None

    def _stop_now() -> None:
        stop.set()
        if pipeline is not None:
            pipeline.collector.cancel_start()  # if still waiting for its instance lock

    def _graceful(signum, frame):
        log.info("signal %s: finishing the pending batches and stopping", signal.Signals(signum).name)
        _stop_now()

    if args.instance is not None and not settings.mqtt.shared_group:
        log.warning("--instance %s without mqtt.shared_group: every instance receives every message "
                    "(set mqtt.shared_group to split the stream)", args.instance)
    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    if supervised:
        _watch_lifeline(args.supervisor_fd, _stop_now)
    # Worker 0 (or the only process) writes the site_state snapshot; the others would repeat it.
    pipeline = Pipeline(settings, client_id=client_id, twin=not args.no_twin, rules=not args.no_rules,
                        site_state=not supervised or args.instance == 0)
    if stop.is_set():
        return 0
    try:
        pipeline.start()
    except SpoolLocked as exc:
        log.error("%s", exc)
        return 0 if stop.is_set() else 1
    log.info("sitetwin running as %s; Ctrl-C or SIGTERM stops it", client_id)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        pipeline.stop(retire=args.retire)
    return 0
