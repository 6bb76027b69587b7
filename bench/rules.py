"""Rule-engine benchmark: every rule over N sites with 7 days of 15-minute data and a month of bills.

Run:  .venv/bin/python bench/rules.py [--sites 1000,10000] [--days 7] [--json]

For each N: a seeded fleet (``simulator.fleet.Fleet.build``: ~3 cells on
macro sites, reservations, tariffs, bills for the transfer sites) is imported
into a fresh SQLite twin through the CSV importers; 7 days of tower, power and
interference readings at 15-minute steps are written as line protocol straight
to a private InfluxDB 1.x (bypassing MQTT: loading is timed separately and is
not part of the rule figures), with a few anomalies in the last two hours
(silent sites, sites on battery, jammed cells with per-PRB vectors).

Then ``rules.engine.Engine.run`` - the code path of ``sitetwin rules run`` -
evaluates all rules at ``now`` = one minute after the last point (at DATA_END), twice, each
time with a fresh engine as a new CLI process would have: run 1 opens the
flags, run 2 finds them again and updates them.  Printed per rule: seconds of
run 1 and run 2 for each N, and the ratio of the largest N to the smallest
(linear in sites = N ratio).  MQTT publishing is off (no broker); flags are
written to InfluxDB as in production.  The runs use ``rules.query_concurrency``
(``--concurrency`` to change it); a third run per size with concurrency 1 (one
statement, one rule at a time) is the baseline measured on the same data
(``--no-sequential`` skips it).

``--capacity`` times the reservations (capacity) report instead of the rules: the
registry with its histories and ratings, the site peaks, the coincident peaks of
every feeder and substation (``WindowData.coincident_peaks``) and the sheets, over the
reservations rule's window, twice.
"""

from __future__ import annotations

import argparse
import json
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
from simulator.fleet import LOAD_PEAK_LOCAL_HOUR, LOCAL_UTC_OFFSET_H, Fleet
from sitetwin.config import load_settings
from sitetwin.services import InfluxDB, free_port
from twin.imports import (
    BILLS,
    FEEDERS,
    RESERVATIONS,
    SITES,
    SUBSTATIONS,
    TARIFFS,
    import_csv,
)

# The data ends here: early in a month, so the bill month (October) overlaps the last days.
DATA_END = datetime(2026, 11, 3, tzinfo=UTC)
STEP_S = 900
BATCH_LINES = 50_000
ANOMALY_S = 2 * 3600  # anomalies play over the last two hours
SILENT_SHARE, BATTERY_SHARE, JAMMED_SHARE = 0.005, 0.005, 0.003


def build_registry(n: int, seed: int, store, tmp: Path) -> tuple[Fleet, float]:
    """The fleet's registry imported into ``store`` with the CSV importers; seconds taken."""
    t0 = time.perf_counter()
    fleet = Fleet.build(n, seed, now=DATA_END)
    paths = fleet.write_csvs(tmp / f"csv-{n}")
    for schema in (SITES, RESERVATIONS, TARIFFS, BILLS, FEEDERS, SUBSTATIONS):
        import_csv(store, paths[schema.name], schema)
    import_csv(store, paths["conversions"], SITES)
    return fleet, time.perf_counter() - t0


def _phase(ts: np.ndarray, peak_local_hour: float) -> np.ndarray:
    return 2 * np.pi * ((ts / 3600.0 + LOCAL_UTC_OFFSET_H - peak_local_hour) / 24.0)


def _fmt(values: np.ndarray, digits: int) -> list[str]:
    return np.char.mod(f"%.{digits}f", values).tolist()


