"""Backfill's registry replay: each site's lifecycle state at a past time, per backfill step.

Run:  .venv/bin/python bench/history.py [--sites 10000] [--events 6] [--steps 200]

A seeded history of N sites x E lifecycle events spread over a year (10 % of
the sites imported without a date) is replayed at ``--steps`` times an hour
apart, with no two steps sharing the same set of past events (the worst case:
every step a cache miss).  Timed: ``rules.data.SiteHistory.facts_at`` (what
``Engine.backfill`` calls per step), against a plain pandas reading of the same
events (group by site, last event, max time of the entries into that state)
measured in the same run.  Both must agree on every site; the bench checks it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rules.data import SiteHistory
from rules.rule import Facts

STATES = ["planned", "site_secured", "approved", "under_construction", "power_connected", "on_air",
          "relocating", "decommissioned"]
START = pd.Timestamp("2026-01-01", tz="UTC")


def history(n: int, per_site: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sites = np.repeat(np.arange(n), per_site)
    step = np.tile(np.arange(per_site), n)
    start = np.repeat(rng.integers(0, 8760 - per_site * 24, n), per_site)
    hours = start + step * 24 + rng.integers(0, 24, n * per_site)
    undated_site = np.repeat(rng.random(n) < 0.1, per_site)
    events = pd.DataFrame({
        "site_id": [f"S{i:05d}" for i in sites],
        "at": START + pd.to_timedelta(hours, unit="h"),
        "to_state": np.asarray(STATES, dtype=object)[step % len(STATES)],
        "dated": ~(undated_site & (step == 0)),
    }).sort_values("at", kind="stable").reset_index(drop=True)
    events["at"] = events["at"].astype("datetime64[ns, UTC]")
    facts_sites = pd.DataFrame({"site_id": [f"S{i:05d}" for i in range(n)],
                                "state": np.asarray(STATES, dtype=object)[(per_site - 1) % len(STATES)],
                                "state_since": pd.NaT, "on_air_since": pd.NaT})
    return events, facts_sites


def plain(events: pd.DataFrame, sites: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """The baseline: the same answer read with plain pandas group-bys."""
    ev = events[events["at"] <= at]
    last = ev.groupby("site_id")["to_state"].last()
    dated = ev[ev["dated"]]
    into = dated[dated["to_state"].to_numpy() == last.reindex(dated["site_id"]).to_numpy()]
    since = into.groupby("site_id")["at"].max()
    on_air = dated[dated["to_state"] == "on_air"].groupby("site_id")["at"].max()
    first = events.groupby("site_id").first()
    assumed = first.loc[~first["dated"], "to_state"]
    out = sites.copy()
    ids = out["site_id"]
    state = last.reindex(ids).to_numpy(dtype=object)
    missing = pd.isna(state)
    state[missing] = assumed.reindex(ids[missing]).to_numpy(dtype=object)
    out["state"] = state
    out["state_since"] = since.reindex(ids).to_numpy()
    out["on_air_since"] = on_air.reindex(ids).to_numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=6, help="lifecycle events per site")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    events, sites = history(args.sites, args.events, args.seed)
    facts = Facts(sites=sites)
    t0 = time.perf_counter()
    replay = SiteHistory(events)
    setup_s = time.perf_counter() - t0
    times = [START + pd.Timedelta(days=60) + pd.Timedelta(hours=h) for h in range(args.steps)]
    ours, base = [], []
    for i, at in enumerate(times):
        t0 = time.perf_counter()
        got = replay.facts_at(facts, at).sites
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        want = plain(events, sites, at)
        base.append(time.perf_counter() - t0)
        if i % 50 == 0:
            assert (got["state"].fillna("-") == want["state"].fillna("-")).all(), at
            for col in ("state_since", "on_air_since"):
                a = got[col].astype("datetime64[ns, UTC]")
                b = pd.Series(want[col], index=got.index).astype("datetime64[ns, UTC]")
                assert a.equals(b), (at, col)
        print(f"\r# step {i + 1}/{args.steps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    med_ours, med_base = statistics.median(ours) * 1000, statistics.median(base) * 1000
    print(f"{args.sites} sites x {args.events} events ({len(events):,}), {args.steps} steps: "
          f"SiteHistory set-up {setup_s * 1000:.0f} ms; per step median {med_ours:.1f} ms "
          f"(p90 {np.percentile(ours, 90) * 1000:.1f}) against plain pandas {med_base:.1f} ms "
          f"(p90 {np.percentile(base, 90) * 1000:.1f}): x{med_base / med_ours:.1f} faster")


if __name__ == "__main__":
    main()
