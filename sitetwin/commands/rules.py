"""``sitetwin rules``, ``sitetwin flags`` and the ``overcharging`` / ``reservations`` reports."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from core.states import FlagStatus
from sitetwin.arguments import cli_time, positive_int
from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import Progress, emit


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    from rules.finding import KINDS
    from rules.flag import DECISIONS, STATUSES

    p = commands.add_parser("rules", help="evaluate the rules and list them")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="evaluate now (or step through history with --since) and print a summary")
    run.add_argument("--rule", action="append", metavar="NAME", help="only this rule (repeatable)")
    run.add_argument("--since", metavar="TS", help="backfill: step each rule from TS at its interval")
    run.add_argument("--until", metavar="TS", help="evaluate at TS instead of now (end of a backfill)")
    run.add_argument("--step-by-step", action="store_true",
                     help="backfill: ask InfluxDB every step's window (the one-pass path's reference)")
    run.add_argument("--no-publish", action="store_true", help="do not publish flag changes over MQTT")
    run.add_argument("--no-notify", action="store_true",
                     help="do not send notifications now (they stay queued for `sitetwin run`)")
    run.set_defaults(handler=run_rules)
    ls = sub.add_parser("list", help="the rules with their kinds, schedule and thresholds")
    ls.set_defaults(handler=list_rules)

    f = commands.add_parser("flags", help="list, show and review flags")
    fsub = f.add_subparsers(dest="action", metavar="ACTION", required=True)
    fl = fsub.add_parser("list", help="list flags (oldest first)")
    fl.add_argument("--kind", choices=KINDS)
    fl.add_argument("--status", choices=STATUSES)
    fl.add_argument("--site", metavar="SITE_ID")
    fl.add_argument("--limit", type=positive_int, metavar="N")
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
    fa = fsub.add_parser("ack", help="acknowledge a flag: someone is on it (no more reminders)")
    fa.add_argument("id", type=int)
    fa.add_argument("--by", required=True, metavar="NAME")
    fa.add_argument("--note")
    fa.set_defaults(handler=ack_flag)
    fg = fsub.add_parser("assign", help="make someone the owner of a flag")
    fg.add_argument("id", type=int)
    fg.add_argument("--to", required=True, metavar="NAME")
    fg.add_argument("--by", metavar="NAME", help="who assigns it (default: $USER)")
    fg.add_argument("--note")
    fg.set_defaults(handler=assign_flag)

    oc = reports.add_parser("overcharging", help="flagged bills per supplier with evidence and excess totals")
    oc.add_argument("--period", required=True, metavar="YYYY-MM",
                    help="bills whose period starts in this local month ([time] zone)")
    oc.add_argument("--out", required=True, metavar="FILE",
                    help=".xlsx (every table) or .csv (flagged bills and totals)")
    oc.add_argument("--lang", default="en", metavar="LANG",
                    help="headers and labels: en (default) or zh-CN")
    oc.set_defaults(handler=report_overcharging)
    rr = reports.add_parser("reservations", help="reserved vs declared vs peak per site, feeder, substation")
    rr.add_argument("--out", required=True, metavar="FILE", help=".csv or .xlsx")
    rr.add_argument("--until", metavar="TS", help="end of the peak window (default now)")
    rr.add_argument("--period", metavar="YYYY-MM",
                    help="a local month instead: its peaks, and the reservations in force at its end")
    rr.add_argument("--lang", default="en", help="language of headers and sheet names: en or zh-CN")
    rr.set_defaults(handler=report_reservations)


def _iso(value: Any) -> str:
    from rules.finding import iso_utc

    return iso_utc(value)


def _local(value: Any, zone: str) -> str:
    from core.timeutil import format_local

    return format_local(value, zone) if value is not None else "-"


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


class BackfillProgress(Progress):
    """A backfill's progress on stderr (``--json`` keeps stdout to the summary): rule steps
    done of all, the range covered so far, steps per second and the time left."""

    def __init__(self, since: datetime, until: datetime, **kwargs: Any) -> None:
        super().__init__("backfill", unit="steps", **kwargs)
        self.since, self.until, self.at = since, until, since

    def step(self, done: int, total: int, at: datetime) -> None:
        self.total, self.at = total, at
        self.advance(done - self.done)

    def _draw(self, final: bool) -> None:
        if not self.enabled or self.total is None:
            return
        import time

        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        covered = (self.at - self.since) / (self.until - self.since)
        line = (f"{self.label}: {self.done}/{self.total} {self.unit} {100 * covered:5.1f}% of the range "
                f"(to {self.at.astimezone(UTC):%Y-%m-%d %H:%M}Z), {rate:,.1f}/s, {elapsed:.0f}s elapsed"
                + ("" if final else f", ~{left:.0f}s left"))
        end = "\n" if (final or not self.tty) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def run_rules(args: argparse.Namespace, settings: Settings) -> int:
    from rules.engine import summarise
    from sitetwin.wiring import rule_engine

    selected = _rules(args.rule)
    until = cli_time(args.until, "--until", settings) or datetime.now(UTC)
    since = cli_time(args.since, "--since", settings)
    if since is not None and since >= until:
        raise UserError("--since must be before --until")
    store = _store(settings)
    try:
        engine = rule_engine(settings, store, publish=not args.no_publish)
        if since is not None:
            with BackfillProgress(since, until) as progress:
                outcomes = engine.backfill(since, until, selected, one_pass=not args.step_by_step,
                                           progress=progress.step)
        else:
            outcomes = engine.run(until, selected)
        summary = summarise(outcomes)
        open_flags = len(engine.flags.list(status=FlagStatus.OPEN.value))
        if not args.no_notify and settings.notify.enabled:
            from sitetwin.commands.notify import notify_pass

            notify_pass(settings, store)
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
            t = thresholds_for(settings.rules, rule).model_dump()
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


def _show_text(f: dict[str, Any], zone: str) -> str:
    """A flag for people: times local in ``zone`` (named once); ``--json`` stays UTC."""
    from sitetwin.output import to_json

    lines = [_flag_line(f),
             f"window {_local(f['window_start'], zone)} .. {_local(f['window_end'], zone)}"
             " (end exclusive); opened "
             f"{_local(f['opened_at'], zone)}, updated {_local(f['updated_at'], zone)}"
             + (f", resolved {_local(f['resolved_at'], zone)}" if f.get("resolved_at") else "")
             + f"  [times in {zone}]",
             "evidence: " + to_json(f["evidence"])]
    for r in f.get("reviews", []):
        lines.append(f"review: {r['decision']} by {r['reviewed_by']} at"
                     f" {_local(r['reviewed_at'], zone)}"
                     + (f" - {r['note']}" if r.get("note") else ""))
    for a in f.get("actions", []):
        what = "acknowledged" if a["action"] == "ack" else f"assigned to {a['value']}"
        lines.append(f"{what} by {a['by']} at {_local(a['at'], zone)}"
                     + (f" - {a['note']}" if a.get("note") else ""))
    return "\n".join(lines)


def show_flag(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook

    store = _store(settings)
    try:
        flag = FlagBook(store).show(args.id)
    finally:
        store.close()
    emit(args, flag, lambda f: _show_text(f, settings.time.zone))
    return 0


def review_flag(args: argparse.Namespace, settings: Settings) -> int:
    from rules.flag import FlagBook

    store = _store(settings)
    try:
        flag = FlagBook(store).review(args.id, args.decision, args.by, datetime.now(UTC), note=args.note,
                                      audit=_audit("flag.review", args.id, args.by, args.note,
                                                   ("status",), decision=args.decision))
        _announce(settings, store, flag)
    finally:
        store.close()
    emit(args, flag, lambda f: _show_text(f, settings.time.zone))
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


def _announce(settings: Settings, store: Any, flag: dict[str, Any]) -> None:
    """Grafana and MQTT subscribers see a person's change; best effort, the registry has it."""
    from rules.sink import publish_flags, publish_site_alarms, write_flags

    change = {k: v for k, v in flag.items() if k not in ("reviews", "actions")}
    write_flags(settings.influxdb, [change])
    publish_flags(settings.mqtt, [change])
    publish_site_alarms(settings.mqtt, store, [change["site_id"]])


