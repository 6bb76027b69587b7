"""The flag lifecycle in the twin database: open, update, resolve after a hold-off, review.

A finding updates the one flag with its ``dedup_key`` (kind, site, cell or
bill) — or one of its ``member_keys``, the cells of an incident — whose window
overlaps the finding's, widened by the hold-off so that a condition that blinks
off and on within the hold-off stays one flag.  A flag of a rule that no longer
finds it gets ``clear_since``; once that is older than the hold-off it is
resolved.  A reviewed flag (``confirmed`` or
``dismissed``) keeps its decision: findings still refresh its evidence, but
it is never resolved or reopened by the engine.  Every review is a row of
``flag_reviews``, so the history is kept.

A person takes an alarm on with ``ack`` (acknowledged: someone is on it) and
``assign`` (whose it is); both are columns of the flag, and every such action is
a row of ``flag_actions`` beside the reviews.  Neither changes the status: an
acknowledged flag still resolves when its condition ends.

Concurrency: the registry holds at most one *open* flag per rule and
``dedup_key`` (a partial unique index, revision 0004), so two evaluations of a
rule at once (two ``rules run``, or ``rules run`` beside the scheduler) cannot
both open one: the later insert is refused and that evaluation is applied again
from a fresh read, updating the flag the other one opened.  A finding whose
window is apart from an open flag of its key by more than the hold-off resolves
that flag and opens a new one (before the index, it opened a second).

A finding naming a ``probable_cause``
(an offline site's mains failure) gets the id of the cause's live flag.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.states import FlagStatus
from core.text import control_character
from rules.errors import ReviewError, RuleDataError, UnknownFlag
from rules.finding import Finding, iso_utc

__all__ = ["ACTIONS", "DECISIONS", "SORTS", "STATUSES", "FlagBook", "FlagStatus", "SyncResult",
           "flag_dict"]

log = logging.getLogger(__name__)

# Plain text for the CLI's choices and messages; ``FlagStatus`` is the vocabulary.
STATUSES = tuple(s.value for s in FlagStatus)
SORTS = ("id", "opened_at", "updated_at", "window_start", "severity", "kind", "site_id",
         "supplier_id")
DECISIONS = (FlagStatus.CONFIRMED.value, FlagStatus.DISMISSED.value)

# Evaluations of one rule racing each other: each retry sees the flags the others committed.
SYNC_ATTEMPTS = 5

# While a backfill holds flags in memory (``FlagBook.holding``): written at least this often.
HELD_COMMIT_S = 5.0


class _OpenedMeanwhile(Exception):
    """Another evaluation opened a flag for the same condition first (unique index refused ours)."""


def _resolve(flag: Any, now: datetime) -> None:
    flag.status = FlagStatus.RESOLVED.value
    flag.resolved_at = now
    flag.updated_at = now


def _models():
    from twin.models import Flag, FlagReview

    return Flag, FlagReview


ACTIONS = ("ack", "assign")


def flag_dict(flag: Any) -> dict[str, Any]:
    """A flag as docs/contracts.md section 4 describes it."""
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
    # Backfill only: findings already recorded by a flag that existed before it started.
    skipped: int = 0
    # Flags of the rule this evaluation could still change (open or clearing, not frozen)
    # after it, counted high rather than low: 0 lets a backfill skip the flag store on the
    # rule's next step without findings (``Engine.backfill``).
    live_after: int = 0

    @property
    def changed(self) -> list[dict[str, Any]]:
        return self.opened + self.updated + self.resolved


@dataclass
class _Held:
    """One rule's flags held in memory during a backfill: its own session (no autoflush), the
    flags ``sync`` may change, the frozen ones, and when they were last written."""

    session: Any
    written: float
    live: builtins.list[Any] | None = None
    recorded: dict[str, builtins.list[Any]] = field(default_factory=dict)
    frozen_open: set[str] = field(default_factory=set)


def _overlaps(flag: Any, f: Finding, slack: timedelta) -> bool:
    return flag.window_start <= f.window_end + slack and f.window_start <= flag.window_end + slack


class FlagBook:
    """Flags and reviews in the registry (``twin.store.Store``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        # While a backfill holds its rules' flags (``holding``): per rule, its session and flags.
        self._held: dict[str, _Held] | None = None

    def _session(self):
        return self.store.session()

    @contextmanager
    def holding(self, every_s: float = HELD_COMMIT_S) -> Iterator[None]:
        """Within the block, ``sync`` keeps each rule's flags in memory between evaluations
        and writes them to the registry at each opening or resolution, at least every
        ``every_s`` seconds, and at the end - instead of reading every open flag and writing
        every update at every evaluation.  For a backfill, which evaluates one rule thousands
        of times: a month of 600 reservations true all month made 720 reads and 432 000
        row updates of the same flags.  What the flags end as is the same either way
        (nothing else writes these flags meanwhile; another evaluation opening a flag of the
        same condition is caught by the unique index, as always, and the evaluation is
        applied again from a fresh read).  Between writes the registry shows them as of
        the last write.
        """
        if self._held is not None:
            yield
            return
        self._held = {}
        self._held_every = every_s
        try:
            yield
        finally:
            # Written however the block ends: every evaluation completed so far, as a run
            # without holding would have left them.
            held_all, self._held = self._held, None
            try:
                for held in held_all.values():
                    self._write_held(held)
            finally:
                for held in held_all.values():
                    held.session.close()

    def frozen_for_backfill(self, rules: Sequence[str], since: datetime) -> frozenset[int]:
        """The flags of ``rules`` a backfill from ``since`` must not rewrite: every one, except
        an open flag last evaluated at or before ``since`` — a backfill of the range before
        left it open, and this one continues its history."""
        Flag, _ = _models()
        with self._session() as s:
            rows = s.execute(select(Flag.id, Flag.status, Flag.updated_at)
                             .where(Flag.rule.in_(list(rules)))).all()
        return frozenset(r.id for r in rows if not (r.status == FlagStatus.OPEN and r.updated_at <= since))

    def sync(self, rule: str, findings: Sequence[Finding], now: datetime, hold_off_s: float, *,
             in_scope: Callable[[Any], bool] = lambda flag: True,
             frozen: Collection[int] | None = None) -> SyncResult:
        """Apply one evaluation of ``rule``: open, update, clear or resolve its flags.

        ``in_scope(flag)`` says whether this evaluation looked at a flag's subject at all
        (a bill rule only re-checks recent bills); flags out of scope are left alone.

        The registry holds at most one open flag per (rule, dedup_key) (a partial unique
        index).  When another evaluation of the same rule (a second ``rules run``) opened
        one between our read and our write, the database refuses ours; the whole
        evaluation is then applied again, so it updates the flag the other one opened.

        ``frozen`` (a backfill): the ids of the flags that existed before the backfill began.
        They are never updated, cleared, resolved or reopened — a flag open now stays as the
        live runs left it — and a finding that one of them already covers (same subject,
        overlapping window) is skipped rather than opened again, as is a finding of a condition
        whose frozen flag is open now (the live flag stands for it, and the database allows one
        open flag per condition).  So a backfill only writes flags of its own, and running it
        twice changes nothing the second time.
        """
        from twin.errors import TwinError

        for attempt in range(1, SYNC_ATTEMPTS + 1):
            try:
                return self._sync_once(rule, findings, now, hold_off_s, in_scope, frozen)
            except _OpenedMeanwhile as exc:
                if attempt == SYNC_ATTEMPTS:
                    raise RuleDataError(f"flags of {rule} kept changing underneath"
                                        f" ({SYNC_ATTEMPTS} attempts): {exc}") from None
                log.info("flags of %s: %s by another evaluation; applying this one again",
                         rule, exc)
            except TwinError as exc:
                raise RuleDataError(f"flag store unavailable: {exc}") from exc
        raise AssertionError("unreachable")

    def _sync_once(self, rule: str, findings: Sequence[Finding], now: datetime, hold_off_s: float,
                   in_scope: Callable[[Any], bool],
                   frozen: Collection[int] | None) -> SyncResult:
        if self._held is not None:
            return self._sync_held(rule, findings, now, hold_off_s, in_scope, frozen)
        with self._session() as s:
            live, recorded, frozen_open = self._read(s, rule, frozen)
            return self._apply(s, findings, now, hold_off_s, in_scope, live, recorded, frozen_open)

    @staticmethod
    def _read(s: Any, rule: str, frozen: Collection[int] | None
              ) -> tuple[list[Any], dict[str, list[Any]], set[str]]:
        """The rule's flags ``sync`` may change (not resolved, not frozen), and the frozen
        ones by subject key, and the keys of the frozen ones open now."""
        Flag, _ = _models()
        live = list(s.scalars(select(Flag).where(Flag.rule == rule, Flag.status != FlagStatus.RESOLVED.value)
                              .order_by(Flag.id)).all())
        # A backfill's frozen flags: matched against (to skip what they cover), never written.
        recorded: dict[str, list[Any]] = {}
        frozen_open: set[str] = set()
        if frozen is not None:
            kept = set(frozen)
            for flag in s.scalars(select(Flag).where(Flag.rule == rule, Flag.id.in_(kept))):
                for key in _keys(flag):
                    recorded.setdefault(key, []).append(flag)
                if flag.status == FlagStatus.OPEN:
                    frozen_open.add(flag.dedup_key)
            live = [flag for flag in live if flag.id not in kept]
        return live, recorded, frozen_open

    def _sync_held(self, rule: str, findings: Sequence[Finding], now: datetime, hold_off_s: float,
                   in_scope: Callable[[Any], bool], frozen: Collection[int] | None) -> SyncResult:
        """``_sync_once`` on the flags held in memory (``holding``)."""
        from sqlalchemy.exc import SQLAlchemyError

        assert self._held is not None
        held = self._held.get(rule)
        if held is None:
            # No autoflush: a read in one rule's session must not start writing its pending
            # changes (SQLite would then hold its write lock against the other rules' sessions).
            session = self.store.sessionmaker(autoflush=False)
            held = self._held[rule] = _Held(session, time.monotonic())
        try:
            if held.live is None:
                held.live, held.recorded, held.frozen_open = self._read(held.session, rule, frozen)
                held.session.commit()  # ends the read (PostgreSQL would keep it open)
            opened: builtins.list[Any] = []
            out = self._apply(held.session, findings, now, hold_off_s, in_scope, held.live, held.recorded,
                              held.frozen_open, added=opened)
            held.live = [f for f in held.live if f.status != FlagStatus.RESOLVED] + opened
            if out.opened or out.resolved or time.monotonic() - held.written >= self._held_every:
                self._write_held(held)
            return out
        except BaseException as exc:
            held.session.rollback()
            held.live = None  # read again: the rollback left the flags as the registry has them
            if isinstance(exc, SQLAlchemyError):
                raise RuleDataError(f"flag store unavailable: {type(exc).__name__}: {exc}") from None
            raise

    @staticmethod
    def _write_held(held: _Held) -> None:
        held.session.commit()
        held.written = time.monotonic()

    def _apply(self, s: Any, findings: Sequence[Finding], now: datetime, hold_off_s: float,
               in_scope: Callable[[Any], bool], live: list[Any], recorded: dict[str, list[Any]],
               frozen_open: set[str], added: builtins.list[Any] | None = None) -> SyncResult:
        """Match the findings to the flags and change them (``_sync_once``'s work, in ``s``)."""
        Flag, _ = _models()
        slack = timedelta(seconds=hold_off_s)
        out = SyncResult()
        by_key: dict[str, list[Any]] = {}
        open_by_key: dict[str, Any] = {}
        for flag in live:
            for key in _keys(flag):
                by_key.setdefault(key, []).append(flag)
            if flag.status == FlagStatus.OPEN:
                open_by_key.setdefault(flag.dedup_key, flag)
        seen: set[int] = set()
        for f in findings:
            keys = (f.dedup_key, *f.member_keys)
            candidates = [x for key in keys for x in by_key.get(key, ())]
            match = next((x for x in candidates if x.id not in seen and _overlaps(x, f, slack)), None)
            if match is None and (f.dedup_key in frozen_open or any(
                    _overlaps(x, f, slack) for key in keys for x in recorded.get(key, ()))):
                # Covered by a flag the backfill must not touch, or an earlier occurrence of
                # a condition open now: the live flag stands for it (one open per condition).
                out.skipped += 1
                continue
            if match is None:
                same = open_by_key.get(f.dedup_key)
                if same is not None and same.status == FlagStatus.OPEN and same.id in seen:
                    match = same  # a second finding of a condition this evaluation already has
                elif same is not None and same.status == FlagStatus.OPEN:
                    # An earlier occurrence, apart by more than the hold-off: it ends here.
                    _resolve(same, now)
                    s.flush()  # before the new one is inserted: the index allows one open
                    out.resolved.append(flag_dict(same))
                    seen.add(same.id)
            if match is None:
                if added is not None:
                    # Held flags: what earlier evaluations changed is written first, so
                    # that an insert refused below loses nothing but this evaluation.
                    s.commit()
                match = Flag(kind=f.kind, rule=f.rule, site_id=f.site_id, cell_id=f.cell_id,
                             bill_id=f.bill_id, supplier_id=f.supplier_id, severity=f.severity,
                             status=FlagStatus.OPEN.value, opened_at=now, updated_at=now,
                             window_start=f.window_start, window_end=f.window_end,
                             summary=f.summary, evidence=_link_cause(s, _evidence(f)),
                             dedup_key=f.dedup_key)
                s.add(match)
                if added is not None:
                    added.append(match)
                try:
                    s.flush()
                except IntegrityError as exc:
                    raise _OpenedMeanwhile(f"open flag {f.dedup_key!r} opened meanwhile") from exc
                for key in _keys(match):
                    by_key.setdefault(key, []).append(match)
                open_by_key[match.dedup_key] = match
                out.opened.append(flag_dict(match))
            else:
                match.window_start = min(match.window_start, f.window_start)
                match.window_end = max(match.window_end, f.window_end)
                match.severity = f.severity
                match.summary = f.summary
                match.evidence = _link_cause(s, _evidence(f, also=_keys(match)), match.evidence)
                match.supplier_id = f.supplier_id
                match.updated_at = now
                match.clear_since = None
                if match.id not in seen:
                    out.updated.append(flag_dict(match))
            seen.add(match.id)
        for flag in live:
            if flag.id in seen or flag.status != FlagStatus.OPEN or not in_scope(flag):
                continue
            if flag.clear_since is None:
                flag.clear_since = now
            if now - flag.clear_since >= slack:
                _resolve(flag, now)
                out.resolved.append(flag_dict(flag))
            else:
                out.clearing += 1
        out.live_after = sum(1 for flag in live if flag.status != FlagStatus.RESOLVED) + len(out.opened)
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
        """One flag with its review history and its acks and assignments (oldest first)."""
        from twin.models import FlagAction

        Flag, FlagReview = _models()
        with self._session() as s:
            flag = s.get(Flag, flag_id)
            if flag is None:
                raise UnknownFlag(flag_id)
            reviews = s.scalars(select(FlagReview).where(FlagReview.flag_id == flag_id)
                                .order_by(FlagReview.reviewed_at, FlagReview.id)).all()
            actions = s.scalars(select(FlagAction).where(FlagAction.flag_id == flag_id)
                                .order_by(FlagAction.at, FlagAction.id)).all()
            return {**flag_dict(flag), "reviews": [
                {"decision": r.decision, "reviewed_by": r.reviewed_by, "reviewed_at": r.reviewed_at,
                 "note": r.note} for r in reviews], "actions": [
                {"action": a.action, "by": a.actor, "value": a.value, "at": a.at, "note": a.note}
                for a in actions]}

    def ack(self, flag_id: int, by: str, at: datetime, note: str | None = None, *,
            audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
        """``by`` acknowledges the flag: someone is on it, so reminders stop (escalations do not).

        Acknowledging again records the new person and time; a resolved flag cannot be
        acknowledged (there is nothing left to own).  ``audit(session, before, after)`` is
        called in the same transaction (the web app's and the CLI's audit entry).
        """
        return self._act(flag_id, "ack", by, None, at, note, audit)

    def acknowledge(self, flag_id: int, by: str, at: datetime, note: str | None = None, *,
                    audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
                    ) -> dict[str, Any]:
        """The web app's name for ``ack``."""
        return self.ack(flag_id, by, at, note, audit=audit)

    def assign(self, flag_id: int, to: str, by: str, at: datetime, note: str | None = None, *,
               audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
               ) -> dict[str, Any]:
        """Make ``to`` the flag's owner (``by`` did it); assigning again hands it over."""
        if not to or not to.strip():
            raise ReviewError("an assignment needs the assignee's name (--to)")
        return self._act(flag_id, "assign", by, to.strip(), at, note, audit)

    def _act(self, flag_id: int, action: str, by: str, value: str | None, at: datetime,
             note: str | None, audit: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None
             ) -> dict[str, Any]:
        from twin.models import FlagAction

        Flag, _ = _models()
        if not by or not by.strip():
            raise ReviewError(f"{'an acknowledgement' if action == 'ack' else 'an assignment'}"
                              " needs the person's name (--by)")
        for what, text in (("the name", by), ("the assignee", value), ("the note", note)):
            found = control_character(text or "")
            if found:
                raise ReviewError(f"{what} contains {found}")
        with self._session() as s:
            flag = s.get(Flag, flag_id)
            if flag is None:
                raise UnknownFlag(flag_id)
            if flag.status == FlagStatus.RESOLVED:
                raise ReviewError(f"flag {flag_id} is resolved; there is nothing to"
                                  f" {'acknowledge' if action == 'ack' else 'assign'}")
            before = flag_dict(flag)
            s.add(FlagAction(flag_id=flag_id, action=action, actor=by.strip(), value=value, at=at,
                             note=note))
            if action == "ack":
                flag.acknowledged_by = by.strip()
                flag.acknowledged_at = at
            else:
                flag.assignee = value
            if audit is not None:
                s.flush()
                audit(s, before, flag_dict(flag))
        return self.show(flag_id)

    def reviews(self, flag_ids: Sequence[int]) -> dict[int, builtins.list[dict[str, Any]]]:
        """The review history (oldest first) of each of ``flag_ids`` that has one."""
        _, FlagReview = _models()
        out: dict[int, list[dict[str, Any]]] = {}
        ids = sorted(set(flag_ids))
        with self._session() as s:
            for i in range(0, len(ids), 1000):
                q = (select(FlagReview).where(FlagReview.flag_id.in_(ids[i:i + 1000]))
                     .order_by(FlagReview.flag_id, FlagReview.reviewed_at, FlagReview.id))
                for r in s.scalars(q):
                    out.setdefault(r.flag_id, []).append(
                        {"decision": r.decision, "reviewed_by": r.reviewed_by,
                         "reviewed_at": r.reviewed_at, "note": r.note})
        return out

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
        for what, text in (("the reviewer's name", reviewed_by), ("the note", note)):
            found = control_character(text or "")
            if found:
                raise ReviewError(f"{what} contains {found}")
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

    def query(self, *, kinds: Sequence[str] | None = None, status: str | None = None,
              severity: str | None = None, site_id: str | None = None, county: str | None = None,
              supplier_id: str | None = None, since: datetime | None = None,
              until: datetime | None = None, sort: str = "id", limit: int = 50,
              offset: int = 0) -> tuple[int, builtins.list[dict[str, Any]]]:
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
                         ) -> builtins.list[dict[str, Any]]:
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
                                                **dict.fromkeys(STATUSES, 0)})
                row[status] = row.get(status, 0) + n
                row["total"] += n
        return sorted(out.values(), key=lambda r: (-r["confirmed"], -r["total"], r["supplier_id"]))


