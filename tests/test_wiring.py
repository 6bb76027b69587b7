"""``sitetwin run`` with the registry unavailable at start-up: ingest starts anyway.

The registry (SQLite locked by another process, or PostgreSQL stopped) is
unusable before the process starts.  The collector must start and store every
acknowledged reading exactly once (counted in InfluxDB by series and
timestamp); the live state and the rule scheduler report their failures, keep
retrying, and start by themselves once the registry is back.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.connectors.test_faults import (
    _live_last_seen,
    _log_has,
    _newest_per_site,
    assert_dead_letters,
    assert_exactly_once,
    bad_messages,
    interleave,
    readings,
    wait_all,
)
from tests.connectors.test_hostile import collector_env, wait_until_ingesting
from tests.support import ROOT, publish, wait_for

pytestmark = pytest.mark.integration

# site_offline every 2 s, so a scheduled rule run shows up in the log soon after the start.
CONFIG = """
[rules.site_offline]
interval = "2s"
"""


def _run_with_rules(tmp_path: Path, mosquitto, influxdb, influx_db: str, twin_url: str):
    """``sitetwin run`` with the twin and the rules, live state flushed every 0.3 s."""
    config = tmp_path / "sitetwin.toml"
    config.write_text(CONFIG)
    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db, SITETWIN_TWIN__URL=twin_url,
                        SITETWIN_COLLECTOR__LIVE_FLUSH_INTERVAL="0.3")
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "run", "--config", str(config)],
                            env={**os.environ, **env}, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, log


def _wait_failure_reported(proc: subprocess.Popen, log: Path, text: str) -> None:
    """Wait until ``text`` is logged; the process must still be running then."""
    wait_for(lambda: _log_has(log, text) or proc.poll() is not None, timeout=90,
             message=f"{text!r} in the log")
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]


def test_run_starts_and_collects_with_the_sqlite_registry_locked_at_start_up(
        tmp_path, mosquitto, influxdb, influx_db):
    from twin.store import open_store

    twin_db = tmp_path / "twin.sqlite"
    open_store(f"sqlite:///{twin_db}").close()
    # The harshest lock SQLite has: in exclusive locking mode, with a write transaction open,
    # nobody else may even read the file (WAL or not).
    lock = sqlite3.connect(twin_db, timeout=30, isolation_level=None)
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    lock.execute("UPDATE sites SET name = name")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite3.connect(twin_db, timeout=0.1).execute("SELECT count(*) FROM sites").fetchone()

    proc, log = _run_with_rules(tmp_path, mosquitto, influxdb, influx_db, f"sqlite:///{twin_db}")
    good = readings("K", 20, 50, 1_790_000_000)
    bad = bad_messages("locked", 3)
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)
        # The load goes out once the rules part has failed (sitetwin run used to exit there).
        _wait_failure_reported(proc, log, "rule scheduler not started")
        publish(mosquitto.host, mosquitto.port, interleave(good, bad))
        wait_all(influxdb, influx_db, "K", len(good))
        assert proc.poll() is None
        assert not _log_has(log, "rule scheduler started")

        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        wait_for(lambda: _log_has(log, "rule scheduler started"), timeout=120,
                 message="the rule scheduler starting by itself")
        wait_for(lambda: _log_has(log, "rule site_offline:"), timeout=60,
                 message="a scheduled rule run")
        store = open_store(f"sqlite:///{twin_db}")
        try:
            wait_for(lambda: _live_last_seen(store, "K") == _newest_per_site(good), timeout=90,
                     message="the live state catching up")
        finally:
            store.close()
        assert proc.poll() is None
    finally:
        if lock is not None:
            lock.close()
        if proc.poll() is None:
            _stop(proc, log)
    assert proc.returncode == 0
    assert_exactly_once(influxdb, influx_db, "K", good)
    assert_dead_letters(tmp_path / "state", bad)


def test_run_starts_and_collects_with_postgresql_down_at_start_up(
        tmp_path, mosquitto, influxdb, influx_db):
    from sitetwin.services import PostgreSQL, free_port, temp_root
    from twin.store import open_store

    root = temp_root("sitetwin-pgstart-")
    pg = PostgreSQL(root=root, port=free_port())
    pg.start()  # creates the cluster and its database ...
    assert pg.stop()  # ... which is down when sitetwin run starts
    proc, log = _run_with_rules(tmp_path, mosquitto, influxdb, influx_db, pg.url)
    good = readings("P", 20, 50, 1_790_500_000)
    bad = bad_messages("pgstart", 3)
    store = None
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)
        _wait_failure_reported(proc, log, "rule scheduler not started")
        _wait_failure_reported(proc, log, "live-state flush failed")
        publish(mosquitto.host, mosquitto.port, interleave(good, bad))
        wait_all(influxdb, influx_db, "P", len(good))
        assert proc.poll() is None

        pg.start()
        wait_for(lambda: _log_has(log, "rule scheduler started"), timeout=120,
                 message="the rule scheduler starting by itself")
        wait_for(lambda: _log_has(log, "rule site_offline:"), timeout=60,
                 message="a scheduled rule run")
        store = open_store(pg.url)
        wait_for(lambda: _live_last_seen(store, "P") == _newest_per_site(good), timeout=90,
                 message="the live state catching up")
        assert proc.poll() is None
    finally:
        if store is not None:
            store.close()
        if proc.poll() is None:
            _stop(proc, log)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert proc.returncode == 0
    assert_exactly_once(influxdb, influx_db, "P", good)
    assert_dead_letters(tmp_path / "state", bad)
