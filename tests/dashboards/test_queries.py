"""Every panel, annotation and variable query, executed against the demo data in a real InfluxDB.

Variables are substituted as Grafana does for InfluxDB (regex values; "All"
is ``.*``), ``$timeFilter`` with the demo's time range in epoch milliseconds
and ``$__interval`` with ``1s``.  Each query must run without error and
return rows, and may only name measurements, fields and tags that the
pipeline wrote (or aliases it defines itself).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.dashboards.checks import ALL_IS_LIST, all_queries, check_query, records, run, variable_values
from tests.dashboards.checks import DASHBOARDS as _DASHBOARDS
from tests.dashboards.checks import schema as written_schema
from tests.dashboards.checks import substitute as _substitute
from tests.dashboards.conftest import SITES, Demo

pytestmark = pytest.mark.integration

QUERIES = all_queries()


def substitute(query: str, demo: Demo, *, all_values: bool | str,
               sites: list[str] | None = None) -> str:
    """``all_values``: False = the demo's values, True = "All", "several" = two of each.

    With "All", ``$site`` is the list of ``sites`` (default: every site), as Grafana sends
    it for a variable without an ``allValue``."""
    values: dict = {"county": demo.county, "site": demo.site, "cell": demo.cell,
                    "band": demo.band}
    if all_values == "several":
        values = {"county": [demo.county, "Gongshu"], "site": [demo.site, "HZ-GS-001"],
                  "cell": [demo.cell, "HZ-GS-001-1"], "band": [demo.band, "n28"]}
    lists = {"site": sites if sites is not None else [s.site_id for s in SITES]}
    return _substitute(query, values, demo.start, demo.end, interval="1s",
                       all_values=all_values is True, all_lists=lists)


@pytest.fixture(scope="module")
def schema(influxdb, demo) -> dict[str, set[str]]:
    return written_schema(influxdb, demo.database)


_run = run
_records = records


def test_the_pipeline_wrote_every_measurement_the_dashboards_read(schema):
    assert {"tower", "power", "interference", "interference_prb", "sitetwin_pipeline",
            "site_state", "flags"} <= set(schema)


@pytest.mark.parametrize("all_values", [False, "several", True],
                         ids=["demo-values", "several", "all"])
@pytest.mark.parametrize(("uid", "where", "query"), QUERIES,
                         ids=[f"{u}:{w}" for u, w, _ in QUERIES])
def test_query_returns_rows_and_names_only_what_the_pipeline_writes(
        influxdb, demo, schema, uid, where, query, all_values):
    check_query(influxdb, demo.database, schema, where,
                substitute(query, demo, all_values=all_values))


def test_the_data_reaches_the_panels_that_depend_on_anomalies(influxdb, demo):
    """The demo's anomalies show up where a NOC engineer would look for them."""
    by_title = {(d["uid"], p["title"]): p for d in _DASHBOARDS for p in d["panels"]}

    def records(uid, title, ref=0):
        q = substitute(by_title[(uid, title)]["targets"][ref]["query"], demo, all_values=True)
        return _records(influxdb, demo.database, q)

    on_battery = records("sitetwin-noc", "Sites on battery now")
    assert [r["site_id"] for r in on_battery] == ["HZ-XH-001"]  # mains failed at step 25
    assert on_battery[0]["battery_soc_pct"] < 100
    open_flags = records("sitetwin-noc", "Open flags")
    assert sorted(r["flag_id"] for r in open_flags) == ["1", "2", "3", "4", "5", "6"]
    counts = records("sitetwin-noc", "Online / offline / on battery")
    # HZ-GS-002 (on air, silent) is offline; HZ-GS-003 (planned, never heard) is not.
    assert (counts[0]["online"], counts[0]["offline"], counts[0]["on battery"]) == (3, 1, 1)
    per_state = {r["state"]: r["sites"]
                 for r in records("sitetwin-noc", "Sites per lifecycle state")}
    assert per_state == {"on_air": 4, "planned": 1}
    status = {r["site_id"]: r["status"]
              for r in records("sitetwin-noc", "Sites (green online, red offline, grey not on air)")}
    assert status == {"HZ-XH-001": 2, "HZ-XH-002": 2, "HZ-GS-001": 2, "HZ-GS-002": 1,
                      "HZ-GS-003": 0}
    over_time = records("sitetwin-noc", "Sites on battery / offline over time")
    assert max(r["offline"] for r in over_time if r["offline"] is not None) == 1
    incidents = records("sitetwin-interference", "Interference incidents", ref=1)
    assert [(r["site_id"], r["cell_id"], r["open"], r["severity"]) for r in incidents] == [
        ("HZ-XH-001", "HZ-XH-001-1", 1, "critical")]
    excess = {r["supplier_id"]: r["excess_cny"]
              for r in records("sitetwin-overcharging", "Excess charged per supplier")}
    assert excess == {"SUP-LANDLORD-7": 118.4, "SUP-PM-3": 261.1}


