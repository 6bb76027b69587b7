"""Errors of the rules package: rule evaluation, flags, reviews.

    RuleError                      root (a sitetwin.errors.SitetwinError)
    ├── UnknownRule                a rule name that is not registered
    ├── ThresholdError             a bad threshold in ``[rules.<name>]``: names the key
    ├── RuleDataError              window data or registry facts could not be read
    ├── UnknownFlag                a flag id that is not in the flag store
    └── ReviewError                a review, ack or assignment that cannot be recorded

InfluxDB, SQLAlchemy and paho exceptions never leave the package: the data
and flag modules translate them at one seam each.  A rule that raises
anything while evaluating becomes an *error outcome* in the engine, never an
exception that stops the other rules.
"""

from __future__ import annotations

from core.errors import SitetwinError

__all__ = [
    "ReviewError",
    "RuleDataError",
    "RuleError",
    "ThresholdError",
    "UnknownFlag",
    "UnknownRule",
]


class RuleError(SitetwinError):
    """Root of the rule engine's errors."""


class UnknownRule(RuleError):
    """A rule name that is not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown rule {name!r} (known: {', '.join(sorted(known))})")
        self.name = name


class ThresholdError(RuleError):
    """A threshold in the configuration is invalid; the message names the key."""


class RuleDataError(RuleError):
    """Window data (InfluxDB) or registry facts (twin store) could not be read."""


class UnknownFlag(RuleError):
    """A flag id that is not in the flag store."""

    def __init__(self, flag_id: int) -> None:
        super().__init__(f"unknown flag {flag_id}")
        self.flag_id = flag_id


class ReviewError(RuleError):
    """A review that cannot be recorded."""
