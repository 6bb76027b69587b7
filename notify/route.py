"""Which flag changes are announced, to which channels, and when: pure functions, no I/O.

An *event* is derived by comparing a flag with what was last announced of it
(``notify_state``), not from one rule run's changes: a flag that is updated
every five minutes for a day is one ``open`` message, and a crash between the
flag change and the announcement loses nothing, because the difference is
still there on the next pass.

- ``open``: a flag not announced before, and open (or confirmed).  A flag
  first seen already resolved or dismissed (a backfill over the past) is
  recorded silently: it was never a live alarm.
- ``escalate``: its severity rose above the highest announced.  A fall and a
  rise again do not repeat the message.
- ``resolve``: the condition was observed to end; ``review``: a person
  confirmed or dismissed it.
- ``remind``: ``[notify] repeat`` after the last message, an open flag nobody
  acknowledged is announced again; an acknowledged one is not (it is
  re-announced only when it escalates).

A channel takes an event when its ``kinds``, ``min_severity``, ``counties``
and ``events`` all let it through.  It is *due* at once, or at the channel's
next digest boundary (aligned to local midnight), moved to the end of the
channel's quiet hours (local time, ``[time] zone``) unless it is critical.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from core.settings import EVENTS, SEVERITIES, ChannelSettings, quiet_window
from core.states import FlagStatus

__all__ = ["EVENTS", "SEVERITIES", "Announced", "due_at", "events_for", "quiet_until", "routes",
           "severity_rank"]

LIVE = (FlagStatus.OPEN, FlagStatus.CONFIRMED)


def severity_rank(severity: str) -> int:
    """info 0, warning 1, critical 2; an unknown severity counts as critical (never lost)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES) - 1


@dataclass(frozen=True)
class Announced:
    """What was last announced of a flag (a ``notify_state`` row)."""

    status: str
    severity: str
    notified_at: datetime


def events_for(flag: Any, announced: Announced | None, now: datetime, repeat_s: float) -> list[str]:
    """The events to announce for ``flag`` (anything with ``status``, ``severity`` and
    ``acknowledged_at``), in order."""
    if announced is None:
        return ["open"] if flag.status in LIVE else []
    events = []
    if flag.status in LIVE and severity_rank(flag.severity) > severity_rank(announced.severity):
        events.append("escalate")
    if flag.status != announced.status:
        if flag.status == FlagStatus.RESOLVED:
            events.append("resolve")
        elif flag.status in (FlagStatus.CONFIRMED, FlagStatus.DISMISSED):
            events.append("review")
    if (not events and repeat_s > 0 and flag.status in LIVE and flag.acknowledged_at is None
            and (now - announced.notified_at).total_seconds() >= repeat_s):
        events.append("remind")
    return events


def routes(channel: ChannelSettings, event: str, kind: str, severity: str,
           county: str | None) -> bool:
    """Whether ``channel`` takes this event."""
    if event not in channel.events:
        return False
    if channel.kinds and kind not in channel.kinds:
        return False
    if severity_rank(severity) < severity_rank(channel.min_severity):
        return False
    return not channel.counties or county in channel.counties


def quiet_until(at: datetime, quiet_hours: str, zone: tzinfo) -> datetime | None:
    """The end of the quiet hours ``at`` falls in (UTC), or None if it is not in them."""
    if not quiet_hours:
        return None
    start, end = quiet_window(quiet_hours)
    local = at.astimezone(zone)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return None
    day = local.date()
    if start > end and minute >= start:
        day += timedelta(days=1)
    wall = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=zone)
    return wall.astimezone(UTC)


def _digest_boundary(at: datetime, digest_s: float, zone: tzinfo) -> datetime:
    """The first boundary after ``at`` of intervals of ``digest_s`` counted from local midnight."""
    local = at.astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    elapsed = (local - midnight).total_seconds()
    n = int(elapsed // digest_s) + 1
    return (midnight + timedelta(seconds=n * digest_s)).astimezone(UTC)


def due_at(channel: ChannelSettings, severity: str, now: datetime, zone: tzinfo) -> datetime:
    """When an event of ``severity`` created at ``now`` is sent on ``channel``."""
    due = _digest_boundary(now, channel.digest, zone) if channel.digest > 0 else now
    if severity != "critical":
        later = quiet_until(due, channel.quiet_hours, zone)
        if later is not None:
            due = later
    return due
