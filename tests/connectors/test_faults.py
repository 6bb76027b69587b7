"""Fault injection against real services: nothing published is lost or stored twice.

Each test runs a QoS 1 load, injects a fault, and ends by checking that every
published reading is in InfluxDB exactly once (series + timestamp) and that
the dead-letter store holds exactly the injected bad messages.  Covered
elsewhere (tests/connectors/test_collector.py) and not repeated: one SIGKILL,
InfluxDB down for 30 s, two collectors.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from connectors.deadletter import DeadLetterStore
from tests.connectors.test_hostile import collector_env, wait_until_ingesting
from tests.support import collector_process, publish, tower_messages, wait_for

pytestmark = pytest.mark.integration


# -- helpers ---------------------------------------------------------------------------------


def readings(prefix: str, sites: int, per_site: int, start_s: int) -> list[tuple[str, bytes]]:
    """Distinct valid tower readings on sites ``<prefix>0000``..."""
    return [(t.replace("sites/S", f"sites/{prefix}"), p) for t, p in tower_messages(sites, per_site, start_s)]


def bad_messages(tag: str, n: int) -> list[tuple[str, bytes]]:
    """``n`` distinct invalid messages (schema rejections)."""
    return [("sites/BAD1/tower", orjson.dumps({"ts": 1_790_000_000 + i, "mains_ok": f"{tag}-{i}"}))
            for i in range(n)]


def interleave(good: list, bad: list) -> list:
    out = list(good)
    step = max(1, len(good) // (len(bad) + 1))
    for i, m in enumerate(bad):
        out.insert((i + 1) * step + i, m)
    return out


def stored_keys(influx, db: str, prefix: str) -> list[tuple[str, int]]:
    series = _series(influx, db, f"SELECT mains_ok FROM tower WHERE site_id =~ /^{prefix}/ GROUP BY site_id")
    return [(site, ts) for site, times in series.items() for ts in times]


def _series(influx, db: str, q: str) -> dict[str, list[int]]:
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ns"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{influx.url}/query", data=data), timeout=30) as r:
        out = orjson.loads(r.read())
    return {s["tags"]["site_id"]: [v[0] for v in s["values"]]
            for s in out["results"][0].get("series") or []}


def expected_keys(messages: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
    return [(t.split("/")[1], orjson.loads(p)["ts"] * 10**9) for t, p in messages]


def assert_exactly_once(influx, db: str, prefix: str, messages: list[tuple[str, bytes]]) -> None:
    stored = stored_keys(influx, db, prefix)
    expected = expected_keys(messages)
    assert len(stored) == len(set(stored))
    missing = set(expected) - set(stored)
    extra = set(stored) - set(expected)
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} unexpected"


def wait_all(influx, db: str, prefix: str, n: int, timeout: float = 90.0) -> None:
    wait_for(lambda: sum(len(v) for v in _series(
        influx, db, f"SELECT mains_ok FROM tower WHERE site_id =~ /^{prefix}/ GROUP BY site_id").values()) >= n,
        timeout=timeout, interval=0.5, message=f"{n} readings of {prefix}*")


def assert_dead_letters(state: Path, bad: list[tuple[str, bytes]]) -> None:
    store = DeadLetterStore(state / "rejected.sqlite")
    try:
        letters = store.list(limit=100_000)
    finally:
        store.close()
    got = Counter((d.topic, d.payload, d.reason) for d in letters if d.topic != "sites/Z9999/tower")
    assert got == Counter((t, p, "schema") for t, p in bad)


class SteadyLoad(threading.Thread):
    """Publish ``messages`` at about ``rate`` per second (QoS 1, broker-acknowledged)."""

    def __init__(self, mosquitto, messages: list, rate: float, chunk: int = 100) -> None:
        super().__init__(daemon=True)
        self.mosquitto, self.messages, self.rate, self.chunk = mosquitto, messages, rate, chunk
        self.error: BaseException | None = None
        self.sent = 0

    def run(self) -> None:
        start = time.monotonic()
        try:
            for i in range(0, len(self.messages), self.chunk):
                part = self.messages[i:i + self.chunk]
                publish(self.mosquitto.host, self.mosquitto.port, part, client_id=f"load-{id(self)}")
                self.sent += len(part)
                ahead = start + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "load did not finish"
        if self.error:
            raise self.error


def _log_has(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


# -- 1. SIGKILL at random moments, three times ---------------------------------------------------


def test_collector_killed_three_times_at_random_moments_loses_and_duplicates_nothing(
        tmp_path, mosquitto, influxdb, influx_db):
    seed = int(os.environ.get("SITETWIN_FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db, SITETWIN_COLLECTOR__BATCH_SIZE="500")
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log)
    good = readings("K", 40, 250, 1_790_000_000)  # 10 000
    bad = bad_messages("kill", 12)
    load = SteadyLoad(mosquitto, interleave(good, bad), rate=1500)
    kills = []
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)
        load.start()
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills.append(load.sent)
            proc = collector_process(env, log_path=log)
        load.finish()
        wait_all(influxdb, influx_db, "K", len(good))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    print(f"seed {seed}: killed after {kills} of {len(good) + len(bad)} messages")
    assert_exactly_once(influxdb, influx_db, "K", good)
    assert_dead_letters(tmp_path / "state", bad)


# -- 2. spool cap reached while InfluxDB is down ------------------------------------------------


def test_spool_cap_stops_acks_the_broker_holds_the_backlog_and_ingest_resumes_by_itself(
        tmp_path, mosquitto, private_influxdb):
    db = private_influxdb.database
    cap = 24 * 1024
    env = collector_env(tmp_path, mosquitto, private_influxdb.url, db,
                        SITETWIN_COLLECTOR__BATCH_SIZE="200", SITETWIN_SPOOL__MAX_BYTES=str(cap),
                        SITETWIN_COLLECTOR__METRICS_INTERVAL="1h")
    log = tmp_path / "collector.log"
    spool = tmp_path / "state" / "spool"
    proc = collector_process(env, log_path=log)
    first = readings("C", 10, 300, 1_790_000_000)  # 3 000 lines, ~250 KB: ten times the cap
    second = readings("C", 10, 300, 1_791_000_000)
    bad = bad_messages("cap", 6)
    try:
        wait_until_ingesting(mosquitto, private_influxdb, db)
        # (a) InfluxDB down, the spool fills to its cap, acks stop; InfluxDB back: resumes by itself
        private_influxdb.stop()
        publish(mosquitto.host, mosquitto.port, interleave(first, bad[:3]))
        wait_for(lambda: _log_has(log, "is full"), message="the spool reaching its cap")
        assert sum(f.stat().st_size for f in spool.rglob("*.lp")) <= cap
        private_influxdb.start()
        wait_all(private_influxdb, db, "C", len(first))
        # (b) again, but the collector dies while the spool is full: whatever it had not
        # made durable was not acknowledged, so the broker redelivers it to the next one
        private_influxdb.stop()
        publish(mosquitto.host, mosquitto.port, interleave(second, bad[3:]))
        full_again = log.read_text(errors="replace").count("is full") + 1
        wait_for(lambda: log.read_text(errors="replace").count("is full") >= full_again,
                 message="the spool reaching its cap again")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        private_influxdb.start()
        proc = collector_process(env, log_path=log)
        wait_all(private_influxdb, db, "C", len(first) + len(second))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert_exactly_once(private_influxdb, db, "C", first + second)
    assert_dead_letters(tmp_path / "state", bad)
    assert not any(spool.rglob("*.lp"))


# -- 3. Mosquitto restarted (persistence on) -------------------------------------------------------


def test_mosquitto_restart_collector_reconnects_and_the_broker_keeps_its_backlog(
        tmp_path, private_mosquitto, influxdb, influx_db):
    env = collector_env(tmp_path, private_mosquitto, influxdb.url, influx_db,
                        SITETWIN_MQTT__RECONNECT_MAX="1s")
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log)
    before = readings("M", 10, 100, 1_790_000_000)
    after = readings("M", 10, 100, 1_791_000_000)
    queued = readings("M", 10, 100, 1_792_000_000)
    bad = bad_messages("restart", 6)
    try:
        wait_until_ingesting(private_mosquitto, influxdb, influx_db)
        publish(private_mosquitto.host, private_mosquitto.port, interleave(before, bad[:2]))
        wait_all(influxdb, influx_db, "M", len(before))
        # (a) restart under a running collector: it reconnects, its session resumed
        private_mosquitto.stop()
        private_mosquitto.start()
        wait_for(lambda: log.read_text(errors="replace").count("session resumed") >= 1,
                 message="the collector reconnecting to the resumed session")
        publish(private_mosquitto.host, private_mosquitto.port, interleave(after, bad[2:4]))
        wait_all(influxdb, influx_db, "M", len(before) + len(after))
        # (b) messages queued for the stopped collector survive a broker restart
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 0
        publish(private_mosquitto.host, private_mosquitto.port, interleave(queued, bad[4:]))
        private_mosquitto.stop()
        private_mosquitto.start()
        proc = collector_process(env, log_path=log)
        wait_all(influxdb, influx_db, "M", len(before) + len(after) + len(queued))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert_exactly_once(influxdb, influx_db, "M", before + after + queued)
    assert_dead_letters(tmp_path / "state", bad)


# -- 4. disk full on the spool path -----------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (needs root: mount(2)); unmounted afterwards."""
    mnt = tmp_path / "spoolfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (run as root): {done.stderr.strip()}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_the_spool_gives_a_clear_error_holds_acks_and_recovers(
        tmp_path, mosquitto, private_influxdb, small_fs):
    db = private_influxdb.database
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    filler.write_bytes(b"\0" * (free - 40 * 1024))  # leave ~40 KiB
    env = collector_env(tmp_path, mosquitto, private_influxdb.url, db,
                        SITETWIN_COLLECTOR__BATCH_SIZE="200", SITETWIN_SPOOL__PATH=str(small_fs / "spool"),
                        SITETWIN_COLLECTOR__METRICS_INTERVAL="1h")
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log)
    good = readings("D", 10, 300, 1_790_000_000)  # ~250 KB of line protocol
    bad = bad_messages("disk", 5)
    try:
        wait_until_ingesting(mosquitto, private_influxdb, db)
        private_influxdb.stop()
        publish(mosquitto.host, mosquitto.port, interleave(good, bad))
        wait_for(lambda: _log_has(log, "No space left on device"), message="ENOSPC in the log")
        text = log.read_text(errors="replace")
        assert "cannot write to the spool" in text and "holding acknowledgements" in text
        # space returns: the spool takes the rest by itself (InfluxDB still down) ...
        filler.unlink()
        wait_for(lambda: sum(f.read_bytes().count(b"tower,site_id=D") for f in (small_fs / "spool").rglob("*.lp")
                             ) >= len(good), timeout=60, message="everything spooled once space returned")
        # ... and drains into InfluxDB when it is back
        private_influxdb.start()
        wait_all(private_influxdb, db, "D", len(good))
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert_exactly_once(private_influxdb, db, "D", good)
    assert_dead_letters(tmp_path / "state", bad)


