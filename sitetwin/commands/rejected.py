"""``sitetwin rejected list``: the dead-letter store, newest first, with counts per reason."""

from __future__ import annotations

import argparse

from connectors.deadletter import DeadLetterStore
from sitetwin.arguments import positive_int
from sitetwin.config import Settings
from sitetwin.output import emit


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("rejected", help="messages and lines that were rejected, with the reason")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list rejected messages (newest first)")
    ls.add_argument("--reason", help="only this reason code")
    ls.add_argument("--source", choices=["mqtt", "influxdb", "pm", "listener", "gateway"],
                    help="only from this source (pm, listener, gateway: the adapters)")
    ls.add_argument("--limit", type=positive_int, default=50, metavar="N")
    ls.set_defaults(handler=run)
    counts = sub.add_parser("counts", help="number of rejected messages per reason")
    counts.set_defaults(handler=run_counts)


def _open(settings: Settings) -> DeadLetterStore:
    return DeadLetterStore(settings.dead_letter_path,
                           max_payload_bytes=settings.dead_letter.max_payload_bytes)


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        letters = [d.as_dict() for d in store.list(limit=args.limit, reason=args.reason,
                                                   source=args.source)]
        counts = store.counts()
    finally:
        store.close()

    def text(_):
        lines = [f"{sum(counts.values())} rejected in all: "
                 + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none")]
        for d in letters:
            payload = d["payload"][:80].replace("\n", "\\n")
            lines.append(f"#{d['id']} {d['received_at']} {d['reason']:<16} {d['topic'] or '-'}  "
                         f"{d['detail'][:100]}  payload={payload!r}")
        return "\n".join(lines)

    emit(args, {"counts": counts, "rejected": letters}, text)
    return 0


def run_counts(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        counts = store.counts()
    finally:
        store.close()
    emit(args, counts, lambda c: "\n".join(f"{k:<20} {v}" for k, v in c.items()) or "none rejected")
    return 0
