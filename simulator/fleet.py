"""A synthetic, seeded fleet of 5G sites in one city: the registry the simulator publishes for.

``Fleet.build(sites, seed, now)`` is a pure function of its arguments: the same
seed and the same month give the same sites, cells, meters, reservations,
tariffs and bills, so the demo, the dashboards tests and the rules tests can
rely on which site has which anomaly (``Fleet.expected_anomalies``).

The city is modelled on Hangzhou: six counties (districts) as clusters
around the centre, four urban and two suburban.  Loads follow a daily traffic
curve whose integral is closed-form (``Fleet.energy_kwh``), so the bills for
the last full month agree with the energy the simulator publishes for it.

Registry anomalies exist in every scenario (they are facts, not events):
reservations exceeded, missing or far too large; overcharging and
over-billing bills; a meter swapped during the bill month.  Telemetry
anomalies (jammer, narrowband interferer, mains failure, silent site,
outage) depend on the scenario and are planned here, played by
``simulator.telemetry``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.reading import check_id
from core.states import ON_AIR_STATES, State

__all__ = [
    "CITY_CENTRE",
    "COUNTIES",
    "LOCAL_UTC_OFFSET_H",
    "NARROWBAND_PRBS",
    "SCENARIOS",
    "Anomaly",
    "Bill",
    "Cell",
    "Fleet",
    "Reservation",
    "ScenarioPlan",
    "Site",
    "Target",
    "Tariff",
]

CITY_CENTRE = (30.2741, 120.1551)
LOCAL_UTC_OFFSET_H = 8  # load curves and time-of-use hours follow local (China Standard) time
SCENARIOS = ("normal", "demo", "outage", "jammer")

# code, name, centre lat, centre lon, spread (degrees), region
COUNTIES = (
    ("XH", "Xihu", 30.2590, 120.1300, 0.012, "urban"),
    ("GS", "Gongshu", 30.3190, 120.1420, 0.010, "urban"),
    ("SC", "Shangcheng", 30.2500, 120.1700, 0.009, "urban"),
    ("BJ", "Binjiang", 30.2080, 120.2110, 0.010, "urban"),
    ("XS", "Xiaoshan", 30.1850, 120.2640, 0.025, "suburban"),
    ("YH", "Yuhang", 30.4210, 120.3010, 0.025, "suburban"),
)
_DISTRICTS = ("North", "South", "East", "West", "Central")
_OPERATORS = ("CMCC", "CUCC", "CTCC", "CBN")
STATES_BEFORE_AIR = (State.PLANNED, State.SITE_SECURED, State.APPROVED, State.UNDER_CONSTRUCTION,
                     State.POWER_CONNECTED)
# Share of the fleet in each state before on_air; the rest is on_air.
_STATE_SHARES = {"planned": 0.06, "site_secured": 0.04, "approved": 0.05,
                 "under_construction": 0.08, "power_connected": 0.05}
_KINDS = (("macro", 0.45), ("micro", 0.20), ("pole", 0.20), ("indoor", 0.15))
_LOAD_KW = {"macro": (7.0, 12.0), "micro": (3.5, 6.0), "pole": (3.0, 4.5), "indoor": (2.5, 4.0)}
_BANDS = {"macro": ("n78", "n41"), "micro": ("n78", "n41"), "pole": ("n78", "n28"),
          "indoor": ("n41", "B3")}
PRB_BANDS = {"n78": 273, "n41": 273}  # bands whose cells report per-PRB vectors (100 MHz, 30 kHz)
NARROWBAND_PRBS = 16  # width of the narrowband interferer's block
BATTERY_EMPTY_PCT = 3.0  # the low-voltage disconnect drops the load: the site goes dark
_DAILY_SWING = {"macro": 0.25, "micro": 0.30, "pole": 0.30, "indoor": 0.20}
_POWER_CONNECTED_LOAD = 0.3  # powered but not on air: rectifiers, cooling, transport only
_ENERGY_EPOCH = datetime(2024, 1, 1, tzinfo=UTC).timestamp()

# Time-of-use hours (local time, [a, b) ranges) covering the whole day.
TOU_HOURS = {"sharp": "19-21", "peak": "8-11;13-19", "flat": "7-8;11-13;21-23",
             "valley": "0-7;23-24"}
_TOU_PRICE = {"sharp": 1.26, "peak": 1.05, "flat": 0.68, "valley": 0.32}
# (region, class) -> None for time-of-use, else the flat price
_CATALOGUE = {("urban", "commercial"): None, ("urban", "industrial"): 0.71,
              ("suburban", "commercial"): 0.76, ("suburban", "industrial"): None}

SITE_COLUMNS = ("site_id", "name", "lat", "lon", "county", "kind", "supply", "region",
                "customer_class", "district", "owner", "operators", "planned_year", "state",
                "replaces_site_id", "state_since")
# Typical days a site has spent in its current (pre-on-air) state, all well under the
# lifecycle rule's limits, so the demo's only lifecycle findings are the planted ones.
_TYPICAL_DAYS_IN_STATE = {"planned": 120, "site_secured": 25, "approved": 12,
                          "under_construction": 40, "power_connected": 6, "relocating": 12,
                          "blocked": 10}
RESERVATION_COLUMNS = ("site_id", "declared_kw", "reserved_kw", "feeder", "substation", "status")
TARIFF_COLUMNS = ("region", "customer_class", "effective_from", "price_cny_per_kwh", "period",
                  "hours")
BILL_COLUMNS = ("bill_id", "site_id", "supplier_id", "period_start", "period_end", "billed_kwh",
                "amount_cny", "supplier_name", "meter_id")
TARGET_COLUMNS = ("year", "county", "target_sites")
FEEDER_COLUMNS = ("feeder", "substation", "rated_kw")
SUBSTATION_COLUMNS = ("substation", "rated_kw")
# One in this many direct sites was converted from transfer supply this year (转改直).
_CONVERTED_ONE_IN = 25


@dataclass(frozen=True, slots=True)
class Cell:
    """A radio cell of a site; ``prbs`` > 0 if it reports per-PRB vectors."""

    cell_id: str
    site_id: str
    band: str
    prbs: int
    floor_dbm: float  # the cell's quiet uplink noise floor


@dataclass(frozen=True, slots=True)
class Site:
    """One site of the registry with what the simulator needs to play its telemetry."""

    site_id: str
    name: str
    lat: float
    lon: float
    county: str
    district: str
    kind: str
    supply: str
    region: str
    customer_class: str
    owner: str
    operators: str
    planned_year: int
    state: str
    replaces_site_id: str | None
    meter_id: str
    base_kw: float  # mean load on air
    swing: float  # relative amplitude of the daily load curve
    energy0_kwh: float  # meter reading at the energy epoch
    meter_swap_ts: float | None  # epoch seconds when the meter was swapped (energy restarts at 0)
    cells: tuple[Cell, ...] = ()

    @property
    def publishes(self) -> bool:
        """Sites with power publish tower and power readings; those on air also interference."""
        return self.state in (State.POWER_CONNECTED, State.ON_AIR, State.RELOCATING)

    @property
    def on_air(self) -> bool:
        return self.state in ON_AIR_STATES

    @property
    def load_kw(self) -> float:
        return self.base_kw if self.on_air else self.base_kw * _POWER_CONNECTED_LOAD

    @property
    def peak_kw(self) -> float:
        return self.load_kw * (1 + self.swing)

    def row(self) -> dict[str, object]:
        return {"site_id": self.site_id, "name": self.name, "lat": f"{self.lat:.6f}",
                "lon": f"{self.lon:.6f}", "county": self.county, "kind": self.kind,
                "supply": self.supply, "region": self.region,
                "customer_class": self.customer_class, "district": self.district,
                "owner": self.owner, "operators": self.operators,
                "planned_year": self.planned_year, "state": self.state,
                "replaces_site_id": self.replaces_site_id or ""}


@dataclass(frozen=True, slots=True)
class Reservation:
    site_id: str
    declared_kw: float
    reserved_kw: float
    feeder: str
    substation: str
    status: str


@dataclass(frozen=True, slots=True)
class Tariff:
    region: str
    customer_class: str
    effective_from: datetime
    price_cny_per_kwh: float
    period: str = "flat"
    hours: str = ""


@dataclass(frozen=True, slots=True)
class Bill:
    """A landlord's bill for ``[period_start, period_end)`` (full UTC datetimes)."""

    bill_id: str
    site_id: str
    supplier_id: str
    supplier_name: str
    meter_id: str
    period_start: datetime
    period_end: datetime
    billed_kwh: float
    amount_cny: float
    metered_kwh: float  # what the simulated meter shows for the period (not in the CSV)