# -- 5. twin database locked or down --------------------------------------------------------------


def _pipeline_with_twin(tmp_path, mosquitto, influxdb, influx_db, twin_url: str):
    """``sitetwin run --no-rules`` with live state flushed every 0.3 s to ``twin_url``."""
    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db, SITETWIN_TWIN__URL=twin_url,
                        SITETWIN_COLLECTOR__LIVE_FLUSH_INTERVAL="0.3")
    log = tmp_path / "collector.log"
    proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "run", "--no-rules"], env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[2])
    return proc, log


def _live_last_seen(store, prefix: str) -> dict[str, int]:
    """``last_seen`` (epoch seconds) per site in the twin's live state, for ids with ``prefix``."""
    from sqlalchemy import select

    from twin.models import LiveSiteState

    with store.session() as s:
        rows = s.execute(select(LiveSiteState.site_id, LiveSiteState.last_seen)
                         .where(LiveSiteState.site_id.like(f"{prefix}%"))).all()
    return {site: int(ts.timestamp()) for site, ts in rows}


def _newest_per_site(messages: list[tuple[str, bytes]]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for topic, payload in messages:
        site = topic.split("/")[1]
        latest[site] = max(latest.get(site, 0), orjson.loads(payload)["ts"])
    return latest


def test_twin_database_locked_ingest_continues_and_live_state_catches_up(
        tmp_path, mosquitto, influxdb, influx_db):
    import sqlite3

    from twin.store import open_store

    twin_db = tmp_path / "twin.sqlite"
    proc, log = _pipeline_with_twin(tmp_path, mosquitto, influxdb, influx_db, f"sqlite:///{twin_db}")
    good = readings("L", 20, 100, 1_790_000_000)
    bad = bad_messages("twin", 4)
    lock = None
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)

        def live_sites(conn) -> set[str]:
            try:
                return {r[0] for r in conn.execute("SELECT site_id FROM live_state")}
            except sqlite3.OperationalError:
                return set()

        probe = sqlite3.connect(twin_db, timeout=30)
        wait_for(lambda: "Z9999" in live_sites(probe), message="the twin's first flush")
        probe.close()
        lock = sqlite3.connect(twin_db, timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # nobody else may write (or, without WAL, read)
        publish(mosquitto.host, mosquitto.port, interleave(good, bad))
        wait_all(influxdb, influx_db, "L", len(good))  # ingest went on while the twin was locked
        assert not {s for s in live_sites(lock) if s.startswith("L")}  # ... and the twin had nothing
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        store = open_store(f"sqlite:///{twin_db}")
        latest = _newest_per_site(good)
        try:
            wait_for(lambda: _live_last_seen(store, "L") == latest, timeout=60,
                     message="the live state catching up")
        finally:
            store.close()
        assert proc.poll() is None
    finally:
        if lock is not None:
            lock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert_exactly_once(influxdb, influx_db, "L", good)
    assert_dead_letters(tmp_path / "state", bad)


def test_twin_postgresql_down_ingest_continues_and_live_state_catches_up(tmp_path, mosquitto, influxdb, influx_db):
    """The production registry (PostgreSQL) stops mid-ingest and comes back: InfluxDB gets
    everything meanwhile, the collector keeps running, the live state catches up."""
    import shutil

    from sitetwin.services import PostgreSQL, free_port, temp_root
    from twin.store import open_store

    root = temp_root("sitetwin-pgdown-")
    pg = PostgreSQL(root=root, port=free_port())
    pg.start()
    proc, log = _pipeline_with_twin(tmp_path, mosquitto, influxdb, influx_db, pg.url)
    good = readings("G", 20, 100, 1_791_000_000)
    bad = bad_messages("pgdown", 4)
    store = None
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)
        store = open_store(pg.url)
        wait_for(lambda: "Z9999" in _live_last_seen(store, "Z"), message="the twin's first flush")
        store.close()
        store = None
        assert pg.stop()
        publish(mosquitto.host, mosquitto.port, interleave(good, bad))
        wait_all(influxdb, influx_db, "G", len(good))  # ingest went on without the registry
        wait_for(lambda: _log_has(log, "live-state flush failed"), message="the failed flush logged")
        assert proc.poll() is None
        pg.start()
        store = open_store(pg.url)
        latest = _newest_per_site(good)
        wait_for(lambda: _live_last_seen(store, "G") == latest, timeout=60,
                 message="the live state catching up")
        assert proc.poll() is None
    finally:
        if store is not None:
            store.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert_exactly_once(influxdb, influx_db, "G", good)
    assert_dead_letters(tmp_path / "state", bad)


