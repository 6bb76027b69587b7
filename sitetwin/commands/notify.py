"""``sitetwin notify``: the notification outbox (sent, pending, dead-lettered) and one pass."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from sitetwin.arguments import positive_int
from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import emit


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("notify", help="notifications of flag changes: outbox, dead letters, send")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="queued notifications, newest first")
    which = ls.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true",
                       help="only dead-lettered ones (a channel that kept failing)")
    which.add_argument("--pending", action="store_true", help="only those not sent yet")
    ls.add_argument("--channel", metavar="NAME")
    ls.add_argument("--limit", type=positive_int, metavar="N", default=100)
    ls.set_defaults(handler=list_outbox)
    rt = sub.add_parser("retry", help="queue dead-lettered notifications again (all, or --id)")
    rt.add_argument("--id", type=int, action="append", metavar="ID", help="only this one (repeatable)")
    rt.set_defaults(handler=retry_outbox)
    se = sub.add_parser("send", help="queue new flag events and send what is due, once")
    se.set_defaults(handler=send_once)


def _store(settings: Settings):
    from twin.store import open_store

    return open_store(settings.twin_url)


def _line(r: dict[str, Any], zone: str) -> str:
    from core.timeutil import format_local

    when = r["sent_at"] or r["due_at"]
    text = (f"#{r['id']:<5} {r['status']:<8} {r['channel']:<14} {r['event']:<9} {r['severity']:<8} "
            f"flag #{r['flag_id']:<5} {r['kind'] or '':<20} {r['site_id'] or '':<10} "
            f"{format_local(when, zone)}  attempts {r['attempts']}")
    if r["last_error"]:
        text += f"\n       last error: {r['last_error']}"
    return text


def list_outbox(args: argparse.Namespace, settings: Settings) -> int:
    from notify import Outbox

    status = "dead" if args.failed else "pending" if args.pending else None
    store = _store(settings)
    try:
        rows = Outbox(store).list(status=status, channel=args.channel, limit=args.limit)
    finally:
        store.close()
    empty = {"dead": "no dead-lettered notifications", "pending": "nothing pending"}.get(
        status or "", "no notifications")
    emit(args, rows, lambda rs: "\n".join(_line(r, settings.time.zone) for r in rs) or empty)
    return 0


def retry_outbox(args: argparse.Namespace, settings: Settings) -> int:
    from notify import Outbox

    store = _store(settings)
    try:
        n = Outbox(store).retry(args.id, datetime.now(UTC))
    finally:
        store.close()
    if args.id and n < len(set(args.id)):
        raise UserError(f"only {n} of the {len(set(args.id))} given id(s) were dead-lettered")
    emit(args, {"queued": n}, f"{n} dead-lettered message(s) queued again;"
                              " `sitetwin notify send` or `sitetwin run` sends them")
    return 0


def send_once(args: argparse.Namespace, settings: Settings) -> int:
    result = notify_pass(settings)
    emit(args, result, lambda r: (f"{r['events']} event(s), {r['queued']} queued, {r['sent']} sent, "
                                  f"{r['failed']} failed, {r['dead']} dead-lettered"))
    return 0


def notify_pass(settings: Settings, store: Any = None) -> dict[str, int]:
    """One notifier pass (used by ``notify send`` and at the end of ``rules run``)."""
    from notify import Notifier, NotifyError

    own = store is None
    store = store or _store(settings)
    try:
        return Notifier(settings.notify, store, zone=settings.time.zone).tick().as_dict()
    except NotifyError as exc:
        raise UserError(str(exc)) from None
    finally:
        if own:
            store.close()