@dataclass(frozen=True, slots=True)
class Target:
    year: int
    county: str
    target_sites: int


@dataclass(frozen=True, slots=True)
class Anomaly:
    """What the rules should find: a flag kind and the sites, cells or bills concerned."""

    kind: str
    site_ids: tuple[str, ...]
    cell_ids: tuple[str, ...] = ()
    bill_ids: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ScenarioPlan:
    """Which sites and cells a scenario disturbs (the simulator decides when).

    ``jammer_rise_db`` maps cell ids to their wideband rise; ``narrowband``
    maps cell ids to the first PRB of their interfered block;
    ``mains_loss_pct_per_h`` maps sites losing mains to how fast their
    battery drains; ``silent`` sites stop publishing at the onset.
    """

    name: str
    jammer_rise_db: dict[str, float] = field(default_factory=dict)
    jammer_at: tuple[float, float] | None = None
    narrowband: dict[str, int] = field(default_factory=dict)
    mains_loss_pct_per_h: dict[str, float] = field(default_factory=dict)
    silent: frozenset[str] = frozenset()


def _month_start(dt: datetime, months_back: int = 0) -> datetime:
    index = dt.year * 12 + dt.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dy = (lat2 - lat1) * 111.2
    dx = (lon2 - lon1) * 111.2 * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


def _hour_ranges(hours: str) -> list[tuple[int, int]]:
    out = []
    for part in hours.split(";"):
        a, b = part.split("-")
        out.append((int(a), int(b)))
    return out


