"""Power & reservations: actual peak demand against reserved grid capacity, per site and feeder."""

from __future__ import annotations

from dashboards.model import Dashboard, Link, Panel, Query, Row
from dashboards.panels import SITE_DETAIL_LINK, flags_annotation, flags_table, thresholds
from dashboards.variables import COUNTY, SITE, by_county, by_site

__all__ = ["DASHBOARD", "DEMAND_INTERVAL"]

# Grid demand is billed and reserved on 15-minute averages, not instantaneous peaks.
DEMAND_INTERVAL = "15m"

_SITES = f"$timeFilter AND {by_county} AND {by_site}"

_SITE_PEAK = Query(
    'SELECT max("site_kw") AS "peak_kw" FROM ('
    'SELECT sum("meter_kw") AS "site_kw" FROM ('
    'SELECT mean("power_kw") AS "meter_kw" FROM "power" '
    f'WHERE $timeFilter AND {by_site} '
    f'GROUP BY time({DEMAND_INTERVAL}), "site_id", "meter_id") '
    f'GROUP BY time({DEMAND_INTERVAL}), "site_id") GROUP BY "site_id"',
    result_format="table",
)

_SITE_HEADROOM = Query(
    'SELECT last("site_name") AS "site_name", '
    'last("reserved_kw") AS "reserved_kw", last("declared_kw") AS "declared_kw", '
    'max("power_kw") AS "peak_kw", last("reserved_kw") - max("power_kw") AS "headroom_kw" '
    f'FROM "site_state" WHERE {_SITES} GROUP BY "site_id", "feeder", "substation", "state"',
    result_format="table",
)

_FEEDER_PEAK = Query(
    'SELECT max("feeder_kw") AS "peak_kw" FROM ('
    'SELECT sum("site_kw") AS "feeder_kw" FROM ('
    'SELECT mean("power_kw") AS "site_kw" FROM "site_state" '
    f'WHERE {_SITES} GROUP BY time({DEMAND_INTERVAL}), "site_id", "feeder", "substation") '
    f'GROUP BY time({DEMAND_INTERVAL}), "feeder", "substation") GROUP BY "feeder", "substation"',
    result_format="table",
)

_FEEDER_RESERVED = Query(
    'SELECT sum("reserved_kw") AS "reserved_kw", count("reserved_kw") AS "sites" FROM ('
    'SELECT last("reserved_kw") AS "reserved_kw" FROM "site_state" '
    f'WHERE {_SITES} GROUP BY "site_id", "feeder", "substation") GROUP BY "feeder", "substation"',
    result_format="table", ref_id="B",
)

_HEADROOM_STEPS = thresholds((None, "red"), (0, "orange"), (5, "green"))

DASHBOARD = Dashboard(
    uid="sitetwin-power",
    title="Power & reservations",
    description="For the grid company: each site's and each feeder's actual peak demand "
                "against the capacity reserved for it, and the headroom left.",
    tags=("sitetwin", "grid"),
    variables=(COUNTY, SITE),
    annotations=(flags_annotation("Reservation flags", "reservation_.*", color="purple"),),
    links=(Link("NOC overview", "/d/sitetwin-noc/noc-overview"),),
    panels=(
        Panel("Site power against reservation", "timeseries", [
            Query('SELECT mean("power_kw") AS "power_kw" FROM "power" '
                  f'WHERE $timeFilter AND {by_site} '
                  'GROUP BY time($__interval), "site_id", "meter_id" fill(none)',
                  alias="$tag_site_id/$tag_meter_id"),
            Query('SELECT last("reserved_kw") AS "reserved_kw" FROM "site_state" '
                  f'WHERE {_SITES} GROUP BY time($__interval), "site_id" fill(none)',
                  ref_id="B", alias="$tag_site_id reserved")],
              width=24, height=9, unit="kwatt",
              overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"},
                          "properties": [{"id": "custom.lineStyle",
                                          "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        Row("Per site"),
        Panel("Headroom per site (twin samples)", "table", [_SITE_HEADROOM], width=14, height=10,
              unit="kwatt", data_links=[SITE_DETAIL_LINK],
              description="Reserved minus the highest load the twin saw; negative means the "
                          "site draws more than its reservation.",
              overrides=[{"matcher": {"id": "byName", "options": "headroom_kw"},
                          "properties": [{"id": "custom.cellOptions",
                                          "value": {"type": "color-background"}},
                                         *[{"id": k, "value": v}
                                           for k, v in _HEADROOM_STEPS.items()]]}],
              options={"sortBy": [{"displayName": "headroom_kw", "desc": False}]}),
        Panel(f"Peak {DEMAND_INTERVAL} demand per site (meters)", "bargauge", [_SITE_PEAK],
              width=10, height=10, unit="kwatt",
              description=f"Highest {DEMAND_INTERVAL} average of the sum of a site's meters.",
              options={"orientation": "horizontal", "displayMode": "gradient",
                       "reduceOptions": {"calcs": ["max"], "fields": "/peak_kw/",
                                         "values": True}}),
        Row("Per feeder"),
        Panel(f"Feeder peak {DEMAND_INTERVAL} demand and reserved capacity", "table",
              [_FEEDER_PEAK, _FEEDER_RESERVED], width=24, height=8, unit="kwatt",
              description="Sum over the sites on each feeder; peak from the twin's samples.",
              transformations=[{"id": "joinByField",
                                "options": {"byField": "feeder", "mode": "outer"}}]),
        Row("Reservation flags"),
        flags_table("Reservation flags", "reservation_.*", only_open=False, width=24, height=8),
    ),
)
