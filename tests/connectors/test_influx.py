"""The InfluxDB sink and reader against real servers: Debian's InfluxDB 1.x (v1 mode)
and VictoriaMetrics, a real server of InfluxDB's ``/api/v2/write`` (v2 mode)."""

from __future__ import annotations

import time

import orjson
import pytest
import requests

from connectors.collector import Collector
from connectors.errors import LineProtocolError, WriteRetryable
from connectors.influx import InfluxReader, InfluxWriter
from connectors.lineprotocol import line
from sitetwin.config import load_settings
from sitetwin.wiring import collector_config
from tests.support import publish, wait_for

pytestmark = pytest.mark.integration

HOSTILE_TAGS = ["a,b", "a b", "a=b", 'say "hi"', "back\\slash", "日本語", "x=1,y=2 z", "=cmd|x"]


def test_v1_round_trips_hostile_tag_and_string_values(influxdb, influx_db):
    writer = InfluxWriter(influxdb.url, database=influx_db)
    ts0 = 1_790_000_000 * 10**9
    body = "\n".join(
        line("probe", {"site_id": f"S{i}", "label": tag}, {"v": float(i), "note": f'q"{tag}"\nx'},
             ts0 + i)
        for i, tag in enumerate(HOSTILE_TAGS)
    ).encode()
    result = writer.write(body)
    assert result.rejected == ()
    frame = InfluxReader(influxdb.url, database=influx_db).frame(
        'SELECT "v", "note", "label" FROM "probe"')
    assert sorted(frame["label"]) == sorted(HOSTILE_TAGS)
    by_label = dict(zip(frame["label"], frame["v"], strict=True))
    for i, tag in enumerate(HOSTILE_TAGS):
        assert by_label[tag] == float(i)  # no neighbouring point was corrupted
    # Line breaks in string fields are written as the two characters backslash-n,
    # so that a batch can always be split on real line breaks.
    assert set(frame["note"]) == {f'q"{tag}"\\nx' for tag in HOSTILE_TAGS}


@pytest.mark.parametrize("bad", ["ends\\", "line\nbreak", "cr\rx"])
def test_unrepresentable_tag_values_are_refused_not_mangled(bad):
    with pytest.raises(LineProtocolError):
        line("probe", {"label": bad}, {"v": 1.0}, 1)


def test_v1_partial_write_isolates_the_refused_lines(influxdb, influx_db):
    writer = InfluxWriter(influxdb.url, database=influx_db)
    writer.write(b"m,site_id=A v=1.0 1000000000")  # v is a float from now on
    lines = [f"m,site_id=B{i} v={i}.5 {2 + i}000000000".encode() for i in range(10)]
    lines[3] = b'm,site_id=BAD v="text" 5000000000'  # field type conflict: a 400 partial write
    lines[7] = b"m,site_id=BAD2 v=true 9000000000"
    result = writer.write(b"\n".join(lines))
    assert sorted(r.line for r in result.rejected) == sorted([lines[3], lines[7]])
    assert all("conflict" in r.error for r in result.rejected)
    frame = InfluxReader(influxdb.url, database=influx_db).frame('SELECT count("v") FROM "m"')
    assert int(frame["count"].iloc[0]) == 1 + 8


def test_unreachable_server_is_retryable():
    writer = InfluxWriter("http://127.0.0.1:9", database="x", timeout=1)
    with pytest.raises(WriteRetryable):
        writer.write(b"m v=1 1")


def test_reader_pushes_aggregation_down_and_returns_frames(influxdb, influx_db):
    writer = InfluxWriter(influxdb.url, database=influx_db)
    base = 1_789_999_200  # on a 15-minute boundary
    body = "\n".join(line("power", {"site_id": f"S{s}"}, {"power_kw": float(s * 10 + m % 3)},
                          (base + m * 60) * 10**9)
                     for s in range(3) for m in range(30))
    writer.write(body.encode())
    reader = InfluxReader(influxdb.url, database=influx_db)
    frame = reader.frame(f'SELECT max("power_kw") AS peak FROM "power" WHERE time >= {base}s '
                         f'AND time < {base + 1800}s GROUP BY time(15m), "site_id"')
    assert set(frame.columns) >= {"time", "site_id", "peak"}
    assert len(frame) == 3 * 2
    assert frame.groupby("site_id")["peak"].max().to_dict() == {"S0": 2.0, "S1": 12.0, "S2": 22.0}


