"""The tower power-monitoring (动环) picture the ``tower`` telemetry already carries.

Four rules, each its own flag kind and ``[rules.<name>]`` thresholds:

``door_open``: the cabinet or shelter door is open now (latest reading) and the
open run is not covered by a maintenance window of the site (``maintenance.csv``;
frame ``door_readings``: every ``door_open`` reading of the sites that reported
the door open in the window).  A door opened during a technician's booked
visit is not an intrusion; a door open outside it is, at once (``open_after``
is a grace for a sensor that bounces).  Resolved once the door is seen closed.

``cabinet_overtemp``: the cabinet's 5-minute mean temperature at or above
``overtemp_c`` for ``sustained_for`` up to the latest report (frame ``env_5m``).
Outdoor cabinets swing 10-15 °C a day (the simulator's reach 35 °C at a macro
site's afternoon); 45 °C sustained is the common alarm level of outdoor
telecom cabinets and 55 °C the point where rectifiers and batteries derate.

``tilt_exceeded``: a pole or tower inclination (5-minute mean, so a gust does
not count) at or above ``limit_deg`` for ``sustained_for`` up to the latest
report; critical at ``critical_deg``.

``battery_llvd_risk``: on battery, with the 5-minute mean battery voltage at or
below ``warning_v``: the low-voltage load disconnect (LLVD, ``llvd_v``, 44 V on
a 48 V plant) is imminent and the site will drop; critical at ``critical_v``.

Each finding covers the latest run of the condition; a condition seen to end
(door closed, temperature back, voltage up or mains back) resolves after the
hold-off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from core.settings import Duration
from rules.finding import Finding, Severity, iso_utc
from rules.rule import Facts, Frames, Rule, Thresholds

__all__ = [
    "BATTERY_LLVD_RISK",
    "CABINET_OVERTEMP",
    "DOOR_OPEN",
    "TILT_EXCEEDED",
    "DoorThresholds",
    "LlvdThresholds",
    "OvertempThresholds",
    "TiltThresholds",
    "evaluate_battery_llvd_risk",
    "evaluate_cabinet_overtemp",
    "evaluate_door_open",
    "evaluate_tilt_exceeded",
]

BUCKET = pd.Timedelta(minutes=5)
# A reading older than this many buckets is not "now": the site is silent (site_offline's case).
_STALE_BUCKETS = 3


class DoorThresholds(Thresholds):
    """A door open outside every maintenance window of its site for ``open_after``."""

    interval: Duration = 300.0
    window: Duration = 3600.0
    open_after: Duration = 0.0
    critical_after: Duration = 1800.0


class OvertempThresholds(Thresholds):
    """Cabinet 5-minute mean at or above ``overtemp_c`` for ``sustained_for``."""

    interval: Duration = 300.0
    window: Duration = 3600.0
    overtemp_c: float = Field(default=45.0, ge=-40, le=90)
    critical_c: float = Field(default=55.0, ge=-40, le=90)
    sustained_for: Duration = 900.0


class TiltThresholds(Thresholds):
    """Pole or tower inclination (5-minute mean) at or above ``limit_deg`` for ``sustained_for``."""

    interval: Duration = 300.0
    window: Duration = 3600.0
    limit_deg: float = Field(default=3.0, gt=0, le=90)
    critical_deg: float = Field(default=5.0, gt=0, le=90)
    sustained_for: Duration = 600.0


class LlvdThresholds(Thresholds):
    """On battery with the battery voltage at or below ``warning_v`` (LLVD at ``llvd_v``)."""

    interval: Duration = 300.0
    window: Duration = 3600.0
    llvd_v: float = Field(default=44.0, ge=0, le=60)
    warning_v: float = Field(default=45.0, ge=0, le=60)
    critical_v: float = Field(default=44.5, ge=0, le=60)


def _windows_of(facts: Facts) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    out: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    m = facts.maintenance
    if m is None or m.empty:
        return out
    for site_id, start, end in zip(m["site_id"], m["start"], m["end"], strict=True):
        out.setdefault(site_id, []).append((pd.Timestamp(start), pd.Timestamp(end)))
    return out


def _uncovered(times: list[pd.Timestamp], windows: list[tuple[pd.Timestamp, pd.Timestamp]]
               ) -> list[pd.Timestamp]:
    """The readings that no window covers (a window includes its start, excludes its end)."""
    return [t for t in times if not any(a <= t < b for a, b in windows)]


def evaluate_door_open(frames: Frames, facts: Facts, now: datetime, t: DoorThresholds
                       ) -> list[Finding]:
    """Doors open now whose open run is not covered by a maintenance window."""
    readings = frames.get("door_readings")
    out: list[Finding] = []
    if readings is None or readings.empty:
        return out
    now_ts = pd.Timestamp(now)
    windows = _windows_of(facts)
    df = readings.dropna(subset=["door_open"]).sort_values(["site_id", "time"])
    for site_id, g in df.groupby("site_id", sort=False):
        opened = [bool(v) for v in g["door_open"]]
        times = list(g["time"])
        if not opened[-1] or times[-1] < now_ts - _STALE_BUCKETS * BUCKET:
            continue
        first = len(opened) - 1
        while first > 0 and opened[first - 1]:
            first -= 1
        run = times[first:]
        outside = _uncovered(run, windows.get(site_id, []))
        if not outside:
            continue  # a booked visit
        open_s = (times[-1] - run[0]).total_seconds()
        if open_s < t.open_after:
            continue
        severity: Severity = "critical" if open_s >= t.critical_after else "warning"
        booked = [[iso_utc(a), iso_utc(b)] for a, b in windows.get(site_id, [])
                  if a < times[-1] + BUCKET and run[0] < b]
        out.append(Finding(
            kind="door_open", rule="door_open", site_id=site_id, severity=severity,
            window_start=run[0].to_pydatetime(), window_end=max(times[-1], run[0]).to_pydatetime(),
            summary=(f"site {site_id}: door open since {iso_utc(run[0])} outside any maintenance "
                     "window (possible intrusion)"),
            evidence={"open_since": iso_utc(run[0]), "last_open": iso_utc(times[-1]),
                      "open_s": open_s, "readings_open": len(run),
                      "readings_outside_maintenance": len(outside),
                      "first_outside": iso_utc(outside[0]), "maintenance_windows": booked}))
    return out


def _latest_run(g: pd.DataFrame, column: str, hit: Any, now_ts: pd.Timestamp
                ) -> pd.DataFrame | None:
    """The site's latest buckets in a row where ``hit(value)`` holds, ending at its latest
    bucket (None when the latest does not hold, or is stale)."""
    values = pd.to_numeric(g[column], errors="coerce") if column != "on_battery" else g[column]
    ok = [bool(hit(v)) if pd.notna(v) else False for v in values]
    times = list(g["time"])
    if not ok or not ok[-1] or times[-1] < now_ts - _STALE_BUCKETS * BUCKET:
        return None
    first = len(ok) - 1
    while first > 0 and ok[first - 1]:
        first -= 1
    return g.iloc[first:]


def _sustained(frames: Frames, now: datetime, column: str, level: float, sustained_s: float
               ) -> list[tuple[str, pd.DataFrame, float]]:
    """Per site: the latest run of 5-minute means at or above ``level`` lasting
    ``sustained_s`` (run, duration in seconds)."""
    env = frames.get("env_5m")
    if env is None or env.empty or column not in env.columns:
        return []
    now_ts = pd.Timestamp(now)
    out = []
    for site_id, g in env.sort_values(["site_id", "time"]).groupby("site_id", sort=False):
        g = g[pd.to_numeric(g[column], errors="coerce").notna()]
        if g.empty:
            continue
        run = _latest_run(g, column, lambda v: float(v) >= level, now_ts)
        if run is None:
            continue
        duration_s = (run["time"].iloc[-1] + BUCKET - run["time"].iloc[0]).total_seconds()
        if duration_s >= sustained_s:
            out.append((site_id, run, duration_s))
    return out


def _trend(run: pd.DataFrame, column: str) -> list[list[Any]]:
    return [[iso_utc(ts), round(float(v), 2)] for ts, v in
            zip(run["time"], pd.to_numeric(run[column], errors="coerce"), strict=True)
            if pd.notna(v)][-12:]


def _sustained_findings(kind: str, frames: Frames, now: datetime, column: str, limit: float,
                        critical: float, sustained_for: float, describe: str, unit: str,
                        digits: int, names: tuple[str, str, str, str]) -> list[Finding]:
    """One finding per site whose ``column`` stayed at or above ``limit`` for
    ``sustained_for``; critical once its peak reaches ``critical``.  ``names``: the
    evidence keys of the last value, the peak, the limit and the critical level."""
    out: list[Finding] = []
    for site_id, run, duration_s in _sustained(frames, now, column, limit, sustained_for):
        values = pd.to_numeric(run[column], errors="coerce")
        peak, last = float(values.max()), float(values.iloc[-1])
        out.append(Finding(
            kind=kind, rule=kind, site_id=site_id,
            severity="critical" if peak >= critical else "warning",
            window_start=run["time"].iloc[0].to_pydatetime(),
            window_end=(run["time"].iloc[-1] + BUCKET).to_pydatetime(),
            summary=(f"site {site_id}: {describe} {last:.{digits - 1}f}{unit}, at or above "
                     f"{limit:g}{unit} for {duration_s / 60:.0f} min"),
            evidence={names[0]: round(last, digits), names[1]: round(peak, digits),
                      names[2]: limit, names[3]: critical,
                      "duration_s": duration_s, "trend": _trend(run, column)}))
    return out


def evaluate_cabinet_overtemp(frames: Frames, facts: Facts, now: datetime, t: OvertempThresholds
                              ) -> list[Finding]:
    return _sustained_findings("cabinet_overtemp", frames, now, "cabinet_temp_c", t.overtemp_c,
                               t.critical_c, t.sustained_for, "cabinet at", " °C", 2,
                               ("cabinet_temp_c", "max_temp_c", "overtemp_c", "critical_c"))


def evaluate_tilt_exceeded(frames: Frames, facts: Facts, now: datetime, t: TiltThresholds
                           ) -> list[Finding]:
    return _sustained_findings("tilt_exceeded", frames, now, "tilt_deg", t.limit_deg,
                               t.critical_deg, t.sustained_for, "pole/tower tilted", "°", 3,
                               ("tilt_deg", "max_tilt_deg", "limit_deg", "critical_deg"))


def _on_battery(on_battery: Any, mains_ok: Any) -> bool:
    if on_battery is not None and not (isinstance(on_battery, float) and np.isnan(on_battery)):
        return bool(on_battery)
    return mains_ok is not None and not (isinstance(mains_ok, float) and np.isnan(mains_ok)) \
        and not bool(mains_ok)


def evaluate_battery_llvd_risk(frames: Frames, facts: Facts, now: datetime, t: LlvdThresholds
                               ) -> list[Finding]:
    env = frames.get("env_5m")
    out: list[Finding] = []
    if env is None or env.empty or "battery_voltage_v" not in env.columns:
        return out
    now_ts = pd.Timestamp(now)
    df = env.sort_values(["site_id", "time"]).copy()
    for column in ("on_battery", "mains_ok", "battery_soc_pct"):
        if column not in df.columns:
            df[column] = None
    df["draining"] = [_on_battery(a, b) and pd.notna(v) and float(v) <= t.warning_v
                      for a, b, v in zip(df["on_battery"], df["mains_ok"], df["battery_voltage_v"],
                                         strict=True)]
    for site_id, g in df.groupby("site_id", sort=False):
        g = g[pd.to_numeric(g["battery_voltage_v"], errors="coerce").notna()]
        if g.empty:
            continue
        run = _latest_run(g, "draining", bool, now_ts)
        if run is None:
            continue
        volts = float(pd.to_numeric(run["battery_voltage_v"]).iloc[-1])
        soc = pd.to_numeric(run["battery_soc_pct"], errors="coerce").dropna()
        out.append(Finding(
            kind="battery_llvd_risk", rule="battery_llvd_risk", site_id=site_id,
            severity="critical" if volts <= t.critical_v else "warning",
            window_start=run["time"].iloc[0].to_pydatetime(),
            window_end=(run["time"].iloc[-1] + BUCKET).to_pydatetime(),
            summary=(f"site {site_id}: on battery at {volts:.2f} V, {volts - t.llvd_v:.2f} V above "
                     "the low-voltage load disconnect: the site will drop"),
            evidence={"battery_voltage_v": round(volts, 3), "llvd_v": t.llvd_v,
                      "margin_v": round(volts - t.llvd_v, 3), "warning_v": t.warning_v,
                      "critical_v": t.critical_v,
                      "battery_soc_pct": float(soc.iloc[-1]) if len(soc) else None,
                      "trend": _trend(run, "battery_voltage_v")}))
    return out


DOOR_OPEN = Rule(
    name="door_open", kinds=("door_open",), thresholds=DoorThresholds,
    evaluate=evaluate_door_open, needs=("door_readings",),
    description="cabinet or shelter door open outside a maintenance window (intrusion)",
    one_pass=True,
)
CABINET_OVERTEMP = Rule(
    name="cabinet_overtemp", kinds=("cabinet_overtemp",), thresholds=OvertempThresholds,
    evaluate=evaluate_cabinet_overtemp, needs=("env_5m",),
    description="cabinet temperature sustained at or above the limit",
    one_pass=True,
)
TILT_EXCEEDED = Rule(
    name="tilt_exceeded", kinds=("tilt_exceeded",), thresholds=TiltThresholds,
    evaluate=evaluate_tilt_exceeded, needs=("env_5m",),
    description="pole or tower inclination sustained beyond the limit",
    one_pass=True,
)
BATTERY_LLVD_RISK = Rule(
    name="battery_llvd_risk", kinds=("battery_llvd_risk",), thresholds=LlvdThresholds,
    evaluate=evaluate_battery_llvd_risk, needs=("env_5m",),
    description="on battery near the low-voltage load disconnect",
    one_pass=True,
)
