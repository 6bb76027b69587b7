"""The flag lifecycle in the twin database: open, update, resolve after a hold-off, review.

A finding updates the one flag with its ``dedup_key`` (kind, site, cell or
bill) — or one of its ``member_keys``, the cells of an incident — whose window overlaps the finding's, widened by the hold-off so that a
condition that blinks off and on within the hold-off stays one flag.  A flag
of a rule that no longer finds it gets ``clear_since``; once that is older
than the hold-off it is resolved.  A reviewed flag (``confirmed`` or
``dismissed``) keeps its decision: findings still refresh its evidence, but
it is never resolved or reopened by the engine.  Every review is a row of
``flag_reviews``, so the history is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from rules.errors import ReviewError, RuleDataError, UnknownFlag
from rules.finding import Finding, iso_utc

__all__ = ["DECISIONS", "SORTS", "STATUSES", "FlagBook", "SyncResult", "flag_dict"]

STATUSES = ("open", "confirmed", "dismissed", "resolved")
SORTS = ("id", "opened_at", "updated_at", "window_start", "severity", "kind", "site_id",
         "supplier_id")
DECISIONS = ("confirmed", "dismissed")


def _models():
    from twin.models import Flag, FlagReview

    return Flag, FlagReview


def flag_dict(flag: Any) -> dict[str, Any]:
    """A flag as CONTRACTS.md section 4 describes it."""
    return {
        "id": flag.id, "kind": flag.kind, "rule": flag.rule, "site_id": flag.site_id,
        "cell_id": flag.cell_id, "bill_id": flag.bill_id, "supplier_id": flag.supplier_id,
        "severity": flag.severity, "status": flag.status,
        "opened_at": flag.opened_at, "updated_at": flag.updated_at, "resolved_at": flag.resolved_at,
        "window_start": flag.window_start, "window_end": flag.window_end,
        "summary": flag.summary, "evidence": flag.evidence or {},
        "acknowledged_by": flag.acknowledged_by, "acknowledged_at": flag.acknowledged_at,
        "assignee": flag.assignee,
    }


@dataclass
class SyncResult:
    """What one evaluation did to the flags of one rule (each a ``flag_dict``)."""

    opened: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    clearing: int = 0

    @property
    def changed(self) -> list[dict[str, Any]]:
        return self.opened + self.updated + self.resolved


def _overlaps(flag: Any, f: Finding, slack: timedelta) -> bool:
    return flag.window_start <= f.window_end + slack and f.window_start <= flag.window_end + slack


class FlagBook:
    """Flags and reviews in the registry (``twin.store.Store``)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _session(self):
        return self.store.session()

    def sync(self, rule: str, findings: Sequence[Finding], now: datetime, hold_off_s: float, *,
             in_scope: Callable[[Any], bool] = lambda flag: True) -> SyncResult:
        """Apply one evaluation of ``rule``: open, update, clear or resolve its flags.

        ``in_scope(flag)`` says whether this evaluation looked at a flag's subject at all
        (a bill rule only re-checks recent bills); flags out of scope are left alone.
        """
        Flag, _ = _models()
        slack = timedelta(seconds=hold_off_s)
        out = SyncResult()
        from twin.errors import TwinError

        try:
            with self._session() as s:
                live = s.scalars(select(Flag).where(Flag.rule == rule, Flag.status != "resolved")
                                 .order_by(Flag.id)).all()
                by_key: dict[str, list[Any]] = {}
                for flag in live:
                    for key in _keys(flag):
                        by_key.setdefault(key, []).append(flag)
                seen: set[int] = set()
                for f in findings:
                    candidates = [x for key in (f.dedup_key, *f.member_keys) for x in by_key.get(key, ())]
                    match = next((x for x in candidates if x.id not in seen and _overlaps(x, f, slack)), None)
                    if match is None:
                        match = Flag(kind=f.kind, rule=f.rule, site_id=f.site_id, cell_id=f.cell_id,
                                     bill_id=f.bill_id, supplier_id=f.supplier_id, severity=f.severity,
                                     status="open", opened_at=now, updated_at=now,
                                     window_start=f.window_start, window_end=f.window_end,
                                     summary=f.summary, evidence=_evidence(f),
                                     dedup_key=f.dedup_key)
                        s.add(match)
                        s.flush()
                        for key in _keys(match):
                            by_key.setdefault(key, []).append(match)
                        out.opened.append(flag_dict(match))
                    else:
                        match.window_start = min(match.window_start, f.window_start)
                        match.window_end = max(match.window_end, f.window_end)
                        match.severity = f.severity
                        match.summary = f.summary
                        match.evidence = _evidence(f, also=_keys(match))
                        match.supplier_id = f.supplier_id
                        match.updated_at = now
                        match.clear_since = None
                        out.updated.append(flag_dict(match))
                    seen.add(match.id)
                for flag in live:
                    if flag.id in seen or flag.status != "open" or not in_scope(flag):
                        continue
                    if flag.clear_since is None:
                        flag.clear_since = now
                    if now - flag.clear_since >= slack:
                        flag.status = "resolved"
                        flag.resolved_at = now
                        flag.updated_at = now
                        out.resolved.append(flag_dict(flag))
                    else:
                        out.clearing += 1
        except TwinError as exc:
            raise RuleDataError(f"flag store unavailable: {exc}") from exc
        return out

    def list(self, *, kind: str | None = None, status: str | None = None, site_id: str | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        Flag, _ = _models()
        q = select(Flag).order_by(Flag.id)
        if kind:
            q = q.where(Flag.kind == kind)
        if status:
            q = q.where(Flag.status == status)
        if site_id:
            q = q.where(Flag.site_id == site_id)
        if limit:
            q = q.limit(limit)
        with self._session() as s:
            return [flag_dict(f) for f in s.scalars(q).all()]

    def show(self, flag_id: int) -> dict[str, Any]:
        """One flag with its review history (oldest first)."""
        Flag, FlagReview = _models()
        with self._session() as s:
            flag = s.get(Flag, flag_id)
            if flag is None:
                raise UnknownFlag(flag_id)
            reviews = s.scalars(select(FlagReview).where(FlagReview.flag_id == flag_id)
                                .order_by(FlagReview.reviewed_at, FlagReview.id)).all()
            return {**flag_dict(flag), "reviews": [
                {"decision": r.decision, "reviewed_by": r.reviewed_by, "reviewed_at": r.reviewed_at,
                 "note": r.note} for r in reviews]}

    def review(self, flag_id: int, decision: str, reviewed_by: str, at: datetime,
               note: str | None = None, *,
               audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
               ) -> dict[str, Any]:
        """Record a person's decision; the flag takes it as its status. Reviews may be revised.

        ``audit(session, before, after)`` is called in the same transaction (the web app
        writes its audit entry there, so a review is never recorded without it).
        """
        Flag, FlagReview = _models()
        if decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if not reviewed_by or not reviewed_by.strip():
            raise ReviewError("a review needs the reviewer's name (--by)")
        with self._session() as s:
            flag = s.get(Flag, flag_id)
            if flag is None:
                raise UnknownFlag(flag_id)
            before = flag_dict(flag)
            s.add(FlagReview(flag_id=flag_id, decision=decision, reviewed_by=reviewed_by.strip(),
                             reviewed_at=at, note=note))
            flag.status = decision
            flag.updated_at = at
            flag.clear_since = None
            if audit is not None:
                s.flush()
                audit(s, before, flag_dict(flag))
        return self.show(flag_id)

    def acknowledge(self, flag_id: int, by: str, at: datetime, *,
                    audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
                    ) -> dict[str, Any]:
        """An operator has seen an open flag and is on it; the engine still updates and resolves it."""
        return self._operate(flag_id, by, at, audit, acknowledged_by=by.strip() if by else by,
                             acknowledged_at=at)

    def assign(self, flag_id: int, to: str, by: str, at: datetime, *,
               audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
               ) -> dict[str, Any]:
        """Give an open flag to someone (``to``); ``by`` is who did it."""
        if not to or not to.strip():
            raise ReviewError("an assignment needs the assignee (--to)")
        return self._operate(flag_id, by, at, audit, assignee=to.strip())

    def _operate(self, flag_id: int, by: str, at: datetime, audit, **changes: Any) -> dict[str, Any]:
        Flag, _ = _models()
        if not by or not by.strip():
            raise ReviewError("the operator's name is needed (--by)")
        with self._session() as s:
            flag = s.get(Flag, flag_id)
            if flag is None:
                raise UnknownFlag(flag_id)
            if flag.status != "open":
                raise ReviewError(f"flag {flag_id} is {flag.status}; only an open flag is"
                                  " acknowledged or assigned")
            before = flag_dict(flag)
            for key, value in changes.items():
                setattr(flag, key, value)
            flag.updated_at = max(flag.updated_at, at)
            if audit is not None:
                s.flush()
                audit(s, before, flag_dict(flag))
        return self.show(flag_id)

    def query(self, *, kinds: Sequence[str] | None = None, status: str | None = None,
              severity: str | None = None, site_id: str | None = None, county: str | None = None,
              supplier_id: str | None = None, since: datetime | None = None,
              until: datetime | None = None, sort: str = "id", limit: int = 50,
              offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """``(total, page)`` of flags matching every filter; ``since``/``until`` select flags whose
        window overlaps ``[since, until)``; ``sort`` is a column of ``SORTS``, ``-`` for descending."""
        from sqlalchemy import func

        from twin.models import Site

        Flag, _ = _models()
        cond = []
        if kinds:
            cond.append(Flag.kind.in_(list(kinds)))
        for column, value in ((Flag.status, status), (Flag.severity, severity),
                              (Flag.site_id, site_id), (Flag.supplier_id, supplier_id)):
            if value is not None:
                cond.append(column == value)
        if county is not None:
            cond.append(Flag.site_id.in_(select(Site.site_id).where(Site.county == county)))
        if since is not None:
            cond.append(Flag.window_end >= since)
        if until is not None:
            cond.append(Flag.window_start < until)
        name = sort.lstrip("-")
        if name not in SORTS:
            raise ReviewError(f"sort must be one of {', '.join(SORTS)} (prefix - to reverse),"
                              f" not {sort!r}")
        column = getattr(Flag, name)
        order = (column.desc(), Flag.id.desc()) if sort.startswith("-") else (column, Flag.id)
        with self._session() as s:
            total = s.scalar(select(func.count(Flag.id)).where(*cond)) or 0
            rows = s.scalars(select(Flag).where(*cond).order_by(*order).limit(limit)
                             .offset(offset)).all()
            return total, [flag_dict(f) for f in rows]

    def last_reviews(self, flag_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The latest review of each of ``flag_ids`` that has one (who decided, when, why)."""
        _, FlagReview = _models()
        out: dict[int, dict[str, Any]] = {}
        ids = sorted(set(flag_ids))
        with self._session() as s:
            for i in range(0, len(ids), 500):
                q = (select(FlagReview).where(FlagReview.flag_id.in_(ids[i:i + 500]))
                     .order_by(FlagReview.reviewed_at, FlagReview.id))
                for r in s.scalars(q):
                    out[r.flag_id] = {"decision": r.decision, "reviewed_by": r.reviewed_by,
                                      "reviewed_at": r.reviewed_at, "note": r.note}
        return out

    def supplier_summary(self, kinds: Sequence[str] = ("overcharging", "overbilling")
                         ) -> list[dict[str, Any]]:
        """Per supplier: flags by status, repeat offenders (most confirmed, then most flags) first."""
        from sqlalchemy import func

        Flag, _ = _models()
        q = (select(Flag.supplier_id, Flag.status, func.count())
             .where(Flag.kind.in_(list(kinds)), Flag.supplier_id.is_not(None))
             .group_by(Flag.supplier_id, Flag.status))
        out: dict[str, dict[str, Any]] = {}
        with self._session() as s:
            for supplier, status, n in s.execute(q):
                row = out.setdefault(supplier, {"supplier_id": supplier, "total": 0,
                                                **{st: 0 for st in STATUSES}})
                row[status] = row.get(status, 0) + n
                row["total"] += n
        return sorted(out.values(), key=lambda r: (-r["confirmed"], -r["total"], r["supplier_id"]))


def _evidence(f: Finding, also: list[str] = ()) -> dict[str, Any]:
    """The finding's evidence, with every subject key the flag answers to (once it has more
    than one, they are kept: the flag stays the incident's even when it shrinks)."""
    evidence = _jsonable(f.evidence)
    keys = set(f.member_keys) | set(also)
    if keys - {f.dedup_key}:
        evidence["member_keys"] = sorted(keys | {f.dedup_key})
    return evidence


def _keys(flag: Any) -> list[str]:
    """Every subject key a stored flag answers to: its own and its members'."""
    return [flag.dedup_key, *((flag.evidence or {}).get("member_keys") or [])]


def _jsonable(value: Any) -> Any:
    """Evidence as plain JSON types (numpy and pandas values converted, times as ISO 8601)."""
    import math

    import numpy as np
    import pandas as pd

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (pd.Timestamp, datetime)):
        return iso_utc(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
