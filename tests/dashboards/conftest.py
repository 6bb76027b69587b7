"""A small city's worth of telemetry in a real InfluxDB, loaded through the real code paths.

Readings are valid CONTRACTS section 1 payloads published to the session
Mosquitto and ingested by an in-process ``connectors.collector.Collector``
(which also writes ``sitetwin_pipeline``) with the twin's ``LiveState`` as its
live sink; ``site_state`` is written by ``exports.site_state.site_state_lines`` from a
registry in SQLite, once per chunk of telemetry, as ``sitetwin run`` does.
``flags`` points by the rule engine's sink (``rules.sink.flag_lines``) from
flag records like those the flag book produces.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from connectors.collector import Collector
from connectors.influx import InfluxWriter
from exports.site_state import site_state_lines
from rules.sink import flag_lines
from sitetwin.config import load_settings
from sitetwin.wiring import collector_config
from tests.support import count, publish, wait_for
from twin.live import LiveState
from twin.models import Reservation, Site
from twin.store import open_store

STEP_S = 60
STEPS = 40
CHUNKS = 4


@dataclass(frozen=True)
class DemoSite:
    site_id: str
    county: str
    lat: float
    lon: float
    feeder: str
    meters: tuple[str, ...]
    cells: tuple[tuple[str, str], ...]  # (cell_id, band)
    on_battery_from: int | None = None  # step at which mains fails
    silent_from: int | None = None  # step after which the site stops reporting
    jammed: bool = False


SITES = (
    DemoSite("HZ-XH-001", "Xihu", 30.259, 120.130, "F-10", ("M-XH-001a", "M-XH-001b"),
             (("HZ-XH-001-1", "n78"), ("HZ-XH-001-2", "n41")), jammed=True, on_battery_from=25),
    DemoSite("HZ-XH-002", "Xihu", 30.262, 120.121, "F-10", ("M-XH-002",),
             (("HZ-XH-002-1", "n78"),)),
    DemoSite("HZ-GS-001", "Gongshu", 30.319, 120.142, "F-20", ("M-GS-001",),
             (("HZ-GS-001-1", "n28"), ("HZ-GS-001-2", "n78"))),
    DemoSite("HZ-GS-002", "Gongshu", 30.325, 120.150, "F-20", ("M-GS-002",),
             (("HZ-GS-002-1", "n78"),), silent_from=10),
    # Planned, never built: silent by design, so neither offline nor red (issue 14).
    DemoSite("HZ-GS-003", "Gongshu", 30.331, 120.158, "F-20", (), (), silent_from=-1),
)
# Lifecycle state of each demo site (default on_air).
STATES = {"HZ-GS-003": "planned"}


@dataclass(frozen=True)
class Demo:
    """What the dashboards tests query: the database and the demo's variable values."""

    database: str
    start: datetime
    end: datetime
    county: str
    site: str
    cell: str
    band: str


def _tower(s: DemoSite, step: int, ts: int) -> dict:
    mains = s.on_battery_from is None or step < s.on_battery_from
    soc = 100.0 if mains else max(20.0, 100.0 - 3.0 * (step - s.on_battery_from))
    return {"ts": ts, "mains_ok": mains, "on_battery": not mains, "generator_running": False,
            "battery_voltage_v": 53.5 if mains else 48.0 + soc / 50, "battery_soc_pct": soc,
            "rectifier_load_a": 40.0 + step % 7, "cabinet_temp_c": 24.0 + 6 * math.sin(step / 9),
            "humidity_pct": 55.0, "door_open": step == 12, "tilt_deg": 0.4}


def _power(s: DemoSite, meter: str, step: int, ts: int) -> dict:
    kw = 4.0 + 2.0 * math.sin(step / 6) + (1.5 if meter.endswith("b") else 0.0)
    return {"ts": ts, "meter_id": meter, "energy_kwh": 1000.0 + step * kw / 60,
            "power_kw": kw, "voltage_v": 229.0, "current_a": kw * 1000 / 229 / 3,
            "power_factor": 0.97}


