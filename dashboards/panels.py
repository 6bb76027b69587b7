"""Panels and annotations used by several dashboards (flags, maps, colours).

Flags are written to InfluxDB by the rule engine as measurement ``flags``
(tags kind, rule, site_id, severity, status, cell_id, supplier_id; fields
flag_id, summary, excess_cny, open) at every open, update and close, so "the
current state of a flag" is the last point of its series.
"""

from __future__ import annotations

from typing import Any

from dashboards.model import Annotation, Link, Panel, Query
from dashboards.variables import by_site

__all__ = [
    "SITE_DETAIL_LINK",
    "flags_annotation",
    "flags_table",
    "right_axis",
    "sites_map",
    "thresholds",
]

SITE_DETAIL_LINK = Link("Site detail",
                        "/d/sitetwin-site/site-detail?var-site=${__data.fields.site_id}"
                        "&${__url_time_range}")


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    """Field defaults colouring by absolute thresholds: ``(None, "red"), (1, "green")``."""
    return {"color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute",
                           "steps": [{"value": v, "color": c} for v, c in steps]}}


def right_axis(ref_id: str, unit: str) -> dict[str, Any]:
    """A field override: query ``ref_id``'s series in ``unit`` on a right-hand axis."""
    return {"matcher": {"id": "byFrameRefID", "options": ref_id},
            "properties": [{"id": "unit", "value": unit},
                           {"id": "custom.axisPlacement", "value": "right"}]}


def flags_annotation(name: str, kind_regex: str = ".*", color: str = "red", *,
                     severity_regex: str = ".*") -> Annotation:
    """Flag events (open, update, close) of the selected sites as annotations."""
    return Annotation(
        name=name,
        influxql=('SELECT "summary", "flag_id", "kind", "severity", "status" FROM "flags" '
                  f'WHERE $timeFilter AND "kind" =~ /^{kind_regex}$/ '
                  f'AND "severity" =~ /^{severity_regex}$/ AND {by_site}'),
        text_column="summary",
        tags_columns=("kind", "severity", "status"),
        color=color,
    )


def flags_table(title: str, kind_regex: str = ".*", *, only_open: bool = True,
                width: int = 24, height: int = 8, extra_filter: str = "") -> Panel:
    """The latest state of each flag series (kind, site, cell, supplier) of the selected sites."""
    where = f'$timeFilter AND "kind" =~ /^{kind_regex}$/ AND {by_site}{extra_filter}'
    inner = ('SELECT last("flag_id") AS "flag_id", last("summary") AS "summary", '
             'last("excess_cny") AS "excess_cny", last("open") AS "open" '
             f'FROM "flags" WHERE {where} '
             'GROUP BY "kind", "site_id", "cell_id", "supplier_id", "severity"')
    outer_where = ' WHERE "open" = 1' if only_open else ""
    q = ('SELECT "flag_id", "summary", "excess_cny", "open" '
         f'FROM ({inner}){outer_where} '
         'GROUP BY "kind", "site_id", "cell_id", "supplier_id", "severity"')
    return Panel(
        title, "table", [Query(q, result_format="table")], width=width, height=height,
        description="Latest state of each flag (per kind, site, cell and supplier). "
                    "Evidence and review: `sitetwin flags show <flag_id>`.",
        options={"showHeader": True, "sortBy": [{"displayName": "excess_cny", "desc": True}]},
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
            "basemap": {"type": "default", "name": "Basemap", "config": {}},
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
