"""Backfill over history on real InfluxDB: a past outage opens a flag that resolves after the
hold-off; and a scheduled job evaluates its rule into flags."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line
from sitetwin.cli import main
from sitetwin.config import load_settings

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _registry(url: str, *site_ids: str) -> None:
    from twin.models import LifecycleEvent, Site
    from twin.store import open_store

    store = open_store(url)
    with store.session() as s:
        for sid in site_ids:
            s.add(Site(site_id=sid, name=sid, lat=31.0, lon=121.0, county="Pudong", kind="macro",
                       supply="direct", region="SH", customer_class="C", state="on_air"))
            s.flush()
            s.add(LifecycleEvent(site_id=sid, to_state="on_air", verb="import", at=T - timedelta(days=60),
                                 actor="test"))
    store.close()


def test_backfill_opens_then_resolves_a_past_mains_failure(influxdb, influx_db, tmp_path, capsys):
    # Tower reports every 5 minutes for 3 hours; on battery from T-150m to T-90m, SOC falling.
    lines = []
    for i in range(36):
        ts = T - timedelta(minutes=180) + timedelta(minutes=5 * i)
        outage = T - timedelta(minutes=150) <= ts < T - timedelta(minutes=90)
        lines.append(line("tower", {"site_id": "S-B"}, {"mains_ok": not outage, "on_battery": outage,
                                                        "battery_soc_pct": 60.0 if outage else 100.0},
                          int(ts.timestamp()) * 10**9))
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()
    url = f"sqlite:///{tmp_path / 'twin.sqlite'}"
    _registry(url, "S-B")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[influxdb]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n[twin]\nurl = "{url}"\n'
                   '[rules]\nhold_off = "10m"\n')

    code = main(["rules", "run", "--rule", "mains_failure", "--since", (T - timedelta(minutes=180)).isoformat(),
                 "--until", T.isoformat(), "--no-publish", "--json", "--config", str(cfg)])
    printed = capsys.readouterr()
    (summary,) = json.loads(printed.out)  # --json: only the summary on stdout
    assert code == 0 and summary["runs"] == 36 and summary["errors"] == 0
    # progress on stderr: steps done, the range covered, the rate
    assert "backfill: 36/36 steps 100.0% of the range (to 2026-11-20 12:00Z)" in printed.err
    assert (summary["opened"], summary["resolved"]) == (1, 1)
    main(["flags", "list", "--json", "--config", str(cfg)])
    (flag,) = json.loads(capsys.readouterr().out)
    assert (flag["kind"], flag["site_id"], flag["status"]) == ("mains_failure", "S-B", "resolved")
    assert flag["window_start"] == (T - timedelta(minutes=150)).isoformat().replace("+00:00", "Z")
    resolved = datetime.fromisoformat(flag["resolved_at"].replace("Z", "+00:00"))
    assert T - timedelta(minutes=80) <= resolved <= T - timedelta(minutes=70)  # cleared + 10 min hold-off


def test_scheduled_job_runs_its_rule(influxdb, influx_db, tmp_path, monkeypatch):
    from rules.flag import FlagBook
    from rules.scheduler import run_scheduled
    from sitetwin.wiring import start_rules
    from twin.store import open_store

    url = f"sqlite:///{tmp_path / 'twin.sqlite'}"
    _registry(url, "S-SILENT")
    settings = load_settings(None, influxdb={"url": influxdb.url, "database": influx_db}, twin={"url": url},
                             mqtt={"servers": ["tcp://127.0.0.1:9"]})
    sched = start_rules(settings, paused=True)  # the shell's: sections picked out of settings
    try:
        assert sched.get_job("site_offline") is not None
        run_scheduled("site_offline")  # what the job calls when it fires
    finally:
        sched.shutdown(wait=False)
    store = open_store(url)
    try:
        (flag,) = FlagBook(store).list()
    finally:
        store.close()
    assert (flag["kind"], flag["site_id"], flag["severity"]) == ("site_offline", "S-SILENT", "critical")


def test_backfill_sees_the_reservation_in_force_at_each_step(influxdb, influx_db, tmp_path, capsys):
    # 10 kW for three days; 8 kW reserved until the reservation was raised to 15 kW a day ago.
    lines = []
    for i in range(3 * 24 * 4):
        ts = T - timedelta(days=3) + timedelta(minutes=15 * i)
        lines.append(line("power", {"site_id": "S-R", "meter_id": "M-R"}, {"energy_kwh": 1.0 + i, "power_kw": 10.0},
                          int(ts.timestamp()) * 10**9))
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()
    url = f"sqlite:///{tmp_path / 'twin.sqlite'}"
    _registry(url, "S-R")
    raised = T - timedelta(days=1)
    (tmp_path / "res.csv").write_text(
        "site_id,declared_kw,reserved_kw,feeder,substation,status,effective_from\n"
        f"S-R,8,8,F-1,S-1,energized,{(T - timedelta(days=10)).isoformat()}\n"
        f"S-R,12,15,F-1,S-1,energized,{raised.isoformat()}\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[influxdb]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n[twin]\nurl = "{url}"\n'
                   '[rules]\nhold_off = "1h"\n[rules.reservations]\nwindow = "6h"\ninterval = "6h"\n')
    assert main(["reservations", "import", str(tmp_path / "res.csv"), "--config", str(cfg)]) == 0
    capsys.readouterr()
    code = main(["rules", "run", "--rule", "reservations", "--since", (T - timedelta(days=2)).isoformat(),
                 "--until", T.isoformat(), "--no-publish", "--json", "--config", str(cfg)])
    (summary,) = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["errors"] == 0 and (summary["opened"], summary["resolved"]) == (1, 1)
    main(["flags", "list", "--json", "--config", str(cfg)])
    (flag,) = json.loads(capsys.readouterr().out)
    assert (flag["kind"], flag["status"], flag["evidence"]["reserved_kw"]) == (
        "reservation_exceeded", "resolved", 8.0)
    resolved = datetime.fromisoformat(flag["resolved_at"].replace("Z", "+00:00"))
    assert raised < resolved <= raised + timedelta(hours=12)


def test_backfill_progress_line_has_range_rate_and_time_left():
    import io

    from sitetwin.commands.rules import BackfillProgress

    stream = io.StringIO()
    progress = BackfillProgress(T - timedelta(hours=10), T, stream=stream, interval=0.0)
    progress.step(3, 12, T - timedelta(hours=5))
    progress.step(12, 12, T)
    progress.close()
    first, *_, last = stream.getvalue().splitlines()
    assert first.startswith("backfill: 3/12 steps  50.0% of the range (to 2026-11-20 07:00Z), ")
    assert first.endswith("s left") and "/s, " in first
    assert last.startswith("backfill: 12/12 steps 100.0% of the range") and "left" not in last


def _interference(influxdb, influx_db, per_bucket: int, *, second_band: bool = False) -> None:
    import random

    rnd = random.Random(per_bucket)
    lines = []
    for q in range(24):
        for c in range(5):
            for k in range(per_bucket):
                step = 900 // per_bucket
                ts = T + timedelta(minutes=15 * q, seconds=rnd.randrange(0, step) + k * step)
                band = "n78" if second_band and c == 0 and q >= 12 else "n41"
                lines.append(line("interference", {"site_id": f"S{c % 2}", "cell_id": f"S{c % 2}-C{c}", "band": band},
                                  {"ul_interference_dbm": rnd.uniform(-120.0, -90.0)}, int(ts.timestamp() * 1e9)))
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()


def _buckets_both_ways(influxdb, influx_db):
    from connectors.influx import InfluxReader
    from rules.backfill import _RECENT, _QuartersFromReadings, csv_frame
    from rules.data import WindowData, _between

    data = WindowData(InfluxReader(influxdb.url, database=influx_db))
    quarters = _QuartersFromReadings(data)
    cut = T + timedelta(hours=3)
    spans = ((T, cut), (cut, T + timedelta(hours=6)))
    got = [quarters(a, b) for a, b in spans]
    asked = [csv_frame(data, _RECENT.format(where=_between(a, b))) for a, b in spans]
    return quarters, got, [f.sort_values(["time", "band", "cell_id", "site_id"], kind="stable").reset_index(drop=True)
                           for f in asked]


def test_one_reading_a_bucket_gives_the_buckets_influxdb_gives(influxdb, influx_db):
    """Cells reporting once every 15 minutes: the raw readings floored to their buckets are,
    row for row and to the bit, InfluxDB's 15-minute means with the cell's site and band."""
    import pandas as pd

    _interference(influxdb, influx_db, 1)
    quarters, got, asked = _buckets_both_ways(influxdb, influx_db)
    assert quarters.usable
    for mine, theirs in zip(got, asked, strict=True):
        assert len(mine) == 60
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)


@pytest.mark.parametrize(("per_bucket", "second_band"), [(2, False), (1, True)])
def test_buckets_are_asked_when_the_readings_cannot_stand_for_them(influxdb, influx_db, per_bucket, second_band):
    """Two readings in a bucket (their mean is InfluxDB's to give), or a cell in two series
    (grouping by cell would merge them): the raw way answers nothing and is not tried again."""
    _interference(influxdb, influx_db, per_bucket, second_band=second_band)
    quarters, got, _ = _buckets_both_ways(influxdb, influx_db)
    assert got == [None, None] and quarters.usable is False
