"""The ``site_state`` measurement: one point per registered site, from the registry and its live state.

``sitetwin run`` writes these points to InfluxDB every ``max(live_flush_interval, 30 s)``
(``sitetwin.wiring``) so that the dashboards can map and count sites (online, offline,
on battery, reserved and declared power) with InfluxQL alone, without a second data
source for the registry.  Tags are what a panel groups by (county, kind, supply, state,
feeder, substation); the site's name is a field, so a renamed site stays one series.

Here rather than in ``twin``: the registry does not know InfluxDB's wire format, and
the collector (``connectors``) must not depend on the registry; this module reads the
one and speaks the other's line protocol.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from connectors.errors import LineProtocolError
from connectors.lineprotocol import line
from twin.live import DEFAULT_ONLINE_WINDOW_S, is_offline, is_online
from twin.models import LiveSiteState, Reservation, Site
from twin.store import Store

__all__ = ["site_state_lines"]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def site_state_lines(store: Store, now: datetime, *,
                     online_window_s: float = DEFAULT_ONLINE_WINDOW_S) -> bytes:
    """Line protocol of measurement ``site_state``: one point per registered site at ``now``."""
    ts_ns = int((now - _EPOCH).total_seconds()) * 1_000_000_000
    q = (select(Site.site_id, Site.name, Site.county, Site.kind, Site.supply, Site.state,
                Site.lat, Site.lon,
                Reservation.feeder, Reservation.substation, Reservation.reserved_kw,
                Reservation.declared_kw, LiveSiteState.last_seen, LiveSiteState.on_battery,
                LiveSiteState.battery_soc_pct, LiveSiteState.power_kw)
         .outerjoin(Reservation, Reservation.site_id == Site.site_id)
         .outerjoin(LiveSiteState, LiveSiteState.site_id == Site.site_id)
         .order_by(Site.site_id))
    out = []
    with store.session() as session:
        for r in session.execute(q):
            age_s = (now - r.last_seen).total_seconds() if r.last_seen is not None else None
            try:
                out.append(_site_line(r, now, age_s, online_window_s, ts_ns))
            except LineProtocolError as exc:  # one odd county name must not hide every site
                log.warning("site_state of %s not written: %s", r.site_id, exc)
    return "\n".join(out).encode()


def _site_line(r: Any, now: datetime, age_s: float | None, online_window_s: float, ts_ns: int) -> str:
    return line(
                "site_state",
                {"site_id": r.site_id, "county": r.county, "kind": r.kind, "supply": r.supply,
                 "state": r.state, "feeder": r.feeder, "substation": r.substation},
                {"lat": float(r.lat), "lon": float(r.lon),
                 # a field, not a tag: a renamed site stays one series
                 "site_name": r.name or None,
                 # 0/1 integers, not booleans: Grafana sums and averages them.
                 "online": int(is_online(r.last_seen, now, online_window_s)),
                 "offline": int(is_offline(r.state, r.last_seen, now, online_window_s)),
                 "on_battery": None if r.on_battery is None else int(r.on_battery),
                 "battery_soc_pct": _f(r.battery_soc_pct), "power_kw": _f(r.power_kw),
                 "reserved_kw": _f(r.reserved_kw), "declared_kw": _f(r.declared_kw),
                 "age_s": _f(age_s)},
                ts_ns)


def _f(value: Any) -> float | None:
    return None if value is None else float(value)
