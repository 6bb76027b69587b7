"""Site detail: one site's power, energy, battery, cabinet, mains, interference and flags."""

from __future__ import annotations

from dashboards.display import Setting
from dashboards.model import Dashboard, Link, Panel, Query, Row
from dashboards.panels import flags_annotation, flags_table, right_axis, threshold_lines, thresholds
from dashboards.variables import BAND, CELL, COUNTY, SITE_ONE, by_band, by_cell, by_site

__all__ = ["DASHBOARD"]

_W = f"$timeFilter AND {by_site}"
_BY_TIME = "GROUP BY time($__interval) fill(none)"
_STAT = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
         "textMode": "value_and_name", "graphMode": "none", "colorMode": "value"}

# The rules' thresholds ([rules.site_offline], [rules.mains_failure], [rules.interference]).
_SILENCE = [{"id": k, "value": v} for k, v in thresholds(
    (None, "green"), (Setting("offline_after_s"), "orange"),
    (Setting("offline_critical_s"), "red")).items()]
_SOC = ((None, "red"), (Setting("soc_critical_pct"), "green"))
_LEVELS = ((None, "green"), (Setting("interference_warning_dbm"), "orange"),
           (Setting("interference_critical_dbm"), "red"))

DASHBOARD = Dashboard(
    uid="sitetwin-site",
    title="Site detail",
    description="Everything measured at one site, with its flags as annotations.",
    tags=("sitetwin", "site"),
    variables=(COUNTY, SITE_ONE, CELL, BAND),
    annotations=(flags_annotation("Flags"),),
    links=(Link("NOC overview", "/d/sitetwin-noc/noc-overview"),),
    panels=(
        Panel("Site", "table", [Query(
            'SELECT last("site_name") AS "site_name", last("lat") AS "lat", last("lon") AS "lon", '
            'last("reserved_kw") AS "reserved_kw", '
            'last("declared_kw") AS "declared_kw" '
            f'FROM "site_state" WHERE {_W} '
            'GROUP BY "site_id", "county", "kind", "supply", "state", "feeder", "substation"',
            result_format="table")], width=12, height=5,
              description="Registry facts as last written by the twin."),
        Panel("Now", "stat", [Query(
            'SELECT last("online") AS "online", last("on_battery") AS "on battery", '
            'last("battery_soc_pct") AS "battery %", last("power_kw") AS "kW", '
            'last("age_s") AS "last seen (s ago)" '
            f'FROM "site_state" WHERE {_W}')], width=12, height=5, options=_STAT,
              overrides=[{"matcher": {"id": "byName", "options": "last seen (s ago)"},
                          "properties": _SILENCE},
                         {"matcher": {"id": "byName", "options": "battery %"},
                          "properties": [{"id": k, "value": v}
                                         for k, v in thresholds(*_SOC).items()]}]),
        Row("Electricity"),
        Panel("Power", "timeseries", [
            Query(f'SELECT mean("power_kw") AS "power_kw" FROM "power" WHERE {_W} '
                  'GROUP BY time($__interval), "meter_id" fill(none)', alias="meter $tag_meter_id"),
            Query(f'SELECT last("reserved_kw") AS "reserved_kw" FROM "site_state" WHERE {_W} '
                  f'{_BY_TIME}', ref_id="B", alias="reserved")],
              width=12, height=8, unit="kwatt"),
        # A cumulative reading at T closes the time before it.  The difference of each
        # interval's *first* reading from the previous interval's is the energy of the
        # interval that ends at (about) the point's time: exact for a meter reporting on the
        # interval boundaries, late by the meter's minutes past them otherwise.  The bar is
        # drawn before its point (barAlignment -1), over the interval it measures.  The
        # previous query (``last``, bars centred) drew an on-the-hour meter's energy one
        # interval late.  InfluxQL cannot move a point's time, so the alignment is Grafana's.
        Panel("Energy per interval", "timeseries", [Query(
            'SELECT non_negative_difference(first("energy_kwh")) AS "energy_kwh" '
            f'FROM "power" WHERE {_W} GROUP BY time($__interval), "meter_id" fill(none)',
            alias="meter $tag_meter_id")], width=12, height=8, unit="kwatth",
              description="Each bar is the energy of the interval it spans: the meter's first "
                          "reading at or after its right edge minus its first reading at or after "
                          "its left edge (exact when the meter reports on the interval boundaries, "
                          "late by the meter's minutes past them otherwise). A meter reset "
                          "(negative step) is dropped.",
              defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60, "barAlignment": -1}}),
        Panel("Voltage, current, power factor", "timeseries", [Query(
            'SELECT mean("voltage_v") AS "voltage_v", mean("current_a") AS "current_a", '
            'mean("power_factor") AS "power_factor" '
            f'FROM "power" WHERE {_W} GROUP BY time($__interval), "meter_id" fill(none)',
            alias="$tag_meter_id $col")], width=24, height=7),
        Row("Power plant and cabinet"),
        Panel("Battery", "timeseries", [
            Query(f'SELECT mean("battery_soc_pct") AS "soc_pct" FROM "tower" WHERE {_W} {_BY_TIME}',
                  alias="state of charge"),
            Query(f'SELECT mean("battery_voltage_v") AS "battery_voltage_v" FROM "tower" '
                  f'WHERE {_W} {_BY_TIME}', ref_id="B", alias="voltage")],
              width=12, height=8, unit="percent", defaults=threshold_lines(*_SOC),
              overrides=[right_axis("B", "volt")]),
        Panel("Cabinet temperature and humidity", "timeseries", [
            Query(f'SELECT mean("cabinet_temp_c") AS "cabinet_temp_c" FROM "tower" '
                  f'WHERE {_W} {_BY_TIME}', alias="temperature"),
            Query(f'SELECT mean("humidity_pct") AS "humidity_pct" FROM "tower" '
                  f'WHERE {_W} {_BY_TIME}', ref_id="B", alias="humidity")],
              width=12, height=8, unit="celsius",
              overrides=[right_axis("B", "percent")]),
        Panel("Mains, battery, generator, door", "state-timeline", [Query(
            'SELECT last("mains_ok") AS "mains ok", last("on_battery") AS "on battery", '
            'last("generator_running") AS "generator", last("door_open") AS "door open" '
            f'FROM "tower" WHERE {_W} {_BY_TIME}')], width=16, height=7,
              defaults={**thresholds((None, "green")),
                        "mappings": [{"type": "value", "options": {
                            "true": {"text": "yes", "color": "orange", "index": 0},
                            "false": {"text": "no", "color": "green", "index": 1}}}]},
              options={"mergeValues": True, "showValue": "never", "rowHeight": 0.8}),
        Panel("Rectifier load and tilt", "timeseries", [Query(
            'SELECT mean("rectifier_load_a") AS "rectifier_load_a", max("tilt_deg") AS "tilt_deg" '
            f'FROM "tower" WHERE {_W} {_BY_TIME}')], width=8, height=7),
        Row("Radio"),
        Panel("Uplink interference per cell", "timeseries", [Query(
            'SELECT mean("ul_interference_dbm") AS "ul_interference_dbm" FROM "interference" '
            f'WHERE {_W} AND {by_cell} AND {by_band} '
            'GROUP BY time($__interval), "cell_id", "band" fill(none)',
            alias="$tag_cell_id ($tag_band)")], width=12, height=8, unit="dBm",
              defaults=threshold_lines(*_LEVELS)),
        Panel("Uplink PRB usage per cell", "timeseries", [Query(
            'SELECT mean("ul_prb_usage_pct") AS "ul_prb_usage_pct" FROM "interference" '
            f'WHERE {_W} AND {by_cell} AND {by_band} '
            'GROUP BY time($__interval), "cell_id" fill(none)',
            alias="$tag_cell_id")], width=12, height=8, unit="percent"),
        Row("Flags"),
        flags_table("Flags of this site", only_open=False, width=24, height=8),
    ),
)