def _evidence(f: Finding, also: Sequence[str] = ()) -> dict[str, Any]:
    """The finding's evidence, with every subject key the flag answers to (once it has more
    than one, they are kept: the flag stays the incident's even when it shrinks)."""
    evidence = _jsonable(f.evidence)
    keys = set(f.member_keys) | set(also)
    if keys - {f.dedup_key}:
        evidence["member_keys"] = sorted(keys | {f.dedup_key})
    return evidence


def _link_cause(session: Any, evidence: dict[str, Any], before: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """A ``probable_cause`` named by its subject key gets the id of that subject's live flag
    (``flag_id``, None while it has none).  A cause linked before is kept while its flag is
    live, even once the finding can no longer see it (a site silent beyond the rule's window).
    """
    Flag, _ = _models()
    cause = evidence.get("probable_cause") or (before or {}).get("probable_cause")
    if not isinstance(cause, dict) or not cause.get("dedup_key"):
        return evidence
    flag_id = session.scalars(select(Flag.id).where(Flag.dedup_key == cause["dedup_key"],
                                                    Flag.status != FlagStatus.RESOLVED.value)
                              .order_by(Flag.id.desc()).limit(1)).first()
    if flag_id is None and "probable_cause" not in evidence:
        return evidence  # the earlier cause has ended: no longer linked
    evidence["probable_cause"] = {**cause, "flag_id": flag_id}
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
