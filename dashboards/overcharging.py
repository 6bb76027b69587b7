"""Overcharging review: transfer-power flags by supplier, the excess in CNY, links to evidence."""

from __future__ import annotations

from dashboards.model import Dashboard, Link, Panel, Query
from dashboards.panels import flags_annotation, flags_table
from dashboards.variables import COUNTY, SITE, by_site

__all__ = ["DASHBOARD"]

_KINDS = "(overcharging|overbilling)"
_FLAGS = f'"flags" WHERE $timeFilter AND "kind" =~ /^{_KINDS}$/ AND {by_site}'

_LATEST = ('SELECT last("excess_cny") AS "excess_cny", last("open") AS "open", '
           'last("flag_id") AS "flag_id" '
           f'FROM {_FLAGS} GROUP BY "kind", "site_id", "supplier_id"')

DASHBOARD = Dashboard(
    uid="sitetwin-overcharging",
    title="Overcharging review",
    description="For the market regulator: transfer-power bills flagged as above the regulated "
                "price cap (overcharging) or above the metered energy (overbilling), by "
                "supplier, with the excess in CNY. Review with `sitetwin flags review`.",
    tags=("sitetwin", "regulator"),
    variables=(COUNTY, SITE),
    annotations=(flags_annotation("Overcharging flags", _KINDS, color="yellow"),),
    links=(Link("NOC overview", "/d/sitetwin-noc/noc-overview"),),
    panels=(
        Panel("Excess charged per supplier", "barchart", [Query(
            f'SELECT sum("excess_cny") AS "excess_cny" FROM ({_LATEST}) GROUP BY "supplier_id"',
            result_format="table")], width=12, height=9, unit="currencyCNY",
              options={"orientation": "horizontal", "xField": "supplier_id",
                       "showValue": "always", "legend": {"showLegend": False}},
              description="Sum over flagged bills (latest figure of each flag)."),
        Panel("Flags per supplier and status", "table", [Query(
            'SELECT count(distinct("flag_id")) AS "flags", max("excess_cny") AS "max_excess_cny" '
            f'FROM {_FLAGS} GROUP BY "supplier_id", "kind", "status"',
            result_format="table")], width=12, height=9,
              description="open = awaiting review; confirmed / dismissed = reviewed; "
                          "resolved = the condition cleared."),
        Panel("Open and total excess", "stat", [Query(
            'SELECT sum("open") AS "open flags", count("flag_id") AS "flags", '
            f'sum("excess_cny") AS "excess CNY" FROM ({_LATEST})')],
              width=24, height=5,
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "textMode": "value_and_name", "graphMode": "none"}),
        flags_table("Flagged bills (evidence: sitetwin flags show <flag_id>)", _KINDS,
                    only_open=False, width=24, height=10),
    ),
)