@pytest.mark.parametrize("all_values", [False, True], ids=["demo-values", "all"])
def test_variable_queries_list_the_demo_values(influxdb, demo, all_values):
    expected = {"county": demo.county, "site": demo.site, "cell": demo.cell, "band": demo.band}
    for d in _DASHBOARDS:
        for v in d["templating"]["list"]:
            q = substitute(v["query"], demo, all_values=all_values)
            values = {row[1] for row in _run(influxdb, demo.database, q)}
            assert expected[v["name"]] in values, f"{d['uid']} ${v['name']}: {sorted(values)}"
            if v["name"] == "site" and not all_values:
                assert all(s.startswith("HZ-XH-") for s in values), values  # county filter


def test_a_review_and_an_escalation_leave_one_row_per_flag_and_no_double_count(influxdb, demo):
    """Flag 1 was confirmed, 3 and 5 escalated to critical, 8 dismissed, 7 resolved: each
    flag is one row in its latest state, and money totals leave the dismissed one out."""
    by_title = {(d["uid"], p["title"]): p for d in _DASHBOARDS for p in d["panels"]}

    def rows(uid, title, ref=0):
        q = substitute(by_title[(uid, title)]["targets"][ref]["query"], demo, all_values=True)
        return _records(influxdb, demo.database, q)

    open_flags = {r["flag_id"]: r for r in rows("sitetwin-noc", "Open flags")}
    assert len(open_flags) == len(rows("sitetwin-noc", "Open flags")) == 6  # no ghost rows
    assert (open_flags["1"]["status"], open_flags["1"]["severity"]) == ("confirmed", "warning")
    assert (open_flags["3"]["severity"], open_flags["5"]["severity"]) == ("critical", "critical")
    assert open_flags["5"]["summary"] == "no telemetry for 60 min"

    site = substitute(by_title[("sitetwin-site", "Flags of this site")]["targets"][0]["query"],
                      demo, all_values=False)
    site_flags = [r["flag_id"] for r in _records(influxdb, demo.database, site)]
    assert sorted(site_flags) == ["1", "3", "4", "6"]  # HZ-XH-001's, each once

    totals = rows("sitetwin-overcharging", "Open and total excess")[0]
    assert (totals["open flags"], totals["flags"]) == (2, 3)  # 8 dismissed: not open
    excess = rows("sitetwin-overcharging", "Open and total excess", ref=1)[0]
    assert excess["excess CNY (not dismissed)"] == pytest.approx(118.4 + 261.1)
    per_flag = rows("sitetwin-overcharging", "Flags per supplier and status")
    assert sorted((r["flag_id"], r["status"]) for r in per_flag) == [
        ("1", "confirmed"), ("2", "open"), ("8", "dismissed")]


