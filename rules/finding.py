"""A finding: what one rule concluded about one site (cell, bill) in one window.

Findings are plain immutable values produced by pure rule functions; the flag
store turns them into flags (open, update, resolve) keyed by ``dedup_key``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["KINDS", "SEVERITIES", "Finding", "Severity", "iso_utc", "subject_key"]

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

# docs/contracts.md section 4: the flag kinds, fixed.
KINDS: tuple[str, ...] = (
    "overcharging",
    "overbilling",
    "interference",
    "reservation_exceeded",
    "reservation_underused",
    "reservation_missing",
    "relocation_violation",
    "lifecycle_stalled",
    "site_offline",
    "mains_failure",
    "door_open",
    "cabinet_overtemp",
    "tilt_exceeded",
    "battery_llvd_risk",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One condition a rule found; ``evidence`` holds the numbers that triggered it."""

    kind: str
    rule: str
    site_id: str
    severity: Severity
    window_start: datetime
    window_end: datetime
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    cell_id: str | None = None
    bill_id: str | None = None
    supplier_id: str | None = None
    # Other subjects this finding covers (the cells of an incident): a flag open for any of
    # them is the same condition, even when the strongest cell changes between runs.
    member_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown flag kind {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.window_start.tzinfo is None or self.window_end.tzinfo is None:
            raise ValueError("finding windows must be timezone-aware (UTC)")
        if self.window_end < self.window_start:
            raise ValueError("finding window ends before it starts")

    @property
    def dedup_key(self) -> str:
        """Kind, site and the cell or bill: one open flag per key and overlapping window."""
        return subject_key(self.kind, self.site_id, self.cell_id, self.bill_id)


def subject_key(kind: str, site_id: str, cell_id: str | None = None, bill_id: str | None = None) -> str:
    """The dedup key of a subject: ``kind|site|cell|bill``."""
    return "|".join((kind, site_id, cell_id or "", bill_id or ""))


def iso_utc(ts: datetime) -> str:
    """A time as docs/contracts.md writes it: ISO 8601 in UTC with ``Z`` (``2026-11-24T08:15:00Z``)."""
    if ts.tzinfo is None:
        raise ValueError("a naive time has no place in evidence: times are UTC-aware")
    text = ts.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
