"""Overcharging review: transfer-power flags by supplier, the excess in CNY, links to evidence."""

from __future__ import annotations

from dashboards.model import Dashboard, Link, Panel, Query
from dashboards.panels import flags_annotation, flags_table, latest_flags
from dashboards.variables import COUNTY, SITE, by_site

__all__ = ["DASHBOARD"]

_KINDS = "(overcharging|overbilling)"
# One row per flag (its latest figure and status): a reviewed bill is counted once.
_LATEST = latest_flags(f'"kind" =~ /^{_KINDS}$/ AND {by_site}', "excess_cny", "open", "status")
# Money totals leave out dismissed flags, as the overcharging report does.
_COUNTED = f"({_LATEST}) WHERE \"status\" != 'dismissed'"

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
            f'SELECT sum("excess_cny") AS "excess_cny" FROM {_COUNTED} GROUP BY "supplier_id"',
            result_format="table")], width=12, height=9, unit="currencyCNY",
              options={"orientation": "horizontal", "xField": "supplier_id",
                       "showValue": "always", "legend": {"showLegend": False}},
              description="Sum over flagged bills (latest figure of each flag); dismissed "
                          "flags are left out, as in `sitetwin report overcharging`."),
        Panel("Flags per supplier and status", "table", [Query(
            f'SELECT "status", "excess_cny" FROM ({_LATEST}) GROUP BY "supplier_id", "kind", '
            '"flag_id"', result_format="table")], width=12, height=9,
              # status is a field (it changes on review), so Grafana counts per status.
              transformations=[{"id": "groupBy", "options": {"fields": {
                  "supplier_id": {"aggregations": [], "operation": "groupby"},
                  "kind": {"aggregations": [], "operation": "groupby"},
                  "status": {"aggregations": [], "operation": "groupby"},
                  "flag_id": {"aggregations": ["count"], "operation": "aggregate"},
                  "excess_cny": {"aggregations": ["max"], "operation": "aggregate"}}}}],
              description="open = awaiting review; confirmed / dismissed = reviewed; "
                          "resolved = the condition cleared."),
        Panel("Open and total excess", "stat", [
            Query(f'SELECT sum("open") AS "open flags", count("open") AS "flags" FROM ({_LATEST})'),
            Query(f'SELECT sum("excess_cny") AS "excess CNY (not dismissed)" FROM {_COUNTED}',
                  ref_id="B")],
              width=24, height=5,
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "textMode": "value_and_name", "graphMode": "none"}),
        flags_table("Flagged bills (evidence: sitetwin flags show <flag_id>)", _KINDS,
                    only_open=False, width=24, height=10),
    ),
)