# -- 6. back to direct writes after an outage -------------------------------------------------------


def test_with_batches_left_in_the_spool_new_ones_still_go_straight_to_influxdb(
        tmp_path, mosquitto, influxdb, influx_db):
    """Spooled batches are the drain's business; they must not divert fresh ones to disk."""
    from connectors.collector import Collector
    from connectors.spool import Spool
    from sitetwin.config import load_settings
    from sitetwin.wiring import collector_config

    settings = load_settings(
        None,
        mqtt={"servers": [mosquitto.url], "client_id": f"direct-{tmp_path.name}",
              "shared_group": f"d{abs(hash(str(tmp_path))) % 10**8}"},
        influxdb={"url": influxdb.url, "database": influx_db},
        collector={"batch_size": 200, "batch_age": "100ms", "metrics_interval": "1h"},
        services={"state_dir": str(tmp_path / "state")},
        spool={"fsync": False, "drain_interval": "1h"},  # the drain runs only when called here
    )
    left = readings("P", 5, 20, 1_789_000_000)  # left behind by an earlier run
    body = "\n".join(f"tower,site_id={t.split('/')[1]} mains_ok=true {orjson.loads(p)['ts'] * 10**9}"
                     for t, p in left).encode()
    Spool(settings.spool_path / settings.mqtt.client_id, fsync=False).put(body)
    fresh = readings("P", 5, 40, 1_790_000_000)
    collector = Collector(collector_config(settings))
    collector.start()
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        publish(mosquitto.host, mosquitto.port, fresh)
        wait_all(influxdb, influx_db, "P", len(fresh), timeout=30)
        assert collector.metrics.spooled_points == 0 and collector.spool.batches == 1
        collector.drain_once()
        assert collector.spool.batches == 0
    finally:
        collector.stop()
    assert_exactly_once(influxdb, influx_db, "P", left + fresh)
