"""Build and relocation progress: relocation violations and stalled lifecycle states.

``relocation_violation`` is raised on the *old* site: it is decommissioned, or
silent (no telemetry for ``offline_after``) while not being built, although the
site that replaces it is not on air yet — "build the new one first, then take
the old one down".  ``lifecycle_stalled``: a site has been in one state longer
than that state's limit (``limits_days``); twice the limit is critical.
Telemetry silence comes from the ``last_seen`` frame (site_id, time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from core.settings import Duration
from core.states import State
from core.timeutil import utc_timestamp
from rules.finding import Finding, Severity, iso_utc
from rules.rule import Facts, Frames, Remembered, Rule, Thresholds

__all__ = ["LIFECYCLE", "NAT", "LifecycleThresholds", "evaluate_lifecycle", "last_seen_at", "last_seen_map",
           "last_seen_series"]

# ``last_seen_at``'s "never": NaT as an integer.
NAT = np.iinfo(np.int64).min

DEFAULT_LIMITS_DAYS = {
    "planned": 365.0,
    "site_secured": 60.0,
    "approved": 30.0,
    "under_construction": 90.0,
    "power_connected": 14.0,
    "relocating": 30.0,
    "blocked": 30.0,
}
# States in which an old site counts as taken down if its telemetry has gone silent.
_RUNNING = (State.POWER_CONNECTED, State.ON_AIR, State.RELOCATING)


class LifecycleThresholds(Thresholds):
    """Days allowed per lifecycle state; states not listed never stall."""

    interval: Duration = 3600.0
    window: Duration = 86400.0
    offline_after: Duration = 3600.0
    limits_days: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_LIMITS_DAYS))


def last_seen_map(frame: pd.DataFrame | None) -> dict[str, pd.Timestamp]:
    """site_id -> time of its latest reading, from a ``last_seen`` frame."""
    return last_seen_series(frame).to_dict()


def last_seen_series(frame: pd.DataFrame | None) -> pd.Series:
    """``last_seen_map`` as a Series (``.get`` alike): no Timestamp object per site until one
    is asked for (10 000 of them every step were a third of a backfill's offline rule)."""
    if frame is None or frame.empty:
        return pd.Series(dtype="datetime64[ns, UTC]")
    if "last_seen" in frame.attrs:  # a backfill's: one row per site, sorted by site, no NaT
        return pd.Series(frame["time"].array, index=pd.Index(frame["site_id"], name="site_id"), name="time")
    return frame.dropna(subset=["time"]).groupby("site_id")["time"].max()


# A ``last_seen`` index aligned to a sites table (the objects stay the same between steps).
_ALIGNED: Remembered[np.ndarray] = Remembered()


def last_seen_at(frame: pd.DataFrame | None, sites: pd.DataFrame) -> np.ndarray:
    """Per row of ``sites``: the time of its site's latest reading in the window, ns since the
    epoch (``NAT``: none), from a ``last_seen`` frame.

    A backfill's frame carries its answer as arrays over a stable index of every site seen
    (``rules.backfill``): the sites are then aligned to it once, not every step - at 10 000
    sites and 8 640 steps a month, grouping and re-indexing were most of the offline rule.
    """
    ids = sites["site_id"].to_numpy(dtype=object)
    held = frame.attrs.get("last_seen") if frame is not None else None
    if held is None:
        series = last_seen_series(frame)
        if series.empty:
            return np.full(len(ids), NAT, dtype=np.int64)
        return pd.DatetimeIndex(series.reindex(ids)).as_unit("ns").asi8
    index, latest, start = held
    where = _ALIGNED.get((index, sites), None, lambda: index.get_indexer(ids))
    out = np.append(latest, NAT)[where]  # -1 (never seen) takes the NAT at the end
    out[out < start] = NAT
    return out


def _ts(value: Any) -> pd.Timestamp | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return utc_timestamp(value)


# The sites table's derived columns (a backfill hands every step of a version the same
# table: at 10 000 sites, mapping and parsing them each hourly step was most of the rule).
_TABLES: Remembered[tuple] = Remembered()


def _site_tables(sites: pd.DataFrame, t: LifecycleThresholds) -> tuple:
    """(which rows name a site they replace, the replaced sites' rows by id, each row's
    limit in days, each row's ``state_since``) for ``sites``."""

    def compute() -> tuple:
        # Only the replacements and the sites they replace are walked (10 000 sites' rows
        # as dicts every step cost a backfill ~0.1 s a step).
        replaces = (sites["replaces_site_id"] if "replaces_site_id" in sites.columns
                    else pd.Series(None, index=sites.index))
        named = replaces.map(lambda v: isinstance(v, str) and bool(v)).astype(bool).to_numpy()
        old_rows = sites[sites["site_id"].isin(set(replaces[named])).to_numpy()]
        by_id = old_rows.set_index("site_id").to_dict("index")
        limits = pd.to_numeric(sites["state"].map(lambda v: t.limits_days.get(v)), errors="coerce")
        since_all = pd.to_datetime(sites["state_since"], utc=True, errors="coerce") \
            if "state_since" in sites.columns else pd.Series(pd.NaT, index=sites.index)
        return named, by_id, limits, since_all

    return _TABLES.get((sites,), tuple(sorted(t.limits_days.items())), compute)


def evaluate_lifecycle(frames: Frames, facts: Facts, now: datetime, t: LifecycleThresholds
                       ) -> list[Finding]:
    """Relocation violations and stalled states."""
    out: list[Finding] = []
    now_ts = pd.Timestamp(now)
    sites = facts.sites
    if sites.empty:
        return out
    seen = last_seen_series(frames.get("last_seen"))
    named, by_id, limits, since_all = _site_tables(sites, t)
    for new in sites[named].itertuples(index=False):
        old_id = getattr(new, "replaces_site_id", None)
        if not isinstance(old_id, str) or not old_id or old_id not in by_id or new.state == State.ON_AIR:
            continue
        old = by_id[old_id]
        last = seen.get(old_id)
        silent = last is None or now_ts - last > pd.Timedelta(seconds=t.offline_after)
        taken_down = old["state"] == State.DECOMMISSIONED or (old["state"] in _RUNNING and silent
                                                          and last is not None)
        if not taken_down:
            continue
        since = _ts(old.get("state_since")) if old["state"] == State.DECOMMISSIONED else last
        start = min(since, now_ts).to_pydatetime() if since is not None else now - timedelta(seconds=t.window)
        how = "decommissioned" if old["state"] == State.DECOMMISSIONED else "silent"
        out.append(Finding(
            kind="relocation_violation", rule="lifecycle", site_id=old_id, severity="critical",
            window_start=start, window_end=now,
            summary=f"site {old_id} is {how} while its replacement {new.site_id} is {new.state}, not on air",
            evidence={"old_site_id": old_id, "old_state": old["state"], "replacement_site_id": new.site_id,
                      "replacement_state": new.state,
                      "old_last_seen": iso_utc(last) if last is not None else None,
                      "old_state_since": _iso(old.get("state_since"))}))
    # Likewise only the sites near or past their state's limit (the loop decides).
    near = limits.notna() & since_all.notna() & ((now_ts - since_all) / pd.Timedelta(days=1) > limits - 1)
    for site in sites[near.to_numpy()].itertuples(index=False):
        limit = t.limits_days.get(site.state)
        since = _ts(getattr(site, "state_since", None))
        if limit is None or since is None:
            continue
        days = (now_ts - since) / pd.Timedelta(days=1)
        if days <= limit:
            continue
        severity: Severity = "critical" if days > 2 * limit else "warning"
        out.append(Finding(
            kind="lifecycle_stalled", rule="lifecycle", site_id=site.site_id, severity=severity,
            window_start=since.to_pydatetime(), window_end=now,
            summary=f"site {site.site_id} has been {site.state} for {days:.0f} days (limit {limit:g})",
            evidence={"state": site.state, "state_since": iso_utc(since), "days_in_state": round(days, 2),
                      "limit_days": limit}))
    return out


def _iso(value: Any) -> str | None:
    ts = _ts(value)
    return iso_utc(ts) if ts is not None else None


LIFECYCLE = Rule(
    name="lifecycle", kinds=("relocation_violation", "lifecycle_stalled"),
    thresholds=LifecycleThresholds, evaluate=evaluate_lifecycle, needs=("last_seen",),
    description="old sites taken down before their replacement is on air; states past their limit",
    one_pass=True,
)
