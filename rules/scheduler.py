"""Scheduling the rules inside ``sitetwin run``: one APScheduler job per enabled rule.

Jobs live in the twin database (``SQLAlchemyJobStore``, table
``rule_schedule``), so the schedule survives a restart: a job whose run fell
due while the process was down runs once on start-up (``coalesce``) if it is
within its ``misfire_grace_time`` (one interval), and never twice at once
(``max_instances=1``).  Jobs store only the rule name; the settings (and any
secrets in them) stay in memory.

``start`` is given what it uses: the ``[rules]`` section (which rules run, how
often), the job store's database URL (the registry's) and a factory of the
``Engine`` the jobs run (the shell builds it from the sections the engine needs,
``sitetwin.wiring.start_rules``); the engine is made at the first job, so that
starting the schedule opens no second registry connection.

``start`` needs the registry (it reads and writes the job table); when the
registry is locked or down it raises ``RuleDataError`` and leaves nothing
running, so its caller can retry (``sitetwin run`` does, without ever holding
up ingest: see ``sitetwin.wiring``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.settings import RulesSettings
from rules.errors import RuleDataError
from rules.registry import RULES, get_rule

if TYPE_CHECKING:
    from rules.engine import Engine

__all__ = ["JOB_TABLE", "run_scheduled", "start"]

log = logging.getLogger(__name__)

JOB_TABLE = "rule_schedule"

_state: dict[str, Any] = {}
_lock = threading.Lock()


def _engine():
    with _lock:
        if "engine" not in _state:
            _state["engine"] = _state["make_engine"]()
        return _state["engine"]


def run_scheduled(rule_name: str) -> None:
    """The job of one rule: evaluate it now (referenced by name from the job store)."""
    if "make_engine" not in _state:
        log.error("rule %s fired before the scheduler was configured", rule_name)
        return
    try:
        engine = _engine()
        (outcome,) = engine.run(datetime.now(UTC), [get_rule(rule_name)])
    except Exception:
        log.exception("rule %s could not run", rule_name)
        return
    if outcome.status == "error":
        log.error("rule %s: %s", rule_name, outcome.error)
    else:
        log.info("rule %s: %d finding(s), %d opened, %d resolved in %.2fs", rule_name, outcome.findings,
                 outcome.opened, outcome.resolved, outcome.duration_s)


def start(rules: RulesSettings, job_store_url: str, make_engine: Callable[[], Engine], *,
          paused: bool = False):
    """Start a ``BackgroundScheduler`` with a job per enabled rule; returns the scheduler.

    ``rules``: the ``[rules]`` section; ``job_store_url``: the registry's database, which
    keeps the jobs; ``make_engine``: called once, at the first job, for the engine that
    runs them.  Raises ``RuleDataError`` (nothing left running) if the registry cannot be used.
    """
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from sqlalchemy.exc import SQLAlchemyError

    from rules.registry import check_rule_tables

    check_rule_tables(rules.model_extra)  # before anything starts
    _state.clear()
    _state["make_engine"] = make_engine
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=job_store_url, tablename=JOB_TABLE)},
        timezone=UTC,
    )
    try:
        scheduler.start(paused=True)
        _schedule(scheduler, rules)
    except SQLAlchemyError as exc:
        _shutdown_quietly(scheduler)
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise RuleDataError(f"registry unavailable for the rule schedule: {detail}") from exc
    except BaseException:
        _shutdown_quietly(scheduler)
        raise
    if not paused:
        scheduler.resume()
    return scheduler


def _shutdown_quietly(scheduler) -> None:
    # Not started, or its job store is the thing that failed: either way there is nothing to stop.
    with contextlib.suppress(Exception):
        scheduler.shutdown(wait=False)


def _schedule(scheduler, rules: RulesSettings) -> None:
    """Add, update or remove each rule's job."""
    from apscheduler.triggers.interval import IntervalTrigger

    from rules.engine import thresholds_for

    for rule in RULES:
        t = thresholds_for(rules, rule)
        job = scheduler.get_job(rule.name)
        if not (rules.enabled and t.enabled):
            if job is not None:
                job.remove()
            continue
        grace = int(max(t.interval, 1))
        if job is not None and isinstance(job.trigger, IntervalTrigger) \
                and job.trigger.interval.total_seconds() == t.interval:
            job.modify(coalesce=True, max_instances=1, misfire_grace_time=grace)
            continue
        scheduler.add_job(run_scheduled, IntervalTrigger(seconds=t.interval, timezone=UTC),
                          id=rule.name, name=f"rule {rule.name}", args=[rule.name],
                          coalesce=True, max_instances=1, misfire_grace_time=grace,
                          replace_existing=True)