def test_flag_annotations_are_one_region_per_flag_from_opening_to_resolution(influxdb, demo):
    site = next(d for d in _DASHBOARDS if d["uid"] == "sitetwin-site")
    anno = next(a for a in site["annotations"]["list"] if not a.get("builtIn"))
    # The InfluxDB plugin reads the mappings from an annotation target marked as such.
    assert anno["target"]["fromAnnotations"] is True
    assert (anno["target"]["timeEndColumn"], anno["target"]["textColumn"]) == (
        "ended_ms", "summary")
    q = substitute(anno["query"], demo, all_values=True)
    spans = _records(influxdb, demo.database, q)
    assert len(spans) == 8  # flags 1-8, whatever their number of updates
    ended = {r["summary"]: (r["time"], r["ended_ms"]) for r in spans if r["ended_ms"]}
    assert set(ended) == {"peak 61 % of reserved", "billed 700 kWh, metered 650 kWh"}
    start_ms = int(demo.start.timestamp() * 1000) + 60_000  # the demo's minute 0

    def minute(ms: int) -> float:
        return (ms - start_ms) / 60_000

    def at(text: str) -> int:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)

    # From opening to resolution (flag 7: minutes 3 to 33) or dismissal (8: 7 to 20).
    assert [(minute(at(t)), minute(e)) for t, e in sorted(ended.values())] == [
        (3, 33), (7, 20)]
    opened = sorted(minute(at(r["time"])) for r in spans)
    assert opened == [3, 5, 6, 7, 15, 16, 25, 26]  # each flag's opening, not its updates


def test_the_county_filter_holds_on_every_panel(influxdb, demo, schema):
    """County Gongshu with "All" sites: no panel shows a site of another county, including
    the measurements without a county tag (their site filter is the county's site list)."""
    gongshu = variable_values(influxdb, demo.database, "site", {"county": "Gongshu"})
    assert gongshu == ["HZ-GS-001", "HZ-GS-002", "HZ-GS-003"]  # 003: planned, never built
    assert "site" in ALL_IS_LIST
    seen = set()
    for uid, where, query in QUERIES:
        q = substitute(query.replace("$county", "Gongshu"), demo, all_values=True,
                       sites=gongshu)
        for row in _records(influxdb, demo.database, q):
            if "site_id" in row:
                seen.add(row["site_id"])
                assert row["site_id"] in gongshu, f"{uid}: {where} shows {row['site_id']}"
    assert {"HZ-GS-001", "HZ-GS-002"} <= seen <= set(gongshu)


def test_site_names_appear_next_to_ids(influxdb, demo):
    by_title = {(d["uid"], p["title"]): p for d in _DASHBOARDS for p in d["panels"]}
    for uid, title, ref in [("sitetwin-noc", "Open flags", 1),
                            ("sitetwin-noc", "Sites (green online, red offline, grey not on air)", 0),
                            ("sitetwin-noc", "Sites on battery now", 0),
                            ("sitetwin-site", "Site", 0),
                            ("sitetwin-power", "Headroom per site (twin samples)", 0)]:
        q = substitute(by_title[(uid, title)]["targets"][ref]["query"], demo, all_values=True)
        got = {r["site_id"]: r["site_name"] for r in _records(influxdb, demo.database, q)}
        assert got and all(name == f"Demo {sid}" for sid, name in got.items()), (title, got)


def _alert_counts(influxdb, demo, target) -> dict[str, int]:
    import yaml

    from dashboards.build import ALERTING_FILE, render

    doc = yaml.safe_load(render(target)[ALERTING_FILE])
    out = {}
    for rule in doc["groups"][0]["rules"]:
        query = rule["data"][0]["model"]["query"]
        rows = run(influxdb, demo.database, substitute(query, demo, all_values=True))
        out[rule["uid"]] = rows[0][1] if rows else 0  # no row: Grafana's reduce makes it 0
    return out


def test_grafana_alert_rules_count_the_critical_conditions(influxdb, demo):
    """Two critical flags open (3 and 5, both escalated); HZ-GS-002 is on air and silent, so
    one site that should be on air is offline (HZ-GS-003, planned and silent, is not);
    HZ-XH-001's battery (58 %) is above the 30 % default and below a configured 60 %."""
    from dashboards.display import Display
    from dashboards.provisioning import Target

    assert _alert_counts(influxdb, demo, Target()) == {
        "sitetwin-critical-flags": 2, "sitetwin-sites-offline": 1,
        "sitetwin-battery-critical": 0}
    assert _alert_counts(influxdb, demo, Target(display=Display(soc_critical_pct=60)))[
        "sitetwin-battery-critical"] == 1
