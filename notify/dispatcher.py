"""The dispatcher: collect flag events into the outbox, then send what is due.

``Notifier.tick`` is one pass; ``sitetwin run`` calls it every ``[notify]
interval`` from a thread (``start``), and ``sitetwin rules run`` once at the
end, so a flag change reaches people within one interval.  A channel that
fails is tried once per pass for all its due rows (they would all fail the
same way), and its rows are retried after the back-off; nothing is sent twice
by two processes (the claim) and nothing is lost by a crash (the outbox).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.settings import ChannelSettings, NotifySettings
from core.timeutil import get_zone
from notify.channel import Channel, SendFailed
from notify.errors import ChannelError, NotifyError
from notify.message import digest_message, event_message
from notify.outbox import Outbox

__all__ = ["Notifier", "TickResult"]

log = logging.getLogger(__name__)

LEASE_S = 600.0


@dataclass(frozen=True)
class TickResult:
    """One pass: events found, rows queued, messages sent and failed, rows dead-lettered."""

    events: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"events": self.events, "queued": self.queued, "sent": self.sent,
                "failed": self.failed, "dead": self.dead}


def _check_kinds(cfg: ChannelSettings) -> None:
    from rules.finding import KINDS

    unknown = sorted(set(cfg.kinds) - set(KINDS))
    if unknown:
        raise ChannelError(f"notify channel {cfg.name!r}: unknown flag kind(s) {', '.join(unknown)}"
                           f" (known: {', '.join(KINDS)})")


class Notifier:
    """Sends flag events to the configured channels through the outbox of ``store``."""

    def __init__(self, config: NotifySettings, store: Any, *, zone: str,
                 channels: Mapping[str, Channel] | None = None) -> None:
        """``config``: the ``[notify]`` section; ``zone``: the ``[time] zone`` of quiet hours."""
        self.config = config
        self.zone = get_zone(zone)
        self.outbox = Outbox(store)
        self.by_name = {c.name: c for c in self.config.channels}
        if channels is None:
            channels = {}
            for cfg in self.config.channels:
                _check_kinds(cfg)
                channels[cfg.name] = Channel(cfg.name, cfg.url.get_secret_value())
        self.channels = dict(channels)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: datetime | None = None) -> TickResult:
        """Collect new events, then send every due row once."""
        now = now or datetime.now(UTC)
        queued = self.outbox.collect(now, self.config, self.zone)
        sent = failed = dead = 0
        token = uuid.uuid4().hex
        while True:
            rows = self.outbox.claim(now, token, LEASE_S)
            if not rows:
                break
            by_channel: dict[str, list[Any]] = {}
            for row in rows:
                by_channel.setdefault(row.channel, []).append(row)
            for name, group in by_channel.items():
                s, f, d = self._send(name, group, now)
                sent, failed, dead = sent + s, failed + f, dead + d
            token = uuid.uuid4().hex  # rows a failure left pending are not claimed again now
            if len(rows) < 100:
                break
        if queued.events or sent or failed:
            log.info("notify: %d event(s), %d queued, %d sent, %d failed, %d dead-lettered",
                     queued.events, queued.rows, sent, failed, dead)
        return TickResult(queued.events, queued.rows, sent, failed, dead)

    def _send(self, name: str, rows: list[Any], now: datetime) -> tuple[int, int, int]:
        """Send one channel's claimed rows: a digest as one message, else one message each."""
        cfg, channel = self.by_name.get(name), self.channels.get(name)
        retries, backoff = self.config.retries, self.config.retry_backoff
        if cfg is None or channel is None:
            self.outbox.settle([r.id for r in rows], now, error="channel no longer configured",
                               retries=0, backoff_s=backoff)
            log.warning("notify: %d message(s) for removed channel %r dead-lettered", len(rows), name)
            return 0, len(rows), len(rows)
        batches = ([(rows, digest_message([r.payload for r in rows], self.zone))] if cfg.digest > 0
                   else [([r], event_message(r.payload, self.zone)) for r in rows])
        sent = failed = dead = 0
        for i, (batch, message) in enumerate(batches):
            try:
                channel.send(message)
            except SendFailed as exc:
                # The channel is down: every row left this pass takes the same failed attempt.
                rest = [r.id for b, _ in batches[i:] for r in b]
                statuses = self.outbox.settle(rest, now, error=exc.reason, retries=retries,
                                              backoff_s=backoff)
                failed += len(rest)
                dead += statuses.count("dead")
                log.warning("notify: channel %s (%s) failed for %d message(s): %s%s", name,
                            channel.shown, len(rest), exc.reason,
                            f"; {statuses.count('dead')} dead-lettered" if "dead" in statuses else "")
                break
            self.outbox.settle([r.id for r in batch], now, error=None, retries=retries,
                               backoff_s=backoff)
            sent += len(batch)
        return sent, failed, dead

    # -- in ``sitetwin run`` -------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Tick every ``[notify] interval`` in a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
        self._thread.start()
        return self._thread

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval):
            try:
                self.tick()
            except NotifyError as exc:
                log.warning("notify pass failed (%s); will retry", exc)
            except Exception:
                log.exception("notify pass failed; will retry")

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