def _interference(s: DemoSite, cell: str, band: str, step: int, ts: int) -> dict:
    level = -112.0 + (14.0 if s.jammed and step > 20 else 0.0) + (step % 5) * 0.3
    out = {"ts": ts, "cell_id": cell, "band": band, "ul_interference_dbm": level,
           "ul_prb_usage_pct": 30.0 + step % 20, "period_s": STEP_S}
    if step % 5 == 0:  # per-PRB vectors are heavy; devices send them less often
        out["prb_dbm"] = [level + (3.0 if 100 <= i < 110 else 0.0) for i in range(275)]
    return out


def _messages(steps: range, start_s: int) -> list[tuple[str, bytes]]:
    out = []
    for step in steps:
        ts = start_s + step * STEP_S
        for s in SITES:
            if s.silent_from is not None and step > s.silent_from:
                continue
            out.append((f"sites/{s.site_id}/tower", orjson.dumps(_tower(s, step, ts))))
            out.append((f"sites/{s.site_id}/power",
                        orjson.dumps([_power(s, m, step, ts) for m in s.meters])))
            for cell, band in s.cells:
                out.append((f"sites/{s.site_id}/interference",
                            orjson.dumps(_interference(s, cell, band, step, ts))))
    return out


def _register(store) -> None:
    with store.session() as session:
        for i, s in enumerate(SITES):
            session.add(Site(site_id=s.site_id, name=f"Demo {s.site_id}", lat=s.lat, lon=s.lon,
                             county=s.county, kind="macro",
                             supply="transfer" if i % 2 else "direct",
                             region="urban", customer_class="commercial",
                             state=STATES.get(s.site_id, "on_air")))
        session.flush()  # sites before the reservations that refer to them
        for i, s in enumerate(SITES):
            session.add(Reservation(site_id=s.site_id, declared_kw=8.0, reserved_kw=6.5 + i,
                                    feeder=s.feeder, substation="Sub-North", status="energized"))


def _flags(start_s: int) -> bytes:
    """Flag events through the rule engine's InfluxDB sink: opened, reviewed (confirmed and
    dismissed), escalated (warning to critical) and resolved, as the flag book reports them."""
    events = [
        (1, "overcharging", "HZ-XH-001", {"supplier_id": "SUP-LANDLORD-7"}, "warning", "open",
         "unit price 1.42 CNY/kWh above cap 0.95", 118.4, 5),
        (1, "overcharging", "HZ-XH-001", {"supplier_id": "SUP-LANDLORD-7"}, "warning", "confirmed",
         "unit price 1.42 CNY/kWh above cap 0.95", 118.4, 30),
        (2, "overbilling", "HZ-GS-001", {"supplier_id": "SUP-PM-3"}, "warning", "open",
         "billed 912 kWh, metered 640 kWh", 261.1, 6),
        (8, "overbilling", "HZ-GS-001", {"supplier_id": "SUP-PM-3"}, "warning", "open",
         "billed 700 kWh, metered 650 kWh", 50.0, 7),
        (8, "overbilling", "HZ-GS-001", {"supplier_id": "SUP-PM-3"}, "warning", "dismissed",
         "billed 700 kWh, metered 650 kWh", 50.0, 20),
        (3, "interference", "HZ-XH-001", {"cell_id": "HZ-XH-001-1"}, "warning", "open",
         "wideband uplink interference -108 dBm on n78", None, 25),
        (3, "interference", "HZ-XH-001", {"cell_id": "HZ-XH-001-1"}, "critical", "open",
         "wideband uplink interference -98 dBm on n78", None, 28),
        (4, "reservation_exceeded", "HZ-XH-001", {}, "warning", "open",
         "peak 7.9 kW above reserved 6.5 kW", None, 15),
        (5, "site_offline", "HZ-GS-002", {}, "warning", "open", "no telemetry for 5 min",
         None, 16),
        (5, "site_offline", "HZ-GS-002", {}, "critical", "open", "no telemetry for 60 min",
         None, 31),
        (6, "mains_failure", "HZ-XH-001", {}, "warning", "open", "on battery, SoC falling",
         None, 26),
        (7, "reservation_underused", "HZ-GS-001", {}, "info", "open", "peak 20 % of reserved",
         None, 3),
        (7, "reservation_underused", "HZ-GS-001", {}, "info", "resolved", "peak 61 % of reserved",
         None, 33),
    ]
    opened: dict[int, datetime] = {}
    flags = []
    for flag_id, kind, site_id, extra, severity, status, summary, excess, minute in events:
        at = datetime.fromtimestamp(start_s + minute * 60, UTC)
        opened.setdefault(flag_id, at)
        flags.append({"id": flag_id, "kind": kind, "rule": kind, "site_id": site_id,
                      "severity": severity, "status": status, "summary": summary, **extra,
                      "evidence": {"excess_cny": excess} if excess is not None else {},
                      "opened_at": opened[flag_id], "updated_at": at,
                      "resolved_at": at if status == "resolved" else None})
    return flag_lines(flags)


