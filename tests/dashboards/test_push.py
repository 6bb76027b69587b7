"""``sitetwin dashboards push`` against a local stand-in for Grafana's HTTP API.

NOT a real Grafana (none can run on these machines): the server below
implements only the endpoints the push uses - GET/POST /api/folders,
GET /api/datasources/uid/:uid, POST /api/datasources, POST /api/dashboards/db -
with Grafana's status codes, and records every request so the tests can
assert the payloads that grafana-client sends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from dashboards.build import DASHBOARDS
from dashboards.errors import PushError
from dashboards.provisioning import Target
from dashboards.push import push
from sitetwin.cli import main
from sitetwin.services import free_port

TOKEN = "glsa_secret-token-never-logged_0123456789"


@dataclass
class FakeGrafana:
    """State of the stand-in: folders, datasources, dashboards, and the requests it saw."""

    folders: dict[str, dict] = field(default_factory=dict)
    datasources: dict[str, dict] = field(default_factory=dict)
    dashboards: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, dict, object]] = field(default_factory=list)
    status_override: int | None = None
    url: str = ""

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.requests if method in (None, m)]


def _handler(state: FakeGrafana):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> object:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.requests.append((self.command, self.path, dict(self.headers), body))
            return body

        def do_GET(self) -> None:
            self._record()
            if state.status_override:
                return self._reply(state.status_override, {"message": "nope"})
            if self.path.startswith("/api/folders/"):
                uid = self.path.rsplit("/", 1)[1]
                if uid in state.folders:
                    return self._reply(200, state.folders[uid])
                return self._reply(404, {"message": "folder not found"})
            if self.path.startswith("/api/datasources/uid/"):
                uid = self.path.rsplit("/", 1)[1]
                if uid in state.datasources:
                    return self._reply(200, state.datasources[uid])
                return self._reply(404, {"message": "Data source not found"})
            return self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            body = self._record()
            if state.status_override:
                return self._reply(state.status_override, {"message": "nope"})
            if self.path == "/api/folders":
                if body["uid"] in state.folders:
                    return self._reply(409, {"message": "folder exists"})
                state.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": 1}
                return self._reply(200, state.folders[body["uid"]])
            if self.path == "/api/datasources":
                if body["uid"] in state.datasources:
                    return self._reply(409, {"message": "data source exists"})
                state.datasources[body["uid"]] = {**body, "id": 7}
                return self._reply(200, {"message": "Datasource added", "id": 7})
            if self.path == "/api/dashboards/db":
                uid = body["dashboard"]["uid"]
                if uid in state.dashboards and not body.get("overwrite"):
                    return self._reply(412, {"status": "version-mismatch"})
                state.dashboards[uid] = body
                return self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x",
                                         "version": 1})
            return self._reply(404, {"message": "not found"})

    return Handler


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _secret():
    from pydantic import SecretStr

    return SecretStr(TOKEN)


def test_push_creates_folder_and_datasource_then_uploads_every_dashboard(grafana, caplog):
    caplog.set_level(logging.DEBUG)
    target = Target(datasource_uid="sitetwin-influxdb", influx_url="http://influx:8086",
                    database="city", folder="sitetwin")
    report = push(grafana.url, _secret(), target, folder_title="sitetwin")

    assert (report.folder_action, report.datasource_action) == ("created", "created")
    assert grafana.calls() == [
        ("GET", "/api/folders/sitetwin"), ("POST", "/api/folders"),
        ("GET", "/api/datasources/uid/sitetwin-influxdb"), ("POST", "/api/datasources"),
    ] + [("POST", "/api/dashboards/db")] * len(DASHBOARDS)
    for _method, _path, headers, _body in grafana.requests:
        assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert grafana.folders["sitetwin"]["title"] == "sitetwin"
    ds = grafana.datasources["sitetwin-influxdb"]
    assert (ds["type"], ds["url"], ds["access"]) == ("influxdb", "http://influx:8086", "proxy")
    assert ds["jsonData"] == {"version": "InfluxQL", "dbName": "city", "httpMode": "POST",
                              "timeInterval": "10s"}
    assert set(grafana.dashboards) == {d.uid for d in DASHBOARDS}
    for uid, body in grafana.dashboards.items():
        assert body["overwrite"] is True and body["folderUid"] == "sitetwin"
        assert body["dashboard"]["uid"] == uid and "id" not in body["dashboard"]
        refs = {t["datasource"]["uid"] for p in body["dashboard"]["panels"]
                for t in p.get("targets", [])}
        assert refs == {"sitetwin-influxdb"}
    assert [d["status"] for d in report.dashboards] == ["success"] * len(DASHBOARDS)
    assert TOKEN not in caplog.text


def test_pushing_again_changes_nothing_but_the_dashboards(grafana):
    target = Target()
    push(grafana.url, _secret(), target)
    first = {uid: body["dashboard"] for uid, body in grafana.dashboards.items()}
    grafana.requests.clear()
    report = push(grafana.url, _secret(), target)
    assert (report.folder_action, report.datasource_action) == ("exists", "exists")
    assert ("POST", "/api/folders") not in grafana.calls()
    assert ("POST", "/api/datasources") not in grafana.calls()
    assert grafana.calls("POST") == [("POST", "/api/dashboards/db")] * len(DASHBOARDS)
    assert {uid: body["dashboard"] for uid, body in grafana.dashboards.items()} == first
    assert len(grafana.folders) == 1 and len(grafana.datasources) == 1


def test_an_existing_datasource_is_left_as_its_owner_configured_it(grafana):
    grafana.datasources["sitetwin-influxdb"] = {"uid": "sitetwin-influxdb", "url": "http://x",
                                                "secureJsonFields": {"httpHeaderValue1": True}}
    push(grafana.url, _secret(), Target())
    assert grafana.datasources["sitetwin-influxdb"]["url"] == "http://x"
    assert ("POST", "/api/datasources") not in grafana.calls()


@pytest.mark.parametrize(("status", "expected"), [
    (401, "refused the token"), (403, "lacks permission"), (500, "HTTP 500"),
])
def test_grafana_errors_become_one_clear_line_without_the_token(grafana, status, expected):
    grafana.status_override = status
    with pytest.raises(PushError) as err:
        push(grafana.url, _secret(), Target())
    assert expected in str(err.value) and TOKEN not in str(err.value)
    assert "\n" not in str(err.value)


def test_unreachable_grafana_and_missing_token_are_user_errors(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PushError, match="reading the folder: no response"):
        push(url, _secret(), Target())
    with pytest.raises(PushError, match="SITETWIN_GRAFANA__TOKEN"):
        push(url, None, Target())
    with pytest.raises(PushError, match="not a Grafana URL"):
        push("ftp://grafana", _secret(), Target())


def test_cli_push_takes_the_token_from_the_environment(grafana, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SITETWIN_GRAFANA__TOKEN", TOKEN)
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path))
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--json", "-vv"]) == 0
    captured = capsys.readouterr()
    report = orjson.loads(captured.out)
    assert report["folder_action"] == "created" and len(report["dashboards"]) == len(DASHBOARDS)
    assert TOKEN not in captured.out and TOKEN not in captured.err
    monkeypatch.delenv("SITETWIN_GRAFANA__TOKEN")
    assert main(["dashboards", "push", "--grafana-url", grafana.url]) == 1
    assert "SITETWIN_GRAFANA__TOKEN" in capsys.readouterr().err


INFLUX_TOKEN = "influx-read-token-also-secret"


@pytest.mark.parametrize(("credentials", "json_extra", "secure", "user"), [
    ({"token": INFLUX_TOKEN}, {"httpHeaderName1": "Authorization"},
     {"httpHeaderValue1": f"Token {INFLUX_TOKEN}"}, None),
    ({"username": "grafana", "password": INFLUX_TOKEN}, {}, {"password": INFLUX_TOKEN}, "grafana"),
    ({}, {}, None, None),
])
def test_the_datasource_carries_influxdb_credentials_as_secure_fields(
        grafana, caplog, credentials, json_extra, secure, user):
    from pydantic import SecretStr

    from dashboards.push import InfluxCredentials

    caplog.set_level(logging.DEBUG)
    creds = InfluxCredentials(username=credentials.get("username"),
                              password=SecretStr(credentials["password"])
                              if "password" in credentials else None,
                              token=SecretStr(credentials["token"])
                              if "token" in credentials else None)
    report = push(grafana.url, _secret(), Target(), credentials=creds)
    ds = grafana.datasources["sitetwin-influxdb"]
    assert ds.get("secureJsonData") == secure and ds.get("user") == user
    assert ds["jsonData"] == {"version": "InfluxQL", "dbName": "sitetwin", "httpMode": "POST",
                              "timeInterval": "10s", **json_extra}
    assert INFLUX_TOKEN not in caplog.text and INFLUX_TOKEN not in repr(creds)
    assert INFLUX_TOKEN not in str(report.as_dict())
