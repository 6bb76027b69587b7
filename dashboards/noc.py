"""NOC overview: where the sites are, which are up, on battery or flagged, and the pipeline.

Offline is ``site_state.offline`` (written by ``twin.live``): a site that should be on air
and is silent.  A never-built site (planned ... power_connected) or a decommissioned one is
silent by design: it is not counted offline, and the map draws it grey, not red (issue 14).
The map colours by ``status``: 0 not expected on air (grey), 1 offline (red), 2 online (green),
computed in InfluxQL from the two 0/1 fields as ``online * 2 + offline``.
"""

from __future__ import annotations

from dashboards.display import Setting
from dashboards.model import Dashboard, Link, Panel, Query, Row
from dashboards.panels import SITE_DETAIL_LINK, flags_annotation, flags_table, sites_map, thresholds
from dashboards.variables import COUNTY, SITE, by_county, by_site

__all__ = ["DASHBOARD"]

_SITES = f"$timeFilter AND {by_county} AND {by_site}"

_MAP = Query(
    'SELECT "lat", "lon", "online" * 2 + "offline" AS "status", "online", "offline", '
    '"on_battery", "battery_soc_pct", "site_name" FROM ('
    'SELECT last("lat") AS "lat", last("lon") AS "lon", last("online") AS "online", '
    'last("offline") AS "offline", '
    'last("on_battery") AS "on_battery", last("battery_soc_pct") AS "battery_soc_pct", '
    'last("site_name") AS "site_name" '
    f'FROM "site_state" WHERE {_SITES} GROUP BY "site_id", "state", "county") '
    'GROUP BY "site_id", "state", "county"',
    result_format="table",
)

_PER_STATE = Query(
    'SELECT count("online") AS "sites" FROM ('
    'SELECT last("online") AS "online" FROM "site_state" '
    f'WHERE {_SITES} GROUP BY "site_id", "state") GROUP BY "state"',
    alias="$tag_state",
)

_ONLINE = Query(
    'SELECT sum("online") AS "online", sum("offline") AS "offline", '
    'sum("on_battery") AS "on battery" FROM ('
    'SELECT last("online") AS "online", last("offline") AS "offline", '
    'last("on_battery") AS "on_battery" FROM "site_state" '
    f'WHERE {_SITES} GROUP BY "site_id")',
)

_ON_BATTERY_NOW = Query(
    'SELECT "site_name", "battery_soc_pct", "power_kw", "age_s" FROM ('
    'SELECT last("on_battery") AS "on_battery", last("battery_soc_pct") AS "battery_soc_pct", '
    'last("power_kw") AS "power_kw", last("age_s") AS "age_s", '
    'last("site_name") AS "site_name" FROM "site_state" '
    f'WHERE {_SITES} GROUP BY "site_id", "county") '
    'WHERE "on_battery" = 1 GROUP BY "site_id", "county"',
    result_format="table",
)

_ON_BATTERY_OVER_TIME = Query(
    'SELECT sum("on_battery") AS "on battery", sum("offline") AS "offline" FROM ('
    'SELECT last("on_battery") AS "on_battery", last("offline") AS "offline" '
    f'FROM "site_state" WHERE {_SITES} GROUP BY time($__interval), "site_id" fill(none)) '
    'GROUP BY time($__interval) fill(none)',
)

_PIPE = '"sitetwin_pipeline" WHERE $timeFilter'

# Red below the mains-failure rule's critical state of charge ([rules.mains_failure]).
_SOC_COLOURS = [{"id": "custom.cellOptions", "value": {"type": "color-text"}},
                *[{"id": k, "value": v} for k, v in thresholds(
                    (None, "red"), (Setting("soc_critical_pct"), "green")).items()]]

