"""The rule schedule: one job per enabled rule, kept in the twin database across restarts."""

from __future__ import annotations

from rules.registry import RULES
from rules.scheduler import start
from sitetwin.config import load_settings


def test_jobs_per_rule_with_options_and_survive_restart(tmp_path):
    settings = load_settings(None, services={"state_dir": str(tmp_path)},
                             rules={"interference": {"enabled": False}, "site_offline": {"interval": "2m"}})
    sched = start(settings, paused=True)
    try:
        jobs = {j.id: j for j in sched.get_jobs()}
        assert set(jobs) == {r.name for r in RULES} - {"interference"}
        job = jobs["site_offline"]
        assert job.trigger.interval.total_seconds() == 120
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 120)
        next_run = job.next_run_time
    finally:
        sched.shutdown(wait=False)
    again = start(settings, paused=True)
    try:
        assert again.get_job("site_offline").next_run_time == next_run  # resumed, not reset
    finally:
        again.shutdown(wait=False)
    changed = load_settings(None, services={"state_dir": str(tmp_path)},
                            rules={"site_offline": {"interval": "10m"}})
    third = start(changed, paused=True)
    try:
        assert third.get_job("site_offline").trigger.interval.total_seconds() == 600
        assert third.get_job("interference") is not None
    finally:
        third.shutdown(wait=False)
