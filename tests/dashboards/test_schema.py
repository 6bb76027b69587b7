"""Every built dashboard against Grafana's published dashboard schema (grafana-foundation-sdk).

The SDK's models are generated from Grafana's schema (CUE/OpenAPI) for one
Grafana release; its builds are epoch-versioned per release, so the test
extra pins the Grafana 11.6 build.  ``Dashboard.from_json`` decodes a
dashboard, each panel's options and field config through that panel type's
model; ``to_json`` writes back only what the schema knows.  So a key that
comes back missing is a key Grafana's schema does not have (a misspelling, an
option of another panel type), and a value that comes back different was
coerced.  The only keys allowed to vanish are the InfluxDB datasource's own
annotation fields and the variables' ``definition``, which the core schema
leaves to the datasource plugin.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from dashboards.build import render

# Datasource-plugin keys outside the core dashboard schema (the InfluxDB plugin reads them).
PLUGIN_KEYS = [
    re.compile(r"^\.annotations\.list\[\d+\]\."
               r"(query|textColumn|tagsColumn|timeEndColumn|titleColumn)$"),
    re.compile(r"^\.annotations\.list\[\d+\]\.target\.\w+$"),
    re.compile(r"^\.templating\.list\[\d+\]\.definition$"),
]


def _sdk():
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel-type and query-type models
    return Dashboard


def _encode(obj: Any) -> Any:
    return obj.to_json() if hasattr(obj, "to_json") else obj


def _lost(written: Any, read: Any, path: str = "") -> list[str]:
    """Paths of ``written`` that the schema round trip dropped or changed."""
    if isinstance(written, dict):
        if not isinstance(read, dict):
            return [f"{path}: {type(read).__name__} instead of an object"]
        return [p for k, v in written.items()
                for p in ([f"{path}.{k}"] if k not in read else _lost(v, read[k], f"{path}.{k}"))]
    if isinstance(written, list):
        if not isinstance(read, list) or len(read) != len(written):
            return [f"{path}: list changed"]
        return [p for i, (a, b) in enumerate(zip(written, read, strict=False))
                for p in _lost(a, b, f"{path}[{i}]")]
    return [] if written == read else [f"{path}: {written!r} read as {read!r}"]


def schema_problems(dashboard: dict[str, Any]) -> list[str]:
    try:
        model = _sdk().from_json(copy.deepcopy(dashboard))
        read = json.loads(json.dumps(model.to_json(), default=_encode))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"not a dashboard of the schema: {type(exc).__name__}: {exc}"]
    return [p for p in _lost(dashboard, read)
            if not any(rx.match(p.split(":")[0]) for rx in PLUGIN_KEYS)]


BUILT = {path: json.loads(text) for path, text in render().items() if path.endswith(".json")}


@pytest.mark.parametrize("path", sorted(BUILT))
def test_built_dashboard_matches_grafanas_schema(path):
    assert schema_problems(BUILT[path]) == []


def test_the_schema_check_catches_a_misspelled_key_and_a_wrong_type():
    noc = BUILT["dashboards/sitetwin-noc.json"]
    bad = copy.deepcopy(noc)
    panel = next(p for p in bad["panels"] if p["type"] == "geomap")
    panel["options"]["basemap"]["confg"] = panel["options"]["basemap"].pop("config")
    assert any("basemap.confg" in p for p in schema_problems(bad))
    bad = copy.deepcopy(noc)
    bad["panels"][0]["fieldConfg"] = bad["panels"][0].pop("fieldConfig")
    assert any("fieldConfg" in p for p in schema_problems(bad))
    bad = copy.deepcopy(noc)
    bad["panels"][0]["gridPos"] = "0,0,12,8"
    assert schema_problems(bad)


def test_the_time_zone_and_the_map_tiles_follow_the_configuration():
    from dashboards.display import Display
    from dashboards.provisioning import Target

    display = Display(timezone="Asia/Shanghai", map_tiles="http://tiles.local/{z}/{x}/{y}.png",
                      map_attribution="in-house")
    files = render(Target(display=display))
    noc = json.loads(files["dashboards/sitetwin-noc.json"])
    assert noc["timezone"] == "Asia/Shanghai"
    geomap = next(p for p in noc["panels"] if p["type"] == "geomap")
    assert geomap["options"]["basemap"] == {
        "type": "xyz", "name": "Basemap",
        "config": {"url": "http://tiles.local/{z}/{x}/{y}.png", "attribution": "in-house"}}
    assert schema_problems(noc) == []
    assert all(json.loads(t)["timezone"] == "browser" for p, t in render().items()
               if p.endswith(".json"))
