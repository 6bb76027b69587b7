"""A small, typed model of a Grafana dashboard, rendered to Grafana's JSON model.

Plain frozen dataclasses rather than grafana-foundation-sdk: the SDK's
releases are epoch-versioned per Grafana version (an unpinned install picks
an old build), it models every panel option of every Grafana version, and we
need about a dozen fields.  Here a definition reads like the dashboard it
makes, and rendering is one pure function whose output is committed and
diffed.

Layout is automatic: panels flow left to right on Grafana's 24-column grid
and wrap; a ``Row`` starts a new line.  Every query is raw InfluxQL against
one datasource, identified by uid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dashboards.display import Display, resolve

__all__ = [
    "GRID_COLUMNS",
    "Annotation",
    "Dashboard",
    "Link",
    "Panel",
    "Query",
    "Row",
    "Variable",
]

GRID_COLUMNS = 24
SCHEMA_VERSION = 39  # Grafana 10.4 / 11 dashboard JSON model
DEFAULT_DISPLAY = Display()

ResultFormat = Literal["time_series", "table"]


@dataclass(frozen=True)
class Query:
    """One raw InfluxQL target of a panel."""

    influxql: str
    ref_id: str = "A"
    result_format: ResultFormat = "time_series"
    alias: str = ""


@dataclass(frozen=True)
class Link:
    """A link shown on a panel or on each table row (``${__data.fields.x}`` allowed)."""

    title: str
    url: str


@dataclass(frozen=True)
class Panel:
    """A Grafana panel: ``kind`` is the panel type (timeseries, stat, table, geomap...)."""

    title: str
    kind: str
    queries: Sequence[Query]
    width: int = 12
    height: int = 8
    unit: str = ""
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: Sequence[Mapping[str, Any]] = ()
    transformations: Sequence[Mapping[str, Any]] = ()
    links: Sequence[Link] = ()
    data_links: Sequence[Link] = ()


@dataclass(frozen=True)
class Row:
    """A collapsible row header; the panels after it start on a new line."""

    title: str


@dataclass(frozen=True)
class Variable:
    """A template variable filled by a ``SHOW TAG VALUES`` metaquery."""

    name: str
    label: str
    influxql: str
    multi: bool = True
    include_all: bool = True
    # What "All" sends: ".*" (short), or None for every value the variable lists, so that
    # "All" of a variable filtered by another (the sites of a county) keeps that filter.
    all_value: str | None = ".*"


@dataclass(frozen=True)
class Annotation:
    """Events drawn on every time series panel, from an InfluxQL query returning a table."""

    name: str
    influxql: str
    text_column: str
    tags_columns: Sequence[str] = ()
    time_end_column: str = ""  # a column of epoch ms: each row is a region, not a mark
    color: str = "red"


@dataclass(frozen=True)
class Dashboard:
    """A whole dashboard; ``uid`` is stable so pushing again overwrites it."""

    uid: str
    title: str
    description: str
    panels: Sequence[Panel | Row]
    variables: Sequence[Variable] = ()
    annotations: Sequence[Annotation] = ()
    tags: Sequence[str] = ()
    time_from: str = "now-6h"
    refresh: str = "1m"
    links: Sequence[Link] = ()

    def queries(self) -> list[tuple[str, Query]]:
        """Every panel query with its panel title (annotations and variables excluded)."""
        return [(p.title, q) for p in self.panels if isinstance(p, Panel) for q in p.queries]

    def render(self, datasource_uid: str, display: Display = DEFAULT_DISPLAY) -> dict[str, Any]:
        """The dashboard JSON model, as Grafana's import/provisioning expects it, with the
        time zone, map tiles and thresholds of ``display``."""
        ds = {"type": "influxdb", "uid": datasource_uid}
        return resolve({
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": display.timezone,
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "refresh": self.refresh,
            "links": [_dashboard_link(link) for link in self.links],
            "templating": {"list": [_variable(v, ds) for v in self.variables]},
            "annotations": {"list": [_builtin_annotation()]
                            + [_annotation(a, ds) for a in self.annotations]},
            "panels": _layout(self.panels, ds),
        }, display)


def _dashboard_link(link: Link) -> dict[str, Any]:
    return {"title": link.title, "type": "link", "url": link.url, "targetBlank": False,
            "includeVars": True, "keepTime": True}


def _variable(v: Variable, ds: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "query",
        "name": v.name,
        "label": v.label,
        "datasource": ds,
        "query": v.influxql,
        "definition": v.influxql,
        "refresh": 2,  # on time range change: new sites appear without a reload
        "sort": 1,
        "multi": v.multi,
        "includeAll": v.include_all,
        "current": {},
        "hide": 0,
        "options": [],
        "regex": "",
    }
    if v.include_all and v.all_value is not None:
        out["allValue"] = v.all_value
    return out


def _builtin_annotation() -> dict[str, Any]:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def _annotation(a: Annotation, ds: dict[str, str]) -> dict[str, Any]:
    """An InfluxQL annotation in both forms Grafana's InfluxDB plugin reads.

    The plugin (Grafana 8.3 and later) runs ``target`` as an annotation only when it
    says ``fromAnnotations`` and carries the column mappings; a target with a query
    but without them is never migrated from the legacy top-level keys (its
    ``prepareAnnotation`` migrates only a target without a query) and runs as a
    plain query, whose columns then map to nothing.  The top-level keys are the
    legacy form, for older Grafanas.
    """
    columns = {"textColumn": a.text_column, "tagsColumn": ",".join(a.tags_columns),
               "timeEndColumn": a.time_end_column, "titleColumn": ""}
    return {
        "name": a.name,
        "datasource": ds,
        "enable": True,
        "hide": False,
        "iconColor": a.color,
        "query": a.influxql,
        **columns,
        "target": {"query": a.influxql, "rawQuery": True, "resultFormat": "table",
                   "refId": "Anno", "datasource": ds, "fromAnnotations": True,
                   "queryType": "tags", "name": a.name, **columns,
                   "limit": 0, "matchAny": False, "tags": [], "type": ""},
    }


def _target(q: Query, ds: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "refId": q.ref_id,
        "datasource": ds,
        "query": q.influxql,
        "rawQuery": True,
        "resultFormat": q.result_format,
    }
    if q.alias:
        out["alias"] = q.alias
    return out


def _panel(p: Panel, ds: dict[str, str], panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = dict(p.defaults)
    if p.unit:
        defaults["unit"] = p.unit
    if p.data_links:
        defaults["links"] = [{"title": link.title, "url": link.url} for link in p.data_links]
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
        "datasource": ds,
        "targets": [_target(q, ds) for q in p.queries],
        "fieldConfig": {"defaults": defaults, "overrides": [dict(o) for o in p.overrides]},
        "options": dict(p.options),
        "transformations": [dict(t) for t in p.transformations],
        "links": [{"title": link.title, "url": link.url} for link in p.links],
    }


def _layout(items: Sequence[Panel | Row], ds: dict[str, str]) -> list[dict[str, Any]]:
    """Place panels like Grafana's gravity: each goes as high as it fits, leftmost on a tie.

    A ``Row`` spans the grid below everything placed so far; panels after it stay below it.
    """
    out: list[dict[str, Any]] = []
    skyline = [0] * GRID_COLUMNS  # first free y of each column
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y = max(skyline)
            out.append({"id": panel_id, "type": "row", "title": item.title, "collapsed": False,
                        "gridPos": {"x": 0, "y": y, "w": GRID_COLUMNS, "h": 1}, "panels": []})
            skyline = [y + 1] * GRID_COLUMNS
            continue
        width = min(max(item.width, 1), GRID_COLUMNS)
        x, y = min(((max(skyline[x:x + width]), x) for x in range(GRID_COLUMNS - width + 1)),
                   key=lambda yx: (yx[0], yx[1]))[::-1]
        out.append(_panel(item, ds, panel_id, x, y))
        skyline[x:x + width] = [y + item.height] * width
    return out
