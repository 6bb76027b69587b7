"""Scheduling the rules inside ``sitetwin run``: one APScheduler job per enabled rule.

Jobs live in the twin database (``SQLAlchemyJobStore``, table
``rule_schedule``), so the schedule survives a restart: a job whose run fell
due while the process was down runs once on start-up (``coalesce``) if it is
within its ``misfire_grace_time`` (one interval), and never twice at once
(``max_instances=1``).  Jobs store only the rule name; the settings (and any
secrets in them) stay in memory.

``start`` needs the registry (it reads and writes the job table); when the
registry is locked or down it raises ``RuleDataError`` and leaves nothing
running, so its caller can retry (``sitetwin run`` does, without ever holding
up ingest: see ``sitetwin.wiring``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from core.settings import Settings
from rules.errors import RuleDataError
from rules.registry import RULES, get_rule

__all__ = ["JOB_TABLE", "run_scheduled", "start"]

log = logging.getLogger(__name__)

JOB_TABLE = "rule_schedule"

_state: dict[str, Any] = {}
_lock = threading.Lock()


def _engine():
    from rules.engine import Engine
    from twin.store import open_store

    with _lock:
        if "engine" not in _state:
            settings = _state["settings"]
            _state["engine"] = Engine(settings, open_store(settings.twin_url))
        return _state["engine"]


def run_scheduled(rule_name: str) -> None:
    """The job of one rule: evaluate it now (referenced by name from the job store)."""
    if "settings" not in _state:
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


def start(settings: Settings, *, paused: bool = False):
    """Start a ``BackgroundScheduler`` with a job per enabled rule; returns the scheduler.

    Raises ``RuleDataError`` (nothing left running) if the registry cannot be used.
    """
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from sqlalchemy.exc import SQLAlchemyError

    from rules.registry import check_rule_tables

    check_rule_tables(settings.rules.model_extra)  # before anything starts
    _state.clear()
    _state["settings"] = settings
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=settings.twin_url, tablename=JOB_TABLE)},
        timezone=UTC,
    )
    try:
        scheduler.start(paused=True)
        _schedule(scheduler, settings)
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


def _schedule(scheduler, settings: Settings) -> None:
    """Add, update or remove each rule's job."""
    from apscheduler.triggers.interval import IntervalTrigger

    from rules.engine import thresholds_for

    for rule in RULES:
        t = thresholds_for(settings, rule)
        job = scheduler.get_job(rule.name)
        if not (settings.rules.enabled and t.enabled):
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
