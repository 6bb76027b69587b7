"""Runs rules at a given ``now``: fetch window data, evaluate, sync flags, fan the changes out.

The retained alarms on MQTT (``sitetwin/alarms/...``) are republished after a run
that changed flags; a backfill republishes them once, at its end, not at every
step.  Each rule yields an ``Outcome``; a rule that fails (bad threshold, query
error, a bug) is an ``error`` outcome with the message, logged, and the others
still run — and its flags are left untouched, so a failing rule never
resolves anything.  Backfill steps each rule through history at its own
interval, against the registry's states as they were then, and never touches a
flag that existed before it began (issue 14); a rule declared ``one_pass`` reads
its steps' frames sliced from range fetches (``rules.backfill``, issue 15).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from core.settings import InfluxSettings, MqttSettings, RulesSettings
from rules.data import WindowData, load_facts, load_grid_history, load_site_history
from rules.errors import RuleError
from rules.flag import FlagBook, SyncResult
from rules.registry import RULES, thresholds_for
from rules.rule import Facts, Rule, Thresholds
from rules.sink import publish_flags, publish_site_alarms, write_flags

__all__ = ["BackfillProgress", "Engine", "Outcome", "summarise", "thresholds_for"]

log = logging.getLogger(__name__)

# A backfill writes the flags it changed to InfluxDB in batches of at least this many points.
FLAG_WRITE_BATCH = 20_000

# Told after each backfill step: (rule evaluations done, in all, the step's time).
BackfillProgress = Callable[[int, int, datetime], None]


@dataclass(frozen=True)
class Outcome:
    """What one evaluation of one rule did."""

    rule: str
    status: Literal["ok", "error", "disabled"]
    now: datetime
    findings: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    clearing: int = 0
    error: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine:
    """The rule runner: the only place where rules meet InfluxDB, the registry and MQTT.

    It is given the sections it uses, not the whole configuration: ``rules`` (the
    ``[rules]`` section: thresholds, hold-off, query concurrency), ``influxdb`` (where
    window data is read, unless ``data`` is given, and flags are written, if
    ``write_influx``) and ``broker`` (the ``[mqtt]`` section: where flags and retained
    alarms are published; ``None`` = not published).
    """

    def __init__(self, store: Any, *, rules: RulesSettings, influxdb: InfluxSettings | None = None,
                 broker: MqttSettings | None = None, data: WindowData | None = None,
                 write_influx: bool = True) -> None:
        from rules.registry import check_rule_tables

        check_rule_tables(rules.model_extra)
        if influxdb is None and (data is None or write_influx):
            raise ValueError("the engine needs the [influxdb] section to read window data or write flags")
        self.rules = rules
        self.influxdb = influxdb
        self.broker = broker
        self.store = store
        self.flags = FlagBook(store)
        if data is None:
            from connectors.influx import InfluxReader

            assert influxdb is not None
            data = WindowData(InfluxReader.from_settings(influxdb), concurrency=rules.query_concurrency)
        self.data: Any = data  # a WindowData; a RangeData while a backfill runs one pass
        self.concurrency = rules.query_concurrency
        self.write_influx = write_influx
        self._alarm_sites: set[str] | None = None
        # During a backfill: per rule, True once a sync left it no flag to change (see ``_run_one``).
        self._idle: dict[str, bool] | None = None
        # During a backfill: changed flags not yet written to InfluxDB (written in batches).
        self._unwritten: list[dict[str, Any]] | None = None
        # During a backfill: the fetch threads every step uses.
        self._fetch_pool: ThreadPoolExecutor | None = None

    def _write_unwritten(self) -> None:
        pending, self._unwritten = self._unwritten or [], []
        if pending and self.influxdb is not None:
            write_flags(self.influxdb, pending)

    def thresholds(self, rule: Rule) -> Thresholds:
        return thresholds_for(self.rules, rule)

    def run(self, now: datetime, rules: Sequence[Rule] = RULES, *, facts: Facts | None = None,
            frozen: frozenset[int] | None = None) -> list[Outcome]:
        """Evaluate ``rules`` once at ``now``; ``frozen``: flags a backfill must not rewrite."""
        if facts is None:
            try:
                facts = load_facts(self.store)
            except Exception as exc:  # noqa: BLE001 - every rule then reports the same error
                log.error("registry facts unavailable: %s", exc)
                return [Outcome(r.name, "error", now, error=f"registry facts unavailable: {exc}")
                        for r in rules]
        outcomes, changed, announced = [], [], []
        if hasattr(self.data, "new_run"):
            self.data.new_run()
        # The rules' window data is fetched ahead, ``concurrency`` rules at a time (InfluxDB
        # works while Python evaluates); evaluation and flag changes stay in rule order here.
        workers = min(self.concurrency, len(rules))
        # A backfill keeps one pool for all its steps (threads, and their HTTP sessions, are
        # not started again at each of 56 400 steps).
        own = self._fetch_pool is None and workers > 1
        pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rules-fetch") if own
                else self._fetch_pool)
        try:
            pending = [pool.submit(self._fetch, rule, now, facts) if pool is not None else None
                       for rule in rules]
            for rule, ahead in zip(rules, pending, strict=True):
                outcome, sync = self._run_one(rule, now, facts, ahead, frozen)
                outcomes.append(outcome)
                if sync is not None:
                    changed.extend(sync.changed)
                    announced.extend(sync.opened + sync.resolved)
        finally:
            if own and pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.write_influx and changed and self.influxdb is not None:
            if self._unwritten is not None:  # a backfill writes them in batches
                self._unwritten.extend(changed)
                if len(self._unwritten) >= FLAG_WRITE_BATCH:
                    self._write_unwritten()
            else:
                write_flags(self.influxdb, changed)
        if self.broker is not None and announced:
            publish_flags(self.broker, announced)
        if self.broker is not None and changed:
            sites = {f["site_id"] for f in changed}
            if self._alarm_sites is not None:  # a backfill republishes once, at its end
                self._alarm_sites |= sites
            else:
                publish_site_alarms(self.broker, self.store, sorted(sites))
        return outcomes

    def _fetch(self, rule: Rule, now: datetime, facts: Facts) -> tuple[Thresholds, dict | None, float]:
        """The rule's thresholds and window data (None when disabled), and seconds taken."""
        started = time.perf_counter()
        t = self.thresholds(rule)
        frames = self.data.fetch(rule, facts, now, t) if t.enabled else None
        return t, frames, time.perf_counter() - started

    def _run_one(self, rule: Rule, now: datetime, facts: Facts, ahead: Future | None = None,
                 frozen: frozenset[int] | None = None):
        """Evaluate one rule and sync its flags; ``ahead`` is its fetch started earlier.

        ``duration_s`` is the rule's own work: fetching (wherever it ran) plus evaluating.
        """
        started = time.perf_counter()
        fetch_s = 0.0
        try:
            if ahead is not None:
                t, frames, fetch_s = ahead.result()
                started = time.perf_counter()
            else:
                t, frames, _ = self._fetch(rule, now, facts)
            if not t.enabled:
                return Outcome(rule.name, "disabled", now), None
            findings = rule.evaluate(frames, facts, now, t)
            horizon = now - timedelta(seconds=t.window)
            in_scope = ((lambda flag: flag.window_end > horizon) if rule.scoped_by_window
                        else (lambda flag: True))
            if rule.observed is not None:
                seen, windowed = rule.observed(frames), in_scope
                in_scope = lambda flag: flag.site_id in seen and windowed(flag)  # noqa: E731
            if not findings and self._idle is not None and self._idle.get(rule.name):
                # A backfill step with no findings, of a rule whose last sync left no flag it
                # could change (none open or clearing but the frozen ones): the flag store
                # would do nothing, so it is not asked (~4 ms a step; 60 000 steps a month).
                sync = SyncResult()
            else:
                sync = self.flags.sync(rule.name, findings, now, self.rules.hold_off,
                                       in_scope=in_scope, frozen=frozen)
                if self._idle is not None:
                    self._idle[rule.name] = sync.live_after == 0
        except Exception as exc:
            log.error("rule %s failed at %s: %s", rule.name, now.isoformat(), exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            return Outcome(rule.name, "error", now, error=f"{type(exc).__name__}: {exc}",
                           duration_s=fetch_s + time.perf_counter() - started), None
        return Outcome(rule.name, "ok", now, findings=len(findings), opened=len(sync.opened),
                       updated=len(sync.updated), resolved=len(sync.resolved), clearing=sync.clearing,
                       duration_s=fetch_s + time.perf_counter() - started), sync

    def backfill(self, since: datetime, until: datetime, rules: Sequence[Rule] = RULES, *,
                 one_pass: bool = True, progress: BackfillProgress | None = None) -> list[Outcome]:
        """Step every rule from ``since`` to ``until`` at its own interval (``until`` included).

        ``one_pass``: the rules declared ``one_pass`` read their frames sliced from range
        fetches (``rules.backfill.RangeData``) instead of asking InfluxDB at every step, the
        flags are held in memory between steps (``FlagBook.holding``) and the changed ones
        written to InfluxDB in batches; the steps, facts, frozen flags and flag lifecycle are
        the same either way.
        ``progress(steps_done, steps_total, at)`` is called after each step.

        Each step sees the sites' lifecycle states (``SiteHistory``), reservations and supply
        (``GridHistory``) as they were at its time.
        A backfill never rewrites a flag that existed before it began (``FlagBook.sync``'s
        ``frozen``) — except one a backfill of the range before left open, which it continues:
        the flags open now stay as the live runs left them, and a second run of the same
        backfill changes nothing.
        """
        frozen = self.flags.frozen_for_backfill([r.name for r in rules], since)
        facts = load_facts(self.store)
        history = load_site_history(self.store)
        grid = load_grid_history(self.store)
        steps: dict[datetime, list[Rule]] = {}
        for rule in rules:
            try:
                interval = timedelta(seconds=max(self.thresholds(rule).interval, 1.0))
            except RuleError:  # reported as the rule's error outcome at ``until``
                interval = until - since
            t = since + interval
            while t < until:
                steps.setdefault(t, []).append(rule)
                t += interval
            steps.setdefault(until, []).append(rule)
        outcomes: list[Outcome] = []
        self._alarm_sites = set()
        self._idle = {}
        plain = self.data
        # Only InfluxDB's own data can be read by range (a data source handed in by a test or
        # a caller steps as it is).
        if one_pass and isinstance(plain, WindowData) and any(r.one_pass for r in rules):
            from rules.backfill import RangeData

            self.data = RangeData(plain, until)
        total = sum(len(v) for v in steps.values())
        done = 0
        # One pass also holds the flags in memory between steps and writes them to InfluxDB in
        # batches; step by step, every step reads and writes them as a live run does.
        self._unwritten = [] if one_pass else None
        if self.concurrency > 1:
            self._fetch_pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rules-fetch")
        try:
            with self.flags.holding() if one_pass else nullcontext():
                then, version = facts, None
                for now in sorted(steps):
                    # The facts as of ``now`` change only with an event or a change in force
                    # between two steps: rebuilt then, reused otherwise (8 % of a 10 k-cell
                    # interference backfill went to rebuilding the same frames).
                    key = (history.version_at(now), grid.version_at(now))
                    if key != version:
                        then, version = grid.facts_at(history.facts_at(facts, now), now), key
                    outcomes.extend(self.run(now, steps[now], facts=then, frozen=frozen))
                    done += len(steps[now])
                    if progress is not None:
                        progress(done, total, now)
        finally:
            pool, self._fetch_pool = self._fetch_pool, None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._write_unwritten()
            self._unwritten = None
            if self.data is not plain:
                self.data.close()
            self.data = plain
            self._idle = None
            sites, self._alarm_sites = self._alarm_sites, None
            if self.broker is not None and sites:
                publish_site_alarms(self.broker, self.store, sorted(sites))
        return outcomes


def summarise(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Per rule: evaluations, errors, findings and flag changes, summed over the outcomes."""
    rows: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        r = rows.setdefault(o.rule, {"rule": o.rule, "runs": 0, "errors": 0, "findings": 0, "opened": 0,
                                     "updated": 0, "resolved": 0, "status": "ok", "last_error": None,
                                     "duration_s": 0.0})
        r["runs"] += 1
        r["findings"] += o.findings
        r["opened"] += o.opened
        r["updated"] += o.updated
        r["resolved"] += o.resolved
        r["duration_s"] = round(r["duration_s"] + o.duration_s, 3)
        if o.status == "error":
            r["errors"] += 1
            r["status"] = "error"
            r["last_error"] = o.error
        elif o.status == "disabled" and r["status"] == "ok":
            r["status"] = "disabled"
        r["findings_last"] = o.findings
    return list(rows.values())