def tou_period(local_hour: int) -> str:
    """The time-of-use period of a local hour of the day."""
    for period, hours in TOU_HOURS.items():
        if any(a <= local_hour < b for a, b in _hour_ranges(hours)):
            return period
    raise AssertionError(f"hour {local_hour} not covered by TOU_HOURS")


# A reporting site's door opens only for a booked maintenance visit: VISIT_S long, every
# 4-6 days at a phase of its own (about as often as the honest noise of before, which
# opened doors at random half hours and so raised "intrusions" nothing had planted).
VISIT_S = 1800
VISIT_MARGIN_S = 600  # booked a little wider than the door is open


@functools.lru_cache(maxsize=200_000)
def visit_period(site_id: str, seed: int) -> tuple[float, float]:
    """(period, phase) in seconds of a site's visits: they start at ``phase + k * period``."""
    h = int.from_bytes(hashlib.sha256(f"visit:{seed}:{site_id}".encode()).digest()[:8], "big")
    period = 86400.0 * (4 + (h % 1000) / 500.0)
    return period, float((h >> 10) % int(period))


def visiting(site_id: str, seed: int, t: float) -> bool:
    """Whether a site's door is open at ``t`` (epoch seconds): inside one of its visits."""
    period, phase = visit_period(site_id, seed)
    return (t - phase) % period < VISIT_S


def daily_phase(ts: float, peak_local_hour: float) -> float:
    """Angle of the daily cycle at ``ts``: 0 at ``peak_local_hour`` (local time)."""
    return 2 * math.pi * (((ts / 3600.0) + LOCAL_UTC_OFFSET_H - peak_local_hour) / 24.0)


LOAD_PEAK_LOCAL_HOUR = 20.0
_TOU_OF_HOUR = tuple(tou_period(h) for h in range(24))


