"""``sitetwin run --workers N``: how many workers, and N collector processes supervised.

The integration tests run the real command against real Mosquitto and InfluxDB and count
readings by series and timestamp in InfluxDB: every reading the broker acknowledged to
the publisher is stored exactly once, through a worker killed with SIGKILL and through
SIGTERM to the supervisor.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from sitetwin.cli import main
from sitetwin.errors import UserError
from sitetwin.supervisor import (
    EXIT_WORKERS_FAILED,
    MAX_QUICK_FAILURES,
    Supervisor,
    available_cores,
    resolve_workers,
)
from tests.connectors.test_faults import (
    SteadyLoad,
    _live_last_seen,
    _log_has,
    _newest_per_site,
    assert_exactly_once,
    readings,
    wait_all,
)
from tests.connectors.test_hostile import collector_env
from tests.support import ROOT, SUBSCRIBED, publish, wait_for

# -- how many ------------------------------------------------------------------------------------


def test_auto_is_one_per_core_on_a_shared_group_and_one_on_a_plain_subscription():
    assert resolve_workers("auto", shared_group="g", cores=6).count == 6
    plain = resolve_workers("auto", shared_group="", cores=6)
    assert plain.count == 1
    assert "mqtt.shared_group is empty" in plain.reason


def test_an_explicit_count_is_kept_on_a_shared_group_and_one_is_always_allowed():
    assert resolve_workers(3, shared_group="g", cores=1).count == 3  # more than cores: as asked
    assert resolve_workers(1, shared_group="", cores=8).count == 1


def test_several_workers_on_a_plain_subscription_are_refused_naming_the_setting():
    with pytest.raises(UserError, match=r"--workers 2 needs a shared subscription: set mqtt\.shared_group"):
        resolve_workers(2, shared_group="", cores=2, source="--workers")


def test_available_cores_follows_the_affinity():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_run_with_two_workers_on_a_plain_subscription_is_a_one_line_error(capsys):
    assert main(["run", "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sitetwin: error: --workers 2 needs a shared subscription")
    assert "mqtt.shared_group" in err[0]


def test_workers_from_the_config_on_a_plain_subscription_name_the_key(tmp_path, capsys):
    config = tmp_path / "sitetwin.toml"
    config.write_text("[collector]\nworkers = 3\n")
    assert main(["run", "--config", str(config)]) == 1
    assert "collector.workers = 3 needs a shared subscription" in capsys.readouterr().err


def test_instance_and_several_workers_are_refused(capsys, monkeypatch):
    monkeypatch.setenv("SITETWIN_MQTT__SHARED_GROUP", "g")
    assert main(["run", "--instance", "1", "--workers", "2"]) == 1
    assert "--instance runs one collector" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_workers_value_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--workers", value])
    assert exc.value.code == 2


# -- the supervisor's restart policy, with stand-in workers ------------------------------------------

_CLEAN_ON_SIGTERM = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "


def _stop_when(sup: Supervisor, condition) -> threading.Thread:
    def watch() -> None:
        wait_for(condition, timeout=60, interval=0.02, message="the supervisor's progress")
        sup.stop()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_a_worker_failing_quickly_is_restarted_with_doubling_back_off_then_given_up(caplog):
    caplog.set_level(logging.INFO, "sitetwin.supervisor")
    sup = Supervisor(2, lambda i, fd: [sys.executable, "-c", _CLEAN_ON_SIGTERM + (
        "sys.exit(7)" if i == 1 else "time.sleep(60)")],
        restart_first_s=0.05, restart_max_s=0.2, max_quick_failures=4)
    assert sup.run() == EXIT_WORKERS_FAILED
    assert sup.restarts == 4
    text = caplog.text
    delays = re.findall(r"worker 1 \(pid \d+\) exited with status 7 unexpectedly; restarting it in ([\d.]+)s", text)
    assert delays == ["0.05", "0.1", "0.2"]  # doubling, capped
    assert "4 failures in a row" in text and "giving up" in text
    assert "worker 0 stopped cleanly" in text  # the healthy one is stopped, not killed


def test_a_worker_that_ran_long_enough_before_failing_starts_a_new_series():
    sup = Supervisor(1, lambda i, fd: [sys.executable, "-c", _CLEAN_ON_SIGTERM + "time.sleep(0.3); sys.exit(1)"],
                     restart_first_s=0.01, stable_after_s=0.2, max_quick_failures=2)
    _stop_when(sup, lambda: sup.restarts >= 4)
    assert sup.run() == 0  # four failures, none quick: restarted every time, never given up


def test_workers_hold_the_lifeline_and_see_it_open_while_the_supervisor_lives(tmp_path):
    ready = tmp_path / "ready"
    probe = ("import os, select, sys; fd = int(sys.argv[1]); "
             "r, _, _ = select.select([fd], [], [], 0); "
             f"open({str(ready)!r} + sys.argv[2], 'w').write('eof' if r and not os.read(fd, 1) else 'open')")
    sup = Supervisor(2, lambda i, fd: [sys.executable, "-c", probe, str(fd), str(i)],
                     stable_after_s=0.0, restart_first_s=30)
    _stop_when(sup, lambda: sup.restarts >= 2)
    sup.run()
    assert (tmp_path / "ready0").read_text() == "open" and (tmp_path / "ready1").read_text() == "open"


# -- supervised workers, on real services -----------------------------------------------------------


def _env(tmp_path: Path, mosquitto, influxdb, db: str, **extra: str) -> dict[str, str]:
    env = collector_env(tmp_path, mosquitto, influxdb.url, db, SITETWIN_COLLECTOR__BATCH_SIZE="500",
                        SITETWIN_COLLECTOR__METRICS_INTERVAL="1h", **extra)
    del env["SITETWIN_COLLECTOR__WORKERS"]  # collector_env pins 1; these tests choose
    return env


def _start(env: dict[str, str], log: Path, *args: str, subscribed: int = 2,
           prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """``sitetwin run`` with ``args``; returns once ``subscribed`` more subscriptions are logged."""
    before = log.read_bytes().count(SUBSCRIBED) if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "sitetwin", "run", "--no-rules", "--no-twin",
                                 *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT)

    def ready() -> bool:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text(errors='replace')[-3000:]}"
        return log.read_bytes().count(SUBSCRIBED) >= before + subscribed

    wait_for(ready, timeout=90, message=f"{subscribed} subscription(s)")
    return proc


def _worker_pids(log: Path) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log.read_text())}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log.read_text(errors="replace")[-3000:]


def _received_per_worker(influx, db: str) -> dict[str, int]:
    import urllib.parse
    import urllib.request

    q = 'SELECT max("received_msgs") FROM "sitetwin_pipeline" GROUP BY "collector"'
    data = urllib.parse.urlencode({"q": q, "db": db}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{influx.url}/query", data=data), timeout=30) as r:
        out = orjson.loads(r.read())
    return {s["tags"]["collector"]: s["values"][0][1] for s in out["results"][0].get("series") or []}


@pytest.mark.integration
def test_auto_on_a_plain_subscription_runs_one_collector_under_the_client_id_itself(
        tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db, SITETWIN_MQTT__SHARED_GROUP="")
    log = tmp_path / "run.log"
    proc = _start(env, log, subscribed=1)
    try:
        text = log.read_text()
        assert "1 collector worker(s) (auto: mqtt.shared_group is empty" in text
        assert "supervising" not in text
        assert f"sitetwin running as {env['SITETWIN_MQTT__CLIENT_ID']};" in text
    finally:
        _stop(proc, log)


@pytest.mark.integration
def test_auto_on_a_shared_group_runs_one_worker_per_core(tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    # On one core (taskset) auto means a single collector, even with a shared group.
    one = _start(env, log, subscribed=1, prefix=("taskset", "-c", "0"))
    _stop(one, log)
    assert "1 collector worker(s) (auto: one per core (1)" in log.read_text()
    cores = available_cores()
    proc = _start(env, log, subscribed=cores)
    try:
        assert f"{cores} collector worker(s) (auto: one per core ({cores})" in log.read_text()
        if cores > 1:
            assert sorted(_worker_pids(log)) == list(range(cores))
    finally:
        _stop(proc, log)


@pytest.mark.integration
def test_two_workers_on_a_shared_group_store_a_backlog_exactly_once(tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    proc = _start(env, log, "--workers", "2")
    _stop(proc, log)  # both sessions (and the group) now exist at the broker
    backlog = readings("W", 40, 150, 1_790_000_000)  # 6 000, queued while nobody is connected
    publish(mosquitto.host, mosquitto.port, backlog)
    proc = _start(env, log, "--workers", "2")
    try:
        wait_all(influxdb, influx_db, "W", len(backlog), timeout=120)
    finally:
        _stop(proc, log)
    assert_exactly_once(influxdb, influx_db, "W", backlog)
    cid = env["SITETWIN_MQTT__CLIENT_ID"]
    received = _received_per_worker(influxdb, influx_db)
    assert set(received) == {f"{cid}-0", f"{cid}-1"}
    assert all(n > 0 for n in received.values()), received  # both took a share of the backlog
    text = log.read_text()
    assert "worker-0 " in text and "worker-1 " in text  # each worker's lines name it
    assert "worker 0 stopped cleanly" in text and "worker 1 stopped cleanly" in text


@pytest.mark.integration
def test_a_worker_killed_mid_stream_is_restarted_and_nothing_is_lost(tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    proc = _start(env, log, "--workers", "2")
    stream = readings("K", 30, 200, 1_790_000_000)  # 6 000
    try:
        load = SteadyLoad(mosquitto, stream, rate=1500)
        load.start()
        wait_for(lambda: load.sent >= 2000, message="a third of the load")
        victim = _worker_pids(log)[1]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _log_has(log, f"worker 1 (pid {victim}) exited on signal SIGKILL unexpectedly"),
                 message="the supervisor noticing")
        wait_for(lambda: _worker_pids(log)[1] != victim, message="worker 1 restarted")
        load.finish()
        wait_all(influxdb, influx_db, "K", len(stream), timeout=120)
        assert proc.poll() is None
        assert _alive(_worker_pids(log)[0]) and _alive(_worker_pids(log)[1])
    finally:
        _stop(proc, log)
    assert_exactly_once(influxdb, influx_db, "K", stream)
    assert "workers restarted 1 time(s)" in log.read_text()


@pytest.mark.integration
def test_sigterm_to_the_supervisor_stops_every_worker_cleanly_and_loses_nothing(
        tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    proc = _start(env, log, "--workers", "2")
    stream = readings("T", 30, 200, 1_790_000_000)  # 6 000
    load = SteadyLoad(mosquitto, stream, rate=1500)
    load.start()
    wait_for(lambda: load.sent >= 2000, message="a third of the load")
    pids = _worker_pids(log)
    _stop(proc, log)  # mid-stream: the rest waits in the broker for the two sessions
    assert not any(_alive(pid) for pid in pids.values())
    text = log.read_text()
    assert "signal SIGTERM: finishing the pending batches and stopping" in text
    assert "worker 0 stopped cleanly" in text and "worker 1 stopped cleanly" in text
    load.finish()
    proc = _start(env, log, "--workers", "2")
    try:
        wait_all(influxdb, influx_db, "T", len(stream), timeout=120)
    finally:
        _stop(proc, log)
    assert_exactly_once(influxdb, influx_db, "T", stream)


@pytest.mark.integration
def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    proc = _start(env, log, "--workers", "2")
    pids = _worker_pids(log)
    proc.kill()
    proc.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=60,
             message="the orphaned workers stopping")
    assert log.read_text().count("the supervisor is gone; stopping") == 2


@pytest.mark.integration
def test_workers_that_keep_crashing_make_the_supervisor_exit_non_zero(tmp_path, mosquitto, influxdb, influx_db):
    not_a_directory = tmp_path / "spool-is-a-file"
    not_a_directory.write_text("")
    env = _env(tmp_path, mosquitto, influxdb, influx_db, SITETWIN_SPOOL__PATH=str(not_a_directory))
    log = tmp_path / "run.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "run", "--no-rules", "--no-twin",
                                 "--workers", "2"], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    assert proc.wait(180) == EXIT_WORKERS_FAILED
    text = log.read_text()
    assert f"{MAX_QUICK_FAILURES} failures in a row, each within 60s of starting; giving up" in text
    assert "restarting it in 1s" in text and "restarting it in 8s" in text
    restarted = len(re.findall(r"exited with status 1 unexpectedly", text))
    assert restarted >= MAX_QUICK_FAILURES - 1


@pytest.mark.integration
def test_rules_run_in_worker_0_only_and_every_worker_feeds_the_live_state(
        tmp_path, mosquitto, influxdb, influx_db):
    from twin.store import open_store

    twin_db = tmp_path / "twin.sqlite"
    config = tmp_path / "sitetwin.toml"
    config.write_text('[rules.site_offline]\ninterval = "1s"\n')
    env = _env(tmp_path, mosquitto, influxdb, influx_db, SITETWIN_TWIN__URL=f"sqlite:///{twin_db}",
               SITETWIN_COLLECTOR__LIVE_FLUSH_INTERVAL="0.3")
    log = tmp_path / "run.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "run", "--workers", "2", "--config",
                                 str(config)], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    good = readings("L", 20, 30, 1_790_000_000)
    try:
        wait_for(lambda: log.read_bytes().count(SUBSCRIBED) >= 2, timeout=90, message="two subscriptions")
        publish(mosquitto.host, mosquitto.port, good)
        wait_all(influxdb, influx_db, "L", len(good))
        wait_for(lambda: log.read_text().count("rule site_offline:") >= 2, timeout=90,
                 message="two scheduled rule runs")
        store = open_store(f"sqlite:///{twin_db}")
        try:
            wait_for(lambda: _live_last_seen(store, "L") == _newest_per_site(good), timeout=60,
                     message="the live state of every site")
        finally:
            store.close()
    finally:
        _stop(proc, log)
    rules_lines = [ln for ln in log.read_text().splitlines()
                   if "rule scheduler started" in ln or "rule site_offline:" in ln]
    assert rules_lines and all(" worker-0 " in ln for ln in rules_lines), rules_lines
    received = _received_per_worker(influxdb, influx_db)
    assert len(received) == 2 and all(n > 0 for n in received.values()), received


@pytest.mark.integration
def test_retire_makes_every_worker_leave_the_group(tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    proc = _start(env, log, "--workers", "2", "--retire")
    stream = readings("R", 20, 50, 1_790_000_000)
    publish(mosquitto.host, mosquitto.port, stream)
    wait_all(influxdb, influx_db, "R", len(stream))
    _stop(proc, log)
    cid = env["SITETWIN_MQTT__CLIENT_ID"]
    text = log.read_text()
    assert f"{cid}-0 retired: session ended" in text and f"{cid}-1 retired: session ended" in text
    spool = tmp_path / "state" / "spool"
    assert (spool / f"{cid}-0" / "retired").exists() and (spool / f"{cid}-1" / "retired").exists()
    # The broker dropped both sessions (and with them their places in the group).
    assert not _session_present(mosquitto, f"{cid}-0") and not _session_present(mosquitto, f"{cid}-1")
    assert_exactly_once(influxdb, influx_db, "R", stream)


def _session_present(mosquitto, client_id: str) -> bool:
    """Whether the broker still holds a session for ``client_id`` (ends it if so)."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bool] = []
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        got.append(flags.session_present)
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.connect(mosquitto.host, mosquitto.port, clean_start=False)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


@pytest.mark.integration
def test_sigterm_while_the_workers_are_still_starting_is_a_clean_stop(tmp_path, mosquitto, influxdb, influx_db):
    env = _env(tmp_path, mosquitto, influxdb, influx_db)
    log = tmp_path / "run.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "run", "--no-rules", "--no-twin",
                                 "--workers", "2"], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    wait_for(lambda: len(_worker_pids(log)) == 2, timeout=60, message="both workers spawned")
    pids = _worker_pids(log)
    _stop(proc, log)
    assert not any(_alive(pid) for pid in pids.values())
    assert "restarting" not in log.read_text()


def test_a_misspelled_rule_table_stops_start_up_before_any_worker(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    config = tmp_path / "sitetwin.toml"
    config.write_text('[mqtt]\nshared_group = "g"\n\n[rules.site_ofline]\ninterval = "1m"\n')
    assert main(["run", "--workers", "2", "--config", str(config)]) == 1
    assert "site_ofline" in capsys.readouterr().err
    assert "2 collector worker(s)" in caplog.text
    assert "supervising" not in caplog.text and "started (pid" not in caplog.text