@pytest.fixture(scope="module")
def demo(influxdb, mosquitto, tmp_path_factory) -> Iterator[Demo]:
    """The demo city loaded into a fresh database of the session InfluxDB."""
    root = tmp_path_factory.mktemp("dash")
    db = f"dash_{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        None,
        mqtt={"servers": [mosquitto.url], "client_id": f"dash-{db}", "shared_group": f"g{db}"},
        influxdb={"url": influxdb.url, "database": db},
        collector={"batch_size": 2000, "batch_age": "200ms", "metrics_interval": "1s"},
        services={"state_dir": str(root / "state")},
        spool={"fsync": False},
    )
    now = datetime.now(UTC).replace(microsecond=0)
    start_s = int(now.timestamp()) - (STEPS + 1) * STEP_S
    store = open_store(f"sqlite:///{root / 'twin.sqlite'}")
    _register(store)
    live = LiveState(online_window_s=settings.twin.online_window_s)
    writer = InfluxWriter.from_settings(settings.influxdb)
    collector = Collector(collector_config(settings), live=live)
    collector.start()
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        per_chunk = STEPS // CHUNKS
        expected_towers = expected_readings = 0
        for chunk in range(CHUNKS):
            steps = range(chunk * per_chunk, (chunk + 1) * per_chunk)
            messages = _messages(steps, start_s)
            expected_towers += sum(1 for topic, _ in messages if topic.endswith("/tower"))
            expected_readings += sum(len(v) if isinstance(v := orjson.loads(payload), list) else 1
                                     for _, payload in messages)
            publish(mosquitto.host, mosquitto.port, messages, client_id=f"pub-{db}-{chunk}")
            wait_for(lambda n=expected_towers: count(
                influxdb, db, 'SELECT count("mains_ok") FROM "tower"') == n,
                timeout=60, message=f"chunk {chunk} in InfluxDB")
            # The collector hands a batch to the live state just after it is durable.
            wait_for(lambda n=expected_readings: live.observed >= n, timeout=30,
                     message=f"chunk {chunk} in the live state")
            live.flush(store)
            chunk_end = datetime.fromtimestamp(start_s + steps[-1] * STEP_S, UTC)
            writer.write(site_state_lines(store, chunk_end + timedelta(seconds=30),
                                          online_window_s=live.online_window_s))
        writer.write(_flags(start_s))
        wait_for(lambda: count(influxdb, db, 'SELECT count("written_points") FROM '
                                             '"sitetwin_pipeline"') >= 3,
                 timeout=30, message="three sitetwin_pipeline points")
    finally:
        collector.stop()
        writer.close()
        store.close()
    yield Demo(database=db, start=datetime.fromtimestamp(start_s, UTC) - timedelta(minutes=1),
               end=datetime.now(UTC) + timedelta(minutes=1), county="Xihu", site="HZ-XH-001",
               cell="HZ-XH-001-1", band="n78")
    influxdb.query(f'DROP DATABASE "{db}"')
