"""``sitetwin sites|reservations|tariffs|bills ...`` and ``sitetwin report progress``.

The registry commands of the twin (docs/contracts.md sections 2 and 3): CSV
imports, the site list and detail, lifecycle moves, and the build-progress
report per county.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from sitetwin.arguments import cli_time
from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import Progress, emit
from twin.errors import ImportFailed
from twin.lifecycle import State, transition
from twin.store import open_store

_KINDS = ("macro", "micro", "pole", "indoor")


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    sites = commands.add_parser("sites", help="the site registry: import, list, show, transition")
    sub = sites.add_subparsers(dest="action", metavar="ACTION", required=True)
    _import_parser(sub, "sites")

    ls = sub.add_parser("list", help="registered sites (or --unregistered ids seen in telemetry)")
    ls.add_argument("--county")
    ls.add_argument("--state", choices=[s.value for s in State])
    ls.add_argument("--kind", choices=_KINDS)
    ls.add_argument("--supply", choices=("direct", "transfer"))
    on = ls.add_mutually_exclusive_group()
    on.add_argument("--online", dest="online", action="store_const", const=True, default=None,
                    help="only sites seen within the online window")
    on.add_argument("--offline", dest="online", action="store_const", const=False,
                    help="only sites that should be on air (on_air, relocating) and were"
                         " not seen within the online window; never-built sites are not offline")
    on.add_argument("--unregistered", action="store_true",
                    help="site ids seen in telemetry but absent from the registry")
    ls.set_defaults(handler=run_list)

    show = sub.add_parser("show", help="one site: attributes, state, history, live state, links")
    show.add_argument("site_id", metavar="SITE_ID")
    show.add_argument("--at", metavar="TS", help="also give the state at this time (ISO 8601)")
    show.set_defaults(handler=run_show)

    tr = sub.add_parser("transition", help="move a site to another lifecycle state")
    tr.add_argument("site_id", metavar="SITE_ID")
    tr.add_argument("state", metavar="STATE",
                    help="target state: " + ", ".join(s.value for s in State))
    tr.add_argument("--at", metavar="TS", help="when it happened (ISO 8601, default now)")
    tr.add_argument("--note", help="free text kept with the event")
    tr.add_argument("--reason", help="why a site is blocked (default: the note)")
    tr.add_argument("--by", metavar="NAME", help="who made the move (default: the OS user)")
    tr.set_defaults(handler=run_transition)

    for kind in ("reservations", "tariffs", "bills", "feeders", "substations", "interferers",
                 "maintenance"):
        p = commands.add_parser(kind, help=f"import {kind}.csv into the registry")
        _import_parser(p.add_subparsers(dest="action", metavar="ACTION", required=True), kind)

    prog = reports.add_parser("progress", help="build progress per county against the year's targets")
    prog.add_argument("--year", type=int, required=True)
    prog.add_argument("--targets", metavar="CSV", help="year,county,target_sites")
    prog.add_argument("--targets-kind", choices=("annual", "cumulative"), default="annual",
                      help="annual: sites to bring on air during the year (default);"
                           " cumulative: sites on air by the end of the year")
    prog.add_argument("--half", type=int, choices=(1, 2),
                      help="a half-year report (January-June or July-December, local time)")
    prog.add_argument("--as-of", metavar="TS", help="report as of this time (a date is local"
                      " midnight; default: the end of the period, or now)")
    prog.add_argument("--out", metavar="FILE", required=True, help=".csv or .xlsx")
    prog.add_argument("--lang", default="en", help="language of headers: en or zh-CN")
    prog.set_defaults(handler=run_progress)

    conv = reports.add_parser("conversions", help="transfer -> direct supply conversions"
                              " (转改直) per county and month")
    conv.add_argument("--year", type=int, required=True)
    conv.add_argument("--out", metavar="FILE", required=True, help=".csv or .xlsx")
    conv.add_argument("--lang", default="en", help="language of headers: en or zh-CN")
    conv.set_defaults(handler=run_conversions)


def _import_parser(sub: argparse._SubParsersAction, kind: str) -> None:
    p = sub.add_parser("import", help=f"import a {kind}.csv file (all or nothing by default)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--skip-invalid", action="store_true",
                   help="import the valid rows; write the rejected ones with reasons to --rejects")
    p.add_argument("--rejects", metavar="FILE", help="where rejected rows go"
                   " (default: FILE with suffix .rejects.csv)")
    p.add_argument("--by", metavar="NAME", help="recorded as the actor of new sites' first event")
    p.set_defaults(handler=run_import, kind=kind)


def _actor(args: argparse.Namespace) -> str:
    if getattr(args, "by", None):
        return args.by
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getuser raises OSError, KeyError or ImportError by platform
        return os.environ.get("USER", "sitetwin")


def _audit(session, action: str, target_type: str, target_id: str, **kw) -> None:
    """An audit entry for a change made on the command line (actor ``cli:<OS user>``)."""
    from sitetwin.commands.users import _actor as os_actor
    from twin.audit import record

    record(session, actor=os_actor(), action=action, target_type=target_type,
           target_id=target_id, **kw)


def _lines(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            newlines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
            return max(newlines - 1, 0)
    except OSError:
        return None


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from twin.imports import SCHEMAS, import_csv

    path = Path(args.file)
    store = open_store(settings.twin_url)
    total = _lines(path)
    big = bool(total and total >= 10_000)  # small files import too fast for a progress line
    reading = Progress(f"{args.kind} import: read", total=total, unit="rows", enabled=big)
    writing: list[Progress] = []  # started when the first rows are written

    def wrote(n: int) -> None:
        if not writing:
            reading.close()
            writing.append(Progress(f"{args.kind} import: write", total=total, unit="rows",
                                    enabled=big))
        writing[0].advance(n)

    try:
        result = import_csv(store, path, SCHEMAS[args.kind], skip_invalid=args.skip_invalid,
                            rejects=args.rejects, actor=_actor(args), progress=reading.advance,
                            write_progress=wrote, zone=settings.time.zone)
    except ImportFailed as exc:
        if args.json:
            emit(args, {"kind": args.kind, "path": str(path), "imported": 0,
                        "errors": [{"line": e.line, "column": e.column, "reason": e.reason}
                                   for e in exc.errors]})
        else:
            for e in exc.errors:
                print(f"  {path.name}: {e}", file=sys.stderr)
        raise
    finally:
        store.close()
    for p in writing:
        p.close()
    store = open_store(settings.twin_url)
    try:  # the import committed on its own (all or nothing); its audit entry follows it
        with store.session() as s:
            _audit(s, f"import.{args.kind}", "import", path.name,
                   after={"inserted": result.inserted, "updated": result.updated,
                          "rejected": result.rejected, "by": _actor(args)})
    finally:
        store.close()
    for w in result.warnings:
        print(f"sitetwin: warning: {w}", file=sys.stderr)

    def text(r):
        out = (f"{args.kind}: {r['inserted']} inserted, {r['updated']} updated,"
               f" {r['rejected']} rejected")
        if r["rejects_path"]:
            out += f" (rejected rows with reasons in {r['rejects_path']})"
        return out

    emit(args, result.as_dict(), text)
    return 0


def _table(rows: list[dict], columns: list[str], zone: str) -> str:
    if not rows:
        return "no sites"
    cells = [[_fmt(r.get(c), zone) for c in columns] for r in rows]
    # Time columns are local: the header names the zone once.
    heads = [f"{c} ({zone})" if any(isinstance(r.get(c), datetime) for r in rows) else c
             for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(heads, widths, strict=False))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + f"\n{len(rows)} site(s)"


def _fmt(value, zone: str | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        from core.timeutil import format_local

        return format_local(value, zone or "UTC", seconds=True)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from twin.sites import list_sites, list_unregistered

    now = datetime.now(UTC)
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            if args.unregistered:
                rows = list_unregistered(s, now=now, window_s=settings.twin.online_window_s)
                cols = ["site_id", "online", "last_seen", "mains_ok", "on_battery",
                        "battery_soc_pct", "power_kw"]
            else:
                rows = list_sites(s, now=now, window_s=settings.twin.online_window_s,
                                  county=args.county, state=args.state, kind=args.kind,
                                  supply=args.supply, online=args.online)
                cols = ["site_id", "name", "county", "kind", "supply", "state", "online",
                        "last_seen", "on_battery", "battery_soc_pct", "power_kw"]
    finally:
        store.close()
    emit(args, rows, lambda r: _table(r, cols, settings.time.zone))
    return 0


def _show_text(d: dict, zone: str) -> str:
    """One site for people: times local in ``zone``, named on the first line."""
    lines = [f"{d['site_id']}  {d['name']}  ({d['county']}, {d['kind']}, {d['supply']} supply)",
             f"  state: {d['state']}   (times in {zone})"]
    if "at" in d:
        lines.append(f"  state at {_fmt(d['at'], zone)}: {d['state_at'] or '(not yet registered)'}")
    lines.append(f"  location: {d['lat']}, {d['lon']}   region/class: {d['region']} /"
                 f" {d['customer_class']}   operators: {', '.join(d['operators']) or '-'}")
    if d.get("address"):
        lines.append(f"  address: {d['address']}")
    if d["replaces_site_id"]:
        lines.append(f"  replaces: {d['replaces_site_id']}")
    if d["replaced_by"]:
        lines.append(f"  replaced by: {', '.join(d['replaced_by'])}")
    live = d["live"]
    if live:
        lines.append(f"  live: {'online' if live['online'] else 'OFFLINE'}, last seen"
                     f" {_fmt(live['last_seen'], zone)} ({live['age_s']:.0f}s ago), mains"
                     f" {_fmt(live['mains_ok'])}, on battery {_fmt(live['on_battery'])}, SOC"
                     f" {_fmt(live['battery_soc_pct'])}%, {_fmt(live['power_kw'])} kW,"
                     f" {_fmt(live['cabinet_temp_c'])} °C")
    else:
        lines.append("  live: never seen in telemetry")
    r = d["reservation"]
    lines.append(f"  reservation: {r['reserved_kw']:g} kW reserved ({r['declared_kw']:g} kW"
                 f" declared), feeder {r['feeder']}, substation {r['substation']}, {r['status']}"
                 if r else "  reservation: none")
    if len(d.get("reservation_history", [])) > 1:
        lines.append("  reservation history:")
        for r in d["reservation_history"]:
            since = _fmt(r["effective_from"]) if r["dated"] else "(undated)"
            lines.append(f"    from {since}  {r['reserved_kw']:g} kW reserved, feeder {r['feeder']},"
                         f" {r['status']}")
    if len(d.get("supply_history", [])) > 1:
        lines.append("  supply history: " + ", ".join(
            f"{r['supply']} from {_fmt(r['effective_from'])}" for r in d["supply_history"]))
    if d["meters"]:
        lines.append("  meters: " + ", ".join(m["meter_id"] for m in d["meters"]))
    if d["cells"]:
        lines.append("  cells: " + ", ".join(f"{c['cell_id']} ({c['band']})" for c in d["cells"]))
    lines.append("  history:")
    for e in d["history"]:
        extra = "".join(f"  {k}: {e[k]}" for k in ("reason", "note") if e[k])
        lines.append(f"    {_fmt(e['at'], zone)}  {e['from_state'] or '-':>18} ->"
                     f" {e['to_state']:<18}"
                     f" {e['verb']:<18} by {e['actor']}{extra}")
    return "\n".join(lines)


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from twin.sites import show_site

    at = cli_time(args.at, "--at", settings)
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            data = show_site(s, args.site_id, now=datetime.now(UTC),
                             window_s=settings.twin.online_window_s, at=at)
    finally:
        store.close()
    emit(args, data, lambda d: _show_text(d, settings.time.zone))
    return 0


def run_transition(args: argparse.Namespace, settings: Settings) -> int:
    zone = settings.time.zone
    at = cli_time(args.at, "--at", settings)
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            event = transition(s, args.site_id, args.state, at=at, actor=_actor(args),
                               note=args.note, reason=args.reason)
            data = {"site_id": args.site_id, **event.as_dict()}
            _audit(s, "site.transition", "site", args.site_id, before={"state": event.from_state},
                   after={"state": event.to_state, "verb": event.verb, "at": event.at,
                          "by": event.actor}, note=args.note)
    finally:
        store.close()
    emit(args, data, lambda d: f"{d['site_id']}: {d['from_state']} -> {d['to_state']}"
                               f" ({d['verb']}) at {_fmt(d['at'], zone)} ({zone}) by {d['actor']}")
    return 0


def _targets(path: str | None, year: int) -> dict[str, int]:
    from twin.imports import TARGETS, read_rows

    if path is None:
        return {}
    parsed = read_rows(path, TARGETS)
    if parsed.errors:
        raise ImportFailed(path, parsed.errors)
    return {row["county"]: row["target_sites"] for _, row in parsed.rows if row["year"] == year}


def _local_ts(value: str | None, what: str, zone: str) -> datetime | None:
    from core.timeutil import parse_instant

    if value is None:
        return None
    try:
        return parse_instant(value, zone)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


def run_progress(args: argparse.Namespace, settings: Settings) -> int:
    from exports.tables import write_table
    from sitetwin.commands.rules import report_labels
    from twin.progress import progress_report

    label = report_labels(args.lang)
    as_of = _local_ts(args.as_of, "--as-of", settings.time.zone)
    targets = _targets(args.targets, args.year)
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            frame = progress_report(s, args.year, targets, datetime.now(UTC),
                                    zone=settings.time.zone, half=args.half, as_of=as_of,
                                    target_kind=args.targets_kind)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    period = f"{args.year}-H{args.half}" if args.half else str(args.year)
    out = write_table(frame.rename(columns=label), args.out,
                      sheet_name=f"{label('progress')} {period}")
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    emit(args, {"out": str(out), "rows": rows},
         lambda d: f"progress {period} ({args.targets_kind} targets):"
                   f" {max(len(rows) - 1, 0)} counties written to {out}")
    return 0


def run_conversions(args: argparse.Namespace, settings: Settings) -> int:
    from exports.tables import write_sheets
    from sitetwin.commands.rules import report_labels
    from twin.conversions import conversions_report

    label = report_labels(args.lang)
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            summary, detail = conversions_report(s, args.year, settings.time.zone)
    finally:
        store.close()
    out = write_sheets({"by county and month": summary, "conversions": detail}, args.out,
                       combined=summary, label=label)
    total = len(detail)
    emit(args, {"out": str(out), "year": args.year, "conversions": total,
                "rows": summary.to_dict(orient="records")},
         lambda d: f"{total} transfer -> direct conversion(s) in {args.year} -> {out}")
    return 0
