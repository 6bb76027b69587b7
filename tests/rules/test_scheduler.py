"""The rule schedule: one job per enabled rule, kept in the twin database across restarts."""

from __future__ import annotations

import pytest

from rules.registry import RULES
from rules.scheduler import start
from sitetwin.config import load_settings


def no_engine():
    raise AssertionError("a paused schedule runs no job, so it makes no engine")


def start_paused(settings):
    return start(settings.rules, settings.twin_url, no_engine, paused=True)


def test_jobs_per_rule_with_options_and_survive_restart(tmp_path):
    settings = load_settings(None, services={"state_dir": str(tmp_path)},
                             rules={"interference": {"enabled": False}, "site_offline": {"interval": "2m"}})
    sched = start_paused(settings)
    try:
        jobs = {j.id: j for j in sched.get_jobs()}
        assert set(jobs) == {r.name for r in RULES} - {"interference"}
        job = jobs["site_offline"]
        assert job.trigger.interval.total_seconds() == 120
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 120)
        next_run = job.next_run_time
    finally:
        sched.shutdown(wait=False)
    again = start_paused(settings)
    try:
        assert again.get_job("site_offline").next_run_time == next_run  # resumed, not reset
    finally:
        again.shutdown(wait=False)
    changed = load_settings(None, services={"state_dir": str(tmp_path)},
                            rules={"site_offline": {"interval": "10m"}})
    third = start_paused(changed)
    try:
        assert third.get_job("site_offline").trigger.interval.total_seconds() == 600
        assert third.get_job("interference") is not None
    finally:
        third.shutdown(wait=False)


@pytest.mark.integration
def test_sitetwin_run_schedules_the_rules(tmp_path, mosquitto, influxdb, influx_db):
    """``sitetwin run``'s pipeline starts the scheduler with every rule and stops it."""
    from sitetwin.wiring import Pipeline
    from tests.support import wait_for

    settings = load_settings(
        None,
        mqtt={"servers": [mosquitto.url], "client_id": f"rules-run-{tmp_path.name}",
              "shared_group": f"rr{abs(hash(str(tmp_path))) % 10**8}"},
        influxdb={"url": influxdb.url, "database": influx_db},
        services={"state_dir": str(tmp_path / "state")},
        spool={"fsync": False},
        twin={"url": f"sqlite:///{tmp_path / 'twin.sqlite'}"},
    )
    pipeline = Pipeline(settings, twin=True, rules=True)
    pipeline.start()
    try:
        wait_for(pipeline.collector.subscribed.is_set, message="subscription")
        # Started by its own thread, so that a registry that is not there cannot hold up ingest.
        wait_for(lambda: pipeline.scheduler is not None, message="the rule scheduler")
        assert pipeline.scheduler.running
        assert {j.id for j in pipeline.scheduler.get_jobs()} == {r.name for r in RULES}
    finally:
        pipeline.stop()
    assert not pipeline.scheduler.running
