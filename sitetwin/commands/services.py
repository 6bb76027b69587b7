"""``sitetwin services up|down|status``: local Mosquitto and InfluxDB for one machine."""

from __future__ import annotations

import argparse

from sitetwin.config import Settings
from sitetwin.output import emit
from sitetwin.services import local_services


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("services", help="start, stop or inspect the local Mosquitto and InfluxDB")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(handler=run)


def _render(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        state = "running" if r["running"] else "stopped"
        pid = f"pid {r['pid']}" if r["pid"] else "-"
        lines.append(f"{r['service']:<12} {state:<8} {r['address']:<22} {pid}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    services = local_services(settings)
    if args.action == "up":
        for svc in services:
            svc.start()
    elif args.action == "down":
        for svc in reversed(services):
            svc.stop()
    rows = [svc.status() for svc in services]
    emit(args, rows, _render)
    if args.action == "status":
        return 0 if all(r["running"] for r in rows) else 1
    return 0
