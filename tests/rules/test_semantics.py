"""Alarm semantics the NOC can trust (issue 14 §1), as scenarios on real services: telemetry in
InfluxDB, the registry on SQLite and PostgreSQL, ``sitetwin rules run`` through the CLI and its
flag changes announced over Mosquitto.

- a never-built site is not offline (rules, ``sites list --offline``, ``site_state``);
- a site on battery that goes silent keeps its mains-failure flag open (critical) and gets an
  offline flag linked to it; a site whose mains came back before it went silent does not;
- a backfill run twice leaves today's open flags untouched and changes nothing the second time.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line
from sitetwin.cli import main
from tests.support import wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 10**9


def _tower(site: str, start: datetime, end: datetime, *, on_battery=lambda t: False,
           soc=lambda t: 100.0) -> list[str]:
    """A tower report every 5 minutes from ``start`` (included) to ``end`` (excluded)."""
    out, t = [], start
    while t < end:
        batt = on_battery(t)
        out.append(line("tower", {"site_id": site}, {"mains_ok": not batt, "on_battery": batt,
                                                     "battery_soc_pct": soc(t)}, _ns(t)))
        t += 5 * M
    return out


def _write(influxdb, db: str, lines: list[str]) -> None:
    writer = InfluxWriter(influxdb.url, database=db)
    try:
        assert not writer.write("\n".join(lines).encode()).rejected
    finally:
        writer.close()


def _registry(url: str, sites: dict[str, str]) -> None:
    from twin.models import LifecycleEvent, Site
    from twin.store import open_store

    store = open_store(url)
    try:
        with store.session() as s:
            for i, (sid, state) in enumerate(sites.items()):
                s.add(Site(site_id=sid, name=sid, lat=31.0 + i * 0.1, lon=121.0, county="Pudong",
                           kind="macro", supply="direct", region="SH", customer_class="C",
                           state=state))
                s.flush()
                s.add(LifecycleEvent(site_id=sid, to_state=state, verb="import",
                                     at=NOW - timedelta(days=30), actor="test"))
    finally:
        store.close()


class Flags:
    """The CLI against one configuration, and the flag changes it announced over MQTT."""

    def __init__(self, influxdb, db, twin_url, mosquitto, tmp_path, capsys, hold_off="5m"):
        self.capsys = capsys
        self.cfg = tmp_path / "sitetwin.toml"
        self.cfg.write_text(
            f'[influxdb]\nurl = "{influxdb.url}"\ndatabase = "{db}"\n[twin]\nurl = "{twin_url}"\n'
            f'[mqtt]\nservers = ["{mosquitto.url}"]\nclient_id = "sem-{db}"\n'
            f'[services]\nstate_dir = "{tmp_path / "state"}"\n[rules]\nhold_off = "{hold_off}"\n')
        self.received: list[tuple[str, dict]] = []
        subscribed = threading.Event()
        self.sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"semsub-{db}",
                               protocol=mqtt.MQTTv5)
        self.sub.on_connect = lambda c, u, f, rc, p: c.subscribe("sitetwin/flags/#", qos=1)
        self.sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.sub.on_message = lambda c, u, m: self.received.append((m.topic, json.loads(m.payload)))
        self.sub.connect(mosquitto.host, mosquitto.port)
        self.sub.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self.sub.loop_stop()
        self.sub.disconnect()

    def cli(self, *argv: str) -> tuple[int, object]:
        self.capsys.readouterr()
        code = main([*argv, "--config", str(self.cfg), "--json"])
        out = self.capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None

    def run(self, until: datetime, *, since: datetime | None = None, rules=()) -> dict[str, dict]:
        argv = ["rules", "run", "--until", until.isoformat()]
        if since is not None:
            argv += ["--since", since.isoformat()]
        for r in rules:
            argv += ["--rule", r]
        code, summary = self.cli(*argv)
        assert code == 0, summary
        assert all(r["status"] == "ok" for r in summary), summary
        return {r["rule"]: r for r in summary}

    def list(self) -> list[dict]:
        return self.cli("flags", "list")[1]


@pytest.fixture
def flags(influxdb, influx_db, twin_url, mosquitto, tmp_path, capsys):
    f = Flags(influxdb, influx_db, twin_url, mosquitto, tmp_path, capsys)
    yield f
    f.close()


def test_a_never_built_site_is_not_offline(influxdb, influx_db, twin_url, flags):
    """Three silent sites: on air (offline), planned and under construction (silent by design)."""
    import time

    from connectors.influx import InfluxReader
    from connectors.reading import TowerReading
    from exports.site_state import site_state_lines
    from twin.live import LiveState
    from twin.store import open_store

    _registry(twin_url, {"S-UP": "on_air", "S-DARK": "on_air", "S-PLAN": "planned",
                         "S-BUILD": "under_construction", "S-MOVE": "relocating"})
    _write(influxdb, influx_db, _tower("S-UP", NOW - 60 * M, NOW)
           + _tower("S-DARK", NOW - 6 * 60 * M, NOW - 60 * M)
           + _tower("S-BUILD", NOW - 6 * 60 * M, NOW - 60 * M))  # a test feed, then nothing
    summary = flags.run(NOW, rules=["site_offline"])
    assert summary["site_offline"]["opened"] == 2
    offline = {f["site_id"] for f in flags.list() if f["kind"] == "site_offline"}
    assert offline == {"S-DARK", "S-MOVE"}  # relocating stays on air until its replacement is
    wait_for(lambda: len(flags.received) >= 2, timeout=15, message="flags over MQTT")
    assert {t for t, _ in flags.received} == {"sitetwin/flags/site_offline/S-DARK",
                                              "sitetwin/flags/site_offline/S-MOVE"}

    # The registry's live view and the NOC's site_state agree: never-built sites are not offline.
    # (The live state is the collector's; here S-UP and S-BUILD report to it just now.)
    store = open_store(twin_url)
    try:
        live = LiveState(online_window_s=180)
        live.observe_batch([TowerReading(site_id=s, ts=time.time() - 10, mains_ok=True)
                            for s in ("S-UP", "S-BUILD")])
        live.flush(store)
        body = site_state_lines(store, datetime.now(UTC), online_window_s=180)
    finally:
        store.close()
    code, rows = flags.cli("sites", "list", "--offline")
    assert code == 0 and {r["site_id"] for r in rows} == {"S-DARK", "S-MOVE"}
    _write(influxdb, influx_db, body.decode().splitlines())
    reader = InfluxReader(influxdb.url, influx_db)
    try:
        (result,) = reader.raw('SELECT last("offline") AS "offline" FROM "site_state" GROUP BY "site_id"')
    finally:
        reader.close()
    state = {s["tags"]["site_id"]: s["values"][0][1] for s in result["series"]}
    assert state == {"S-UP": 0, "S-DARK": 1, "S-MOVE": 1, "S-PLAN": 0, "S-BUILD": 0}


def test_a_site_on_battery_that_goes_silent_keeps_its_mains_failure_open(influxdb, influx_db,
                                                                          twin_url, flags):
    """S-FLAT: mains fails at -60 min, SOC falls, silent from -30 min (batteries exhausted).
    S-BACK: on battery -120..-80 min, mains back, silent from -30 min (switched off)."""
    _registry(twin_url, {"S-FLAT": "on_air", "S-BACK": "on_air"})
    _write(influxdb, influx_db,
           _tower("S-FLAT", NOW - 180 * M, NOW - 30 * M, on_battery=lambda t: t >= NOW - 60 * M,
                  soc=lambda t: 100.0 - (t - (NOW - 60 * M)) / M * 0.6 if t >= NOW - 60 * M
                  else 100.0)
           + _tower("S-BACK", NOW - 180 * M, NOW - 30 * M,
                    on_battery=lambda t: NOW - 120 * M <= t < NOW - 80 * M))
    rules = ("mains_failure", "site_offline")
    flags.run(NOW - 90 * M, rules=rules)
    flags.run(NOW - 35 * M, rules=rules)
    (flat,) = [f for f in flags.list() if f["site_id"] == "S-FLAT"]
    # -36 %/h with 88 % left: about 2.4 h, a warning while the site still reports.
    assert (flat["kind"], flat["severity"], flat["evidence"]["reporting"]) == (
        "mains_failure", "warning", True)
    (back,) = [f for f in flags.list() if f["site_id"] == "S-BACK"]
    assert back["kind"] == "mains_failure"

    # Silent for 30 minutes: S-FLAT's failure goes on; S-BACK's mains was seen back.
    flags.run(NOW, rules=rules)
    by = {(f["kind"], f["site_id"]): f for f in flags.list()}
    mains = by[("mains_failure", "S-FLAT")]
    assert (mains["status"], mains["severity"]) == ("open", "critical")
    assert mains["evidence"]["reporting"] is False
    assert mains["evidence"]["silent_since"] == "2026-11-20T11:30:00Z"
    assert "batteries probably exhausted" in mains["summary"]
    offline = by[("site_offline", "S-FLAT")]
    cause = offline["evidence"]["probable_cause"]
    assert (cause["kind"], cause["flag_id"]) == ("mains_failure", mains["id"])
    assert offline["severity"] == "critical" and "停电退服" in offline["summary"]
    assert by[("mains_failure", "S-BACK")]["status"] == "resolved"  # observed to end
    assert "probable_cause" not in by[("site_offline", "S-BACK")]["evidence"]

    # Seven hours later, silent beyond both rules' 6-hour windows: still open, still linked.
    flags.run(NOW + 5 * 60 * M, rules=rules)
    flags.run(NOW + 7 * 60 * M, rules=rules)
    by = {(f["kind"], f["site_id"]): f for f in flags.list()}
    assert by[("mains_failure", "S-FLAT")]["status"] == "open"
    assert by[("mains_failure", "S-FLAT")]["id"] == mains["id"]
    assert by[("site_offline", "S-FLAT")]["id"] == offline["id"]  # one outage, one flag
    assert by[("site_offline", "S-FLAT")]["evidence"]["probable_cause"]["flag_id"] == mains["id"]

    # Mains is seen back: now it resolves (after the hold-off), and so does the offline flag.
    back_at = NOW + 7 * 60 * M
    _write(influxdb, influx_db, _tower("S-FLAT", back_at, back_at + 30 * M, soc=lambda t: 40.0))
    flags.run(back_at + 10 * M, rules=rules)
    flags.run(back_at + 20 * M, rules=rules)
    by = {(f["kind"], f["site_id"]): f for f in flags.list()}
    assert by[("mains_failure", "S-FLAT")]["status"] == "resolved"
    assert by[("site_offline", "S-FLAT")]["status"] == "resolved"
    wait_for(lambda: any(t == "sitetwin/flags/mains_failure/S-FLAT" and m["status"] == "resolved"
                         for t, m in flags.received), timeout=15, message="the resolution over MQTT")


def test_a_backfill_run_twice_leaves_todays_open_flags_untouched(influxdb, influx_db, twin_url,
                                                                 flags):
    """S-NOW is on battery since -100 min (a live flag, open); S-PAST had an outage yesterday.
    A backfill over the last day covers both and must neither resolve nor split the live one."""
    _registry(twin_url, {"S-NOW": "on_air", "S-PAST": "on_air"})
    day = timedelta(days=1)
    _write(influxdb, influx_db,
           _tower("S-NOW", NOW - day, NOW, on_battery=lambda t: t >= NOW - 100 * M,
                  soc=lambda t: 90.0)
           + _tower("S-PAST", NOW - day, NOW,
                    on_battery=lambda t: NOW - 20 * 60 * M <= t < NOW - 19 * 60 * M,
                    soc=lambda t: 80.0))
    flags.run(NOW, rules=["mains_failure"])
    (live,) = flags.list()
    assert (live["site_id"], live["status"]) == ("S-NOW", "open")

    since, until = NOW - day, NOW - 30 * M
    first = flags.run(until, since=since, rules=["mains_failure"])["mains_failure"]
    after_first = flags.list()
    assert [f for f in after_first if f["id"] == live["id"]] == [live]  # untouched
    past = [f for f in after_first if f["site_id"] == "S-PAST"]
    assert len(past) == 1 and past[0]["status"] == "resolved"  # one flag for one outage
    assert past[0]["window_start"] == "2026-11-19T16:00:00Z"
    assert [f["site_id"] for f in after_first] == ["S-NOW", "S-PAST"]  # S-NOW not split
    assert (first["opened"], first["resolved"]) == (1, 1)

    again = flags.run(until, since=since, rules=["mains_failure"])["mains_failure"]
    assert (again["opened"], again["updated"], again["resolved"]) == (0, 0, 0)
    assert flags.list() == after_first

    # The live runs carry on with their flag as before.
    flags.run(NOW + 5 * M, rules=["mains_failure"])
    (still,) = [f for f in flags.list() if f["site_id"] == "S-NOW"]
    assert (still["id"], still["status"]) == (live["id"], "open")


def test_an_authorised_jammers_incident_is_marked_authorised(influxdb, influx_db, twin_url, flags,
                                                             tmp_path):
    """An exam-hall jammer (08:00-21:00 local, n78, 2 km) raises two nearby sites' cells; a
    site 100 km away is interfered with at the same time.  The first is kept as an incident
    marked authorised (severity info); the second stays an alarm."""
    _registry(twin_url, {"S-A": "on_air", "S-B": "on_air", "S-FAR": "on_air"})
    from twin.models import Site
    from twin.store import open_store

    store = open_store(twin_url)
    try:
        with store.session() as s:
            for sid, lat, lon in (("S-A", 31.000, 121.000), ("S-B", 31.010, 121.000),
                                  ("S-FAR", 32.000, 121.000)):
                site = s.get(Site, sid)
                site.lat, site.lon = lat, lon
    finally:
        store.close()
    lines = []
    for site, cell in (("S-A", "S-A-1"), ("S-B", "S-B-1"), ("S-FAR", "S-FAR-1")):
        for i in range(8):
            t = NOW - 120 * M + 15 * M * (i + 1) - timedelta(seconds=1)
            lines.append(line("interference", {"site_id": site, "cell_id": cell, "band": "n78"},
                              {"ul_interference_dbm": -99.0, "period_s": 900}, _ns(t)))
    _write(influxdb, influx_db, lines)
    csv = tmp_path / "interferers.csv"
    csv.write_text("interferer_id,name,lat,lon,radius_m,bands,windows\n"
                   "EXAM-3,No. 3 Middle School exam hall,31.004,121.001,2000,n78;n41,"
                   "2026-11-20T08:00/2026-11-20T21:00;2026-11-21T08:00/2026-11-21T21:00\n",
                   encoding="utf-8")
    code, result = flags.cli("interferers", "import", str(csv))
    assert code == 0 and result["inserted"] == 1

    flags.run(NOW, rules=["interference"])
    by_site = {f["site_id"]: f for f in flags.list()}
    assert set(by_site) == {"S-A", "S-FAR"}  # S-A anchors the S-A/S-B incident
    incident = by_site["S-A"]
    allowed = incident["evidence"]["authorised_interferer"]
    # 08:00-21:00 in Asia/Shanghai is 00:00-13:00 UTC.
    assert (allowed["interferer_id"], allowed["window"]) == (
        "EXAM-3", ["2026-11-20T00:00:00Z", "2026-11-20T13:00:00Z"])
    assert incident["severity"] == "info" and incident["evidence"]["incident"] is True
    assert incident["status"] == "open"  # kept and shown, not dropped
    far = by_site["S-FAR"]
    assert far["severity"] == "critical" and "authorised_interferer" not in far["evidence"]
    wait_for(lambda: len(flags.received) >= 2, timeout=15, message="flags over MQTT")
    announced = dict(flags.received)
    assert announced["sitetwin/flags/interference/S-A"]["severity"] == "info"


def test_power_monitoring_flags_and_the_honest_inputs_they_leave_alone(influxdb, influx_db,
                                                                        twin_url, flags, tmp_path):
    """The last hour of tower reports: a door opened with no visit booked (flagged), a door
    opened during a booked visit (not), a hot cabinet (flagged), a cabinet warming on a sunny
    afternoon (not), a leaning pole (flagged), a pole in a gust (not), a battery near its
    low-voltage disconnect (flagged)."""
    _registry(twin_url, dict.fromkeys(("S-DOOR", "S-VISIT", "S-HOT", "S-SUN", "S-LEAN", "S-GUST", "S-LLVD"), "on_air"))
    lines = []
    for i in range(12):
        t = NOW - 60 * M + 5 * M * i
        late = i >= 9  # the last 15 minutes
        fields = {
            "S-DOOR": {"door_open": late}, "S-VISIT": {"door_open": late},
            "S-HOT": {"cabinet_temp_c": 40.0 + i * 1.0},             # >= 45 from i = 5: 35 min
            "S-SUN": {"cabinet_temp_c": 28.0 + 8.0 * (i / 11)},       # 28 -> 36 °C
            "S-LEAN": {"tilt_deg": 0.4 if i < 8 else 3.6},
            "S-GUST": {"tilt_deg": 3.2 if i == 6 else 0.4},
            "S-LLVD": {"battery_voltage_v": 48.0 - 0.3 * i},          # 44.7 V at the end
        }
        for site, extra in fields.items():
            on_battery = site == "S-LLVD"
            lines.append(line("tower", {"site_id": site},
                              {"mains_ok": not on_battery, "on_battery": on_battery, **extra}, _ns(t)))
    _write(influxdb, influx_db, lines)
    csv = tmp_path / "maintenance.csv"
    csv.write_text("site_id,start,end,ticket\n"  # local times: 19:30-21:00 +08:00
                   "S-VISIT,2026-11-20T19:30,2026-11-20T21:00,WO-1187\n", encoding="utf-8")
    code, result = flags.cli("maintenance", "import", str(csv))
    assert code == 0 and result["inserted"] == 1

    summary = flags.run(NOW, rules=["door_open", "cabinet_overtemp", "tilt_exceeded",
                                    "battery_llvd_risk"])
    assert {r: s["findings"] for r, s in summary.items()} == {
        "door_open": 1, "cabinet_overtemp": 1, "tilt_exceeded": 1, "battery_llvd_risk": 1}
    got = {(f["kind"], f["site_id"]): f for f in flags.list()}
    assert set(got) == {("door_open", "S-DOOR"), ("cabinet_overtemp", "S-HOT"),
                        ("tilt_exceeded", "S-LEAN"), ("battery_llvd_risk", "S-LLVD")}
    assert got[("door_open", "S-DOOR")]["evidence"]["open_since"] == "2026-11-20T11:45:00Z"
    assert got[("cabinet_overtemp", "S-HOT")]["evidence"]["max_temp_c"] == 51.0
    assert got[("battery_llvd_risk", "S-LLVD")]["evidence"]["battery_voltage_v"] == 44.7
    wait_for(lambda: len(flags.received) >= 4, timeout=15, message="flags over MQTT")
    assert {t for t, _ in flags.received} == {f"sitetwin/flags/{k}/{s}" for k, s in got}


def test_a_backfill_of_hourly_history_keeps_one_outage_one_flag(influxdb, influx_db, twin_url,
                                                                flags):
    """Hourly tower history: on battery for five hours.  Stepping every 5 minutes, the site is
    silent 55 minutes of each hour; its mains failure goes on through the silence, so the
    outage is one flag (it was five, each resolved after the hold-off, before issue 14)."""
    _registry(twin_url, {"S-H": "on_air"})
    lines, t = [], NOW - 24 * 60 * M
    while t < NOW:
        batt = NOW - 10 * 60 * M <= t < NOW - 5 * 60 * M
        lines.append(line("tower", {"site_id": "S-H"}, {"mains_ok": not batt, "on_battery": batt,
                                                        "battery_soc_pct": 70.0 if batt else 100.0},
                          _ns(t)))
        t += 60 * M
    _write(influxdb, influx_db, lines)
    summary = flags.run(NOW, since=NOW - 24 * 60 * M, rules=["mains_failure"])["mains_failure"]
    assert (summary["opened"], summary["resolved"]) == (1, 1)
    (flag,) = flags.list()
    assert flag["window_start"] == "2026-11-20T02:00:00Z" and flag["status"] == "resolved"
    resolved = datetime.fromisoformat(flag["resolved_at"].replace("Z", "+00:00"))
    assert NOW - 5 * 60 * M <= resolved <= NOW - 5 * 60 * M + 15 * M  # mains seen back at 07:00