def _take_on(args: argparse.Namespace, settings: Settings, action: str) -> int:
    import getpass

    from rules.errors import ReviewError, UnknownFlag
    from rules.flag import FlagBook

    store = _store(settings)
    try:
        book = FlagBook(store)
        try:
            if action == "ack":
                flag = book.ack(args.id, args.by, datetime.now(UTC), note=args.note, audit=_audit(
                    "flag.ack", args.id, args.by, args.note, ("acknowledged_by", "acknowledged_at")))
            else:
                by = args.by or getpass.getuser()
                flag = book.assign(args.id, args.to, by, datetime.now(UTC), note=args.note,
                                   audit=_audit("flag.assign", args.id, by, args.note, ("assignee",)))
        except (ReviewError, UnknownFlag) as exc:
            raise UserError(str(exc)) from None
        _announce(settings, store, flag)
    finally:
        store.close()
    emit(args, flag, lambda f: _show_text(f, settings.time.zone))
    return 0


def ack_flag(args: argparse.Namespace, settings: Settings) -> int:
    return _take_on(args, settings, "ack")


def assign_flag(args: argparse.Namespace, settings: Settings) -> int:
    return _take_on(args, settings, "assign")


def report_overcharging(args: argparse.Namespace, settings: Settings) -> int:
    from core.i18n import normalise_lang
    from core.timeutil import local_month
    from exports.tables import write_workbook
    from rules.flag import FlagBook
    from rules.report import overcharging_report
    from twin.bills import bill_parties

    zone = settings.time.zone
    try:
        lang = normalise_lang(args.lang)
        start, end = local_month(args.period, zone)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    store = _store(settings)
    try:
        book = FlagBook(store)
        flags = book.list(kind="overcharging") + book.list(kind="overbilling")
        reviews = book.reviews([f["id"] for f in flags])
        with store.session() as s:
            parties = bill_parties(s, [f["bill_id"] for f in flags if f.get("bill_id")])
    finally:
        store.close()
    report = overcharging_report(flags, args.period, zone=zone, parties=parties, reviews=reviews)
    sheets = report.sheets(lang) if args.out.lower().endswith(".xlsx") else [report.csv_sheet(lang)]
    path = write_workbook(sheets, args.out, zone=zone)
    bills = report.bills
    counted = bills[bills["status"] != FlagStatus.DISMISSED] if len(bills) else bills
    data = {"path": str(path), "period": args.period, "zone": zone,
            "period_start": start, "period_end": end, "lang": lang,
            "bills": int(bills["bill_id"].nunique()) if len(bills) else 0,
            "reviewed": int(bills["review_decision"].notna().sum()) if len(bills) else 0,
            "excess_cny": round(float(counted["excess_cny"].astype(float).fillna(0).sum()), 2)
            if len(counted) else 0.0}
    emit(args, data, lambda d: (
        f"{d['bills']} flagged bill(s) starting in {d['period']} ({_local(start, zone)} .."
        f" {_local(end, zone)}, {zone}, end exclusive), {d['reviewed']} reviewed,"
        f" {d['excess_cny']:.2f} CNY excess -> {path}"))
    return 0


