"""The local-service launchers start real servers, are idempotent, and stop cleanly."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from sitetwin.cli import main
from sitetwin.services import InfluxDB, Mosquitto, ServiceError, free_port

pytestmark = pytest.mark.integration


def test_services_up_is_idempotent_and_down_stops(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SITETWIN_SERVICES__MQTT_PORT", str(free_port()))
    monkeypatch.setenv("SITETWIN_SERVICES__INFLUXDB_PORT", str(free_port()))
    monkeypatch.setenv("SITETWIN_SERVICES__INFLUXDB_RPC_PORT", str(free_port()))
    try:
        assert main(["services", "up", "--json"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert all(r["running"] and r["pid"] for r in first)
        assert main(["services", "up", "--json"]) == 0
        second = json.loads(capsys.readouterr().out)
        assert [r["pid"] for r in second] == [r["pid"] for r in first]
        influx = next(r for r in first if r["service"] == "influxdb")
        with urllib.request.urlopen(f"http://{influx['address']}/query?q=SHOW+DATABASES") as resp:
            assert "sitetwin" in resp.read().decode()
        assert main(["services", "status"]) == 0
        capsys.readouterr()
    finally:
        assert main(["services", "down", "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert not any(r["running"] for r in stopped)
    assert main(["services", "status"]) == 1


def test_start_refuses_a_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServiceError, match="already in use"):
            Mosquitto(root=tmp_path, port=port).start()


def test_a_failing_start_reports_the_log(tmp_path):
    svc = Mosquitto(root=tmp_path, port=free_port(), extra_config="this_is_not_an_option 1")
    with pytest.raises(ServiceError, match="exited while starting"):
        svc.start()


def test_influxdb_restart_keeps_data(tmp_path):
    svc = InfluxDB(root=tmp_path, port=free_port(), database="keep")
    svc.start()
    try:
        req = urllib.request.Request(f"{svc.url}/write?db=keep", data=b"m v=1 1000000000", method="POST")
        urllib.request.urlopen(req).close()
        svc.stop()
        assert svc.status()["running"] is False
        svc.start()
        out = svc.query("SELECT count(v) FROM m", db="keep")
        assert out["results"][0]["series"][0]["values"][0][1] == 1
    finally:
        svc.stop()
