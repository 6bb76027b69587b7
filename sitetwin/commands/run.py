"""``sitetwin run``: collectors, twin updates and scheduled rules, until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from connectors.errors import SpoolLocked
from sitetwin.config import Settings

log = logging.getLogger("sitetwin.run")


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("run", help="collect telemetry, update the twin and run rules until stopped")
    p.add_argument("--instance", type=int, default=None,
                   help="collector number, appended to mqtt.client_id (one per process)")
    p.add_argument("--no-rules", action="store_true", help="do not schedule the rules in this process")
    p.add_argument("--no-twin", action="store_true", help="do not update the twin's live state")
    p.add_argument("--retire", action="store_true",
                   help="on SIGTERM/Ctrl-C leave for good: drain, then end the broker session "
                        "(expiry 0) so this instance takes no further share of the stream")
    p.set_defaults(handler=run, default_verbosity=1)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sitetwin.wiring import Pipeline

    client_id = settings.mqtt.client_id
    if args.instance is not None:
        client_id = f"{client_id}-{args.instance}"
    stop = threading.Event()
    pipeline = None

    def _graceful(signum, frame):
        log.info("signal %s: finishing the pending batches and stopping", signal.Signals(signum).name)
        stop.set()
        if pipeline is not None:
            pipeline.collector.cancel_start()  # if still waiting for its instance lock

    if args.instance is not None and not settings.mqtt.shared_group:
        log.warning("--instance %s without mqtt.shared_group: every instance receives every message "
                    "(set mqtt.shared_group to split the stream)", args.instance)
    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    pipeline = Pipeline(settings, client_id=client_id, twin=not args.no_twin, rules=not args.no_rules)
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
