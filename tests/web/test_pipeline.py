"""``/api/v1/pipeline``: the collectors' counters, read back from a real InfluxDB."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from connectors.influx import InfluxWriter
from connectors.metrics import PipelineMetrics
from core.settings import load_settings
from sitetwin.services import free_port
from tests.web.conftest import bearer, no_peaks
from web.app import create_app

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("twin_url", ["sqlite"], indirect=True)]


def test_pipeline_counters_per_collector(world, influxdb, influx_db, tmp_path):
    now = datetime.now(UTC)
    writer = InfluxWriter(influxdb.url, database=influx_db)
    for name, received in (("collector-1", 120), ("collector-2", 7)):
        m = PipelineMetrics(collector=name)
        m.received_msgs = received
        m.written_points = received * 3
        m.rejected_by_reason["bad_json"] = 2
        assert not writer.write(m.point(spool_bytes=0, spool_batches=0,
                                        now=now.timestamp()).encode()).rejected
    writer.close()
    settings = load_settings(None, services={"state_dir": str(tmp_path / "state")},
                             influxdb={"url": influxdb.url, "database": influx_db})
    with TestClient(create_app(settings, world.store, peaks=no_peaks)) as client:
        r = client.get("/api/v1/pipeline", headers=bearer(world, "noc"))
        assert r.status_code == 200, r.text
        got = r.json()["collectors"]
        assert [c["collector"] for c in got] == ["collector-1", "collector-2"]
        assert got[0]["counters"]["received_msgs"] == 120
        assert got[0]["counters"]["written_points"] == 360
        assert got[1]["counters"]["rejected_bad_json"] == 2
        assert 0 <= got[0]["age_s"] < 300

    gone = load_settings(None, services={"state_dir": str(tmp_path / "state")},
                         influxdb={"url": f"http://127.0.0.1:{free_port()}", "timeout": "2s"})
    with TestClient(create_app(gone, world.store, peaks=no_peaks)) as client:
        r = client.get("/api/v1/pipeline", headers=bearer(world, "noc"))
        assert r.status_code == 503
        assert r.json()["type"] == "/api/v1/problems/pipeline-unavailable"
