"""Dashboards as code: the committed files are fresh, and the structure passes lint."""

from __future__ import annotations

import copy
import json
import os
import re

import orjson
import pytest

from dashboards.build import BUILT_DIR, DASHBOARDS, DATASOURCE_FILE, PROVIDER_FILE, render
from dashboards.lint import problems, variables_used
from dashboards.provisioning import Target
from sitetwin.cli import main


def _rendered() -> list[dict]:
    return [json.loads(t) for p, t in render().items() if p.endswith(".json")]


def _provisioned_uids(yaml_text: str) -> set[str]:
    """Datasource uids declared (not commented out) in a provisioning file."""
    return set(re.findall(r'^\s+uid:\s*"?([^"\s]+)"?\s*$', yaml_text, re.MULTILINE))


def test_committed_built_files_are_not_stale(tmp_path):
    """Rebuild with the default target and compare with dashboards/built, file by file."""
    fresh = render(Target())
    committed = {str(p.relative_to(BUILT_DIR)): p.read_text(encoding="utf-8")
                 for p in BUILT_DIR.rglob("*") if p.is_file()}
    assert set(committed) == set(fresh), "run: sitetwin dashboards build --out dashboards/built"
    stale = [path for path, text in fresh.items() if committed[path] != text]
    assert not stale, f"stale: {stale}; run sitetwin dashboards build --out dashboards/built"


def test_cli_build_writes_the_same_files_and_reports_them(tmp_path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SITETWIN_")]:
        monkeypatch.delenv(key)
    assert main(["dashboards", "build", "--out", str(tmp_path / "out"), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert sorted(report["files"]) == sorted(render())
    for rel, text in render().items():
        assert (tmp_path / "out" / rel).read_text(encoding="utf-8") == text


def test_cli_build_follows_configuration(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SITETWIN_GRAFANA__DATASOURCE_UID", "influx-prod")
    monkeypatch.setenv("SITETWIN_INFLUXDB__DATABASE", "city")
    out = tmp_path / "out"
    assert main(["dashboards", "build", "--out", str(out), "--dashboards-path", "/srv/d"]) == 0
    assert "load them into a Grafana" in capsys.readouterr().out
    ds_yaml = (out / DATASOURCE_FILE).read_text()
    assert _provisioned_uids(ds_yaml) == {"influx-prod"} and 'dbName: "city"' in ds_yaml
    assert 'path: "/srv/d"' in (out / PROVIDER_FILE).read_text()
    noc = json.loads((out / "dashboards/sitetwin-noc.json").read_text())
    assert {t["datasource"]["uid"] for p in noc["panels"] for t in p.get("targets", [])} == {
        "influx-prod"}


def test_cli_build_refuses_a_file_as_output_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["dashboards", "build", "--out", str(tmp_path / "f")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_rendered_dashboards_pass_lint():
    uids = _provisioned_uids(render()[DATASOURCE_FILE])
    assert uids == {"sitetwin-influxdb"}
    assert problems(_rendered(), uids) == []


def test_five_dashboards_with_the_shared_variables():
    titles = {d.title for d in DASHBOARDS}
    assert titles == {"NOC overview", "Site detail", "Interference", "Power & reservations",
                      "Overcharging review"}
    for d in _rendered():
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:2] == ["county", "site"], d["uid"]
        for v in d["templating"]["list"]:
            assert v["query"].startswith("SHOW TAG VALUES")
            assert v["datasource"]["type"] == "influxdb"
    interference = next(d for d in _rendered() if d["uid"] == "sitetwin-interference")
    assert [v["name"] for v in interference["templating"]["list"]] == [
        "county", "site", "cell", "band"]


def test_the_prb_heatmap_reads_every_prb_field():
    d = next(d for d in _rendered() if d["uid"] == "sitetwin-interference")
    heatmap = next(p for p in d["panels"] if p["type"] == "heatmap")
    fields = re.findall(r'"(prb_\d{3})"', heatmap["targets"][0]["query"])
    assert fields == [f"prb_{i:03d}" for i in range(275)]


def test_variables_used_understands_every_grafana_syntax():
    assert variables_used('"x" =~ /^$site$/ AND [[cell]] ${band:regex} ${__data.fields.a}') == {
        "site", "cell", "band", "__data"}


# -- lint catches each kind of mistake ---------------------------------------------------------

def _first_target(d):
    return next(p for p in d["panels"] if p.get("targets"))["targets"][0]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda ds: ds[1].update(uid=ds[0]["uid"]), "uid missing or not unique"),
    (lambda ds: _first_target(ds[0]).update(query=_first_target(ds[0])["query"].replace(
        "$timeFilter", "time > now() - 1h")), "has no $timeFilter"),
    (lambda ds: _first_target(ds[0]).update(datasource={"type": "influxdb", "uid": "other"}),
     "not in provisioning"),
    (lambda ds: _first_target(ds[0]).update(query=_first_target(ds[0])["query"] + " AND $feeder"),
     "variable $feeder is used but not defined"),
    (lambda ds: ds[0]["templating"]["list"].append(
        {"name": "unused", "query": "SHOW TAG VALUES WITH KEY = \"x\"",
         "datasource": {"type": "influxdb", "uid": "sitetwin-influxdb"}}),
     "variable $unused is defined but never used"),
    (lambda ds: ds[0]["templating"]["list"][0].update(query='SELECT "x" FROM "y"'),
     "is not a SHOW metaquery"),
    (lambda ds: ds[0]["panels"][1]["gridPos"].update(x=ds[0]["panels"][0]["gridPos"]["x"],
                                                      y=ds[0]["panels"][0]["gridPos"]["y"]),
     "overlaps panel"),
    (lambda ds: ds[0]["panels"][0]["gridPos"].update(x=20), "outside the 24-column grid"),
    (lambda ds: ds[0]["panels"][2].update(id=ds[0]["panels"][0]["id"]), "panel ids are not unique"),
    (lambda ds: _first_target(ds[0]).update(query='from(bucket: "b") |> range($timeFilter)'),
     "is Flux"),
])
def test_lint_reports(mutate, expected):
    dashboards = copy.deepcopy(_rendered())
    mutate(dashboards)
    found = problems(dashboards, {"sitetwin-influxdb"})
    assert any(expected in line for line in found), found


def test_public_api_is_small_and_pinned():
    import dashboards

    assert dashboards.__all__ == sorted(dashboards.__all__)
    assert set(dashboards.__all__) == {
        "BUILT_DIR", "DASHBOARDS", "DashboardError", "DefinitionError", "GrafanaClientMissing",
        "PushError", "Target", "problems", "push", "render", "write"}


def test_build_refuses_a_definition_that_fails_lint():
    from dataclasses import replace

    from dashboards.errors import DefinitionError

    broken = replace(DASHBOARDS[0], variables=DASHBOARDS[0].variables[:1])  # drops $site
    with pytest.raises(DefinitionError, match=r"variable \$site is used but not defined"):
        render(Target(), [broken, *DASHBOARDS[1:]])
