"""Backfill benchmark: every rule over a month at 10k sites, one pass against step by step.

Run:  .venv/bin/python bench/backfill.py [--cells 10000] [--sites 10000] [--days 30]
                                         [--compare-hours 2] [--rules all] [--offline-after 2h] [--json]

A seeded fleet (``simulator.fleet.Fleet.build``) of ``--sites`` sites is imported into
a SQLite twin through the CSV importers; a private InfluxDB 1.x gets ``--days`` (plus
the 7 baseline days and the first window before them) of 15-minute uplink
interference for the first ``--cells`` cells of the sites on air, and hourly power for
every site that publishes (issue 15's workload; no tower telemetry); 0.3 % of the
cells are jammed for 1-4 hours at random times, so flags open and resolve during the
month.  Loading is timed apart.

Then ``Engine.backfill`` - what ``sitetwin rules run --since --until`` calls - over
the whole range for ``--rules`` (all by default), flags written to InfluxDB as in
production, no MQTT.  ``site_offline`` is set to ``--offline-after`` (2 h): with
hourly power and no tower reports, its 15-minute default would call every on-air
site offline 45 minutes of each hour.  Reported: seconds, steps per second, peak RSS
of each backfill (``/proc/self/clear_refs`` resets the high-water mark before it, so
loading does not count), per rule seconds and seconds per step.  In the same run,
the first ``--compare-hours`` of the range are backfilled both step by step
(``one_pass=False``, every step asks InfluxDB its window) and in one pass, each into
its own copy of the registry, and their flag tables compared; the whole range step
by step is estimated per rule from that (seconds per step x the month's steps).
Progress on stderr; ``--json`` prints only the summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.influx import InfluxWriter
from core.settings import load_settings
from simulator.fleet import Fleet
from sitetwin.services import InfluxDB, free_port
from twin.imports import BILLS, FEEDERS, RESERVATIONS, SITES, SUBSTATIONS, TARIFFS, import_csv

# The month ends here; the data starts BASELINE_DAYS (and a window) before the month.
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
BASELINE_DAYS = 7
BATCH_LINES = 50_000
JAMMED_SHARE = 0.003


def _fmt(values: np.ndarray, digits: int) -> list[str]:
    return np.char.mod(f"%.{digits}f", values).tolist()


def telemetry(fleet: Fleet, n_cells: int, start: datetime, end: datetime, month: datetime, seed: int):
    """Line-protocol batches (bytes, points): interference every 15 min, power every hour."""
    rng = np.random.default_rng(seed)
    s0, s1 = int(start.timestamp()), int(end.timestamp())
    q = np.arange(s0, s1, 900, dtype=np.int64)
    h = np.arange(s0, s1, 3600, dtype=np.int64)
    q_ns = [str(t * 10**9) for t in q.tolist()]
    h_ns = [str(t * 10**9) for t in h.tolist()]
    day = np.cos(2 * np.pi * (q / 86400.0))
    cells = [(s, c) for s in fleet.sites if s.on_air for c in s.cells][:n_cells]
    jammed = set(rng.choice(len(cells), size=max(1, round(len(cells) * JAMMED_SHARE)), replace=False).tolist())
    month0 = int(np.searchsorted(q, int(month.timestamp())))
    out: list[str] = []
    points = 0
    for k, (site, cell) in enumerate(cells):
        dbm = cell.floor_dbm + 1.5 * day + rng.normal(0, 0.6, len(q))
        if k in jammed:  # a few spells of 1-4 hours inside the month
            for _ in range(3):
                a = int(rng.integers(month0, len(q) - 16))
                dbm[a:a + int(rng.integers(4, 17))] += 12.0
        head = f"interference,band={cell.band},cell_id={cell.cell_id},site_id={site.site_id} ul_interference_dbm="
        out += [head + d + " " + t for d, t in zip(_fmt(dbm, 1), q_ns, strict=True)]
        points += len(q)
        if len(out) >= BATCH_LINES:
            yield "\n".join(out).encode(), points
            out, points = [], 0
    for site in fleet.sites:
        if not site.publishes:
            continue
        kw = site.load_kw * (1 + rng.normal(0, 0.03, len(h)))
        energy = site.energy0_kwh + np.cumsum(kw)
        head = f"power,meter_id={site.meter_id},site_id={site.site_id} "
        out += [f"{head}energy_kwh={e},power_kw={p} {t}"
                for e, p, t in zip(_fmt(energy, 3), _fmt(kw, 3), h_ns, strict=True)]
        points += 2 * len(h)
        if len(out) >= BATCH_LINES:
            yield "\n".join(out).encode(), points
            out, points = [], 0
    if out:
        yield "\n".join(out).encode(), points


def load(fleet: Fleet, writer: InfluxWriter, n_cells: int, start: datetime, end: datetime, month: datetime,
         seed: int):
    t0, total = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for body, n in telemetry(fleet, n_cells, start, end, month, seed):
            pending.append(pool.submit(writer.write, body))
            total += n
            while len(pending) > 4:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return total, time.perf_counter() - t0


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def backfill(settings, db_path: Path, since: datetime, until: datetime, *, one_pass: bool, label: str,
             rule_names: list[str] | None):
    from rules.engine import Engine, summarise
    from rules.flag import FlagBook
    from rules.registry import RULES
    from twin.store import open_store

    rules = [r for r in RULES if rule_names is None or r.name in rule_names]
    store = open_store(f"sqlite:///{db_path}")
    try:
        engine = Engine(store, rules=settings.rules, influxdb=settings.influxdb)
        last = [time.perf_counter()]
        t0 = time.perf_counter()

        def progress(done: int, total: int, at: datetime) -> None:
            if time.perf_counter() - last[0] >= 15 or done == total:
                last[0] = time.perf_counter()
                rate = done / (last[0] - t0)
                print(f"#   {label}: {done}/{total} steps, {100 * (at - since) / (until - since):.0f}% of the range "
                      f"(to {at:%Y-%m-%d %H:%M}Z), {rate:.1f}/s, "
                      f"~{(total - done) / rate:.0f}s left", file=sys.stderr, flush=True)

        _reset_peak_rss()
        t0 = time.perf_counter()
        outcomes = engine.backfill(since, until, rules, one_pass=one_pass, progress=progress)
        seconds = time.perf_counter() - t0
        peak = _peak_rss_mb()
        errors = [o.error for o in outcomes if o.status == "error"]
        flags = [{k: v for k, v in f.items() if k != "id"} for f in FlagBook(store).list()]
        return {"label": label, "steps": len(outcomes), "seconds": round(seconds, 1),
                "steps_per_s": round(len(outcomes) / seconds, 2), "peak_rss_mb": round(peak),
                "errors": errors[:3], "summary": summarise(outcomes), "flags": flags}
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--days", type=float, default=30.0, help="the backfilled range, in days")
    ap.add_argument("--compare-hours", type=float, default=2.0,
                    help="range backfilled both step by step and in one pass (the speed-up)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rules", default="all", help="comma-separated rule names, or all (the default)")
    ap.add_argument("--offline-after", default="2h",
                    help="site_offline's threshold: the sites report hourly power and no tower telemetry, "
                         "so the default 15 min would call every on-air site offline 45 min of each hour")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    since = UNTIL - timedelta(days=args.days)
    rule_names = None if args.rules == "all" else [n.strip() for n in args.rules.split(",") if n.strip()]
    data_start = since - timedelta(days=BASELINE_DAYS + 1)
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp_name:
        tmp = Path(tmp_name)
        influx = InfluxDB(root=tmp / "influxdb", port=free_port(), database="")
        influx.start()
        try:
            influx.query('CREATE DATABASE "bench"')
            from twin.store import open_store

            template = tmp / "twin.sqlite"
            store = open_store(f"sqlite:///{template}")
            t0 = time.perf_counter()
            fleet = Fleet.build(args.sites, args.seed, now=UNTIL)
            paths = fleet.write_csvs(tmp / "csv")
            for schema in (SITES, RESERVATIONS, TARIFFS, BILLS, FEEDERS, SUBSTATIONS):
                import_csv(store, paths[schema.name], schema)
            store.close()
            registry_s = time.perf_counter() - t0
            writer = InfluxWriter(influx.url, database="bench", timeout=600.0)
            points, load_s = load(fleet, writer, args.cells, data_start, UNTIL + timedelta(minutes=15),
                                  since, args.seed)
            writer.close()
            cells = min(args.cells, sum(len(s.cells) for s in fleet.sites if s.on_air))
            print(f"# {args.sites} sites, {cells} cells: registry {registry_s:.1f}s, {points:,} points "
                  f"loaded in {load_s:.1f}s", file=sys.stderr, flush=True)
            settings = load_settings(None, services={"state_dir": str(tmp / "state")},
                                     influxdb={"url": influx.url, "database": "bench", "timeout": "600s"},
                                     rules={"site_offline": {"offline_after": args.offline_after,
                                                             "critical_after": args.offline_after}})
            runs = {}
            small_until = since + timedelta(hours=args.compare_hours)
            for label, until, one_pass in (("step by step", small_until, False),
                                           ("one pass (same range)", small_until, True),
                                           ("one pass (whole range)", UNTIL, True)):
                db = tmp / f"twin-{len(runs)}.sqlite"
                shutil.copy(template, db)
                runs[label] = backfill(settings, db, since, until, one_pass=one_pass, label=label,
                                       rule_names=rule_names)
                print(f"# {label}: {runs[label]['steps']} steps in {runs[label]['seconds']}s, "
                      f"peak RSS {runs[label]['peak_rss_mb']} MB", file=sys.stderr, flush=True)
        finally:
            influx.stop()
    stepped, sliced, month = (runs[k] for k in ("step by step", "one pass (same range)", "one pass (whole range)"))
    # The month step by step, estimated per rule: its seconds per step over the small range
    # times its steps over the month (a month step by step would take hours to measure).
    per_step = {r["rule"]: r["duration_s"] / r["runs"] for r in stepped["summary"] if r["runs"]}
    estimate = sum(per_step.get(r["rule"], 0.0) * r["runs"] for r in month["summary"])
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "sites": args.sites, "cells": cells,
              "days": args.days, "points": points, "load_s": round(load_s, 1),
              "compare_hours": args.compare_hours,
              "same_flags": stepped["flags"] == sliced["flags"],
              "speedup": round(stepped["seconds"] / sliced["seconds"], 1),
              "stepwise_month_estimate_s": round(estimate),
              "speedup_month_estimate": round(estimate / month["seconds"], 1),
              "runs": {k: {x: v for x, v in r.items() if x != "flags"} | {"flags": len(r["flags"])}
                       for k, r in runs.items()}}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print(f"{args.sites} sites, {cells} cells, {args.days:g} days ({points:,} points, loaded in {load_s:.0f}s)\n")
    print("| backfill | range | steps | seconds | steps/s | peak RSS (MB) | flags | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, r in runs.items():
        span = f"{args.compare_hours:g} h" if "whole" not in label else f"{args.days:g} days"
        print(f"| {label} | {span} | {r['steps']} | {r['seconds']} | {r['steps_per_s']} | {r['peak_rss_mb']} "
              f"| {len(r['flags'])} | {len(r['errors'])} |")
    print("\n| rule | steps (whole range) | seconds | s/step | s/step step by step | findings | opened | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in month["summary"]:
        stepwise = per_step.get(r["rule"])
        print(f"| {r['rule']} | {r['runs']} | {r['duration_s']:.1f} | {r['duration_s'] / r['runs']:.3f} "
              f"| {'' if stepwise is None else f'{stepwise:.3f}'} | {r['findings']} | {r['opened']} "
              f"| {r['errors']} |")
    print("\n(per-rule seconds include waiting for a shared range read another rule of the same step started)")
    print(f"\nstep by step over the whole range, estimated per rule from the {args.compare_hours:g} h: "
          f"{estimate:.0f} s; one pass x{result['speedup_month_estimate']}")
    print(f"\nspeed-up over {args.compare_hours:g} h: x{result['speedup']}; "
          f"same flags: {result['same_flags']}")


if __name__ == "__main__":
    main()
