"""Wiring of ``sitetwin run``: the collector, the twin's live state, the rule scheduler and
the notifier (in the process that runs the rules).

The shell picks each package's sections out of ``Settings`` and hands them over
(``rule_engine``, ``start_rules``, the live state's online window, the notifier's
``[notify]`` and zone, the collector's ``collector_config``); the packages never see
the whole configuration.

Each part is optional so that one process can be a pure collector (scale out
with several) while another runs the rules.  Ingest never depends on the
registry: nothing here touches it before the collector has started.  The live
state opens the registry in its own thread at its first flush and retries each
interval; the rule scheduler (whose job store is a table of the registry) is
started by a thread that retries with a back-off of 1 s doubling to
``RULES_RETRY_MAX_S``, logging each failure.  A locked SQLite file (a person's
long transaction, ``locking_mode=EXCLUSIVE``) or a stopped PostgreSQL at
start-up used to make ``sitetwin run`` exit before it collected anything.

With several workers (``sitetwin.supervisor``) every worker has a ``Pipeline``; only
worker 0 runs the rules, the notifier and the ``site_state`` snapshot (``site_state``),
while each keeps the live state of the readings it receives.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from connectors.collector import Collector
from connectors.config import CollectorConfig
from sitetwin.config import Settings

if TYPE_CHECKING:
    from notify import Notifier
    from twin.live import LiveState
    from twin.store import Store

__all__ = ["RULES_RETRY_MAX_S", "Pipeline", "collector_config", "preflight", "rule_engine", "start_rules"]

log = logging.getLogger(__name__)

RULES_RETRY_MAX_S = 60.0


def preflight(settings: Settings, *, rules: bool) -> None:
    """The start-up checks that need no service: a misspelled ``[rules.<name>]`` table or a
    bad notification channel stops start-up with its name (before any worker starts)."""
    if not rules:
        return
    from rules.registry import check_rule_tables

    check_rule_tables(settings.rules.model_extra)
    if settings.notify.enabled:
        from notify import Notifier

        Notifier(settings.notify, None, zone=settings.time.zone)


def collector_config(settings: Settings) -> CollectorConfig:
    """What a collector reads: ``[mqtt]``, ``[collector]``, ``[influxdb]``, ``[spool]``,
    ``[dead_letter]``, and the spool and dead-letter places resolved against ``state_dir``."""
    return CollectorConfig(mqtt=settings.mqtt, collector=settings.collector, influxdb=settings.influxdb,
                           spool=settings.spool, dead_letter=settings.dead_letter,
                           spool_path=settings.spool_path, dead_letter_path=settings.dead_letter_path)


def rule_engine(settings: Settings, store: Any, *, publish: bool = True, write_influx: bool = True,
                data: Any = None) -> Any:
    """The rule engine over ``store`` with the sections it uses: ``[rules]``, ``[influxdb]``,
    and ``[mqtt]`` (where it publishes flags and alarms) unless not ``publish``."""
    from rules.engine import Engine

    return Engine(store, rules=settings.rules, influxdb=settings.influxdb,
                  broker=settings.mqtt if publish else None, data=data, write_influx=write_influx)


def start_rules(settings: Settings, *, paused: bool = False) -> Any:
    """The rule schedule of ``sitetwin run``: jobs in the registry, each running ``rule_engine``
    over a registry opened at the first job (``RuleDataError`` if the registry is unavailable)."""
    from rules.scheduler import start
    from twin.store import open_store

    return start(settings.rules, settings.twin_url,
                 lambda: rule_engine(settings, open_store(settings.twin_url)), paused=paused)


class Pipeline:
    """Everything ``sitetwin run`` runs in one process."""

    def __init__(self, settings: Settings, *, client_id: str | None = None, twin: bool = True,
                 rules: bool = True, site_state: bool = True) -> None:
        self.settings = settings
        self.live: LiveState | None = None
        self.store: Store | None = None
        self.scheduler: Any = None
        self.notifier: Notifier | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._want_twin = twin
        self._want_rules = rules
        self._want_site_state = site_state
        self._rules_lock = threading.Lock()
        if twin:
            self._setup_twin()
        self.collector = Collector(collector_config(settings), client_id=client_id, live=self.live)

    def _setup_twin(self) -> None:
        try:
            from twin.live import LiveState
        except ImportError:  # the twin package is optional for a pure collector
            log.warning("twin package not available; live state disabled")
            return
        self.live = LiveState(online_window_s=self.settings.twin.online_window_s)  # registry opened at the first flush

    def start(self) -> None:
        if self._want_rules:
            from rules.registry import check_rule_tables

            check_rule_tables(self.settings.rules.model_extra)  # a misspelled rule table stops start-up
            if self.settings.notify.enabled:
                self._prepare_notifier()  # a bad channel stops start-up with its name
        self.collector.start()
        if self.live is not None:
            t = threading.Thread(target=self._live_loop, name="twin-live", daemon=True)
            t.start()
            self._threads.append(t)
        if self._want_rules:
            try:
                import rules.scheduler  # noqa: F401 - the rules package is optional for a pure collector
            except ImportError:
                log.warning("rules package not available; no rules scheduled")
            else:
                t = threading.Thread(target=self._rules_starter, args=(start_rules,),
                                     name="rules-start", daemon=True)
                t.start()
                self._threads.append(t)

    def _rules_starter(self, start_rules) -> None:
        """Start the rule scheduler, retrying while the registry is unavailable."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                scheduler = start_rules(self.settings)
                if self.notifier is not None and self.notifier.outbox.store is None:
                    try:
                        self._start_notifier()
                    except Exception:
                        scheduler.shutdown(wait=False)
                        raise
            except Exception as exc:  # noqa: BLE001 - reported and retried; ingest goes on
                log.warning("rule scheduler not started (%s); retrying in %.0fs", exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RULES_RETRY_MAX_S)
                continue
            with self._rules_lock:
                if self._stop.is_set():  # stopped while starting
                    scheduler.shutdown(wait=False)
                    return
                self.scheduler = scheduler
            log.info("rule scheduler started")
            return

    def _prepare_notifier(self) -> None:
        """Check the channels now; the notifier starts once the registry answers."""
        from notify import Notifier

        self.notifier = Notifier(self.settings.notify, None, zone=self.settings.time.zone)

    def _start_notifier(self) -> None:
        from twin.store import open_store

        assert self.notifier is not None
        self.notifier.outbox.store = open_store(self.settings.twin_url)
        self.notifier.start()

    def _live_loop(self) -> None:
        interval = self.settings.collector.live_flush_interval
        state_every = max(interval, 30.0)
        last_state = 0.0
        while not self._stop.wait(interval):
            self._flush_live()
            now = time.monotonic()
            if self._want_site_state and now - last_state >= state_every:
                last_state = now
                self._write_site_state()

    def _flush_live(self) -> None:
        if self.live is None:
            return
        try:
            if self.store is None:
                from twin.store import open_store

                self.store = open_store(self.settings.twin_url)
            self.live.flush(self.store)
        except Exception as exc:  # noqa: BLE001 - a background flush retries; it must not kill the timer
            log.warning("live-state flush failed (%s); will retry", exc)

    def _write_site_state(self) -> None:
        if self.store is None or self.live is None:
            return
        try:
            from datetime import UTC, datetime

            from exports.site_state import site_state_lines

            body = site_state_lines(self.store, datetime.now(UTC),
                                    online_window_s=self.live.online_window_s)
            if body:
                self.collector.writer.write(body)
        except Exception as exc:  # noqa: BLE001 - a background write retries; it must not kill the timer
            log.warning("writing site_state failed (%s); will retry", exc)

    def stop(self, *, retire: bool = False) -> None:
        """Stop everything; ``retire`` ends the collector's broker session too."""
        with self._rules_lock:
            self._stop.set()
            if self.scheduler is not None:
                try:
                    self.scheduler.shutdown(wait=False)
                except Exception:
                    log.exception("stopping the rule scheduler failed")
        if self.notifier is not None:
            self.notifier.stop()
            if self.notifier.outbox.store is not None:
                self.notifier.outbox.store.close()
        if retire:
            self.collector.retire()
        else:
            self.collector.stop()
        for t in self._threads:
            t.join(10)
        if self.live is not None:
            self._flush_live()