def report_labels(lang: str):
    """Headers and sheet names in ``lang``: the ``grid`` catalog, then ``reports``, then the key."""
    from core.i18n import gettext_for, normalise_lang

    try:
        lang = normalise_lang(lang)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    grid, reports = gettext_for(lang, "grid"), gettext_for(lang, "reports")

    def label(key: str) -> str:
        text = grid(key)
        return text if text != key else reports(key)
    return label


def report_reservations(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.influx import InfluxReader
    from core.timeutil import local_month
    from exports.tables import write_sheets
    from rules.capacity import capacity_sheets, members
    from rules.data import WindowData, load_facts, load_grid_history, load_ratings, load_site_history
    from rules.engine import thresholds_for
    from rules.registry import get_rule
    from rules.report import reservations_table

    label = report_labels(args.lang)
    t = thresholds_for(settings.rules, get_rule("reservations"))
    if args.period is not None:
        if args.until is not None:
            raise UserError("give --period or --until, not both")
        try:
            start, until = local_month(args.period, settings.time.zone)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        t = t.model_copy(update={"window": (until - start).total_seconds()})
    else:
        until = cli_time(args.until, "--until", settings) or datetime.now(UTC)
        start = until - timedelta(seconds=t.window)
    # The registry as it was at the end of the window: reservations, feeders, supply, states.
    at = until - timedelta(microseconds=1)
    store = _store(settings)
    try:
        facts = load_facts(store)
        facts = load_grid_history(store).facts_at(load_site_history(store).facts_at(facts, at), at)
        feeders, substations = load_ratings(store)
    finally:
        store.close()
    reader = InfluxReader.from_settings(settings.influxdb)
    data = WindowData(reader, concurrency=settings.rules.query_concurrency)
    try:
        # by chunks of sites: each statement stays small enough for [influxdb] timeout at 10k sites
        peaks = data.power_peak(facts, until, t, {}, sites=facts.sites["site_id"])
        grid = data.coincident_peaks(members(facts), start, until)
    finally:
        data.close()
        reader.close()
    sheets = capacity_sheets(facts, peaks, grid["feeder"], grid["substation"], feeders, substations,
                             start, until)
    path = write_sheets({"sites": sheets["site"], "feeders": sheets["feeder"],
                         "substations": sheets["substation"]}, args.out,
                        combined=reservations_table(sheets), label=label)
    data_out = {"path": str(path), "sites": len(sheets["site"]), "feeders": len(sheets["feeder"]),
                "substations": len(sheets["substation"]),
                "window_start": _iso(start), "window_end": _iso(until)}
    emit(args, data_out, f"{data_out['sites']} site(s), {data_out['feeders']} feeder(s), "
                         f"{data_out['substations']} substation(s) -> {path}")
    return 0
