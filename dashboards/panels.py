"""Panels and annotations used by several dashboards (flags, maps, colours, threshold lines).

Flags are written to InfluxDB by the rule engine (``rules.sink``) as two
measurements.  ``flags``: one series per flag (tag ``flag_id``, with the
constant kind, rule, site_id, cell_id, supplier_id), a point at every change,
and the changing status, severity, summary, excess_cny and open as fields; so
"the current state of a flag" is ``last()`` grouped by ``flag_id``, and a
review or an escalation updates the flag's one row instead of leaving a ghost.
``flag_spans``: one point per flag at its opening, with ``ended_ms`` once it is
resolved or dismissed, drawn as a region.  ``"flag_id" != ''`` leaves out points
written before flags had that tag (their status and severity were tags).
"""

from __future__ import annotations

from typing import Any

from dashboards.display import Setting
from dashboards.model import Annotation, Link, Panel, Query
from dashboards.variables import by_site

__all__ = [
    "SITE_DETAIL_LINK",
    "flags_annotation",
    "flags_table",
    "join_names",
    "latest_flags",
    "right_axis",
    "site_names",
    "sites_map",
    "threshold_lines",
    "thresholds",
]

SITE_DETAIL_LINK = Link("Site detail",
                        "/d/sitetwin-site/site-detail?var-site=${__data.fields.site_id}"
                        "&${__url_time_range}")

FLAG_SERIES = ("flag_id", "kind", "site_id", "cell_id", "supplier_id")
_GROUP_FLAGS = "GROUP BY " + ", ".join(f'"{t}"' for t in FLAG_SERIES)


def thresholds(*steps: tuple[float | Setting | None, str]) -> dict[str, Any]:
    """Field defaults colouring by absolute thresholds: ``(None, "red"), (1, "green")``."""
    return {"color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute",
                           "steps": [{"value": v, "color": c} for v, c in steps]}}


def right_axis(ref_id: str, unit: str) -> dict[str, Any]:
    """A field override: query ``ref_id``'s series in ``unit`` on a right-hand axis."""
    return {"matcher": {"id": "byFrameRefID", "options": ref_id},
            "properties": [{"id": "unit", "value": unit},
                           {"id": "custom.axisPlacement", "value": "right"},
                           # the left axis' threshold lines are not in this unit
                           {"id": "custom.thresholdsStyle", "value": {"mode": "off"}}]}


def threshold_lines(*steps: tuple[float | Setting | None, str]) -> dict[str, Any]:
    """Field defaults drawing ``steps`` as dashed lines on a time series (colours unchanged)."""
    return {**thresholds(*steps), "color": {"mode": "palette-classic"},
            "custom": {"thresholdsStyle": {"mode": "dashed"}}}


def latest_flags(where: str, *fields: str) -> str:
    """Subquery: the last value of ``fields`` of each flag (one row per ``flag_id``)."""
    cols = ", ".join(f'last("{f}") AS "{f}"' for f in fields)
    return (f"SELECT {cols} FROM \"flags\" WHERE $timeFilter AND \"flag_id\" != '' "
            f"AND {where} {_GROUP_FLAGS}")


def site_names(ref_id: str = "B") -> Query:
    """Each selected site's name (``site_state``), for a ``joinByField`` on ``site_id``."""
    return Query('SELECT last("site_name") AS "site_name" FROM "site_state" '
                 f'WHERE $timeFilter AND {by_site} GROUP BY "site_id"',
                 ref_id=ref_id, result_format="table")


def join_names(mode: str = "inner") -> dict[str, Any]:
    return {"id": "joinByField", "options": {"byField": "site_id", "mode": mode}}


def flags_annotation(name: str, kind_regex: str = ".*", color: str = "red", *,
                     severity_regex: str = ".*") -> Annotation:
    """Each flag of the selected sites as one region, from opening to resolution.

    An open flag is a mark at its opening; reviews, escalations and evidence
    updates rewrite the same point, so they add nothing to the graph.
    """
    return Annotation(
        name=name,
        influxql=('SELECT "summary", "ended_ms", "kind", "severity", "status" FROM "flag_spans" '
                  f'WHERE $timeFilter AND "flag_id" != \'\' AND "kind" =~ /^{kind_regex}$/ '
                  f'AND "severity" =~ /^{severity_regex}$/ AND {by_site}'),
        text_column="summary",
        tags_columns=("kind", "severity", "status"),
        time_end_column="ended_ms",
        color=color,
    )


def flags_table(title: str, kind_regex: str = ".*", *, only_open: bool = True,
                width: int = 24, height: int = 8, extra_filter: str = "") -> Panel:
    """The latest state of each flag of the selected sites, one row per flag, with site names."""
    inner = latest_flags(f'"kind" =~ /^{kind_regex}$/ AND {by_site}{extra_filter}',
                         "severity", "status", "summary", "excess_cny", "open")
    outer_where = ' WHERE "open" = 1' if only_open else ""
    q = ('SELECT "severity", "status", "summary", "excess_cny", "open" '
         f'FROM ({inner}){outer_where} {_GROUP_FLAGS}')
    return Panel(
        title, "table", [Query(q, result_format="table"), site_names()], width=width,
        height=height,
        description="Latest state of each flag, one row per flag (a review or an escalation "
                    "updates the row). Evidence and review: `sitetwin flags show <flag_id>`.",
        options={"showHeader": True, "sortBy": [{"displayName": "flag_id", "desc": True}]},
        transformations=[join_names(),
                         # a tag is a string: sort 10 after 9
                         {"id": "convertFieldType", "options": {"conversions": [
                             {"targetField": "flag_id", "destinationType": "number"}]}}],
        data_links=[SITE_DETAIL_LINK],
    )


def sites_map(title: str, query: Query, color_field: str, color_steps: dict[str, Any], *,
              text_field: str = "site_id", width: int = 12, height: int = 14,
              description: str = "") -> Panel:
    """A geomap of site markers from a table with ``lat`` and ``lon`` columns."""
    return Panel(
        title, "geomap", [query], width=width, height=height, description=description,
        defaults=color_steps,
        options={
            "view": {"id": "fit", "lat": 0, "lon": 0, "zoom": 10, "allLayers": True},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": Setting("basemap"),  # [grafana] map_tiles
            "layers": [{
                "type": "markers",
                "name": title,
                "tooltip": True,
                "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                "config": {
                    "showLegend": True,
                    "style": {
                        "size": {"fixed": 7},
                        "color": {"field": color_field, "fixed": "dark-green"},
                        "opacity": 0.85,
                        "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                        "text": {"mode": "field", "field": text_field},
                        "textConfig": {"fontSize": 10, "offsetY": -12},
                    },
                },
            }],
            "tooltip": {"mode": "details"},
        },
        data_links=[SITE_DETAIL_LINK],
    )
