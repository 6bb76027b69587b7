"""Time-of-use tariff hours: the one parser the CSV import and the overcharging rule share.

A ``hours`` cell lists local clock hours (CONTRACTS.md: "tariff ``hours`` are
local clock hours") as ``;``-separated items, each a range ``A-B`` (hours
``A`` up to but excluding ``B``, ``0 <= A <= 23``, ``0 <= B <= 24``) or a single
hour ``H`` (``0-23``).  A range with ``A > B`` wraps midnight (``22-6`` is 22, 23,
0 .. 5), since valley periods usually do.  ``A-A`` is refused: it could mean no
hour or all of them.  Only ASCII digits are read.  An empty cell means all day.

Before this module there were two parsers: the import refused ``22-6`` and
``7`` that the rule read, and the rule accepted ``,`` and full-width digits the
import never stored.  Now a value is either valid for both or refused at import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["ALL_DAY", "HOURS_EXAMPLE", "format_hours", "normalise_hours", "parse_hours"]

ALL_DAY: frozenset[int] = frozenset(range(24))
HOURS_EXAMPLE = "8-11;18-21"
_ITEM = re.compile(r"^([0-9]{1,2})(?:-([0-9]{1,2}))?$")


def _empty(spec: Any) -> bool:
    # ``spec != spec`` is NaN: an empty cell read back through pandas.
    return spec is None or (isinstance(spec, float) and spec != spec) or not str(spec).strip()


def parse_hours(spec: Any) -> frozenset[int]:
    """``"8-11;18-21"`` -> {8, 9, 10, 18, 19, 20}; empty -> all 24 hours; else ``ValueError``."""
    if _empty(spec):
        return ALL_DAY
    hours: set[int] = set()
    for raw in str(spec).split(";"):
        item = raw.strip()
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"{str(spec)!r} is not a list of hour ranges like {HOURS_EXAMPLE}"
                             f" (item {item!r})")
        start = int(m.group(1))
        if m.group(2) is None:
            if start > 23:
                raise ValueError(f"hour {start} is not within 0-23")
            hours.add(start)
            continue
        end = int(m.group(2))
        if start > 23 or end > 24:
            raise ValueError(f"hour range {item!r} must start within 0-23 and end within 0-24")
        if start == end:
            raise ValueError(f"hour range {item!r} is empty (for all day, leave hours empty)")
        hours.update(range(start, end) if start < end else (*range(start, 24), *range(end)))
    return frozenset(hours)


def normalise_hours(spec: str) -> str:
    """The cell as stored: validated, spaces removed (``ValueError`` if invalid)."""
    parse_hours(spec)
    return ";".join(part.strip() for part in spec.split(";"))


def format_hours(hours: Iterable[int]) -> str:
    """Hours as ranges, for messages: {8, 9, 10, 18} -> ``"8-11;18-19"``."""
    out: list[str] = []
    run: list[int] = []
    for h in sorted(set(hours)):
        if run and h == run[-1] + 1:
            run.append(h)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1] + 1}")
        run = [h]
    if run:
        out.append(f"{run[0]}-{run[-1] + 1}")
    return ";".join(out)
