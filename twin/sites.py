"""Views of the registry: the site list (with filters), one site in full, unregistered sites.

Read-only queries returning plain dicts (JSON-ready), used by ``sitetwin sites``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from twin.errors import UnknownSite
from twin.lifecycle import history, state_at
from twin.live import ON_AIR_STATES, is_offline, is_online
from twin.models import (
    Cell,
    LiveSiteState,
    Meter,
    Reservation,
    ReservationChange,
    Site,
    SupplyChange,
)

__all__ = ["SITE_SORTS", "list_sites", "list_unregistered", "page_sites", "show_site"]

SITE_SORTS = ("site_id", "name", "county", "kind", "supply", "state", "last_seen")

_ATTRS = ("site_id", "name", "lat", "lon", "county", "district", "kind", "supply", "region",
          "customer_class", "owner", "operators", "planned_year", "state", "replaces_site_id",
          "address",
          "created_at", "updated_at")


def _live(row: LiveSiteState | None, now: datetime, window_s: float) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"last_seen": row.last_seen, "online": is_online(row.last_seen, now, window_s),
            "age_s": round((now - row.last_seen).total_seconds(), 1),
            "mains_ok": row.mains_ok, "on_battery": row.on_battery,
            "battery_soc_pct": row.battery_soc_pct, "power_kw": row.power_kw,
            "cabinet_temp_c": row.cabinet_temp_c, "energy_kwh": row.energy_kwh}


def list_sites(session: Session, *, now: datetime, window_s: float, county: str | None = None,
               state: str | None = None, kind: str | None = None, supply: str | None = None,
               online: bool | None = None) -> list[dict[str, Any]]:
    """Registered sites matching every filter given, ordered by site id."""
    q = (select(Site.site_id, Site.name, Site.county, Site.kind, Site.supply, Site.state,
                LiveSiteState.last_seen, LiveSiteState.on_battery, LiveSiteState.battery_soc_pct,
                LiveSiteState.power_kw)
         .outerjoin(LiveSiteState, LiveSiteState.site_id == Site.site_id)
         .order_by(Site.site_id))
    for column, value in ((Site.county, county), (Site.state, state), (Site.kind, kind),
                          (Site.supply, supply)):
        if value is not None:
            q = q.where(column == value)
    since = now - timedelta(seconds=window_s)
    if online is True:
        q = q.where(LiveSiteState.last_seen >= since)
    elif online is False:  # offline: expected on air and silent (never-built sites are not)
        q = q.where(Site.state.in_([s.value for s in ON_AIR_STATES]),
                    (LiveSiteState.last_seen.is_(None)) | (LiveSiteState.last_seen < since))
    return [{"site_id": r.site_id, "name": r.name, "county": r.county, "kind": r.kind,
             "supply": r.supply, "state": r.state,
             "online": is_online(r.last_seen, now, window_s),
             "offline": is_offline(r.state, r.last_seen, now, window_s), "last_seen": r.last_seen,
             "on_battery": r.on_battery, "battery_soc_pct": r.battery_soc_pct,
             "power_kw": r.power_kw}
            for r in session.execute(q)]


def list_unregistered(session: Session, *, now: datetime, window_s: float) -> list[dict[str, Any]]:
    """Site ids seen in telemetry that the registry does not know, ordered by id."""
    q = (select(LiveSiteState).where(~LiveSiteState.site_id.in_(select(Site.site_id)))
         .order_by(LiveSiteState.site_id))
    return [{"site_id": r.site_id, **(_live(r, now, window_s) or {})} for r in session.scalars(q)]


def show_site(session: Session, site_id: str, *, now: datetime, window_s: float,
              at: datetime | None = None) -> dict[str, Any]:
    """Everything about one site: attributes, state (and state at ``at``), history, links."""
    site = session.get(Site, site_id)
    if site is None:
        raise UnknownSite(site_id)
    out: dict[str, Any] = {k: getattr(site, k) for k in _ATTRS}
    out["operators"] = site.operator_list
    if at is not None:
        s = state_at(session, site_id, at)
        out["at"] = at
        out["state_at"] = s.value if s else None
    out["history"] = [e.as_dict() for e in history(session, site_id)]
    out["replaced_by"] = session.scalars(
        select(Site.site_id).where(Site.replaces_site_id == site_id).order_by(Site.site_id)).all()
    out["live"] = _live(session.get(LiveSiteState, site_id), now, window_s)
    res = session.get(Reservation, site_id)
    out["reservation"] = None if res is None else {
        "declared_kw": res.declared_kw, "reserved_kw": res.reserved_kw, "feeder": res.feeder,
        "substation": res.substation, "status": res.status}
    # Reservation and supply history (twin.history): each row with the date it took effect.
    out["reservation_history"] = [
        {"effective_from": r.effective_from, "dated": r.dated, "declared_kw": r.declared_kw,
         "reserved_kw": r.reserved_kw, "feeder": r.feeder, "substation": r.substation,
         "status": r.status}
        for r in session.scalars(select(ReservationChange).where(ReservationChange.site_id == site_id)
                                 .order_by(ReservationChange.effective_from))]
    out["supply_history"] = [
        {"effective_from": r.effective_from, "supply": r.supply}
        for r in session.scalars(select(SupplyChange).where(SupplyChange.site_id == site_id)
                                 .order_by(SupplyChange.effective_from))]
    out["meters"] = [{"meter_id": m.meter_id, "first_seen": m.first_seen, "last_seen": m.last_seen}
                     for m in session.scalars(select(Meter).where(Meter.site_id == site_id)
                                              .order_by(Meter.meter_id))]
    out["cells"] = [{"cell_id": c.cell_id, "band": c.band, "first_seen": c.first_seen,
                     "last_seen": c.last_seen}
                    for c in session.scalars(select(Cell).where(Cell.site_id == site_id)
                                             .order_by(Cell.cell_id))]
    return out


def page_sites(session: Session, *, now: datetime, window_s: float, county: str | None = None,
               state: str | None = None, kind: str | None = None, supply: str | None = None,
               online: bool | None = None, q: str | None = None, sort: str = "site_id",
               limit: int = 50, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """``(total, page)`` of registered sites: the filters of ``list_sites``, a text search
    (``q`` in the id, name or district, case-insensitive), a sort column of
    ``SITE_SORTS`` (``-`` for descending) and limit/offset paging."""
    name = sort.lstrip("-")
    if name not in SITE_SORTS:
        raise ValueError(f"sort must be one of {', '.join(SITE_SORTS)} (prefix - to reverse)")
    cond = []
    for column, value in ((Site.county, county), (Site.state, state), (Site.kind, kind),
                          (Site.supply, supply)):
        if value is not None:
            cond.append(column == value)
    since = now - timedelta(seconds=window_s)
    if online is True:
        cond.append(LiveSiteState.last_seen >= since)
    elif online is False:
        cond.append((LiveSiteState.last_seen.is_(None)) | (LiveSiteState.last_seen < since))
    if q:
        like = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cond.append(or_(func.lower(Site.site_id).like(like, escape="\\"),
                        func.lower(Site.name).like(like, escape="\\"),
                        func.lower(func.coalesce(Site.district, "")).like(like, escape="\\")))
    joined = (LiveSiteState, LiveSiteState.site_id == Site.site_id)
    total = session.scalar(select(func.count(Site.site_id)).select_from(Site).outerjoin(*joined).where(*cond)) or 0
    order_by: Any = LiveSiteState.last_seen if name == "last_seen" else getattr(Site, name)
    order = (order_by.desc(), Site.site_id.desc()) if sort.startswith("-") else (order_by, Site.site_id)
    rows = session.execute(
        select(Site.site_id, Site.name, Site.county, Site.kind, Site.supply, Site.state,
               LiveSiteState.last_seen, LiveSiteState.on_battery, LiveSiteState.battery_soc_pct,
               LiveSiteState.power_kw)
        .outerjoin(*joined).where(*cond).order_by(*order).limit(limit).offset(offset))
    return total, [{"site_id": r.site_id, "name": r.name, "county": r.county, "kind": r.kind,
                    "supply": r.supply, "state": r.state,
                    "online": is_online(r.last_seen, now, window_s), "last_seen": r.last_seen,
                    "on_battery": r.on_battery, "battery_soc_pct": r.battery_soc_pct,
                    "power_kw": r.power_kw} for r in rows]
