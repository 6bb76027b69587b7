"""``sitetwin adapters ...``: producers for data that does not speak sitetwin's MQTT contract.

- ``adapters pm [--watch DIR] [--once]``: 3GPP PM files dropped into a directory.
- ``adapters listen [--listen HOST:PORT]``: an InfluxDB-compatible write endpoint
  (``/write``, ``/api/v2/write``) for gateways and Telegraf agents.
- ``adapters gateway [--devices FILE] [--once]``: Modbus TCP and DL/T 645 meters, power plants.

Each publishes readings of docs/contracts.md section 1 at QoS 1 and counts a record
done only once the broker acknowledged it (docs/adapters.md).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import TYPE_CHECKING

from sitetwin.config import Settings
from sitetwin.output import emit

if TYPE_CHECKING:
    from adapters.sink import ReadingSink

log = logging.getLogger("sitetwin.adapters")


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("adapters", help="take PM files, line protocol, Modbus and DL/T 645 "
                                             "devices as telemetry",
                            description="Adapters publish other systems' data as readings of "
                                        "the MQTT contract. See docs/adapters.md.")
    sub = p.add_subparsers(dest="adapter", metavar="ADAPTER", required=True)
    pm = sub.add_parser("pm", help="read 3GPP PM files (TS 32.435) dropped into a directory")
    pm.add_argument("--watch", metavar="DIR",
                    help="the drop directory (default: adapters.pm.watch_dir)")
    pm.add_argument("--once", action="store_true",
                    help="process the files there now and exit (default: watch until stopped)")
    pm.set_defaults(handler=run_pm, default_verbosity=1)
    listen = sub.add_parser("listen", help="an InfluxDB-compatible write endpoint for line protocol",
                            description="Serve /write and /api/v2/write (as Telegraf's "
                                        "influxdb_listener); lines of tower, power and interference "
                                        "are published as readings, others dead-lettered.")
    listen.add_argument("--listen", metavar="HOST:PORT",
                        help="address to serve on (default: adapters.listener.listen)")
    listen.set_defaults(handler=run_listen, default_verbosity=1)
    gw = sub.add_parser("gateway", help="poll meters and power plants (Modbus TCP, DL/T 645)",
                        description="Poll the devices of a devices file on a schedule and publish "
                                    "their readings; a broker outage is buffered on disk.")
    gw.add_argument("--devices", metavar="FILE",
                    help="the devices file (default: adapters.gateway.devices_file)")
    gw.add_argument("--once", action="store_true", help="poll every device once, publish, exit")
    gw.set_defaults(handler=run_gateway, default_verbosity=1)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _graceful(signum, frame):
        log.info("signal %s: finishing the current file and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    return stop


def run_pm(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.watcher import PmWatcher

    sink = _sink(settings, "pm")
    watcher = PmWatcher(settings.adapters.pm, sink, state_dir=settings.state_dir, watch_dir=args.watch)
    try:
        if args.once:
            sink.connect()
            outcomes = watcher.scan_once(wait_for_broker=False)
            summary = {"files": [_outcome(o) for o in outcomes], **watcher.stats.as_dict()}
            emit(args, summary, _text)
            return 0
        stop = _stop_on_signals()
        _connect_until(sink, stop)
        log.info("watching %s for PM files (archive %s, rejected %s)", watcher.incoming,
                 watcher.archive, watcher.rejected)
        watcher.run(stop)
        emit(args, watcher.stats.as_dict(), _text)
        return 0
    finally:
        watcher.close()
        sink.close()


def run_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.device import load_devices
    from adapters.gateway import Gateway
    from core.errors import UserError

    path = args.devices or settings.adapters.gateway.devices_file
    if not path:
        raise UserError("no devices file: give --devices FILE or set adapters.gateway.devices_file")
    devices = load_devices(path)
    sink = _sink(settings, "gateway")
    gateway = Gateway(settings.adapters.gateway, sink, devices, state_dir=settings.state_dir,
                      buffer_max_bytes=settings.spool.max_bytes)
    try:
        if args.once:
            sink.connect()
            gateway.poll_once()
        else:
            stop = _stop_on_signals()
            _connect_until(sink, stop)
            log.info("polling %d devices from %s", len(devices), path)
            gateway.run(stop)
    finally:
        gateway.close()
        sink.close()
    status = gateway.status()

    def text(d: dict) -> str:
        lines = [f"{s['device']}: {s['polls_ok']} polls ok, {s['polls_failed']} failed"
                 + (f" ({s['last_error']})" if s["last_error"] else "") for s in d["devices"]]
        lines.append(f"{d['readings_published']} readings acknowledged, {d['readings_refused']} "
                     f"refused, {d['buffered_batches']} batches left in the buffer")
        return "\n".join(lines)

    emit(args, status, text)
    return 0


def run_listen(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.listener import Listener

    if not settings.adapters.listener.tokens:
        log.warning("adapters.listener.tokens is empty: every write will be refused (401)")
    sink = _sink(settings, "listener")
    stop = _stop_on_signals()
    listener = Listener(settings.adapters.listener, sink, listen=args.listen)
    try:
        _connect_until(sink, stop)
        listener.start()
        while not stop.wait(1.0):
            pass
    finally:
        listener.stop()
        sink.close()
    emit(args, {"requests": listener.requests, "accepted": listener.accepted,
                "refused": listener.refused},
         lambda d: f"{d['requests']} requests: {d['accepted']} readings acknowledged, "
                   f"{d['refused']} lines refused")
    return 0


def _sink(settings: Settings, source: str) -> ReadingSink:
    """The adapters' way out, with the sections it uses picked out of ``settings``."""
    from adapters.sink import ReadingSink

    return ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source=source)


def _outcome(o) -> dict:
    return {"name": o.name, "outcome": o.outcome, "readings": o.readings, "refused": o.refused,
            "reason": o.reason}


def _text(summary: dict) -> str:
    lines = [f"{f['name']}: {f['outcome']}"
             + (f" ({f['readings']} readings, {f['refused']} refused)"
                if f["outcome"] == "archived" else f" ({f['reason']})" if f["reason"] else "")
             for f in summary.get("files", [])]
    lines.append(f"{summary['archived']} archived, {summary['duplicates']} duplicates, "
                 f"{summary['rejected']} rejected; {summary['readings']} readings acknowledged, "
                 f"{summary['refused']} refused, {summary['suspect']} suspect skipped")
    return "\n".join(lines)


def _connect_until(sink, stop: threading.Event) -> None:
    """Connect, retrying with back-off while no broker answers (a watcher outlives outages)."""
    from connectors.errors import PublishError

    delay = sink.broker.reconnect_min
    while True:
        try:
            sink.connect()
            return
        except PublishError as exc:
            if stop.is_set():
                raise
            log.warning("%s; retrying in %.0fs", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, sink.broker.reconnect_max)
