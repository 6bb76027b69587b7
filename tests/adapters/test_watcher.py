"""PM files end to end: dropped into the directory -> broker -> `sitetwin run` -> InfluxDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import orjson
import pytest

from adapters.sink import ReadingSink
from adapters.watcher import PmWatcher
from connectors.deadletter import DeadLetterStore
from core.settings import load_settings
from simulator.fleet import Fleet
from simulator.pmfile import interference_docs, write_cells_csv, write_pm_files
from tests.connectors.test_hostile import collector_env
from tests.support import ROOT, collector_process, wait_for

pytestmark = pytest.mark.integration


def _settings(tmp_path, mosquitto, **pm):
    return load_settings(None, mqtt={"servers": [mosquitto.url], "reconnect_min": "200ms",
                                     "reconnect_max": "1s"},
                         services={"state_dir": str(tmp_path / "state")},
                         adapters={"pm": {"settle": "0s", "poll_interval": "200ms",
                                          "cells_file": str(tmp_path / "cells.csv"), **pm}})


def _stored(influx, db: str, measurement: str = "interference", epoch: str = "s") -> list[dict]:
    """Every point of ``measurement`` with its tags, times in epoch ``epoch`` (s, ms, ns)."""
    body = urllib.parse.urlencode({"q": f"SELECT * FROM {measurement} GROUP BY *", "db": db,
                                   "epoch": epoch}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{influx.url}/query", data=body),
                                timeout=30) as r:
        res = orjson.loads(r.read())
    return [{**s["tags"], **dict(zip(s["columns"], v, strict=False))}
            for s in res["results"][0].get("series") or [] for v in s["values"]]


def _drop(source, incoming, name: str | None = None) -> None:
    """Upload as an SFTP client does: a temporary name the watcher ignores, then a rename."""
    name = name or source.name
    part = incoming / f".{name}.part"
    shutil.copy(source, part)
    os.replace(part, incoming / name)


def test_files_dropped_reach_influxdb_once_duplicates_add_nothing_broken_ones_are_rejected(
        tmp_path, mosquitto, influxdb, influx_db):
    now = datetime.fromtimestamp(time.time() // 900 * 900, UTC)
    fleet = Fleet.build(12, seed=21, now=now)
    write_cells_csv(fleet, tmp_path / "cells.csv")
    start, end = now.timestamp() - 3 * 3600, now.timestamp()
    source = tmp_path / "generated"
    files = write_pm_files(fleet, start, end, source, periods_per_file=4, prb_window_s=3600)
    want = interference_docs(fleet, start, end, prb_window_s=3600)
    expected = {(d["cell_id"], int(ts)): d for periods in want.values()
                for ts, docs in periods.items() for d in docs}
    expected_prb = sum(1 for d in expected.values() if "prb_dbm" in d)
    assert len(expected) > 100 and expected_prb > 0

    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db)
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log, wait_subscribed=True)
    settings = _settings(tmp_path, mosquitto)
    sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source="pm")
    watcher = PmWatcher(settings.adapters.pm, sink, state_dir=settings.state_dir)
    stop = threading.Event()
    sink.connect()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        incoming = watcher.incoming
        # Half the files, then a duplicate of one of them (same name, same content), the rest,
        # and a file that breaks half-way plus one that is not XML at all.
        half = len(files) // 2
        for f in files[:half]:
            _drop(f, incoming)
        wait_for(lambda: watcher.stats.archived == half, timeout=60, message="first half archived")
        _drop(files[0], incoming)
        wait_for(lambda: watcher.stats.duplicates == 1, timeout=30, message="the duplicate seen")
        for f in files[half:]:
            _drop(f, incoming)
        broken = tmp_path / "broken.xml"
        broken.write_bytes(files[1].read_bytes()[: files[1].stat().st_size // 2])
        _drop(broken, incoming, "A20261125.0000+0000-0015+0000_BROKEN.xml")
        junk = tmp_path / "junk.gz"
        junk.write_bytes(b"not gzip at all")
        _drop(junk, incoming, "A20261125.0000+0000-0015+0000_JUNK.xml.gz")
        wait_for(lambda: watcher.stats.archived == len(files) and watcher.stats.rejected == 2,
                 timeout=60, message="every file archived or rejected")
        wait_for(lambda: len(_stored(influxdb, influx_db)) >= len(expected), timeout=60,
                 interval=0.5, message=f"{len(expected)} interference points")
    finally:
        stop.set()
        thread.join(30)
        proc.terminate()
        proc.wait(30)
        watcher.close()
        sink.close()

    rows = _stored(influxdb, influx_db)
    got = {(r["cell_id"], int(r["time"])): r for r in rows}
    assert len(rows) == len(got) == len(expected)  # each exactly once
    assert got.keys() == expected.keys()
    for key, row in got.items():
        want_doc = expected[key]
        assert row["ul_interference_dbm"] == want_doc["ul_interference_dbm"]
        assert row["band"] == want_doc["band"] and row["period_s"] == 900
    prb_rows = _stored(influxdb, influx_db, "interference_prb")
    assert len(prb_rows) == expected_prb
    assert watcher.stats.readings == len(expected) and watcher.stats.refused == 0

    assert sorted(p.name for p in watcher.archive.glob("*.xml")) == sorted(f.name for f in files)
    assert [p.name for p in (watcher.archive / "duplicates").iterdir()] == [files[0].name]
    assert not list(watcher.incoming.iterdir())
    reasons = {p.name: p.read_text() for p in watcher.rejected.glob("*.reason")}
    assert set(reasons) == {"A20261125.0000+0000-0015+0000_BROKEN.xml.reason",
                            "A20261125.0000+0000-0015+0000_JUNK.xml.gz.reason"}
    assert reasons["A20261125.0000+0000-0015+0000_BROKEN.xml.reason"].startswith("not_xml: ")
    assert reasons["A20261125.0000+0000-0015+0000_JUNK.xml.gz.reason"].startswith("unreadable: ")
    store = DeadLetterStore(tmp_path / "state" / "rejected.sqlite")
    try:
        assert store.counts() == {"pm_not_xml": 1, "pm_unreadable": 1}
        assert {d.source for d in store.list()} == {"pm"}
    finally:
        store.close()


def test_a_bad_reading_is_dead_lettered_and_the_rest_of_its_site_stored(tmp_path, mosquitto,
                                                                        influxdb, influx_db):
    """One cell's value out of the contract's range does not take its site's other cells."""
    ts = datetime.fromtimestamp(time.time() // 900 * 900, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    (tmp_path / "cells.csv").write_text("cell_id,site_id,band\nK1,K0001,n78\nK2,K0001,n78\n")
    body = (f'<measCollecFile xmlns="http://www.3gpp.org/ftp/specs/archive/32_series/32.435#measCollec">'
            f'<fileHeader vendorName="sitetwin"/><measData><managedElement localDn="ManagedElement=K0001"/>'
            f'<measInfo><granPeriod duration="PT900S" endTime="{ts}"/>'
            f'<measType p="1">UL.Interference.Mean</measType>'
            f'<measValue measObjLdn="NRCellDU=K1"><r p="1">-30</r></measValue>'
            f'<measValue measObjLdn="NRCellDU=K2"><r p="1">-101.5</r></measValue>'
            f'<measValue measObjLdn="NRCellDU=K3"><r p="1">-101.5</r></measValue>'
            f'</measInfo></measData></measCollecFile>')
    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db)
    proc = collector_process(env, log_path=tmp_path / "c.log", wait_subscribed=True)
    settings = _settings(tmp_path, mosquitto)
    incoming = tmp_path / "drop"
    incoming.mkdir()
    (incoming / "A20261125.0000+0000-0015+0000_K0001.xml").write_text(body)
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "sitetwin", "adapters", "pm", "--watch", str(incoming), "--once",
             "--json"], cwd=ROOT, capture_output=True, timeout=120, check=False,
            env={**os.environ, **env, "SITETWIN_ADAPTERS__PM__SETTLE": "0s",
                 "SITETWIN_ADAPTERS__PM__CELLS_FILE": str(tmp_path / "cells.csv")})
        assert cli.returncode == 0, cli.stderr.decode()
        summary = orjson.loads(cli.stdout)
        assert summary["archived"] == 1 and summary["readings"] == 1 and summary["refused"] == 2
        wait_for(lambda: _stored(influxdb, influx_db), timeout=30, message="K2 stored")
    finally:
        proc.terminate()
        proc.wait(30)
    rows = _stored(influxdb, influx_db)
    assert [(r["cell_id"], r["ul_interference_dbm"]) for r in rows] == [("K2", -101.5)]
    store = DeadLetterStore(settings.dead_letter_path)
    try:
        letters = {d.reason: d for d in store.list(source="pm")}
    finally:
        store.close()
    assert set(letters) == {"schema", "no_band"}
    assert "ul_interference_dbm" in letters["schema"].detail
    assert letters["schema"].topic == "sites/K0001/interference"
    assert "K3" in letters["no_band"].detail
