"""The dashboards draw the rules' configured thresholds, and Grafana's alert rules are sound."""

from __future__ import annotations

import json

import pytest
import yaml

from core.settings import ConfigError
from dashboards.build import ALERTING_FILE, render
from dashboards.display import Display, Setting
from dashboards.provisioning import Target
from rules.errors import ThresholdError
from sitetwin.commands.dashboards import display as display_of
from sitetwin.config import load_settings


def _steps(panel: dict) -> list:
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def _panel(files: dict, uid: str, title: str) -> dict:
    d = json.loads(files[f"dashboards/{uid}.json"])
    return next(p for p in d["panels"] if p["title"] == title)


def test_defaults_are_the_rules_defaults():
    files = render()
    levels = _steps(_panel(files, "sitetwin-interference", "Uplink interference per cell"))
    assert levels == [None, -110.0, -105.0]  # InterferenceThresholds warning/critical_dbm
    assert _steps(_panel(files, "sitetwin-site", "Battery")) == [None, 30.0]
    assert Display() == display_of(load_settings(None))


def test_configured_thresholds_and_zone_reach_the_dashboards_and_alerts():
    settings = load_settings(None, rules={"interference": {"warning_dbm": -100,
                                                           "critical_dbm": -90},
                                          "mains_failure": {"soc_critical_pct": 45}},
                             grafana={"timezone": "time", "alert_for": "10m"},
                             time={"zone": "Asia/Urumqi"})
    files = render(Target(display=display_of(settings)))
    for uid in ("sitetwin-interference", "sitetwin-site"):
        d = json.loads(files[f"dashboards/{uid}.json"])
        assert d["timezone"] == "Asia/Urumqi"
        panel = next(p for p in d["panels"] if p["title"].startswith("Uplink interference"))
        assert _steps(panel) == [None, -100.0, -90.0]
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}
    assert _steps(_panel(files, "sitetwin-site", "Battery")) == [None, 45.0]
    rules = yaml.safe_load(files[ALERTING_FILE])["groups"][0]["rules"]
    battery = next(r for r in rules if r["uid"] == "sitetwin-battery-critical")
    assert '"soc" < 45' in battery["data"][0]["model"]["query"] and battery["for"] == "600s"


def test_a_bad_threshold_or_setting_is_refused_with_its_key():
    with pytest.raises(ThresholdError, match=r"rules\.interference\.warning_dbm"):
        display_of(load_settings(None, rules={"interference": {"warning_dbm": "x"}}))
    with pytest.raises(ConfigError, match="map_tiles"):
        load_settings(None, grafana={"map_tiles": "tiles.local/{z}/{x}.png"})
    with pytest.raises(ConfigError, match="timezone"):
        load_settings(None, grafana={"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="no display setting"):
        Setting("soc_critical")


def test_alert_rules_file_is_grafana_provisioning_with_no_contact_points():
    doc = yaml.safe_load(render()[ALERTING_FILE])
    assert doc["apiVersion"] == 1 and set(doc) == {"apiVersion", "groups"}  # no contactPoints
    (group,) = doc["groups"]
    assert (group["folder"], group["interval"]) == ("sitetwin", "60s")
    for rule in group["rules"]:
        assert rule["condition"] == "C" and rule["labels"]["source"] == "sitetwin"
        a, b, c = rule["data"]
        assert a["datasourceUid"] == "sitetwin-influxdb" and "$timeFilter" in a["model"]["query"]
        assert (b["model"]["type"], b["model"]["expression"]) == ("reduce", "A")
        assert (c["model"]["type"], c["model"]["expression"]) == ("threshold", "B")