@dataclass(frozen=True)
class Fleet:
    """Sites, reservations, tariffs, bills and targets of one seeded city."""

    seed: int
    now: datetime
    sites: tuple[Site, ...]
    reservations: tuple[Reservation, ...]
    tariffs: tuple[Tariff, ...]
    bills: tuple[Bill, ...]
    targets: tuple[Target, ...]
    bill_start: datetime
    bill_end: datetime
    over_reserved: tuple[str, ...] = ()
    reservation_missing: tuple[str, ...] = ()
    reservation_underused: tuple[str, ...] = ()

    # -- energy ---------------------------------------------------------------------------

    @staticmethod
    def power_kw(site: Site, ts: float) -> float:
        """The site's smooth load at ``ts`` (the meter's power without noise)."""
        return site.load_kw * (1 + site.swing * math.cos(daily_phase(ts, LOAD_PEAK_LOCAL_HOUR)))

    @staticmethod
    def _energy_since_epoch(site: Site, ts: float) -> float:
        w = 2 * math.pi / 86400.0
        integral_s = (ts - _ENERGY_EPOCH) + site.swing / w * (
            math.sin(daily_phase(ts, LOAD_PEAK_LOCAL_HOUR))
            - math.sin(daily_phase(_ENERGY_EPOCH, LOAD_PEAK_LOCAL_HOUR)))
        return site.load_kw * integral_s / 3600.0

    @classmethod
    def energy_kwh(cls, site: Site, ts: float) -> float:
        """The cumulative meter reading at ``ts`` (restarts at 0 after a meter swap)."""
        if site.meter_swap_ts is not None and ts >= site.meter_swap_ts:
            return cls._energy_since_epoch(site, ts) - cls._energy_since_epoch(site, site.meter_swap_ts)
        return site.energy0_kwh + cls._energy_since_epoch(site, ts)

    @classmethod
    def consumed_kwh(cls, site: Site, start: float, end: float) -> float:
        """Energy the site drew over ``[start, end)``, whatever the meter did."""
        return cls._energy_since_epoch(site, end) - cls._energy_since_epoch(site, start)

    # -- lookups --------------------------------------------------------------------------

    def site(self, site_id: str) -> Site:
        for s in self.sites:
            if s.site_id == site_id:
                return s
        raise KeyError(site_id)

    @property
    def publishing(self) -> tuple[Site, ...]:
        return tuple(s for s in self.sites if s.publishes)

    @property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(c for s in self.sites if s.on_air for c in s.cells)

    # -- scenarios ------------------------------------------------------------------------

    def plan(self, scenario: str) -> ScenarioPlan:
        """The sites and cells ``scenario`` disturbs; deterministic for the fleet."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
        if scenario == "normal":
            return ScenarioPlan(name=scenario)
        rng = random.Random(f"{self.seed}:{scenario}")
        on_air = [s for s in self.sites if s.on_air and any(c.prbs for c in s.cells)]
        jam: dict[str, float] = {}
        jammer_at = None
        used: set[str] = set()
        if scenario in ("demo", "jammer") and on_air:
            # The jammer sits beside the site with most on-air neighbours within 1.5 km.
            def neighbours(s: Site) -> int:
                return sum(1 for o in on_air if _km(s.lat, s.lon, o.lat, o.lon) < 1.5)

            centre = max(on_air, key=lambda s: (neighbours(s), s.site_id))
            jammer_at = (round(centre.lat + 0.002, 6), round(centre.lon - 0.002, 6))
            ranked = sorted(on_air, key=lambda s: _km(*jammer_at, s.lat, s.lon))
            hit = [s for s in ranked if _km(*jammer_at, s.lat, s.lon) <= 1.5][:6] or ranked[:3]
            if len(hit) < 3:
                hit = ranked[:3]
            for s in hit:
                d = _km(*jammer_at, s.lat, s.lon)
                rise = round(max(10.0, 20.0 - 5.0 * d), 1)
                for c in s.cells:
                    jam[c.cell_id] = rise
                used.add(s.site_id)
        narrow: dict[str, int] = {}
        mains: dict[str, float] = {}
        silent: set[str] = set()
        if scenario == "demo":
            others = [s for s in on_air if s.site_id not in used]
            far = [s for s in others if jammer_at is None or _km(*jammer_at, s.lat, s.lon) > 5]
            pick = (far or others)
            if pick:
                s = pick[rng.randrange(len(pick))]
                cell = next(c for c in s.cells if c.prbs)
                narrow[cell.cell_id] = rng.randrange(20, cell.prbs - 20 - NARROWBAND_PRBS)
                used.add(s.site_id)
            plain = [s for s in self.sites if s.on_air and s.site_id not in used
                     and s.site_id not in self.over_reserved and s.supply == "direct"]
            plain = plain or [s for s in self.sites if s.on_air and s.site_id not in used]
            if plain:
                s = plain[rng.randrange(len(plain))]
                mains[s.site_id] = 12.0
                used.add(s.site_id)
            plain = [s for s in plain if s.site_id not in used]
            if plain:
                s = plain[rng.randrange(len(plain))]
                silent.add(s.site_id)
        if scenario == "outage":
            by_substation: dict[str, list[str]] = {}
            publishing = {s.site_id for s in self.publishing}
            for r in self.reservations:
                if r.site_id in publishing:
                    by_substation.setdefault(r.substation, []).append(r.site_id)
            if by_substation:
                # A substation fault: every powered site it feeds falls back to batteries,
                # and the ones with weak batteries go dark once they are empty.
                _sub, ids = max(sorted(by_substation.items()), key=lambda kv: len(kv[1]))
                for site_id in ids:
                    weak = rng.random() < 0.5
                    mains[site_id] = round(rng.uniform(22.0, 40.0) if weak else rng.uniform(8.0, 14.0), 1)
        return ScenarioPlan(name=scenario, jammer_rise_db=jam, jammer_at=jammer_at,
                            narrowband=narrow, mains_loss_pct_per_h=mains,
                            silent=frozenset(silent))

    def expected_anomalies(self, scenario: str = "demo",
                           window_s: float = 6 * 3600.0) -> dict[str, Anomaly]:
        """What a scenario plants, by name: the flag kind and the ids the rules should name.

        Registry anomalies (reservations, bills, meter swaps) are part of every
        scenario; telemetry anomalies start in the last part of the simulated
        run (see ``simulator.telemetry.onset``), which lasts ``window_s``
        (6 h unless the run is shorter than 12 h).
        """
        out: dict[str, Anomaly] = {}
        plan = self.plan(scenario)
        site_of = {c.cell_id: s.site_id for s in self.sites for c in s.cells}
        if plan.jammer_rise_db and plan.jammer_at is not None:
            cells = tuple(sorted(plan.jammer_rise_db))
            out["interference_wideband"] = Anomaly(
                "interference", tuple(sorted({site_of[c] for c in cells})), cells,
                detail=f"wideband jammer near {plan.jammer_at[0]:.4f},{plan.jammer_at[1]:.4f}")
        if plan.narrowband:
            cells = tuple(sorted(plan.narrowband))
            out["interference_narrowband"] = Anomaly(
                "interference", tuple(sorted({site_of[c] for c in cells})), cells,
                detail="narrowband interferer on PRBs "
                + ", ".join(f"{p}-{p + NARROWBAND_PRBS - 1}" for p in plan.narrowband.values()))
        if plan.mains_loss_pct_per_h:
            out["mains_failure"] = Anomaly("mains_failure", tuple(sorted(plan.mains_loss_pct_per_h)),
                                           detail="mains lost, running on batteries")
            if scenario == "outage":
                # Weak batteries are empty well before the end of the outage: those sites go dark.
                dark = tuple(sorted(s for s, rate in plan.mains_loss_pct_per_h.items()
                                    if (100.0 - BATTERY_EMPTY_PCT) / rate <= window_s / 3600 - 0.5))
                if dark:
                    out["site_offline"] = Anomaly("site_offline", dark, detail="battery exhausted")
        if plan.silent:
            out["site_offline"] = Anomaly("site_offline", tuple(sorted(plan.silent)),
                                          detail="stops publishing at the onset")
        if self.over_reserved:
            out["reservation_exceeded"] = Anomaly("reservation_exceeded", self.over_reserved)
        if self.reservation_missing:
            out["reservation_missing"] = Anomaly("reservation_missing", self.reservation_missing)
        if self.reservation_underused:
            out["reservation_underused"] = Anomaly("reservation_underused",
                                                   self.reservation_underused)
        for kind in ("overcharging", "overbilling"):
            bills = [b for b in self.bills if b.bill_id.endswith(_BILL_SUFFIX[kind])]
            if bills:
                out[kind] = Anomaly(kind, tuple(sorted({b.site_id for b in bills})),
                                    bill_ids=tuple(sorted(b.bill_id for b in bills)))
        swapped = tuple(sorted(s.site_id for s in self.sites if s.meter_swap_ts is not None))
        if swapped:
            out["meter_swap"] = Anomaly("none", swapped,
                                        detail="energy_kwh restarts at 0 mid bill month; not a flag")
        return out

    # -- CSV ------------------------------------------------------------------------------

    def state_since(self, site: Site) -> datetime:
        """When the site reached its current state (the optional ``state_since`` column).

        Sites on air got there in their planned year, at least a week before the bill
        month (so the month's bills and telemetry see them on air); other states are
        recent.  Derived from the site id, not the fleet's random stream, so adding it
        changed no other figure of the fleet.
        """
        h = int.from_bytes(hashlib.blake2b(site.site_id.encode(), digest_size=4).digest(), "big")
        latest = self.bill_start - timedelta(days=7)
        if site.state == State.ON_AIR:
            first = datetime(min(site.planned_year, latest.year), 1, 1, tzinfo=UTC)
            span_days = max(1, min((latest - first).days, 365))
            return min(latest, first + timedelta(days=h % span_days, hours=h % 24))
        days = _TYPICAL_DAYS_IN_STATE.get(site.state, 10)
        return self.now - timedelta(days=1 + h % days, hours=h % 24)

    def conversions(self) -> dict[str, str]:
        """site_id -> local date (``YYYY-MM-DD``) when the site went from transfer to direct supply.

        A few direct sites on air, converted earlier this year (local dates, before today);
        derived from the site ids, not the fleet's random stream, so no other figure changes.
        """
        local_now = self.now + timedelta(hours=LOCAL_UTC_OFFSET_H)
        days = max(local_now.timetuple().tm_yday - 1, 1)

        def h(site_id: str) -> int:
            return int.from_bytes(hashlib.blake2b(f"conv:{site_id}".encode(), digest_size=4).digest(),
                                  "big")
        direct = sorted((s.site_id for s in self.sites if s.supply == "direct" and s.state == State.ON_AIR),
                        key=h)
        out = {}
        for sid in direct[:max(1, len(direct) // _CONVERTED_ONE_IN)] if direct else []:
            day = datetime(local_now.year, 1, 1, tzinfo=local_now.tzinfo) + timedelta(days=h(sid) % days)
            if day.date() < local_now.date():
                out[sid] = day.strftime("%Y-%m-%d")
        return out

    def ratings(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """Feeder and substation ratings: about 1.2x the capacity reserved on them, in 50 and
        100 kW steps (so the headroom against the coincident peak is comfortable)."""
        feeders: dict[str, tuple[str, float]] = {}
        for r in self.reservations:
            sub, kw = feeders.get(r.feeder, (r.substation, 0.0))
            feeders[r.feeder] = (sub, kw + r.reserved_kw)
        frows: list[dict[str, Any]] = [{"feeder": f, "substation": sub, "rated_kw": 50 * math.ceil(kw * 1.2 / 50)}
                 for f, (sub, kw) in sorted(feeders.items())]
        subs: dict[str, float] = {}
        for row in frows:
            subs[str(row["substation"])] = subs.get(str(row["substation"]), 0.0) + float(row["rated_kw"])
        srows = [{"substation": sub, "rated_kw": 100 * math.ceil(kw * 0.9 / 100)}
                 for sub, kw in sorted(subs.items())]
        return frows, srows

    def visits(self, start: datetime, end: datetime) -> list[dict[str, str]]:
        """``maintenance.csv`` rows: every booked visit (``visit_span``) of the sites that
        report, starting in ``[start, end)``."""
        out = []
        a, b = start.timestamp(), end.timestamp()
        for s in self.sites:
            if not s.publishes:
                continue
            period, phase = visit_period(s.site_id, self.seed)
            k = math.ceil((a - phase) / period)
            while (t0 := phase + k * period) < b:
                out.append({"site_id": s.site_id, "start": _iso(datetime.fromtimestamp(t0 - VISIT_MARGIN_S, UTC)),
                            "end": _iso(datetime.fromtimestamp(t0 + VISIT_S + VISIT_MARGIN_S, UTC)),
                            "ticket": f"SIM-{s.site_id}-{k}"})
                k += 1
        return out

    def write_csvs(self, directory: str | Path) -> dict[str, Path]:
        """Write ``sites.csv``, ``reservations.csv``, ``tariffs.csv``, ``bills.csv``, ``targets.csv``,
        ``feeders.csv``, ``substations.csv`` and ``conversions.csv`` (a sites file of supply
        changes with ``effective_from``: imported after ``sites.csv``, whose rows give those
        sites' earlier transfer supply)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        iso = _iso
        converted = self.conversions()
        feeders, substations = self.ratings()
        tables: dict[str, tuple[Any, list[dict[str, Any]]]] = {
            "sites": (SITE_COLUMNS, [{**s.row(), "state_since": iso(self.state_since(s)),
                                      **({"supply": "transfer"} if s.site_id in converted else {})}
                                     for s in self.sites]),
            "conversions": ((*SITE_COLUMNS[:-1], "effective_from"), [
                {**s.row(), "effective_from": converted[s.site_id]}
                for s in self.sites if s.site_id in converted]),
            "feeders": (FEEDER_COLUMNS, feeders),
            "substations": (SUBSTATION_COLUMNS, substations),
            "reservations": (RESERVATION_COLUMNS, [
                {"site_id": r.site_id, "declared_kw": r.declared_kw, "reserved_kw": r.reserved_kw,
                 "feeder": r.feeder, "substation": r.substation, "status": r.status}
                for r in self.reservations]),
            "tariffs": (TARIFF_COLUMNS, [
                {"region": t.region, "customer_class": t.customer_class,
                 "effective_from": iso(t.effective_from), "price_cny_per_kwh": t.price_cny_per_kwh,
                 "period": t.period, "hours": t.hours} for t in self.tariffs]),
            "bills": (BILL_COLUMNS, [
                {"bill_id": b.bill_id, "site_id": b.site_id, "supplier_id": b.supplier_id,
                 "period_start": iso(b.period_start), "period_end": iso(b.period_end),
                 "billed_kwh": b.billed_kwh, "amount_cny": b.amount_cny,
                 "supplier_name": b.supplier_name, "meter_id": b.meter_id} for b in self.bills]),
            "targets": (TARGET_COLUMNS, [
                {"year": t.year, "county": t.county, "target_sites": t.target_sites}
                for t in self.targets]),
            # The visits from the week before the bill month to two days from now: every
            # door the telemetry opens in that time is a booked visit, not an intrusion.
            "maintenance": (("site_id", "start", "end", "ticket"),
                            self.visits(self.bill_start - timedelta(days=7), self.now + timedelta(days=2))),
        }
        paths = {}
        for name, (columns, rows) in tables.items():
            path = d / f"{name}.csv"
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
            paths[name] = path
        return paths

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, sites: int, seed: int = 1, now: datetime | None = None) -> Fleet:
        """A city of ``sites`` sites (replacement sites included); same inputs, same fleet."""
        if sites < 1:
            raise ValueError("a fleet needs at least one site")
        now = (now or datetime.now(UTC)).astimezone(UTC)
        return _Builder(sites, seed, now).build()


_BILL_SUFFIX = {"overcharging": "-X", "overbilling": "-B", "fair": ""}


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Builder:
    """Draws a fleet from one ``random.Random``; the order of draws is part of the contract."""

    def __init__(self, n: int, seed: int, now: datetime) -> None:
        self.n = n
        self.seed = seed
        self.now = now
        self.rng = random.Random(seed)
        self.bill_start = _month_start(now, 1)
        self.bill_end = _month_start(now, 0)

    def build(self) -> Fleet:
        rng = self.rng
        relocations = max(1, round(self.n * 0.03)) if self.n >= 12 else 0
        base_n = self.n - relocations
        states = self._states(base_n, relocations)
        counters = {c[0]: 0 for c in COUNTIES}
        sites: list[Site] = []
        for i in range(base_n):
            county = COUNTIES[i % len(COUNTIES)] if i < len(COUNTIES) else rng.choices(
                COUNTIES, weights=(18, 16, 14, 14, 20, 18))[0]
            lat = rng.gauss(county[2], county[4])
            lon = rng.gauss(county[3], county[4] * 1.15)
            sites.append(self._site(county, counters, lat, lon, states[i], None))
        for old in [s for s in sites if s.state == State.RELOCATING]:
            county = next(c for c in COUNTIES if c[1] == old.county)
            lat = old.lat + rng.uniform(-0.003, 0.003)
            lon = old.lon + rng.uniform(-0.003, 0.003)
            state = State.ON_AIR if len([s for s in sites if s.replaces_site_id]) % 2 == 0 else State.UNDER_CONSTRUCTION
            sites.append(self._site(county, counters, lat, lon, state, old.site_id))
        sites = self._meter_swaps(sites)
        reservations, over, missing, underused = self._reservations(sites)
        tariffs = self._tariffs()
        bills = self._bills(sites, tariffs)
        targets = self._targets(sites)
        return Fleet(seed=self.seed, now=self.now, sites=tuple(sites),
                     reservations=tuple(reservations), tariffs=tuple(tariffs), bills=tuple(bills),
                     targets=tuple(targets), bill_start=self.bill_start, bill_end=self.bill_end,
                     over_reserved=tuple(sorted(over)), reservation_missing=tuple(sorted(missing)),
                     reservation_underused=tuple(sorted(underused)))

    def _states(self, base_n: int, relocations: int) -> list[str]:
        states: list[str] = []
        for state, share in _STATE_SHARES.items():
            states += [state] * int(base_n * share)
        states += [State.RELOCATING] * relocations
        states += [State.ON_AIR] * (base_n - len(states))
        self.rng.shuffle(states)
        return states[:base_n]

    def _site(self, county: tuple, counters: dict[str, int], lat: float, lon: float, state: str,
              replaces: str | None) -> Site:
        rng = self.rng
        code, name, *_rest, region = county
        counters[code] += 1
        site_id = check_id(f"{code}{counters[code]:04d}", "site_id")
        kind = rng.choices([k for k, _ in _KINDS], weights=[w for _, w in _KINDS])[0]
        supply = "transfer" if rng.random() < 0.4 else "direct"
        customer_class = "commercial" if rng.random() < 0.7 else "industrial"
        lo, hi = _LOAD_KW[kind]
        base_kw = round(rng.uniform(lo, hi), 2)
        band = rng.choice(_BANDS[kind])
        ncells = 3 if kind == "macro" else 1
        cells = tuple(Cell(cell_id=check_id(f"{site_id}-{k + 1}", "cell_id"), site_id=site_id,
                           band=band, prbs=PRB_BANDS.get(band, 0),
                           floor_dbm=round(rng.uniform(-118.0, -114.5), 2))
                      for k in range(ncells))
        operators = ";".join(sorted(rng.sample(_OPERATORS, rng.choice((1, 1, 2, 3)))))
        before = state in (State.PLANNED, State.SITE_SECURED, State.APPROVED)
        return Site(
            site_id=site_id,
            name=f"{name} {rng.choice(_DISTRICTS)} {kind} {counters[code]}",
            lat=round(lat, 6), lon=round(lon, 6), county=name,
            district=f"{name}-{rng.choice(_DISTRICTS)}", kind=kind, supply=supply,
            region=region, customer_class=customer_class, owner="China Tower",
            operators=operators,
            planned_year=self.now.year + (rng.choice((0, 1)) if before else -rng.choice((0, 1, 2))),
            state=state, replaces_site_id=replaces,
            meter_id=check_id(f"M-{site_id}", "meter_id"), base_kw=base_kw,
            swing=_DAILY_SWING[kind], energy0_kwh=round(rng.uniform(2000.0, 90000.0), 1),
            meter_swap_ts=None, cells=cells,
        )

    def _meter_swaps(self, sites: list[Site]) -> list[Site]:
        candidates = [i for i, s in enumerate(sites) if s.publishes and s.supply == "transfer"]
        count = min(len(candidates), max(1, len(sites) // 60)) if len(sites) >= 10 else 0
        month_s = (self.bill_end - self.bill_start).total_seconds()
        for i in self.rng.sample(candidates, count):
            at = self.bill_start.timestamp() + month_s * self.rng.uniform(0.3, 0.7)
            s = sites[i]
            sites[i] = Site(**{**{f: getattr(s, f) for f in Site.__slots__},
                               "meter_swap_ts": float(int(at) // 60 * 60)})
        return sites

    def _reservations(self, sites: list[Site]):
        rng = self.rng
        substations: dict[str, list[tuple[str, float, float]]] = {}
        for code, _name, lat, lon, spread, _region in COUNTIES:
            substations[code] = [(f"SS-{code}-{k}", lat + spread * dy, lon + spread * dx)
                                 for k, (dy, dx) in enumerate(((0.6, -0.6), (-0.6, 0.6)), start=1)]
        code_of = {c[1]: c[0] for c in COUNTIES}
        reservations, over, missing, underused = [], [], [], []
        building = [s.site_id for s in sites if s.state == State.UNDER_CONSTRUCTION]
        n_missing = min(len(building), max(1, len(building) // 4)) if building else 0
        missing_ids = set(rng.sample(building, n_missing))
        air = [s.site_id for s in sites if s.on_air and s.state == State.ON_AIR]
        n_over = min(len(air), max(1, len(sites) // 40)) if len(air) >= 4 else 0
        over_ids = set(rng.sample(air, n_over))
        rest = [s for s in air if s not in over_ids]
        n_under = min(len(rest), max(1, len(sites) // 50)) if len(rest) >= 4 else 0
        under_ids = set(rng.sample(rest, n_under))
        for s in sites:
            if s.state in (State.PLANNED, State.SITE_SECURED) or s.site_id in missing_ids:
                if s.site_id in missing_ids:
                    missing.append(s.site_id)
                continue
            status = {"approved": "requested", "under_construction": "approved"}.get(s.state, "energized")
            peak = s.base_kw * (1 + s.swing)
            declared = round(peak * rng.uniform(1.15, 1.4), 1)
            reserved = round(declared * rng.uniform(1.0, 1.1), 1)
            if s.site_id in over_ids:
                reserved = round(peak * 0.7, 1)
                declared = reserved
                over.append(s.site_id)
            elif s.site_id in under_ids:
                reserved = round(peak * 4.0, 1)
                declared = round(peak * 3.5, 1)
                underused.append(s.site_id)
            subs = substations[code_of[s.county]]
            sub = min(subs, key=lambda x: _km(s.lat, s.lon, x[1], x[2]))
            feeder = f"FD-{sub[0][3:]}-{rng.randint(1, 3)}"
            reservations.append(Reservation(s.site_id, declared, reserved, feeder, sub[0], status))
        return reservations, over, missing, underused

    def _tariffs(self) -> list[Tariff]:
        old = _month_start(self.bill_start, 15)
        current = _month_start(self.bill_start, 3)
        future = self.bill_end  # a price change after the bill month: must not be applied to it
        out = []
        for (region, cls_), flat in _CATALOGUE.items():
            for when, factor in ((old, 0.94), (current, 1.0), (future, 1.08)):
                if flat is not None:
                    out.append(Tariff(region, cls_, when, round(flat * factor, 4), "flat", ""))
                else:
                    adj = 1.0 if region == "urban" else 0.97
                    for period, price in _TOU_PRICE.items():
                        out.append(Tariff(region, cls_, when, round(price * factor * adj, 4),
                                          period, TOU_HOURS[period]))
        return out

    def _caps(self, site: Site, tariffs: list[Tariff]) -> tuple[float, float]:
        """Regulated mean price over the bill month for the site's own load shape.

        Time-of-use hours are read once as local time and once as UTC; the
        lower and the higher cap are returned, so a fair bill is fair and an
        overcharging bill overcharges under either reading of the hours.
        """
        rows = [t for t in tariffs if t.region == site.region and t.customer_class == site.customer_class
                and t.effective_from <= self.bill_start]
        latest = max(t.effective_from for t in rows)
        price = {t.period: t.price_cny_per_kwh for t in rows if t.effective_from == latest}
        if len(price) == 1:
            flat = next(iter(price.values()))
            return flat, flat
        hourly = [price[_TOU_OF_HOUR[h]] for h in range(24)]
        caps = []
        for shift in (LOCAL_UTC_OFFSET_H, 0):
            cost = kwh = 0.0
            t = self.bill_start.timestamp()
            end = self.bill_end.timestamp()
            while t < end:
                e = Fleet.consumed_kwh(site, t, t + 3600)
                cost += e * hourly[int((t / 3600 + shift) % 24)]
                kwh += e
                t += 3600
            caps.append(cost / kwh)
        return min(caps), max(caps)

    def _bills(self, sites: list[Site], tariffs: list[Tariff]) -> list[Bill]:
        rng = self.rng
        billed_sites = [s for s in sites if s.supply == "transfer" and s.publishes]
        n_suppliers = max(2, len(billed_sites) // 6)
        suppliers = [(f"SUP{k + 1:03d}", f"Landlord {k + 1} Property Management")
                     for k in range(n_suppliers)]
        kinds = ["fair"] * len(billed_sites)
        if len(billed_sites) >= 3:
            n_x = max(1, round(len(billed_sites) * 0.12))
            n_b = max(1, round(len(billed_sites) * 0.08))
            picks = rng.sample(range(len(billed_sites)), min(len(billed_sites), n_x + n_b))
            for j, idx in enumerate(picks):
                kinds[idx] = "overcharging" if j < n_x else "overbilling"
        month = self.bill_start.strftime("%Y%m")
        start, end = self.bill_start.timestamp(), self.bill_end.timestamp()
        out = []
        for s, kind in zip(billed_sites, kinds, strict=True):
            supplier_id, supplier_name = suppliers[rng.randrange(n_suppliers)]
            metered = Fleet.consumed_kwh(s, start, end)
            cap_lo, cap_hi = self._caps(s, tariffs)
            # Landlords read their own sub-meters: honest bills sit a little under our meter.
            billed = metered * rng.uniform(0.97, 0.995)
            unit = cap_lo * rng.uniform(0.93, 0.995)
            if kind == "overbilling":
                billed = metered * rng.uniform(1.15, 1.35)
            elif kind == "overcharging":
                unit = cap_hi * rng.uniform(1.2, 1.45)
            billed = round(billed, 1)
            out.append(Bill(
                bill_id=check_id(f"B{month}-{s.site_id}{_BILL_SUFFIX[kind]}", "bill_id"),
                site_id=s.site_id, supplier_id=supplier_id, supplier_name=supplier_name,
                meter_id=s.meter_id, period_start=self.bill_start, period_end=self.bill_end,
                billed_kwh=billed, amount_cny=round(billed * unit, 2), metered_kwh=round(metered, 3)))
        return out

    def _targets(self, sites: list[Site]) -> list[Target]:
        out = []
        for year in (self.now.year, self.now.year + 1):
            for _code, name, *_ in COUNTIES:
                have = sum(1 for s in sites if s.county == name and s.planned_year <= year)
                out.append(Target(year, name, max(1, math.ceil(have * 1.15))))
        return out


def csv_rows(path: str | Path) -> list[dict[str, str]]:
    """Read back one of the CSV files (for tests and tools)."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))