def telemetry(fleet: Fleet, days: float, seed: int):
    """Line-protocol batches (bytes, points) of the fleet's telemetry over ``days`` before DATA_END."""
    rng = np.random.default_rng(seed)
    end_s = int(DATA_END.timestamp())
    ts = np.arange(end_s - int(days * 86400) + STEP_S, end_s + 1, STEP_S, dtype=np.int64)
    ts_ns = [str(t * 1_000_000_000) for t in ts.tolist()]
    late = ts > end_s - ANOMALY_S
    load_shape = np.cos(_phase(ts.astype(float), LOAD_PEAK_LOCAL_HOUR))
    noise_shape = np.cos(_phase(ts.astype(float), 14.0))
    publishing = [s for s in fleet.sites if s.publishes]
    k_silent = max(1, round(len(publishing) * SILENT_SHARE))
    k_battery = max(1, round(len(publishing) * BATTERY_SHARE))
    picks = rng.choice(len(publishing), size=k_silent + k_battery, replace=False)
    silent = {publishing[i].site_id for i in picks[:k_silent]}
    battery = {publishing[i].site_id for i in picks[k_silent:]}
    cells = [c for s in publishing if s.on_air for c in s.cells if c.prbs]
    jammed = {cells[i].cell_id for i in rng.choice(len(cells), size=max(1, round(len(cells) * JAMMED_SHARE)),
                                                    replace=False)} if cells else set()
    out: list[str] = []
    points = 0

    def flush():
        nonlocal out, points
        if out:
            batch, n = "\n".join(out).encode(), points
            out, points = [], 0
            return batch, n
        return None

    for site in publishing:
        keep = ~late if site.site_id in silent else np.ones(len(ts), dtype=bool)
        on_batt = late if site.site_id in battery else np.zeros(len(ts), dtype=bool)
        idx = np.flatnonzero(keep)
        stamps = [ts_ns[i] for i in idx]
        # tower
        soc = np.where(on_batt, 100.0 - 20.0 * (ts - (end_s - ANOMALY_S)) / 3600.0, 100.0)[idx]
        temp = 24.0 + 7.0 * noise_shape[idx] + rng.normal(0, 0.8, len(idx))
        mains = np.where(on_batt[idx], "false", "true").tolist()
        batt = np.where(on_batt[idx], "true", "false").tolist()
        head = f"tower,site_id={site.site_id} "
        out += [f"{head}mains_ok={m},on_battery={b},battery_soc_pct={s},cabinet_temp_c={c} {t}"
                for m, b, s, c, t in zip(mains, batt, _fmt(soc, 1), _fmt(temp, 1), stamps, strict=False)]
        # power: 15-minute load curve with noise; the meter integrates it (standing still on battery)
        kw = site.load_kw * (1 + site.swing * load_shape) * (1 + rng.normal(0, 0.03, len(ts)))
        kw = np.where(on_batt, 0.0, kw)
        energy = site.energy0_kwh + np.cumsum(kw) * STEP_S / 3600.0
        head = f"power,meter_id={site.meter_id},site_id={site.site_id} "
        out += [f"{head}energy_kwh={e},power_kw={p} {t}"
                for e, p, t in zip(_fmt(energy[idx], 3), _fmt(kw[idx], 3), stamps, strict=False)]
        points += 2 * len(idx)
        # interference per cell
        if site.on_air:
            for cell in site.cells:
                rise = np.where(late, 12.0, 0.0) if cell.cell_id in jammed else 0.0
                dbm = cell.floor_dbm + 1.5 * noise_shape + rng.normal(0, 0.6, len(ts)) + rise
                usage = np.clip(35 + 30 * load_shape + rng.normal(0, 5, len(ts)), 0, 100)
                head = f"interference,band={cell.band},cell_id={cell.cell_id},site_id={site.site_id} "
                out += [f"{head}ul_interference_dbm={d},ul_prb_usage_pct={u},period_s=900i {t}"
                        for d, u, t in zip(_fmt(dbm[idx], 1), _fmt(usage[idx], 1), stamps, strict=False)]
                points += len(idx)
                if cell.cell_id in jammed:
                    # wideband: every PRB raised, flat within a dB
                    head = f"interference_prb,band={cell.band},cell_id={cell.cell_id},site_id={site.site_id} "
                    for i in np.flatnonzero(late & keep):
                        prb = dbm[i] + rng.normal(0, 0.3, cell.prbs)
                        body = ",".join(f"prb_{j:03d}={v}" for j, v in enumerate(_fmt(prb, 1)))
                        out.append(f"{head}{body} {ts_ns[i]}")
                        points += 1
        if len(out) >= BATCH_LINES:
            yield flush()
    last = flush()
    if last:
        yield last


def load(fleet: Fleet, writer: InfluxWriter, days: float, seed: int) -> tuple[int, float]:
    """Write the telemetry with two writer threads overlapping generation; points and seconds."""
    t0 = time.perf_counter()
    total = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for body, n in telemetry(fleet, days, seed):
            pending.append(pool.submit(writer.write, body))
            total += n
            while len(pending) > 4:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return total, time.perf_counter() - t0


