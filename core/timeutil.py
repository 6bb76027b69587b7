"""UTC inside, local time at the edges.

Storage, MQTT and the API carry UTC (or an explicit offset).  People, tariffs,
bills and reports live in one configured zone (``[time] zone``, default
``Asia/Shanghai``): a date without a time, or a date-time without an offset,
typed by a person or found in a CSV file, means local time there; a value with
``Z`` or an offset keeps its instant.  Every helper here returns timezone-aware
values; nothing in the project should build a naive datetime.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_ZONE",
    "as_utc",
    "format_local",
    "get_zone",
    "local_month",
    "parse_instant",
    "utc_timestamp",
    "utcnow",
]

DEFAULT_ZONE = "Asia/Shanghai"

# ASCII digits only: Python's own parsers accept other Unicode digits.
_ISO = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.,+\-Z]+)?$", re.ASCII)
_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$", re.ASCII)


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


@lru_cache(maxsize=32)
def get_zone(name: str) -> tzinfo:
    """The IANA zone ``name`` (``"UTC"`` included); a clear error if it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Asia/Shanghai')"
                         ) from None


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is taken to be UTC already (internal use only)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_timestamp(value: Any) -> pd.Timestamp:
    """``value`` (datetime, Timestamp, ISO text, epoch ns) as a pandas ``Timestamp`` in UTC; a
    naive value is taken to be UTC already.  The pandas twin of ``as_utc``, for the readers."""
    import pandas as pd  # imported here: the collector uses this module and never needs pandas

    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_instant(text: str, zone: str | tzinfo = DEFAULT_ZONE) -> datetime:
    """An ISO 8601 date or date-time as typed by a person, as an aware UTC datetime.

    ``2026-10-01`` is local midnight in ``zone``; ``2026-10-01T08:00`` is 08:00
    local; ``2026-10-01T00:00Z`` and ``...+08:00`` keep their instant.  Only
    ASCII digits are accepted; year 1 and other values that would overflow on
    conversion are refused.
    """
    tz = get_zone(zone) if isinstance(zone, str) else zone
    cell = text.strip()
    if not _ISO.match(cell):
        raise ValueError(f"not an ISO 8601 date or date-time: {text!r}")
    try:
        if len(cell) == 10:
            d = date.fromisoformat(cell)
            parsed = datetime(d.year, d.month, d.day, tzinfo=tz)
        else:
            parsed = datetime.fromisoformat(cell.replace("Z", "+00:00"))
        local = parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed
        out = local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"not a valid date or date-time: {text!r}") from None
    if out.year < 1970:
        raise ValueError(f"date-time before 1970: {text!r}")
    return out


def local_month(period: str, zone: str | tzinfo = DEFAULT_ZONE) -> tuple[datetime, datetime]:
    """``"2026-10"`` -> the UTC bounds ``[start, end)`` of that local month."""
    tz = get_zone(zone) if isinstance(zone, str) else zone
    m = _MONTH.match(period.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"not a month: {period!r} (use YYYY-MM)")
    year, month = int(m.group(1)), int(m.group(2))
    nxt = (year + 1, 1) if month == 12 else (year, month + 1)
    start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    end = datetime(nxt[0], nxt[1], 1, tzinfo=tz).astimezone(UTC)
    return start, end


def format_local(value: datetime | None, zone: str | tzinfo = DEFAULT_ZONE, *,
                 seconds: bool = False) -> str:
    """``2026-10-01 08:00 +08:00`` — a local time for people, its offset shown."""
    if value is None:
        return ""
    tz = get_zone(zone) if isinstance(zone, str) else zone
    local = as_utc(value).astimezone(tz)
    off = local.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return f"{local.strftime(fmt)} {sign}{minutes // 60:02d}:{minutes % 60:02d}"
