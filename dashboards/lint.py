"""Structural checks on rendered dashboards: what Grafana would only show as a broken panel.

``problems`` takes the rendered JSON models (not the Python definitions), so
it checks exactly what is committed and uploaded.  It returns one readable
line per problem; an empty list means the dashboards pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from dashboards.model import GRID_COLUMNS

__all__ = ["BUILTIN_VARIABLES", "problems", "variables_used"]

# Grafana's own variables, and the InfluxDB alias patterns ($col, $tag_x, $m).
BUILTIN_VARIABLES = frozenset({
    "timeFilter", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
    "__from", "__to", "__rate_interval", "__dashboard", "__org", "__user", "__data",
    "__url_time_range", "__field", "__series", "__value", "__name", "__all_variables",
    "col", "m", "measurement",
})
_GRAFANA_DS = {"grafana", "-- Grafana --"}
_VAR = re.compile(r"\$\{([A-Za-z0-9_.]+)(?::[^}]*)?\}"  # ${var} and ${var:format}
                  r"|\$([A-Za-z_][A-Za-z0-9_]*)"  # $var
                  r"|\[\[([A-Za-z0-9_]+)\]\]")  # [[var]] (old syntax)


def variables_used(text: str) -> set[str]:
    """Names of the ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` references in a text."""
    names = set()
    for m in _VAR.finditer(text):
        name = m.group(1) or m.group(2) or m.group(3)
        names.add(name.split(".")[0])
    return names


def _is_builtin(name: str) -> bool:
    return name in BUILTIN_VARIABLES or name.startswith("tag_")


def _queries(d: Mapping[str, Any]) -> Iterable[tuple[str, str, Mapping[str, Any] | None, bool]]:
    """(where, query text, datasource ref, needs a time filter) for everything that queries."""
    for v in d["templating"]["list"]:
        yield f"variable ${v['name']}", v.get("query", ""), v.get("datasource"), False
    for a in d["annotations"]["list"]:
        if a.get("builtIn"):
            continue
        yield f"annotation {a['name']!r}", a.get("query", ""), a.get("datasource"), True
    for p in d["panels"]:
        for t in p.get("targets", []):
            yield (f"panel {p['title']!r} query {t['refId']}", t.get("query", ""),
                   t.get("datasource") or p.get("datasource"), True)


def _grid(d: Mapping[str, Any]) -> list[str]:
    out = []
    boxes: list[tuple[str, int, int, int, int]] = []
    for p in d["panels"]:
        g = p["gridPos"]
        x, y, w, h = g["x"], g["y"], g["w"], g["h"]
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > GRID_COLUMNS:
            out.append(f"panel {p['title']!r} at {g} is outside the {GRID_COLUMNS}-column grid")
        for title, bx, by, bw, bh in boxes:
            if x < bx + bw and bx < x + w and y < by + bh and by < y + h:
                out.append(f"panel {p['title']!r} overlaps panel {title!r}")
        boxes.append((p["title"], x, y, w, h))
    return out


def problems(dashboards: Iterable[Mapping[str, Any]], datasource_uids: Iterable[str]) -> list[str]:
    """Every structural problem in the rendered dashboards, as ``"<uid>: <what>"`` lines."""
    known_ds = set(datasource_uids)
    out: list[str] = []
    seen_uids: set[str] = set()
    for d in dashboards:
        uid = d.get("uid", "")
        if not uid or uid in seen_uids:
            out.append(f"{uid or d.get('title')}: dashboard uid missing or not unique")
        seen_uids.add(uid)
        ids = [p["id"] for p in d["panels"]]
        if len(ids) != len(set(ids)):
            out.append(f"{uid}: panel ids are not unique")
        defined = {v["name"] for v in d["templating"]["list"]}
        for where, text, ds, needs_time in _queries(d):
            if not text.strip():
                out.append(f"{uid}: {where} is empty")
                continue
            if not ds or (ds.get("uid") not in known_ds and ds.get("uid") not in _GRAFANA_DS):
                out.append(f"{uid}: {where} uses datasource {ds!r}, not in provisioning")
            if needs_time and "$timeFilter" not in text:
                out.append(f"{uid}: {where} has no $timeFilter")
            if not needs_time and not text.lstrip().upper().startswith("SHOW "):
                out.append(f"{uid}: {where} is not a SHOW metaquery")
            if re.search(r"\bfrom\s*\(\s*bucket", text):
                out.append(f"{uid}: {where} is Flux, not InfluxQL")
        texts = [text for _, text, _, _ in _queries(d)]
        for p in d["panels"]:
            texts += [t.get("alias", "") for t in p.get("targets", [])]
            texts += [link["url"] for link in p.get("links", [])]
            texts += [link["url"] for link in p.get("fieldConfig", {}).get("defaults", {})
                      .get("links", [])]
        for name in sorted(set().union(*map(variables_used, texts)) if texts else set()):
            if name not in defined and not _is_builtin(name):
                out.append(f"{uid}: variable ${name} is used but not defined")
        for name in sorted(defined):
            if name not in set().union(*map(variables_used, texts)):
                out.append(f"{uid}: variable ${name} is defined but never used")
        out += [f"{uid}: {line}" for line in _grid(d)]
    return out
