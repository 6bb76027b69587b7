"""Running dashboard queries the way Grafana would, and checking them against what was written."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from dashboards.build import render

DASHBOARDS = [json.loads(text) for path, text in render().items() if path.endswith(".json")]
# Variables whose "All" is the list of their values (no allValue): the county's sites.
ALL_IS_LIST = {v["name"] for d in DASHBOARDS for v in d["templating"]["list"]
               if v.get("includeAll") and "allValue" not in v}


def variable_values(influxdb, db: str, name: str, values: Mapping[str, str]) -> list[str]:
    """What a dashboard variable lists, given the values of the variables it depends on."""
    query = next(v["query"] for d in DASHBOARDS for v in d["templating"]["list"]
                 if v["name"] == name)
    for other, value in values.items():
        query = query.replace(f"${other}", value)
    return sorted({row[1] for row in run(influxdb, db, query)})


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, where, InfluxQL) of every annotation and panel query."""
    out = []
    for d in DASHBOARDS:
        for a in d["annotations"]["list"]:
            if not a.get("builtIn"):
                out.append((d["uid"], f"annotation {a['name']}", a["query"]))
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((d["uid"], f"{p['title']} [{t['refId']}]", t["query"]))
    return out


def _escape(value: str) -> str:
    return re.sub(r"([\\/.^$*+?()\[\]{}|-])", r"\\\1", value)


def substitute(query: str, values: Mapping[str, str | Sequence[str]], start: datetime,
               end: datetime, *, interval: str, all_values: bool,
               all_lists: Mapping[str, Sequence[str]] | None = None) -> str:
    """Grafana's interpolation for InfluxDB: regex-escaped values, several values as
    ``(a|b)``, "All" as ``.*``; ``$timeFilter`` in epoch milliseconds; ``$__interval``.

    ``all_lists``: variables without an ``allValue`` (``$site``), whose "All" is every
    value the variable lists, as Grafana sends it."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    query = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    query = query.replace("$__interval", interval)
    for name, value in values.items():
        if all_values and all_lists and name in all_lists:
            text = "(" + "|".join(_escape(v) for v in all_lists[name]) + ")"
        elif all_values:
            text = ".*"
        elif isinstance(value, str):
            text = _escape(value)
        else:
            text = "(" + "|".join(_escape(v) for v in value) + ")"
        query = re.sub(rf"\${name}\b", lambda _m, t=text: t, query)
    assert not re.search(r"\$[A-Za-z_{]", query), f"unsubstituted variable in {query}"
    return query


def schema(influxdb, db: str) -> dict[str, set[str]]:
    """Measurement -> the field and tag keys written to it."""
    out: dict[str, set[str]] = {}
    for q in ("SHOW FIELD KEYS", "SHOW TAG KEYS"):
        for s in influxdb.query(q, db=db)["results"][0].get("series", []):
            out.setdefault(s["name"], set()).update(v[0] for v in s["values"])
    return out


def run(influxdb, db: str, q: str) -> list:
    result = influxdb.query(q, db=db)["results"][0]
    assert "error" not in result, f"InfluxDB refused {q!r}: {result['error']}"
    return [row for s in result.get("series", []) for row in s["values"]]


def records(influxdb, db: str, q: str) -> list[dict]:
    """Rows as dicts of column -> value, with each series' tags added."""
    result = influxdb.query(q, db=db)["results"][0]
    assert "error" not in result, f"InfluxDB refused {q!r}: {result['error']}"
    return [{**s.get("tags", {}), **dict(zip(s["columns"], row, strict=True))}
            for s in result.get("series", []) for row in s["values"]]


def check_query(influxdb, db: str, written: Mapping[str, set[str]], where: str, q: str, *,
                may_be_absent: frozenset[str] = frozenset()) -> None:
    """``q`` names only measurements, fields and tags that were written (or its own aliases,
    or ``may_be_absent``), runs without error, and returns rows."""
    measurements = set(re.findall(r'FROM\s+"([^"]+)"', q))
    assert measurements, f"{where}: no measurement in {q}"
    unknown = measurements - set(written)
    assert not unknown, f"{where}: measurement(s) {unknown} are not written by the pipeline"
    known = set().union(*(written[m] for m in measurements)) | measurements
    aliases = set(re.findall(r'AS\s+"([^"]+)"', q))
    names = set(re.findall(r'"([^"]+)"', q))
    assert names <= known | aliases | may_be_absent, (
        f"{where}: names {sorted(names - known - aliases - may_be_absent)} are neither written to "
        f"{sorted(measurements)} nor defined by the query")
    assert run(influxdb, db, q), f"{where}: no rows for {q}"
