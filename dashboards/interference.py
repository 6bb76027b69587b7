"""Interference: per-cell uplink levels, the worst cells, per-PRB heatmap, incidents on a map."""

from __future__ import annotations

from dataclasses import replace

from dashboards.display import Setting
from dashboards.model import Dashboard, Link, Panel, Query, Row
from dashboards.panels import (
    flags_annotation,
    flags_table,
    latest_flags,
    sites_map,
    threshold_lines,
    thresholds,
)
from dashboards.variables import BAND, CELL, COUNTY, SITE, by_band, by_cell, by_site

__all__ = ["DASHBOARD", "PRB_COUNT"]

PRB_COUNT = 275  # NR maximum; docs/contracts.md section 1 caps prb_dbm at 275 entries

_CELLS = f"$timeFilter AND {by_site} AND {by_cell} AND {by_band}"

_PRB_FIELDS = ", ".join(f'mean("prb_{i:03d}") AS "{i}"' for i in range(PRB_COUNT))

# The interference rule's levels ([rules.interference] warning_dbm, critical_dbm).
_LEVELS = ((None, "green"), (Setting("interference_warning_dbm"), "orange"),
           (Setting("interference_critical_dbm"), "red"))



def _incidents_map() -> Panel:
    """Sites with interference flags: InfluxQL cannot join measurements, so Grafana joins
    the flags (query B) to the sites' coordinates (query A) by ``site_id``."""
    sites = Query('SELECT last("lat") AS "lat", last("lon") AS "lon", '
                  'last("site_name") AS "site_name" FROM "site_state" '
                  f'WHERE $timeFilter AND {by_site} GROUP BY "site_id"', result_format="table")
    flags = Query('SELECT "open", "severity", "summary" FROM ('
                  + latest_flags(f'"kind" = \'interference\' AND {by_site}',
                                 "open", "severity", "summary")
                  + ') GROUP BY "flag_id", "site_id", "cell_id"',
                  result_format="table", ref_id="B")
    panel = sites_map("Interference incidents", sites, "open",
                      thresholds((None, "green"), (1, "red")), width=12, height=12,
                      description="Sites with an interference flag in the time range (red: "
                                  "still open). Several neighbours lighting up together point "
                                  "to one external source.")
    return replace(panel, queries=(sites, flags), transformations=(
        {"id": "joinByField", "options": {"byField": "site_id", "mode": "inner"}},))


DASHBOARD = Dashboard(
    uid="sitetwin-interference",
    title="Interference",
    description="Uplink interference per cell over time, the most interfered cells, the per-PRB "
                "spectrum of one cell (wideband jammer vs narrowband), and interference incidents "
                "on a map.",
    tags=("sitetwin", "radio"),
    variables=(COUNTY, SITE, CELL, BAND),
    annotations=(flags_annotation("Interference flags", "interference", color="orange"),),
    links=(Link("NOC overview", "/d/sitetwin-noc/noc-overview"),),
    panels=(
        Panel("Uplink interference per cell", "timeseries", [Query(
            'SELECT mean("ul_interference_dbm") AS "ul_interference_dbm" FROM "interference" '
            f'WHERE {_CELLS} GROUP BY time($__interval), "site_id", "cell_id" fill(none)',
            alias="$tag_site_id/$tag_cell_id")], width=16, height=9, unit="dBm",
              defaults=threshold_lines(*_LEVELS),
              description="Mean uplink interference per PRB, per cell; the dashed lines are "
                          "the interference rule's warning and critical levels "
                          "([rules.interference] warning_dbm, critical_dbm)."),
        Panel("Most interfered cells", "table", [Query(
            'SELECT top("mean_dbm", 10) AS "mean_dbm", "site_id", "cell_id", "band" FROM ('
            'SELECT mean("ul_interference_dbm") AS "mean_dbm" FROM "interference" '
            f'WHERE {_CELLS} GROUP BY "site_id", "cell_id", "band")',
            result_format="table")], width=8, height=9, unit="dBm",
              defaults={**thresholds(*_LEVELS),
                        "custom": {"cellOptions": {"type": "color-background"}}},
              options={"sortBy": [{"displayName": "mean_dbm", "desc": True}]}),
        Row("Spectrum"),
        Panel("Per-PRB interference of the selected cell", "heatmap", [Query(
            f'SELECT {_PRB_FIELDS} FROM "interference_prb" '
            f'WHERE {_CELLS} GROUP BY time($__interval) fill(none)',
            alias="$col")],  # series named "0".."274": the heatmap's numeric y buckets
              width=24, height=12, unit="dBm",
              description="Pick one site and one cell. Each row is a PRB (0 at the bottom); a "
                          "bright band across all PRBs is wideband (jammer-like), a few bright "
                          "rows are narrowband.",
              options={"calculate": False, "cellGap": 0,
                       "rowsFrame": {"layout": "auto", "value": "dBm"},
                       "yAxis": {"axisLabel": "PRB", "unit": "none", "reverse": False},
                       "color": {"mode": "scheme", "scheme": "Turbo", "steps": 64,
                                 "exponent": 0.5, "fill": "dark-orange", "reverse": False},
                       "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
                       "legend": {"show": True}}),
        Row("Incidents"),
        _incidents_map(),
        flags_table("Interference flags", "interference", only_open=False, width=12, height=12),
    ),
)
