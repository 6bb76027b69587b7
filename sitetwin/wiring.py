"""Wiring of ``sitetwin run``: the collector, the twin's live state, the rule scheduler and
the notifier (in the process that runs the rules).

Each part is optional so that one process can be a pure collector (scale out
with several) while another runs the rules.  The twin and the rules must
never stop ingest: their failures are logged and retried.
"""

from __future__ import annotations

import logging
import threading
import time

from connectors.collector import Collector
from sitetwin.config import Settings

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """Everything ``sitetwin run`` runs in one process."""

    def __init__(self, settings: Settings, *, client_id: str | None = None, twin: bool = True,
                 rules: bool = True) -> None:
        self.settings = settings
        self.live = None
        self.store = None
        self.scheduler = None
        self.notifier = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._want_twin = twin
        self._want_rules = rules
        if twin:
            self._setup_twin()
        self.collector = Collector(settings, client_id=client_id, live=self.live)

    def _setup_twin(self) -> None:
        try:
            from twin.live import LiveState
            from twin.store import open_store
        except ImportError:  # the twin package is optional for a pure collector
            log.warning("twin package not available; live state disabled")
            return
        self.live = LiveState(self.settings)
        try:
            self.store = open_store(self.settings.twin_url)
        except Exception as exc:  # a locked or absent registry must not stop ingest
            log.error("twin registry unavailable (%s); live state will catch up when it returns", exc)

    def start(self) -> None:
        if self._want_rules and self.settings.notify.enabled:
            self._start_notifier()  # first: a bad channel stops start-up with its name
        self.collector.start()
        if self.live is not None:
            t = threading.Thread(target=self._live_loop, name="twin-live", daemon=True)
            t.start()
            self._threads.append(t)
        if self._want_rules:
            try:
                from rules.scheduler import start as start_rules
            except ImportError:
                log.warning("rules package not available; no rules scheduled")
            else:
                self.scheduler = start_rules(self.settings)

    def _start_notifier(self) -> None:
        from notify import Notifier
        from twin.store import open_store

        store = open_store(self.settings.twin_url)
        try:
            self.notifier = Notifier(self.settings, store)
        except Exception:
            store.close()
            raise
        self.notifier.start()

    def _live_loop(self) -> None:
        interval = self.settings.collector.live_flush_interval
        state_every = max(interval, 30.0)
        last_state = 0.0
        while not self._stop.wait(interval):
            self._flush_live()
            now = time.monotonic()
            if now - last_state >= state_every:
                last_state = now
                self._write_site_state()

    def _flush_live(self) -> None:
        try:
            if self.store is None:
                from twin.store import open_store

                self.store = open_store(self.settings.twin_url)
            self.live.flush(self.store)
        except Exception as exc:
            log.warning("live-state flush failed (%s); will retry", exc)

    def _write_site_state(self) -> None:
        if self.store is None:
            return
        try:
            from datetime import UTC, datetime

            from twin.live import site_state_lines

            body = site_state_lines(self.store, datetime.now(UTC),
                                    online_window_s=self.live.online_window_s)
            if body:
                self.collector.writer.write(body)
        except Exception as exc:
            log.warning("writing site_state failed (%s); will retry", exc)

    def stop(self, *, retire: bool = False) -> None:
        """Stop everything; ``retire`` ends the collector's broker session too."""
        if self.scheduler is not None:
            try:
                self.scheduler.shutdown(wait=False)
            except Exception:
                log.exception("stopping the rule scheduler failed")
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier.outbox.store.close()
        if retire:
            self.collector.retire()
        else:
            self.collector.stop()
        self._stop.set()
        for t in self._threads:
            t.join(10)
        if self.live is not None:
            self._flush_live()
