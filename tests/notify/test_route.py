"""Which events a flag change makes, where they go and when: the pure part of the notifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from core.settings import ChannelSettings
from core.timeutil import get_zone
from notify.route import Announced, due_at, events_for, quiet_until, routes

ZONE = get_zone("Asia/Shanghai")
NOON = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 local


def flag(status="open", severity="warning", acked=False):
    return SimpleNamespace(status=status, severity=severity,
                           acknowledged_at=NOON if acked else None)


def seen(status="open", severity="warning", ago_s=0.0):
    return Announced(status, severity, NOON - timedelta(seconds=ago_s))


@pytest.mark.parametrize(("current", "announced", "events"), [
    (flag(), None, ["open"]),
    (flag(status="confirmed"), None, ["open"]),
    (flag(status="resolved"), None, []),  # first seen over: history, not an alarm
    (flag(status="dismissed"), None, []),
    (flag(), seen(), []),  # an update
    (flag(severity="critical"), seen(), ["escalate"]),
    (flag(severity="warning"), seen(severity="critical"), []),  # fell: no message
    (flag(status="resolved", severity="critical"), seen(), ["resolve"]),
    (flag(status="dismissed"), seen(), ["review"]),
    (flag(status="confirmed", severity="critical"), seen(), ["escalate", "review"]),
    (flag(), seen(ago_s=3600), ["remind"]),
    (flag(acked=True), seen(ago_s=3600), []),  # acknowledged: no reminder
    (flag(acked=True, severity="critical"), seen(ago_s=3600), ["escalate"]),
    (flag(), seen(ago_s=3599), []),
])
def test_events(current, announced, events):
    assert events_for(current, announced, NOON, repeat_s=3600) == events


def test_no_reminders_when_repeat_is_off():
    assert events_for(flag(), seen(ago_s=10**7), NOON, repeat_s=0) == []


def channel(**kw) -> ChannelSettings:
    return ChannelSettings(name="c", url="json://127.0.0.1/x", **kw)


def test_routes():
    assert routes(channel(), "open", "site_offline", "warning", "Xinjin")
    assert not routes(channel(), "open", "site_offline", "info", "Xinjin")
    assert routes(channel(min_severity="info"), "open", "site_offline", "info", None)
    assert not routes(channel(kinds=["mains_failure"]), "open", "site_offline", "critical", None)
    assert routes(channel(counties=["Xinjin"]), "resolve", "site_offline", "warning", "Xinjin")
    assert not routes(channel(counties=["Xinjin"]), "open", "site_offline", "warning", "Pixian")
    assert not routes(channel(counties=["Xinjin"]), "open", "overbilling", "warning", None)
    assert not routes(channel(events=["open"]), "resolve", "site_offline", "critical", None)


@pytest.mark.parametrize(("local", "window", "until_local"), [
    ("23:30", "22:00-07:00", "07:00+1"),
    ("06:59", "22:00-07:00", "07:00"),
    ("07:00", "22:00-07:00", None),
    ("21:59", "22:00-07:00", None),
    ("12:00", "11:00-13:00", "13:00"),
    ("13:00", "11:00-13:00", None),
])
def test_quiet_until(local, window, until_local):
    h, m = (int(x) for x in local.split(":"))
    at = datetime(2026, 11, 20, h, m, tzinfo=ZONE).astimezone(UTC)
    got = quiet_until(at, window, ZONE)
    if until_local is None:
        assert got is None
        return
    day = 21 if until_local.endswith("+1") else 20
    hh, mm = (int(x) for x in until_local.rstrip("+1").split(":"))
    assert got == datetime(2026, 11, day, hh, mm, tzinfo=ZONE).astimezone(UTC)


def test_due_at_digest_and_quiet_hours():
    at = NOON + timedelta(minutes=10)  # 12:10 local
    assert due_at(channel(), "warning", at, ZONE) == at
    assert due_at(channel(digest=3600), "warning", at, ZONE) == NOON + timedelta(hours=1)
    assert due_at(channel(digest=86400), "info", at, ZONE) == \
        datetime(2026, 11, 21, tzinfo=ZONE).astimezone(UTC)  # local midnight
    quiet = channel(quiet_hours="12:00-14:30")
    assert due_at(quiet, "warning", at, ZONE) == NOON + timedelta(hours=2, minutes=30)
    assert due_at(quiet, "critical", at, ZONE) == at
    # A digest boundary that falls in quiet hours waits for their end.
    assert due_at(channel(digest=3600, quiet_hours="12:30-14:00"), "warning", at, ZONE) == \
        NOON + timedelta(hours=2)


def test_bad_quiet_hours_are_refused():
    from pydantic import ValidationError

    for bad in ("22-07", "25:00-07:00", "07:00-07:00", "7pm-7am"):
        with pytest.raises(ValidationError, match="quiet_hours"):
            channel(quiet_hours=bad)