def _vm_export(vm, match: str) -> list[dict]:
    requests.get(f"{vm.url}/internal/force_flush", timeout=5)
    text = requests.get(f"{vm.url}/api/v1/export", params={"match[]": match}, timeout=10).text
    return [orjson.loads(x) for x in text.splitlines() if x.strip()]


def test_v2_mode_writes_through_the_v2_api(victoria_metrics):
    writer = InfluxWriter(victoria_metrics.url, mode="v2", token="secret-token", org="sitetwin",
                          bucket="sitetwin")
    now = time.time_ns()
    body = "\n".join(line("v2probe", {"site_id": f"S{i}"}, {"power_kw": float(i)}, now + i)
                     for i in range(25))
    assert writer.write(body.encode()).rejected == ()
    series = wait_for(lambda: _vm_export(victoria_metrics, '{__name__="v2probe_power_kw"}')
                      if len(_vm_export(victoria_metrics, '{__name__="v2probe_power_kw"}')) == 25
                      else None, timeout=20, message="25 series in VictoriaMetrics")
    assert sorted(s["metric"]["site_id"] for s in series) == sorted(f"S{i}" for i in range(25))
    writer.close()


def test_collector_in_v2_mode_delivers_every_message(tmp_path, mosquitto, victoria_metrics):
    settings = load_settings(
        None,
        mqtt={"servers": [mosquitto.url], "client_id": f"v2-{tmp_path.name}",
              "shared_group": f"v2g{abs(hash(str(tmp_path))) % 10**8}"},
        influxdb={"url": victoria_metrics.url, "mode": "v2", "token": "t", "org": "sitetwin",
                  "bucket": "sitetwin"},
        collector={"batch_size": 200, "batch_age": "200ms"},
        services={"state_dir": str(tmp_path / "state")},
        spool={"fsync": False},
    )
    collector = Collector(collector_config(settings))
    collector.start()
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        start = int(time.time()) - 3600
        messages = [(f"sites/V{s:03d}/power", orjson.dumps(
            {"ts": start + i * 60, "meter_id": f"M{s:03d}", "energy_kwh": 100.0 + i,
             "power_kw": 3.5}))
            for s in range(40) for i in range(25)]
        publish(mosquitto.host, mosquitto.port, messages)

        def points() -> int:
            return sum(len(s["values"]) for s in
                       _vm_export(victoria_metrics, '{__name__="power_energy_kwh"}')
                       if s["metric"]["site_id"].startswith("V"))

        wait_for(lambda: points() == len(messages), timeout=30,
                 message=f"{len(messages)} points in VictoriaMetrics")
        series = _vm_export(victoria_metrics, '{__name__="power_energy_kwh"}')
        assert {s["metric"]["meter_id"] for s in series} == {f"M{s:03d}" for s in range(40)}
    finally:
        collector.stop()
    status = collector.status()
    assert status["rejected_msgs"] == 0 and status["received_points"] == len(messages)


def test_reader_keeps_one_session_per_live_thread_and_answers_from_each(influxdb, influx_db):
    """The rule engine reads from worker threads that come and go (a pool per run): their
    sessions must go with them, not pile up for the life of the reader."""
    import gc
    import threading

    reader = InfluxReader(influxdb.url, influx_db)
    answers: list[int] = []

    def ask() -> None:
        answers.append(len(reader.raw("SHOW MEASUREMENTS")))

    try:
        for _ in range(3):
            threads = [threading.Thread(target=ask) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        ask()  # and one in this thread, which stays
        gc.collect()
        assert answers == [1] * 13
        assert len(reader._sessions) == 1
    finally:
        reader.close()
    assert len(reader._sessions) == 0


def test_writer_keeps_one_session_per_thread(influxdb, influx_db):
    """The writer, the spool drain and the twin's state writer write from three threads."""
    import threading

    writer = InfluxWriter(influxdb.url, database=influx_db)
    seen: dict[str, object] = {}

    def write(name: str) -> None:
        writer.write(line("m", {"t": name}, {"v": 1}, 1_790_000_000_000_000_000).encode())
        seen[name] = writer._session

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    write("main")
    assert len({id(s) for s in seen.values()}) == 4
    writer.close()


def test_a_200_that_is_not_json_is_a_query_error():
    import http.server
    import threading

    from connectors.errors import QueryError

    class NotJson(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>proxy says hello</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotJson)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = InfluxReader(f"http://127.0.0.1:{server.server_port}", "db")
        with pytest.raises(QueryError, match="not JSON"):
            reader.raw("SHOW MEASUREMENTS")
        reader.close()
    finally:
        server.shutdown()
