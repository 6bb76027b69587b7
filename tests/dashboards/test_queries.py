"""Every panel, annotation and variable query, executed against the demo data in a real InfluxDB.

Variables are substituted as Grafana does for InfluxDB (regex values; "All"
is ``.*``), ``$timeFilter`` with the demo's time range in epoch milliseconds
and ``$__interval`` with ``1s``.  Each query must run without error and
return rows, and may only name measurements, fields and tags that the
pipeline wrote (or aliases it defines itself).
"""

from __future__ import annotations

import pytest

from tests.dashboards.checks import DASHBOARDS as _DASHBOARDS
from tests.dashboards.checks import all_queries, check_query, records, run
from tests.dashboards.checks import schema as written_schema
from tests.dashboards.checks import substitute as _substitute
from tests.dashboards.conftest import Demo

pytestmark = pytest.mark.integration

QUERIES = all_queries()


def substitute(query: str, demo: Demo, *, all_values: bool | str) -> str:
    """``all_values``: False = the demo's values, True = "All", "several" = two of each."""
    values: dict = {"county": demo.county, "site": demo.site, "cell": demo.cell,
                    "band": demo.band}
    if all_values == "several":
        values = {"county": [demo.county, "Gongshu"], "site": [demo.site, "HZ-GS-001"],
                  "cell": [demo.cell, "HZ-GS-001-1"], "band": [demo.band, "n28"]}
    return _substitute(query, values, demo.start, demo.end, interval="1s",
                       all_values=all_values is True)


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
    assert sorted(r["flag_id"] for r in open_flags) == [1, 2, 3, 4, 5, 6]  # 7 was resolved
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
    assert [(r["site_id"], r["cell_id"], r["open"]) for r in incidents] == [
        ("HZ-XH-001", "HZ-XH-001-1", 1)]
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
