"""Day-to-day operations: sites gone silent, and sites running on their batteries.

``site_offline``: a site that should be on air (``ON_AIR_STATES``: ``on_air``, and
``relocating``, on air until its replacement is) with no telemetry for ``offline_after``
(frame ``last_seen``: site_id, time of its latest reading in the window).
``mains_failure``: a site on battery (``on_battery``, or mains down when the
device does not report ``on_battery``) for ``on_battery_after`` up to its
latest report (frame ``tower_5m``: 5-minute buckets of ``last(on_battery)``,
``last(mains_ok)``, ``mean(battery_soc_pct)``).  The evidence carries the
state-of-charge trend (a least-squares slope in %/h) and the time left until
empty at that slope.

Resolution means the condition was observed to end (issue 14).  A site on
battery that stops reporting has most likely run its batteries flat (停电退服):
its mains failure is not over, so it stays a finding — critical, with
``reporting: false`` and ``silent_since`` — and the site's ``site_offline``
finding names it as the ``probable_cause`` (frame ``tower_latest``: the last
``on_battery``/``mains_ok``/SOC per site in the window; the flag store adds the
cause's flag id).  A site silent for the whole window was not observed at all:
``observed_sites`` leaves its flag out of the evaluation's scope, so it stays
open until mains is seen back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from core.settings import Duration
from core.states import ON_AIR_STATES
from rules.finding import Finding, Severity, iso_utc, subject_key
from rules.lifecycle import NAT, last_seen_at
from rules.rule import Facts, Frames, Rule, Thresholds

__all__ = [
    "MAINS_FAILURE",
    "ON_AIR_STATES",
    "SITE_OFFLINE",
    "MainsThresholds",
    "OfflineThresholds",
    "evaluate_mains_failure",
    "evaluate_site_offline",
    "observed_sites",
    "soc_trend",
]

BUCKET = pd.Timedelta(minutes=5)
# A site never built, or taken down, is silent by design and never offline: only the
# ``ON_AIR_STATES`` (core.states, which twin.live uses too) should transmit.


class OfflineThresholds(Thresholds):
    """Silent longer than ``offline_after`` is offline; longer than ``critical_after``, critical."""

    interval: Duration = 300.0
    window: Duration = 6 * 3600.0
    offline_after: Duration = 900.0
    critical_after: Duration = 3600.0


class MainsThresholds(Thresholds):
    """On battery longer than ``on_battery_after``; critical when the battery is nearly done."""

    interval: Duration = 300.0
    window: Duration = 6 * 3600.0
    on_battery_after: Duration = 900.0
    soc_critical_pct: float = Field(default=30.0, ge=0, le=100)
    empty_critical_hours: float = Field(default=1.0, ge=0)


def evaluate_site_offline(frames: Frames, facts: Facts, now: datetime, t: OfflineThresholds
                          ) -> list[Finding]:
    """On-air sites with no reading for longer than ``offline_after``."""
    out: list[Finding] = []
    if facts.sites.empty:
        return out
    on_battery_last = _on_battery_at_last_report(frames.get("tower_latest"))
    now_ts = pd.Timestamp(now)
    # The loop below decides; this only leaves out, in one vector pass, the on-air sites seen
    # well within ``offline_after`` (a backfill steps 10 000 sites 8 640 times a month).
    sites = facts.sites
    latest = last_seen_at(frames.get("last_seen"), sites)
    seen = latest != NAT
    recent = seen & (now_ts.value - latest
                     < (pd.Timedelta(seconds=t.offline_after) - pd.Timedelta(seconds=1)).value)
    # Sites not meant to be on air are silent by design: left out here too, not walked
    # row by row (at 2 000 sites over 3 days they were most of the rule's time).
    on_air = sites["state"].isin(ON_AIR_STATES).to_numpy()
    walk = np.flatnonzero(on_air & ~recent)
    for k, site in zip(walk, sites.iloc[walk].itertuples(index=False), strict=True):
        last = pd.Timestamp(int(latest[k]), unit="ns", tz="UTC") if seen[k] else None
        if last is not None and now_ts - last <= pd.Timedelta(seconds=t.offline_after):
            continue
        silent_s = (now_ts - last).total_seconds() if last is not None else None
        severity: Severity = ("critical" if silent_s is None or silent_s > t.critical_after
                              else "warning")
        start = last.to_pydatetime() if last is not None else now - timedelta(seconds=t.window)
        since = (f"since {iso_utc(last)}" if last is not None
                 else f"for more than {t.window / 3600:g} h")
        evidence: dict[str, Any] = {"last_seen": iso_utc(last) if last is not None else None,
                                    "silent_s": round(silent_s, 1) if silent_s is not None else None,
                                    "offline_after_s": t.offline_after}
        summary = f"site {site.site_id} silent {since}"
        if site.site_id in on_battery_last:
            soc = on_battery_last[site.site_id]
            evidence["probable_cause"] = {
                "kind": "mains_failure", "dedup_key": subject_key("mains_failure", site.site_id),
                "reason": "on battery at its last report: batteries probably exhausted (停电退服)",
                "battery_soc_pct": soc}
            severity = "critical"
            summary += ", on battery at its last report: probably batteries exhausted (停电退服)"
        out.append(Finding(
            kind="site_offline", rule="site_offline", site_id=site.site_id, severity=severity,
            window_start=start, window_end=now, summary=summary, evidence=evidence))
    return out


def _on_battery_at_last_report(latest: pd.DataFrame | None) -> dict[str, float | None]:
    """Sites whose last report in the window says on battery (or mains down): their SOC."""
    out: dict[str, float | None] = {}
    if latest is None or latest.empty:
        return out
    for row in latest.itertuples(index=False):
        if _on_battery(getattr(row, "on_battery", None), getattr(row, "mains_ok", None)):
            soc = getattr(row, "battery_soc_pct", None)
            out[row.site_id] = float(soc) if soc is not None and pd.notna(soc) else None
    return out


def observed_sites(frames: Frames) -> set[str]:
    """The sites that reported in the window: only their mains-failure flags may clear."""
    latest = frames.get("tower_latest")
    return set() if latest is None or latest.empty else set(latest["site_id"])


def soc_trend(times: pd.Series, soc_pct: pd.Series) -> float | None:
    """Least-squares slope of the state of charge in %/h (None with fewer than two points)."""
    ok = soc_pct.notna().to_numpy()
    if ok.sum() < 2:
        return None
    hours = ((times[ok] - times[ok].iloc[0]) / pd.Timedelta(hours=1)).to_numpy(dtype=float)
    if np.ptp(hours) == 0:
        return None
    return float(np.polyfit(hours, soc_pct[ok].to_numpy(dtype=float), 1)[0])


def _on_battery(row_on: Any, row_mains: Any) -> bool:
    if row_on is not None and not (isinstance(row_on, float) and np.isnan(row_on)):
        return bool(row_on)
    return row_mains is not None and not (isinstance(row_mains, float) and np.isnan(row_mains)) \
        and not bool(row_mains)


def evaluate_mains_failure(frames: Frames, facts: Facts, now: datetime, t: MainsThresholds
                           ) -> list[Finding]:
    """Sites on battery for longer than ``on_battery_after`` up to their latest report."""
    tower = frames.get("tower_5m")
    out: list[Finding] = []
    if tower is None or tower.empty:
        return out
    now_ts = pd.Timestamp(now)
    df = tower.sort_values(["site_id", "time"])
    for column in ("on_battery", "mains_ok", "battery_soc_pct"):
        if column not in df.columns:
            df[column] = None
    for site_id, g in df.groupby("site_id", sort=False):
        flags = [_on_battery(a, b) for a, b in zip(g["on_battery"], g["mains_ok"], strict=True)]
        times = list(g["time"])
        if not flags or not flags[-1]:
            continue
        # Silent since its last report, on battery: the failure goes on (batteries flat).
        silent = times[-1] < now_ts - 3 * BUCKET
        first = len(flags) - 1
        while first > 0 and flags[first - 1]:
            first -= 1
        since, until = times[first], (now_ts if silent else min(times[-1] + BUCKET, now_ts))
        duration_s = (until - since).total_seconds()
        if duration_s < t.on_battery_after:
            continue
        run = g.iloc[first:]
        slope = soc_trend(run["time"], pd.to_numeric(run["battery_soc_pct"], errors="coerce"))
        soc = pd.to_numeric(run["battery_soc_pct"], errors="coerce").dropna()
        soc_now = float(soc.iloc[-1]) if len(soc) else None
        hours_left = soc_now / -slope if soc_now is not None and slope is not None and slope < 0 else None
        critical = silent or (soc_now is not None and soc_now <= t.soc_critical_pct) or (
            hours_left is not None and hours_left <= t.empty_critical_hours)
        trend = [[iso_utc(ts), round(float(v), 2)] for ts, v in
                 zip(run["time"], pd.to_numeric(run["battery_soc_pct"], errors="coerce"), strict=True)
                 if pd.notna(v)][-12:]
        left = f", about {hours_left:.1f} h to empty" if hours_left is not None else ""
        soc_text = f", battery {soc_now:.0f}%" if soc_now is not None else ""
        summary = f"site {site_id} on battery for {duration_s / 60:.0f} min{soc_text}{left}"
        evidence = {"on_battery_since": iso_utc(since), "duration_s": duration_s,
                    "battery_soc_pct": soc_now,
                    "soc_slope_pct_per_h": round(slope, 3) if slope is not None else None,
                    "hours_to_empty": round(hours_left, 2) if hours_left is not None else None,
                    "soc_trend": trend, "reporting": not silent}
        if silent:
            last_report = times[-1] + BUCKET
            evidence["silent_since"] = iso_utc(last_report)
            summary = (f"site {site_id} on battery since {iso_utc(since)} and silent since "
                       f"{iso_utc(last_report)}{soc_text}: batteries probably exhausted (停电退服)")
        out.append(Finding(
            kind="mains_failure", rule="mains_failure", site_id=site_id,
            severity="critical" if critical else "warning",
            window_start=since.to_pydatetime(), window_end=until.to_pydatetime(),
            summary=summary, evidence=evidence))
    return out


SITE_OFFLINE = Rule(
    name="site_offline", kinds=("site_offline",), thresholds=OfflineThresholds,
    evaluate=evaluate_site_offline, needs=("last_seen", "tower_latest"),
    description="on-air sites silent beyond the offline threshold",
    one_pass=True,
)
MAINS_FAILURE = Rule(
    name="mains_failure", kinds=("mains_failure",), thresholds=MainsThresholds,
    evaluate=evaluate_mains_failure, needs=("tower_latest", "tower_5m"), observed=observed_sites,
    description="sites on battery beyond the threshold, with SOC trend and time to empty;"
                " open until mains is seen back",
    one_pass=True,
)
