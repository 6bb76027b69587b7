"""``sitetwin rules``, ``sitetwin flags`` and the ``overcharging`` / ``reservations`` reports."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import emit


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    from rules.finding import KINDS
    from rules.flag import DECISIONS, STATUSES

    p = commands.add_parser("rules", help="evaluate the rules and list them")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="evaluate now (or step through history with --since) and print a summary")
    run.add_argument("--rule", action="append", metavar="NAME", help="only this rule (repeatable)")
    run.add_argument("--since", metavar="TS", help="backfill: step each rule from TS at its interval")
    run.add_argument("--until", metavar="TS", help="evaluate at TS instead of now (end of a backfill)")
    run.add_argument("--no-publish", action="store_true", help="do not publish flag changes over MQTT")
    run.set_defaults(handler=run_rules)
    ls = sub.add_parser("list", help="the rules with their kinds, schedule and thresholds")
    ls.set_defaults(handler=list_rules)

    f = commands.add_parser("flags", help="list, show and review flags")
    fsub = f.add_subparsers(dest="action", metavar="ACTION", required=True)
    fl = fsub.add_parser("list", help="list flags (oldest first)")
    fl.add_argument("--kind", choices=KINDS)
    fl.add_argument("--status", choices=STATUSES)
    fl.add_argument("--site", metavar="SITE_ID")
    fl.add_argument("--limit", type=int)
    fl.set_defaults(handler=list_flags)
    fs = fsub.add_parser("show", help="one flag with its evidence and review history")
    fs.add_argument("id", type=int)
    fs.set_defaults(handler=show_flag)
    fr = fsub.add_parser("review", help="record a decision on a flag")
    fr.add_argument("id", type=int)
    fr.add_argument("--decision", choices=DECISIONS, required=True)
    fr.add_argument("--by", required=True, metavar="NAME")
    fr.add_argument("--note")
    fr.set_defaults(handler=review_flag)
    fa = fsub.add_parser("ack", help="acknowledge an open operational flag (someone is on it)")
    fa.add_argument("id", type=int)
    fa.add_argument("--by", required=True, metavar="NAME")
    fa.set_defaults(handler=ack_flag)
    fg = fsub.add_parser("assign", help="assign an open operational flag to someone")
    fg.add_argument("id", type=int)
    fg.add_argument("--to", required=True, metavar="NAME")
    fg.add_argument("--by", metavar="NAME", help="who assigns it (default: the OS user)")
    fg.set_defaults(handler=assign_flag)

    oc = reports.add_parser("overcharging", help="flagged bills per supplier with evidence and excess totals")
    oc.add_argument("--period", required=True, metavar="YYYY-MM", help="bills whose period starts in this month")
    oc.add_argument("--out", required=True, metavar="FILE", help=".csv or .xlsx")
    oc.set_defaults(handler=report_overcharging)
    rr = reports.add_parser("reservations", help="reserved vs declared vs peak per site, feeder, substation")
    rr.add_argument("--out", required=True, metavar="FILE", help=".csv or .xlsx")
    rr.add_argument("--until", metavar="TS", help="end of the peak window (default now)")
    rr.set_defaults(handler=report_reservations)


def iso_utc(value):
    from rules.finding import iso_utc as _iso_utc

    return _iso_utc(value)


def _time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        import pandas as pd

        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise UserError(f"{what} {value!r} is not an ISO 8601 time (e.g. 2026-11-24T08:15:00Z)") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _store(settings: Settings):
    from twin.store import open_store

    return open_store(settings.twin_url)


def _rules(names: list[str] | None):
    from rules.errors import UnknownRule
    from rules.registry import RULES, get_rule

    if not names:
        return list(RULES)
    try:
        return [get_rule(n) for n in names]
    except UnknownRule as exc:
        raise UserError(str(exc)) from None


def run_rules(args: argparse.Namespace, settings: Settings) -> int:
    from rules.engine import Engine, summarise

    selected = _rules(args.rule)
    until = _time(args.until, "--until") or datetime.now(UTC)
    since = _time(args.since, "--since")
    if since is not None and since >= until:
        raise UserError("--since must be before --until")
    store = _store(settings)
    try:
        engine = Engine(settings, store, publish_mqtt=not args.no_publish)
        outcomes = (engine.backfill(since, until, selected) if since is not None
                    else engine.run(until, selected))
        summary = summarise(outcomes)
        open_flags = len(engine.flags.list(status="open"))
    finally:
        store.close()

    def text(rows: list[dict[str, Any]]) -> str:
        lines = [f"{'rule':<14} {'status':<8} {'runs':>5} {'found':>6} {'opened':>7} {'updated':>8} "
                 f"{'resolved':>9}  error"]
        for r in rows:
            lines.append(f"{r['rule']:<14} {r['status']:<8} {r['runs']:>5} {r['findings_last']:>6} "
                         f"{r['opened']:>7} {r['updated']:>8} {r['resolved']:>9}  {r['last_error'] or ''}")
        lines.append(f"{open_flags} open flag(s); `sitetwin flags list` shows them")
        return "\n".join(lines)

    emit(args, summary, text)
    failed = [r for r in summary if r["status"] == "error"]
    if failed:
        import sys

        print(f"sitetwin: error: {len(failed)} rule(s) failed: "
              + "; ".join(f"{r['rule']}: {r['last_error']}" for r in failed), file=sys.stderr)
        return 1
    return 0


def list_rules(args: argparse.Namespace, settings: Settings) -> int:
    from rules.engine import thresholds_for
    from rules.errors import ThresholdError
    from rules.registry import RULES

    rows = []
    for rule in RULES:
        try:
            t = thresholds_for(settings, rule).model_dump()
        except ThresholdError as exc:
            raise UserError(str(exc)) from None
        rows.append({"name": rule.name, "kinds": list(rule.kinds), "enabled": t.pop("enabled"),
                     "interval_s": t.pop("interval"), "window_s": t.pop("window"),
                     "description": rule.description, "thresholds": t})

    def text(rs: list[dict[str, Any]]) -> str:
        out = []
        for r in rs:
            state = "" if r["enabled"] else " (disabled)"
            out.append(f"{r['name']}{state}: every {timedelta(seconds=r['interval_s'])} over "
                       f"{timedelta(seconds=r['window_s'])} -> {', '.join(r['kinds'])}")
            out.append(f"    {r['description']}")
            out.append("    " + ", ".join(f"{k}={v}" for k, v in r["thresholds"].items()))
        return "\n".join(out)

    emit(args, rows, text)
    return 0


def _flag_line(f: dict[str, Any]) -> str:
    subject = f["site_id"] + (f"/{f['cell_id']}" if f.get("cell_id") else "") + \
        (f" bill {f['bill_id']}" if f.get("bill_id") else "")
    return (f"#{f['id']:<5} {f['status']:<9} {f['severity']:<8} {f['kind']:<21} {subject:<24} "
            f"{f['summary']}")


def list_flags(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook

    store = _store(settings)
    try:
        flags = FlagBook(store).list(kind=args.kind, status=args.status, site_id=args.site, limit=args.limit)
    finally:
        store.close()
    emit(args, flags, lambda fs: "\n".join(_flag_line(f) for f in fs) or "no flags")
    return 0


def _show_text(f: dict[str, Any]) -> str:
    from sitetwin.output import to_json

    lines = [_flag_line(f),
             f"window {iso_utc(f['window_start'])} .. {iso_utc(f['window_end'])}; opened "
             f"{iso_utc(f['opened_at'])}, updated {iso_utc(f['updated_at'])}"
             + (f", resolved {iso_utc(f['resolved_at'])}" if f.get("resolved_at") else ""),
             "evidence: " + to_json(f["evidence"])]
    if f.get("acknowledged_by"):
        lines.append(f"acknowledged by {f['acknowledged_by']} at {iso_utc(f['acknowledged_at'])}")
    if f.get("assignee"):
        lines.append(f"assigned to {f['assignee']}")
    for r in f.get("reviews", []):
        lines.append(f"review: {r['decision']} by {r['reviewed_by']} at {iso_utc(r['reviewed_at'])}"
                     + (f" - {r['note']}" if r.get("note") else ""))
    return "\n".join(lines)


def show_flag(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook

    store = _store(settings)
    try:
        flag = FlagBook(store).show(args.id)
    finally:
        store.close()
    emit(args, flag, _show_text)
    return 0


def review_flag(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook
    from rules.sink import publish_flags, write_flags

    store = _store(settings)
    try:
        flag = FlagBook(store).review(args.id, args.decision, args.by, datetime.now(UTC), note=args.note,
                                      audit=_audit("flag.review", args.id, args.by, args.note,
                                                   ("status",), decision=args.decision))
    finally:
        store.close()
    # Grafana and MQTT subscribers see the decision; best effort, the registry has it.
    change = {k: v for k, v in flag.items() if k != "reviews"}
    write_flags(settings, [change])
    publish_flags(settings, [change])
    emit(args, flag, _show_text)
    return 0


def _audit(action: str, flag_id: int, by: str, note: str | None, keys: tuple[str, ...], **after):
    """The audit entry of a flag change made on the command line (actor ``cli:<OS user>``)."""
    def write(session, before, changed):
        from sitetwin.commands.users import _actor
        from twin.audit import record

        record(session, actor=_actor(), action=action, target_type="flag", target_id=flag_id,
               before={k: before[k] for k in keys},
               after={**{k: changed[k] for k in keys}, "by": by, **after}, note=note)
    return write


def ack_flag(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook

    store = _store(settings)
    try:
        flag = FlagBook(store).acknowledge(args.id, args.by, datetime.now(UTC), audit=_audit(
            "flag.ack", args.id, args.by, None, ("acknowledged_by", "acknowledged_at")))
    finally:
        store.close()
    emit(args, flag, _show_text)
    return 0


def assign_flag(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook
    from sitetwin.commands.users import _actor

    by = args.by or _actor().removeprefix("cli:")
    store = _store(settings)
    try:
        flag = FlagBook(store).assign(args.id, args.to, by, datetime.now(UTC), audit=_audit(
            "flag.assign", args.id, by, None, ("assignee",)))
    finally:
        store.close()
    emit(args, flag, _show_text)
    return 0


def report_overcharging(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook
    from rules.report import overcharging_table
    from twin.export import write_table

    store = _store(settings)
    try:
        book = FlagBook(store)
        flags = book.list(kind="overcharging") + book.list(kind="overbilling")
    finally:
        store.close()
    try:
        table = overcharging_table(flags, args.period)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    path = write_table(table, args.out, sheet_name=f"overcharging {args.period}")
    bills = table[table["row"] == "bill"]
    data = {"path": str(path), "bills": int(bills["bill_id"].nunique()),
            "excess_cny": float(bills.loc[bills["status"] != "dismissed", "excess_cny"].fillna(0).sum())}
    emit(args, data, f"{data['bills']} flagged bill(s), {data['excess_cny']:.2f} CNY excess -> {path}")
    return 0


def report_reservations(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.influx import InfluxReader
    from rules.data import WindowData, load_facts
    from rules.engine import thresholds_for
    from rules.registry import get_rule
    from rules.report import reservations_table
    from twin.export import write_table

    until = _time(args.until, "--until") or datetime.now(UTC)
    t = thresholds_for(settings, get_rule("reservations"))
    store = _store(settings)
    try:
        facts = load_facts(store)
    finally:
        store.close()
    reader = InfluxReader.from_settings(settings.influxdb)
    try:
        peaks = WindowData(reader).power_peak(facts, until, t, {})
    finally:
        reader.close()
    table = reservations_table(facts, peaks, until - timedelta(seconds=t.window), until)
    path = write_table(table, args.out, sheet_name="reservations")
    data = {"path": str(path), "sites": int((table["level"] == "site").sum()),
            "feeders": int((table["level"] == "feeder").sum()),
            "substations": int((table["level"] == "substation").sum())}
    emit(args, data, f"{data['sites']} site(s), {data['feeders']} feeder(s), "
                     f"{data['substations']} substation(s) -> {path}")
    return 0
