"""The grid ledger with its peaks from a real InfluxDB (``web.pages.ledger.InfluxPeaks``)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line
from core.settings import load_settings
from tests.web.conftest import NOW, PASSWORD
from web.api.ledger import InfluxPeaks
from web.app import create_app

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("twin_url", ["sqlite"], indirect=True)]


def _power(site: str, kw: float) -> list[str]:
    out, t = [], NOW - timedelta(hours=2)
    while t < NOW:
        out.append(line("power", {"site_id": site, "meter_id": f"M-{site}"},
                        {"energy_kwh": 1000.0, "power_kw": kw}, int(t.timestamp()) * 10**9))
        t += timedelta(minutes=5)
    return out


def test_ledger_shows_peaks_and_headroom(world, influxdb, influx_db, tmp_path):
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(_power("S001", 13.0) + _power("S002", 3.0)).encode()).rejected
    writer.close()
    settings = load_settings(None, services={"state_dir": str(tmp_path / "state")},
                             influxdb={"url": influxdb.url, "database": influx_db})
    app = create_app(settings, world.store, peaks=InfluxPeaks(settings.influxdb, settings.rules), clock=lambda: NOW)
    with TestClient(app) as client:
        token = client.get("/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', token).group(1)
        assert client.post("/login", data={"username": "grid1", "password": PASSWORD,
                                           "csrf_token": csrf}).status_code == 200
        page = client.get("/ledger").text
        api = client.get("/api/v1/ledger").json()
    assert 'id="peaks-error"' not in page
    rows = {m.group(1): m.group(0) for m in re.finditer(
        r'<tr class="level-site[^"]*"><td><a href="/sites/(\w+)">.*?</tr>', page, re.S)}
    # S001: 12 kW reserved, 13 kW peak: 1 kW over, shown as over; S002: 8 reserved, 3 peak.
    assert "over" in rows["S001"].split(">")[0] and "13.0" in rows["S001"] and "-1.0" in rows["S001"]
    assert "over" not in rows["S002"].split(">")[0] and "5.0" in rows["S002"]
    feeder = re.search(r'<tr class="level-feeder"><th colspan="2">F-10</th>(.*?)</tr>', page, re.S)
    cells = re.findall(r"<td>([^<]*)</td>", feeder.group(1))
    # declared, reserved, coincident peak; headroom is rating - coincident peak: no rating, none
    assert cells[:4] == ["16.0", "20.0", "16.0", "—"]
    # The map: S001 is over its reservation; S002 uses 3 of 8 kW; S003 is not built yet.
    points = {site: kind for kind, site in re.findall(r'class="pt-(\w+)" data-site="(\w+)"', page)}
    assert points == {"S001": "over", "S002": "ok", "S003": "ok"}
    # The page's JSON twin: the same figures.
    assert api["peaks"] == "ok"
    s001 = next(r for r in api["rows"] if r["level"] == "site" and r["site_id"] == "S001")
    assert (s001["reserved_kw"], s001["peak_kw"], s001["headroom_kw"]) == (12.0, 13.0, -1.0)
    f10 = next(r for r in api["rows"] if r["level"] == "feeder" and r["feeder"] == "F-10")
    assert (f10["peak_kw"], f10["headroom_kw"], f10["sites"], f10["substation"]) == (16.0, None, 2, "SUB-A")
