"""Uplink interference per cell: sustained, classified per PRB, grouped into incidents.

A cell is interfered with when, for ``consecutive_periods`` reporting periods
in a row up to the latest one, its mean uplink interference is at or above an
absolute level (``warning_dbm``; ``critical_dbm`` makes it critical) or at
least ``rise_db`` above its own baseline: the median, over the past
``baseline_days``, of the same hour of day (robust to a bad day).

With per-PRB data the pattern is classified: ``wideband`` (most PRBs raised
and flat: a jammer or a broadband source), ``narrowband`` (one contiguous
block: an intermodulation product, a faulty device on a channel) or
``unknown``.  Cells at sites within ``incident_radius_km`` of each other that
rise together are one incident, reported once, with a source estimate: the
mean of the site coordinates weighted by each cell's rise.

An incident is matched against the registry's authorised interferers
(``Facts.interferers``, interferers.csv: 公用干扰器 such as exam-hall jammers):
located within one's ``radius_m`` (the source estimate of a multi-site
incident, the site of a single cell), in one of its bands (any, when it lists
none) and overlapping one of its time windows.  A match is kept, marked
``authorised_interferer`` in the evidence and given severity ``info`` so
nothing escalates it; it is never dropped (an authorised jammer left on after
its window is not matched, and is an alarm again).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from core.settings import Duration
from rules.finding import Finding, Severity, iso_utc, subject_key
from rules.rule import Facts, Frames, Remembered, Rule, Thresholds

__all__ = [
    "INTERFERENCE",
    "InterferenceThresholds",
    "authorised_interferer",
    "classify_prb",
    "estimate_source",
    "evaluate_interference",
    "flaggable_cells",
    "haversine_km",
]

PERIOD = pd.Timedelta(minutes=15)


class InterferenceThresholds(Thresholds):
    """Levels in dBm, rises in dB; periods are the 15-minute aggregation buckets."""

    interval: Duration = 900.0
    window: Duration = 2 * 3600.0
    warning_dbm: float = -110.0
    critical_dbm: float = -105.0
    rise_db: float = Field(default=6.0, gt=0)
    consecutive_periods: int = Field(default=3, ge=1)
    baseline_days: int = Field(default=7, ge=1)
    min_baseline_days: int = Field(default=3, ge=1)
    prb_rise_db: float = Field(default=6.0, gt=0)
    prb_noise_floor_dbm: float = -118.0
    wideband_share: float = Field(default=0.7, gt=0, le=1)
    wideband_flat_db: float = Field(default=3.0, gt=0)
    narrowband_max_share: float = Field(default=0.5, gt=0, le=1)
    incident_radius_km: float = Field(default=3.0, ge=0)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def classify_prb(prb_dbm: np.ndarray, reference_dbm: float, t: InterferenceThresholds
                 ) -> dict[str, Any]:
    """Classify a per-PRB vector against a reference level: wideband, narrowband or unknown."""
    v = np.asarray(prb_dbm, dtype=float)
    valid = ~np.isnan(v)
    if not valid.any():
        return {"class": "unknown", "reason": "no per-PRB data"}
    raised = valid & (v >= reference_dbm + t.prb_rise_db)
    n_valid, n_raised = int(valid.sum()), int(raised.sum())
    share = n_raised / n_valid
    info: dict[str, Any] = {"prbs": n_valid, "raised_prbs": n_raised, "raised_share": round(share, 3),
                            "reference_dbm": round(reference_dbm, 2)}
    if n_raised == 0:
        return {"class": "unknown", **info, "reason": "no PRB above the reference"}
    # Longest contiguous run of raised PRBs.
    best = run = 0
    first = start = -1
    for i, r in enumerate(raised):
        if r:
            if run == 0:
                start = i
            run += 1
            if run > best:
                best, first = run, start
        else:
            run = 0
    spread_db = float(np.std(v[raised]))
    info["raised_spread_db"] = round(spread_db, 2)
    if share >= t.wideband_share and spread_db <= t.wideband_flat_db:
        return {"class": "wideband", **info}
    if share <= t.narrowband_max_share and best >= 0.8 * n_raised:
        return {"class": "narrowband", **info, "block": [first, first + best - 1]}
    return {"class": "unknown", **info}


def estimate_source(points: list[tuple[float, float, float]]) -> dict[str, float]:
    """Source estimate from (lat, lon, weight): the weighted mean of the coordinates."""
    w = np.array([max(p[2], 1e-6) for p in points])
    lat = float(np.dot(w, [p[0] for p in points]) / w.sum())
    lon = float(np.dot(w, [p[1] for p in points]) / w.sum())
    return {"lat": round(lat, 6), "lon": round(lon, 6)}


def authorised_interferer(lat: float, lon: float, bands: set[str], start: pd.Timestamp,
                          end: pd.Timestamp, interferers: pd.DataFrame | None) -> dict[str, Any] | None:
    """The nearest authorised interferer covering a finding at (lat, lon) in ``bands`` over
    [start, end), as evidence; None when none does."""
    if interferers is None or interferers.empty:
        return None
    best: dict[str, Any] | None = None
    for r in interferers.itertuples(index=False):
        distance_m = haversine_km(lat, lon, float(r.lat), float(r.lon)) * 1000.0
        if distance_m > float(r.radius_m):
            continue
        listed = set(r.bands or ())
        if listed and bands and not (listed & bands):
            continue
        window = next(((a, b) for a, b in (r.windows or ()) if a < end and start < b), None)
        if window is None:
            continue
        if best is None or distance_m < best["distance_m"]:
            best = {"interferer_id": r.interferer_id, "name": r.name,
                    "distance_m": round(distance_m, 1), "radius_m": float(r.radius_m),
                    "bands": sorted(listed), "window": [iso_utc(window[0]), iso_utc(window[1])]}
    return best


class HourBaselines:
    """Per (cell, hour of day) the median level: a ``dict.get`` over a cell x 24 table.

    A dict of 240 000 ``(cell, hour)`` tuples took ~1.5 s to build at 10 000 cells, once a
    day of a backfill and on every live run; the table is built with a few vector
    operations, and ``lookup`` answers a whole frame's rows at once.
    """

    def __init__(self, cells: pd.Index, table: np.ndarray) -> None:
        self.cells = cells  # the table's rows
        self.table = table  # levels, NaN where a cell has no baseline for that hour

    @classmethod
    def from_levels(cls, levels: pd.Series) -> HourBaselines:
        """From medians indexed by (cell_id, hour)."""
        codes, cells = pd.factorize(levels.index.get_level_values(0))
        table = np.full((len(cells), 24), np.nan)
        table[codes, levels.index.get_level_values(1).to_numpy(dtype=np.intp)] = levels.to_numpy(dtype=float)
        return cls(pd.Index(cells), table)

    def __bool__(self) -> bool:
        return bool(np.isfinite(self.table).any())

    def get(self, key: tuple[str, int], default: float | None = None) -> float | None:
        cell, hour = key
        try:
            row = self.cells.get_loc(cell)
        except KeyError:
            return default
        value = self.table[row, hour]
        return default if np.isnan(value) else float(value)

    def lookup(self, cells: Any, hours: Any) -> np.ndarray:
        """The levels of many (cell, hour) pairs; NaN where there is none."""
        rows = self.cells.get_indexer(cells)
        hours = np.asarray(hours, dtype=np.intp)
        out = np.append(self.table, np.full((1, 24), np.nan), axis=0)[rows, hours]  # -1: the NaN row
        return out


_NO_BASELINES = HourBaselines(pd.Index([], dtype=object), np.empty((0, 24)))


# A backfill hands every step of a day the same baseline frame (``rules.backfill``), and at
# 10 000 cells its medians cost ~0.5 s, more than the rest of a step.
_BASELINES: Remembered[tuple[HourBaselines, dict[str, float]]] = Remembered()


def _baselines(frame: pd.DataFrame, t: InterferenceThresholds
               ) -> tuple[HourBaselines, dict[str, float]]:
    """Per (cell, hour of day) the median over days, and per cell the overall median."""
    if frame is None or frame.empty:
        return _NO_BASELINES, {}

    def compute() -> tuple[HourBaselines, dict[str, float]]:
        df = frame.dropna(subset=["ul_dbm"])
        df = df.assign(hour=df["time"].dt.hour, day=df["time"].dt.floor("D"))
        by_hour = df.groupby(["cell_id", "hour"]).agg(level=("ul_dbm", "median"), days=("day", "nunique"))
        by_hour = by_hour[by_hour["days"] >= t.min_baseline_days]
        overall = df.groupby("cell_id")["ul_dbm"].median()
        return HourBaselines.from_levels(by_hour["level"]), overall.to_dict()

    return _BASELINES.get((frame,), t.min_baseline_days, compute)


def _may_run(df: pd.DataFrame, base_hour: HourBaselines, latest_ok: pd.Timestamp, t: InterferenceThresholds
             ) -> pd.DataFrame:
    """The rows of the cells whose last ``consecutive_periods`` periods all meet a level.

    The same test as the loop below, for every row at once: the loop then only walks the
    few cells that can make a run (thousands of quiet cells cost one vector operation).
    """
    if df.empty:
        return df
    df = df.reset_index(drop=True)
    levels = df["ul_dbm"].to_numpy(dtype=float)
    if base_hour:
        base = base_hour.lookup(df["cell_id"].to_numpy(dtype=object), df["time"].dt.hour.to_numpy())
        cond = (levels >= t.warning_dbm) | (~np.isnan(base) & (levels - base >= t.rise_db))
    else:
        cond = levels >= t.warning_dbm
    keys = [df["site_id"], df["cell_id"]]
    tail = pd.Series(cond, index=df.index).groupby(keys, sort=False).tail(t.consecutive_periods)
    per_cell = tail.groupby([df["site_id"].loc[tail.index], df["cell_id"].loc[tail.index]], sort=False)
    ok = per_cell.all() & (per_cell.size() >= t.consecutive_periods)
    last = df.groupby(keys, sort=False)["time"].max()
    ok = ok & (last.reindex(ok.index) >= latest_ok)
    wanted = ok[ok].index
    if len(wanted) == 0:
        return df.iloc[:0]
    return df[pd.MultiIndex.from_arrays(keys).isin(wanted)]


def _cell_findings(recent: pd.DataFrame, base_hour: HourBaselines, now: datetime, t: InterferenceThresholds
                   ) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    if recent is None or recent.empty:
        return hits
    latest_ok = pd.Timestamp(now) - 2 * PERIOD
    df = _may_run(recent.dropna(subset=["ul_dbm"]).sort_values(["site_id", "cell_id", "time"]),
                  base_hour, latest_ok, t)
    for (site_id, cell_id), g in df.groupby(["site_id", "cell_id"], sort=False):
        times = list(g["time"])
        if not times or times[-1] < latest_ok:
            continue
        levels = g["ul_dbm"].to_numpy(dtype=float)
        run: list[int] = []
        for i in range(len(times) - 1, -1, -1):
            if run and times[run[-1]] - times[i] != PERIOD:
                break
            base = base_hour.get((cell_id, times[i].hour))
            cond = levels[i] >= t.warning_dbm or (base is not None and levels[i] - base >= t.rise_db)
            if not cond:
                break
            run.append(i)
        if len(run) < t.consecutive_periods:
            continue
        run.reverse()
        lv = levels[run]
        bases = [base_hour.get((cell_id, times[i].hour)) for i in run]
        rises = [lv[k] - b for k, b in enumerate(bases) if b is not None]
        band = g["band"].iloc[-1] if "band" in g.columns else None
        hits.append({
            "site_id": site_id, "cell_id": cell_id, "band": band,
            "start": times[run[0]], "end": times[run[-1]] + PERIOD,
            "periods": len(run), "level_dbm": round(float(lv.mean()), 2),
            "max_dbm": round(float(lv.max()), 2),
            "baseline_dbm": round(float(np.mean([b for b in bases if b is not None])), 2) if rises else None,
            "rise_db": round(float(np.mean(rises)), 2) if rises else None,
        })
    return hits


def flaggable_cells(recent: pd.DataFrame | None, baseline: pd.DataFrame | None, now: datetime,
                    t: InterferenceThresholds) -> set[str]:
    """The cells ``evaluate_interference`` flags on these frames, before any PRB or incident work.

    ``baseline`` needs only the hours of day that ``recent`` covers: lets the data side
    fetch every hour of the baseline (for the overall median) just for these cells.
    """
    return {h["cell_id"] for h in _cell_findings(recent, _baselines(baseline, t)[0], now, t)}


def _severity(level_dbm: float, t: InterferenceThresholds) -> Severity:
    return "critical" if level_dbm >= t.critical_dbm else "warning"


def _groups(hits: list[dict[str, Any]], coords: dict[str, tuple[float, float]], radius_km: float
            ) -> list[list[int]]:
    """Connected groups of hits whose sites lie within the radius (single linkage)."""
    parent = list(range(len(hits)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hits)):
        ci = coords.get(hits[i]["site_id"])
        for j in range(i + 1, len(hits)):
            cj = coords.get(hits[j]["site_id"])
            same = hits[i]["site_id"] == hits[j]["site_id"]
            if same or (ci and cj and haversine_km(*ci, *cj) <= radius_km):
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(hits)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def evaluate_interference(frames: Frames, facts: Facts, now: datetime, t: InterferenceThresholds
                          ) -> list[Finding]:
    """Findings for sustained interference: one per cell, or one per multi-site incident."""
    base_hour, base_cell = _baselines(frames.get("interference_baseline"), t)
    hits = _cell_findings(frames.get("interference_recent"), base_hour, now, t)
    if not hits:
        return []
    prb = frames.get("interference_prb")
    prb_rows: dict[tuple[str, str], np.ndarray] = {}
    if prb is not None and not prb.empty:
        cols = sorted(c for c in prb.columns if c.startswith("prb_"))
        values = prb[cols].to_numpy(dtype=float)
        for k, (s, c) in enumerate(zip(prb["site_id"], prb["cell_id"], strict=True)):
            prb_rows[(s, c)] = values[k]
    coords: dict[str, tuple[float, float]] = {}
    if not facts.sites.empty:  # the hits' sites only (a backfill step at 10 000 sites: 4 ms for all)
        located = facts.sites[facts.sites["site_id"].isin({h["site_id"] for h in hits}).to_numpy()]
        for s, lat, lon in zip(located["site_id"], located["lat"], located["lon"], strict=True):
            if pd.notna(lat) and pd.notna(lon):
                coords[s] = (float(lat), float(lon))
    for h in hits:
        reference = base_cell.get(h["cell_id"], t.prb_noise_floor_dbm)
        vector = prb_rows.get((h["site_id"], h["cell_id"]))
        h["prb"] = (classify_prb(vector, reference, t) if vector is not None
                    else {"class": "unknown", "reason": "no per-PRB data"})
        # Weight of a cell in the source estimate: its rise over its baseline (or the floor).
        h["weight_db"] = h["rise_db"] if h["rise_db"] is not None else h["level_dbm"] - t.prb_noise_floor_dbm

    out: list[Finding] = []
    for group in _groups(hits, coords, t.incident_radius_km):
        cells = [hits[i] for i in group]
        anchor = max(cells, key=lambda h: (h["weight_db"], h["level_dbm"]))
        severity: Severity = "critical" if any(_severity(h["level_dbm"], t) == "critical" for h in cells) else "warning"
        start = min(h["start"] for h in cells).to_pydatetime()
        end = max(h["end"] for h in cells).to_pydatetime()
        listed = [{k: (iso_utc(v) if isinstance(v, pd.Timestamp) else v) for k, v in h.items()}
                  for h in cells]
        for c in listed:
            if c["site_id"] in coords:
                c["lat"], c["lon"] = coords[c["site_id"]]
        sites = sorted({h["site_id"] for h in cells})
        evidence: dict[str, Any] = {"cells": listed, "sites": sites,
                                    "warning_dbm": t.warning_dbm, "critical_dbm": t.critical_dbm,
                                    "rise_db_threshold": t.rise_db,
                                    "consecutive_periods": t.consecutive_periods,
                                    "classification": anchor["prb"]["class"]}
        if len(sites) > 1:
            located = [(coords[h["site_id"]][0], coords[h["site_id"]][1], h["weight_db"])
                       for h in cells if h["site_id"] in coords]
            evidence["incident"] = True
            evidence["radius_km"] = t.incident_radius_km
            if located:
                evidence["source_estimate"] = estimate_source(located)
            summary = (f"interference incident over {len(sites)} sites / {len(cells)} cells, "
                       f"strongest {anchor['cell_id']} at {anchor['level_dbm']} dBm ({anchor['prb']['class']})")
        else:
            evidence["incident"] = False
            rise = f", {anchor['rise_db']} dB over baseline" if anchor["rise_db"] is not None else ""
            summary = (f"cell {anchor['cell_id']}: {anchor['level_dbm']} dBm for {anchor['periods']} "
                       f"periods{rise} ({anchor['prb']['class']})")
        where = (evidence.get("source_estimate", {}).get("lat"),
                 evidence.get("source_estimate", {}).get("lon"))
        if where[0] is None:
            where = coords.get(anchor["site_id"], (None, None))
        if where[0] is not None:
            allowed = authorised_interferer(
                where[0], where[1], {h["band"] for h in cells if h.get("band")},
                pd.Timestamp(start), pd.Timestamp(end), facts.interferers)
            if allowed is not None:
                evidence["authorised_interferer"] = allowed
                severity = "info"
                summary = f"authorised interferer {allowed['name']} ({allowed['interferer_id']}): {summary}"
        members = tuple(subject_key("interference", h["site_id"], h["cell_id"]) for h in cells)
        out.append(Finding(kind="interference", rule="interference", site_id=anchor["site_id"],
                           cell_id=anchor["cell_id"], severity=severity, window_start=start,
                           window_end=end, summary=summary, evidence=evidence,
                           member_keys=members if len(members) > 1 else ()))
    return out


INTERFERENCE = Rule(
    name="interference", kinds=("interference",), thresholds=InterferenceThresholds,
    evaluate=evaluate_interference,
    needs=("interference_recent", "interference_baseline", "interference_prb"),
    one_pass=True,
    description="sustained uplink interference per cell, PRB pattern, multi-site incidents",
)