def time_rules(settings, store, now: datetime) -> dict:
    """One ``Engine.run`` over every rule with a fresh engine, as ``sitetwin rules run`` does.

    The rules' fetches overlap (``rules.query_concurrency``), so their seconds add up to
    more than the run's; what the engine does around them (registry facts, flag writes to
    InfluxDB) is timed on its own.
    """
    from rules import engine as engine_mod

    around = {"facts": 0.0, "flag_writes": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                around[name] += time.perf_counter() - t
        return wrapper

    originals = engine_mod.load_facts, engine_mod.write_flags
    engine_mod.load_facts = timed("facts", originals[0])
    engine_mod.write_flags = timed("flag_writes", originals[1])
    try:
        engine = engine_mod.Engine(store, rules=settings.rules, influxdb=settings.influxdb)
        t0 = time.perf_counter()
        outcomes = engine.run(now)
        total = time.perf_counter() - t0
        engine.data.close()
    finally:
        engine_mod.load_facts, engine_mod.write_flags = originals
    return {"total_s": round(total, 2),
            "rules": {o.rule: {"s": round(o.duration_s, 2), "status": o.status, "findings": o.findings,
                               "opened": o.opened, "updated": o.updated, "error": o.error}
                      for o in outcomes},
            "facts_s": round(around["facts"], 2), "flag_writes_s": round(around["flag_writes"], 2)}


def time_capacity(settings, store, now: datetime) -> dict:
    """The work of ``sitetwin report reservations --until now`` (without writing the file)."""
    from connectors.influx import InfluxReader
    from rules.capacity import capacity_sheets, members
    from rules.data import WindowData, load_facts, load_grid_history, load_ratings, load_site_history
    from rules.engine import thresholds_for
    from rules.registry import get_rule

    t = thresholds_for(settings.rules, get_rule("reservations"))
    start = now - timedelta(seconds=t.window)
    out = {}
    t0 = time.perf_counter()
    facts = load_facts(store)
    facts = load_grid_history(store).facts_at(load_site_history(store).facts_at(facts, now), now)
    feeders, substations = load_ratings(store)
    out["registry_s"] = time.perf_counter() - t0
    reader = InfluxReader.from_settings(settings.influxdb)
    data = WindowData(reader, concurrency=settings.rules.query_concurrency)
    try:
        t0 = time.perf_counter()
        peaks = data.power_peak(facts, now, t, {}, sites=facts.sites["site_id"])
        out["site_peaks_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid = data.coincident_peaks(members(facts), start, now)
        fp, sp = grid["feeder"], grid["substation"]
        out["coincident_peaks_s"] = time.perf_counter() - t0
    finally:
        data.close()
        reader.close()
    t0 = time.perf_counter()
    sheets = capacity_sheets(facts, peaks, fp, sp, feeders, substations, start, now)
    out["sheets_s"] = time.perf_counter() - t0
    out = {k: round(v, 2) for k, v in out.items()}
    out["feeders"], out["substations"] = len(sheets["feeder"]), len(sheets["substation"])
    f = sheets["feeder"]
    out["coincident_over_sum_of_peaks"] = round(float(f["coincident_peak_kw"].sum()
                                                      / f["sum_site_peaks_kw"].sum()), 3)
    print(f"# capacity report: {out}", file=sys.stderr, flush=True)
    return out


def bench_one(n: int, influx: InfluxDB, tmp: Path, days: float, seed: int, runs: int,
              concurrency: int, sequential: bool, capacity: bool = False) -> dict:
    from twin.store import open_store

    db = f"bench_rules_{n}"
    influx.query(f'CREATE DATABASE "{db}"')
    store = open_store(f"sqlite:///{tmp / f'twin-{n}.sqlite'}")
    try:
        fleet, registry_s = build_registry(n, seed, store, tmp)
        writer = InfluxWriter(influx.url, database=db, timeout=300.0)
        points, load_s = load(fleet, writer, days, seed)
        writer.close()
        cells = sum(len(s.cells) for s in fleet.sites)
        print(f"# {n} sites, {cells} cells, {len(fleet.bills)} bills: registry {registry_s:.1f}s, "
              f"{points:,} points loaded in {load_s:.1f}s ({points / load_s:,.0f} points/s)",
              file=sys.stderr, flush=True)
        def settings_for(c: int):
            return load_settings(None, services={"state_dir": str(tmp / f"state-{n}")},
                                 influxdb={"url": influx.url, "database": db},
                                 rules={"query_concurrency": c})

        now = DATA_END + timedelta(minutes=1)
        if capacity:
            return {"sites": n, "points": points, "load_s": round(load_s, 1),
                    "capacity": [time_capacity(settings_for(concurrency), store, now)
                                 for _ in range(2)]}
        results = []
        for i in range(runs):
            results.append(_timed_run(f"{n} sites run {i + 1}", settings_for(concurrency), store, now))
        out = {"sites": n, "cells": cells, "bills": len(fleet.bills), "points": points,
               "registry_s": round(registry_s, 1), "load_s": round(load_s, 1), "runs": results}
        if sequential and concurrency > 1:
            # The baseline in the same run: one statement and one rule at a time.
            out["sequential"] = _timed_run(f"{n} sites, query_concurrency 1", settings_for(1), store, now)
        return out
    finally:
        store.close()
        influx.query(f'DROP DATABASE "{db}"')


def _timed_run(label: str, settings, store, now: datetime) -> dict:
    r = time_rules(settings, store, now)
    errors = {k: v["error"] for k, v in r["rules"].items() if v["status"] == "error"}
    print(f"# {label}: {r['total_s']:.1f}s" + (f"  ERRORS {errors}" if errors else ""),
          file=sys.stderr, flush=True)
    return r


def table(results: list[dict]) -> str:
    """Markdown: per rule, seconds of each run for each N, and the ratio largest/smallest N."""
    rules = list(results[0]["runs"][0]["rules"])
    runs = len(results[0]["runs"])
    head = ["rule"] + [f"{r['sites'] // 1000 if r['sites'] >= 1000 else r['sites']}"
                       f"{'k' if r['sites'] >= 1000 else ''} run {i + 1} (s)"
                       for r in results for i in range(runs)]
    ratio = len(results) > 1
    if ratio:
        head.append(f"ratio {results[-1]['sites']}/{results[0]['sites']} (run {runs})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, get) -> str:
        cells = [f"{get(run):.2f}" for r in results for run in r["runs"]]
        if ratio:
            a, b = get(results[0]["runs"][-1]), get(results[-1]["runs"][-1])
            cells.append(f"{b / a:.1f}" if a > 0.005 else "-")
        return f"| {name} | " + " | ".join(cells) + " |"

    for name in rules:
        lines.append(row(name, lambda run, n=name: run["rules"][n]["s"]))
    lines.append(row("registry facts", lambda run: run["facts_s"]))
    lines.append(row("flag writes to InfluxDB", lambda run: run["flag_writes_s"]))
    lines.append(row("**total (wall)**", lambda run: run["total_s"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", default="1000,10000", help="comma-separated fleet sizes")
    ap.add_argument("--days", type=float, default=7.0, help="days of 15-minute data")
    ap.add_argument("--runs", type=int, default=2, help="engine runs per size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="rules.query_concurrency (default: the setting's default)")
    ap.add_argument("--no-sequential", action="store_true",
                    help="skip the extra run per size with query_concurrency = 1 (the baseline)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--capacity", action="store_true",
                    help="time the reservations (capacity) report instead of the rules")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sites.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        influx = InfluxDB(root=Path(tmp) / "influxdb", port=free_port(), database="")
        influx.start()
        try:
            concurrency = args.concurrency or load_settings(None).rules.query_concurrency
            results = [bench_one(n, influx, Path(tmp), args.days, args.seed, args.runs, concurrency,
                                 not args.no_sequential, args.capacity) for n in sizes]
        finally:
            influx.stop()
    if args.capacity:
        for r in results:
            print(f"{r['sites']} sites, {r['points']:,} points: " + "; ".join(
                f"run {i + 1}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                for i, c in enumerate(r["capacity"])))
        return
    if args.json:
        print(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                          "days": args.days, "query_concurrency": concurrency, "results": results},
                         indent=2))
    else:
        print(f"rules.query_concurrency = {concurrency}; a rule's seconds are its own fetching and "
              "evaluating, and overlap with the others'\n")
        print(table(results))
        for r in results:
            print(f"\n{r['sites']} sites: {r['cells']} cells, {r['bills']} bills, {r['points']:,} points "
                  f"(loaded in {r['load_s']}s, not part of the rule figures)")
            if "sequential" in r:
                seq, last = r["sequential"]["total_s"], r["runs"][-1]["total_s"]
                print(f"  query_concurrency 1 (baseline, same data): {seq:.1f}s; "
                      f"{concurrency}: {last:.1f}s (x{seq / last:.2f})")


if __name__ == "__main__":
    main()
