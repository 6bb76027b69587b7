"""Command-line values every command parses the same way: times and counts.

A time typed by a person is ISO 8601; without an offset it is local time in
``[time] zone`` (``core.timeutil.parse_instant``), with ``Z`` or an offset it
keeps its instant.  An empty value, year 1 or any value that cannot be a time
is a user error with one line, never a pandas or InfluxDB message later.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from core.errors import UserError
from core.settings import Settings
from core.timeutil import parse_instant

__all__ = ["cli_time", "non_negative_int", "positive_int"]


def cli_time(value: str | None, option: str, settings: Settings) -> datetime | None:
    """The UTC instant of ``--option VALUE``; ``None`` if the option was not given."""
    if value is None:
        return None
    if not value.strip():
        raise UserError(f"{option} is empty: give an ISO 8601 time (e.g. 2026-11-24T08:15:00Z)")
    try:
        return parse_instant(value, settings.time.zone)
    except ValueError as exc:
        raise UserError(f"{option}: {exc} (e.g. 2026-11-24, 2026-11-24T08:15 local,"
                        " or 2026-11-24T00:15:00Z)") from None


def _int(value: str, lowest: int) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < lowest:
        raise argparse.ArgumentTypeError(f"must be at least {lowest}: {value!r}")
    return n


def positive_int(value: str) -> int:
    """An argparse type: 1, 2, ... (a usage error, exit 2, otherwise)."""
    return _int(value, 1)


def non_negative_int(value: str) -> int:
    """An argparse type: 0, 1, 2, ..."""
    return _int(value, 0)
