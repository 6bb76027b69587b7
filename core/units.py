"""Durations and sizes as people write them in configuration and on the command line."""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Duration", "Size", "parse_duration", "parse_size"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_COMPOUND = re.compile(r"^(?:\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$")
_PLAIN_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20,
    "gb": 10**9, "gib": 2**30, "tb": 10**12, "tib": 2**40, None: 1,
}


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a number of seconds -> seconds.

    A compound value adds its parts (``"1h30m"`` is 5400 s); a unit may appear
    once only, and the parts must be in falling order (``"30m1h"`` is refused).
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value)
    if _PLAIN_NUMBER.match(text):
        return float(text)
    if not _DURATION_COMPOUND.match(text):
        raise ValueError(f"not a duration: {value!r} (use e.g. '500ms', '30s', '5m', '1h30m', '7d')")
    parts = _DURATION_PART.findall(text)
    scales = [_DURATION_UNITS[unit] for _, unit in parts]
    if any(a <= b for a, b in itertools.pairwise(scales)):
        raise ValueError(f"not a duration: {value!r} (units once each, largest first: '1h30m')")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts)


def parse_size(value: Any) -> int:
    """``"64MiB"``, ``"1GB"`` or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '64MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. '512KiB', '64MiB', '1GiB')")
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