DASHBOARD = Dashboard(
    uid="sitetwin-noc",
    title="NOC overview",
    description="Sites on a map by online state, counts per lifecycle state, sites on battery, "
                "open flags, and the health of the ingestion pipeline.",
    tags=("sitetwin", "noc"),
    variables=(COUNTY, SITE),
    annotations=(flags_annotation("Critical flags", color="red", severity_regex="critical"),),
    links=(Link("Site detail", "/d/sitetwin-site/site-detail"),
           Link("Interference", "/d/sitetwin-interference/interference"),
           Link("Power & reservations", "/d/sitetwin-power/power-and-reservations"),
           Link("Overcharging review", "/d/sitetwin-overcharging/overcharging-review")),
    panels=(
        sites_map("Sites (green online, red offline, grey not on air)", _MAP, "status",
                  thresholds((None, "#8e8e8e"), (1, "red"), (2, "green")), width=14, height=16,
                  text_field="site_id",
                  description="Latest twin state of each site; red only for a site that should "
                              "be on air (on_air, relocating) and is silent - a site not built "
                              "yet is grey. Tooltip shows lifecycle state, county, battery."),
        Panel("Sites per lifecycle state", "bargauge", [_PER_STATE], width=10, height=8,
              options={"orientation": "horizontal", "displayMode": "basic",
                       "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
              defaults={"decimals": 0}),
        Panel("Online / offline / on battery", "stat", [_ONLINE], width=10, height=8,
              description="Offline: sites that should be on air and are silent; sites not "
                          "built yet are not counted.",
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"},
              defaults={"decimals": 0}),
        Row("Power supply"),
        Panel("Sites on battery now", "table", [_ON_BATTERY_NOW], width=12, height=8,
              description="Sites whose load is on batteries, with state of charge.",
              data_links=[SITE_DETAIL_LINK],
              overrides=[{"matcher": {"id": "byName", "options": "battery_soc_pct"},
                          "properties": [{"id": "unit", "value": "percent"},
                                         *_SOC_COLOURS]}]),
        Panel("Sites on battery / offline over time", "timeseries", [_ON_BATTERY_OVER_TIME],
              width=12, height=8, defaults={"decimals": 0}),
        Row("Flags"),
        flags_table("Open flags", width=24, height=9),
        Row("Pipeline health (sitetwin_pipeline)"),
        Panel("Messages and points per second", "timeseries", [Query(
            'SELECT non_negative_derivative(max("received_msgs"), 1s) AS "received msgs/s", '
            'non_negative_derivative(max("written_points"), 1s) AS "written points/s", '
            'non_negative_derivative(max("rejected_msgs"), 1s) AS "rejected msgs/s" '
            f'FROM {_PIPE} GROUP BY time($__interval), "collector" fill(none)',
            alias="$tag_collector $col")], width=12, height=8, unit="ops"),
        Panel("Batch latency", "timeseries", [Query(
            'SELECT max("batch_latency_ms_max") AS "max", mean("batch_latency_ms_avg") AS "avg" '
            f'FROM {_PIPE} GROUP BY time($__interval), "collector" fill(none)',
            alias="$tag_collector $col")], width=12, height=8, unit="ms"),
        Panel("Spool and pending acknowledgements", "timeseries", [
            Query('SELECT max("spool_bytes") AS "spool bytes" '
                  f'FROM {_PIPE} GROUP BY time($__interval), "collector" fill(none)',
                  alias="$tag_collector $col"),
            Query('SELECT max("pending_acks") AS "pending acks" '
                  f'FROM {_PIPE} GROUP BY time($__interval), "collector" fill(none)',
                  ref_id="B", alias="$tag_collector $col")],
              width=12, height=8,
              overrides=[{"matcher": {"id": "byFrameRefID", "options": "A"},
                          "properties": [{"id": "unit", "value": "bytes"}]}]),
        Panel("Collector totals", "stat", [Query(
            'SELECT last("received_msgs") AS "received", last("written_points") AS "written", '
            'last("rejected_msgs") AS "rejected", last("unknown_fields") AS "unknown fields", '
            'last("spooled_points") AS "spooled", last("drained_points") AS "drained" '
            f'FROM {_PIPE} GROUP BY "collector"')],
              width=12, height=8,
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "textMode": "value_and_name", "graphMode": "none"},
              description="Counters since each collector started; rejected reasons: "
                          "`sitetwin rejected counts`."),
    ),
)
