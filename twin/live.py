"""Live state: the latest telemetry per site, aggregated in memory and flushed in one transaction.

The collector digests each reading as it arrives (``LiveState.digest``: a flat
tuple) and calls ``LiveState.observe_digests`` from its writer thread after each
durable batch; that call only updates small per-site records in a dict (O(1)
per reading, no I/O).  ``flush(store)`` swaps the pending records out
and upserts them, with the meters and cells seen, in ONE transaction — never
a database write per message.  A failed flush puts its records back, so the
next one catches up.  Sites seen in telemetry but not in the registry are kept
(``registered = false``) and listed by ``sitetwin sites list --unregistered``.

``online``: a site is online if seen within ``reporting_period * online_periods``.
``offline``: a site that should be on air (``ON_AIR_STATES``: ``on_air``, and
``relocating``, which stays on air until its replacement is) and is not online.
A site never built (``planned`` ... ``power_connected``) or taken down is
neither: its silence is expected, so it is not counted offline nor drawn red
(issue 14).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from core.states import ON_AIR_STATES
from twin.models import Cell, LiveSiteState, Meter, Site
from twin.store import Store, upsert_insert

if TYPE_CHECKING:
    from connectors.reading import Reading

_R = TypeVar("_R", "_SiteRecord", "_Seen")

# What live state keeps of a reading (``LiveState.digest``): stream, site, time and four values.
Digest = tuple[Any, ...]

__all__ = ["DEFAULT_ONLINE_WINDOW_S", "ON_AIR_STATES", "LiveState", "is_offline", "is_online"]

log = logging.getLogger(__name__)

DEFAULT_ONLINE_WINDOW_S = 180.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_online(last_seen: datetime | None, now: datetime, window_s: float) -> bool:
    """Seen within ``window_s`` seconds before ``now`` (a reading from the future counts)."""
    return last_seen is not None and (now - last_seen).total_seconds() <= window_s


def is_offline(state: str | None, last_seen: datetime | None, now: datetime, window_s: float) -> bool:
    """Expected on air (``ON_AIR_STATES``) and not seen within ``window_s``: a never-built
    or decommissioned site is never offline, however silent."""
    return state in ON_AIR_STATES and not is_online(last_seen, now, window_s)


class _SiteRecord:
    """The latest values of one site since the last flush (fields ``None`` = not reported)."""

    __slots__ = (
        "battery_soc_pct",
        "cabinet_temp_c",
        "energy_kwh",
        "last_seen",
        "mains_ok",
        "on_battery",
        "power_kw",
        "power_ts",
        "site_id",
        "tower_ts",
    )

    def __init__(self, site_id: str, ts: datetime) -> None:
        self.site_id = site_id
        self.last_seen = ts
        self.tower_ts = self.power_ts = _EPOCH
        self.mains_ok = self.on_battery = None
        self.battery_soc_pct = self.cabinet_temp_c = self.power_kw = self.energy_kwh = None

    def merge_older(self, older: _SiteRecord) -> None:
        """Fold in a record observed before this one (after a failed flush)."""
        if older.last_seen > self.last_seen:
            self.last_seen = older.last_seen
        if older.tower_ts > self.tower_ts:
            self.tower_ts, self.mains_ok, self.on_battery = (older.tower_ts, older.mains_ok,
                                                            older.on_battery)
            self.battery_soc_pct, self.cabinet_temp_c = older.battery_soc_pct, older.cabinet_temp_c
        if older.power_ts > self.power_ts:
            self.power_ts, self.power_kw, self.energy_kwh = (older.power_ts, older.power_kw,
                                                            older.energy_kwh)

    def row(self) -> dict[str, Any]:
        return {"site_id": self.site_id, "last_seen": self.last_seen, "mains_ok": self.mains_ok,
                "on_battery": self.on_battery, "battery_soc_pct": self.battery_soc_pct,
                "cabinet_temp_c": self.cabinet_temp_c, "power_kw": self.power_kw,
                "energy_kwh": self.energy_kwh, "registered": False}


@dataclass(slots=True)
class _Seen:
    site_id: str
    first_seen: datetime
    last_seen: datetime
    band: str | None = None

    def merge_older(self, older: _Seen) -> None:
        self.first_seen = min(self.first_seen, older.first_seen)
        if older.last_seen > self.last_seen:
            self.last_seen, self.site_id, self.band = older.last_seen, older.site_id, older.band


class LiveState:
    """Thread-safe in-memory aggregate of the latest reading per site, flushed by ``flush``."""

    def __init__(self, *, online_window_s: float = DEFAULT_ONLINE_WINDOW_S) -> None:
        """``online_window_s``: ``[twin] reporting_period * online_periods`` (``TwinSettings.online_window_s``)."""
        self.online_window_s = online_window_s
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._sites: dict[str, _SiteRecord] = {}
        self._meters: dict[str, _Seen] = {}
        self._cells: dict[str, _Seen] = {}
        self.observed = 0
        self.flushed_sites = 0

    @staticmethod
    def digest(r: Any) -> Digest:
        """What live state keeps of a reading (any ``connectors.reading.Reading``): a flat tuple.

        The collector digests each reading as it arrives and holds the digests until its
        batch is durable.  Holding the readings themselves (three garbage-collected objects
        each) that long cost the collector more in collections than the live state's own work.
        """
        stream = r.stream
        if stream == "tower":
            on_battery = r.on_battery if r.on_battery is not None else not r.mains_ok
            return (stream, r.site_id, r.ts, r.mains_ok, on_battery, r.battery_soc_pct, r.cabinet_temp_c)
        if stream == "power":
            return (stream, r.site_id, r.ts, r.meter_id, r.power_kw, r.energy_kwh, None)
        if stream == "interference":
            return (stream, r.site_id, r.ts, r.cell_id, r.band, None, None)
        return (stream, r.site_id, r.ts, None, None, None, None)

    def observe_batch(self, readings: Iterable[Reading]) -> None:
        """Remember the newest values of each site, meter and cell in ``readings``."""
        self.observe_digests([self.digest(r) for r in readings])

    # Hot path: runs in the collector's writer thread at full ingest rate.
    def observe_digests(self, digests: Iterable[Digest]) -> None:
        """``observe_batch`` for readings already digested (``digest``)."""
        n = 0
        with self._lock:
            sites, meters, cells = self._sites, self._meters, self._cells
            for stream, site_id, ts, a, b, c, d in digests:
                n += 1
                rec = sites.get(site_id)
                if rec is None:
                    rec = sites[site_id] = _SiteRecord(site_id, ts)
                elif ts > rec.last_seen:
                    rec.last_seen = ts
                if stream == "tower":
                    if ts >= rec.tower_ts:
                        rec.tower_ts = ts
                        rec.mains_ok, rec.on_battery, rec.battery_soc_pct, rec.cabinet_temp_c = a, b, c, d
                elif stream == "power":
                    if ts >= rec.power_ts:
                        rec.power_ts = ts
                        rec.power_kw, rec.energy_kwh = b, c
                    seen = meters.get(a)
                    if seen is None:
                        meters[a] = _Seen(site_id, ts, ts)
                    elif ts > seen.last_seen:
                        seen.last_seen, seen.site_id = ts, site_id
                    elif ts < seen.first_seen:
                        seen.first_seen = ts
                elif stream == "interference":
                    seen = cells.get(a)
                    if seen is None:
                        cells[a] = _Seen(site_id, ts, ts, b)
                    elif ts > seen.last_seen:
                        seen.last_seen, seen.site_id, seen.band = ts, site_id, b
                    elif ts < seen.first_seen:
                        seen.first_seen = ts
            self.observed += n

    @property
    def pending(self) -> int:
        """Sites waiting for the next flush."""
        return len(self._sites)

    def online(self, last_seen: datetime | None, now: datetime) -> bool:
        return is_online(last_seen, now, self.online_window_s)

    def flush(self, store: Store) -> int:
        """Write everything pending in one transaction; returns the number of sites written."""
        with self._flush_lock:
            with self._lock:
                sites, self._sites = self._sites, {}
                meters, self._meters = self._meters, {}
                cells, self._cells = self._cells, {}
            if not (sites or meters or cells):
                return 0
            try:
                with store.session() as session:
                    _upsert_live(session, store.dialect, sites)
                    _upsert_seen(session, store.dialect, Meter, "meter_id", meters)
                    _upsert_seen(session, store.dialect, Cell, "cell_id", cells)
                    session.execute(
                        update(LiveSiteState)
                        .where(LiveSiteState.registered.is_(False),
                               LiveSiteState.site_id.in_(select(Site.site_id)))
                        .values(registered=True))
            except BaseException:
                self._restore(sites, meters, cells)
                raise
            self.flushed_sites += len(sites)
            return len(sites)

    def _restore(self, sites: dict[str, _SiteRecord], meters: dict[str, _Seen],
                 cells: dict[str, _Seen]) -> None:
        with self._lock:
            _merge_back(sites, self._sites)
            _merge_back(meters, self._meters)
            _merge_back(cells, self._cells)


def _merge_back(mine: dict[str, _R], theirs: dict[str, _R]) -> None:
    for key, older in mine.items():
        newer = theirs.get(key)
        if newer is None:
            theirs[key] = older
        else:
            newer.merge_older(older)



def _upsert_live(session: Session, dialect: str, sites: dict[str, _SiteRecord]) -> None:
    if not sites:
        return
    t = LiveSiteState.__table__
    stmt = upsert_insert(dialect, t)
    ex = stmt.excluded
    newer = ex.last_seen >= t.c.last_seen
    values = {"last_seen": case((ex.last_seen > t.c.last_seen, ex.last_seen), else_=t.c.last_seen)}
    for col in ("mains_ok", "on_battery", "battery_soc_pct", "cabinet_temp_c", "power_kw",
                "energy_kwh"):
        values[col] = case((newer, func.coalesce(ex[col], t.c[col])),
                           else_=func.coalesce(t.c[col], ex[col]))
    stmt = stmt.on_conflict_do_update(index_elements=[t.c.site_id], set_=values)
    # Sorted keys: two collectors flushing at once lock rows in the same order.
    session.execute(stmt, [sites[k].row() for k in sorted(sites)])


def _upsert_seen(session: Session, dialect: str, model: type[Meter] | type[Cell], key: str,
                 seen: dict[str, _Seen]) -> None:
    if not seen:
        return
    t = model.__table__
    stmt = upsert_insert(dialect, t)
    ex = stmt.excluded
    newer = ex.last_seen > t.c.last_seen
    values = {
        "first_seen": case((ex.first_seen < t.c.first_seen, ex.first_seen), else_=t.c.first_seen),
        "last_seen": case((newer, ex.last_seen), else_=t.c.last_seen),
        "site_id": case((newer, ex.site_id), else_=t.c.site_id),
    }
    rows = []
    for k in sorted(seen):
        s = seen[k]
        row = {key: k, "site_id": s.site_id, "first_seen": s.first_seen, "last_seen": s.last_seen}
        if model is Cell:
            row["band"] = s.band
        rows.append(row)
    if model is Cell:
        values["band"] = case((newer, ex.band), else_=t.c.band)
    stmt = stmt.on_conflict_do_update(index_elements=[t.c[key]], set_=values)
    session.execute(stmt, rows)
