"""The flag lifecycle: dedup, update, hold-off resolution, reviews kept with history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rules.errors import ReviewError, UnknownFlag
from rules.finding import Finding
from rules.flag import FlagBook

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HOLD = 1800.0


def offline(start: datetime, end: datetime, site: str = "S1", severity: str = "warning") -> Finding:
    return Finding(kind="site_offline", rule="site_offline", site_id=site, severity=severity,
                   window_start=start, window_end=end, summary=f"{site} silent",
                   evidence={"silent_s": (end - start).total_seconds()})


def test_persisting_condition_updates_one_flag(sqlite_store):
    book = FlagBook(sqlite_store)
    r1 = book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20), HOLD)
    assert len(r1.opened) == 1
    r2 = book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=25), severity="critical")],
                   T0 + timedelta(minutes=25), HOLD)
    assert (len(r2.opened), len(r2.updated)) == (0, 1)
    (flag,) = book.list()
    assert flag["severity"] == "critical" and flag["status"] == "open"
    assert flag["window_end"] == T0 + timedelta(minutes=25)
    assert flag["opened_at"] == T0 + timedelta(minutes=20)
    # Another site, or the same site in a window far away, is a different flag.
    book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=25)),
                               offline(T0, T0 + timedelta(minutes=25), site="S2")],
              T0 + timedelta(minutes=30), HOLD)
    assert [f["site_id"] for f in book.list()] == ["S1", "S2"]


def test_cleared_condition_resolves_after_the_hold_off_without_flapping(sqlite_store):
    book = FlagBook(sqlite_store)
    book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20), HOLD)
    r = book.sync("site_offline", [], T0 + timedelta(minutes=25), HOLD)
    assert r.clearing == 1 and not r.resolved
    # It comes back within the hold-off: still the same flag, clear_since reset.
    r = book.sync("site_offline", [offline(T0 + timedelta(minutes=40), T0 + timedelta(minutes=50))],
                  T0 + timedelta(minutes=50), HOLD)
    assert len(r.updated) == 1 and not r.opened
    book.sync("site_offline", [], T0 + timedelta(minutes=55), HOLD)
    r = book.sync("site_offline", [], T0 + timedelta(minutes=84), HOLD)
    assert not r.resolved
    r = book.sync("site_offline", [], T0 + timedelta(minutes=85), HOLD)
    assert len(r.resolved) == 1
    (flag,) = book.list()
    assert flag["status"] == "resolved" and flag["resolved_at"] == T0 + timedelta(minutes=85)
    # Back much later: a new flag.
    r = book.sync("site_offline", [offline(T0 + timedelta(hours=5), T0 + timedelta(hours=6))],
                  T0 + timedelta(hours=6), HOLD)
    assert len(r.opened) == 1 and len(book.list()) == 2


def test_reviewed_flag_keeps_its_decision_and_history(sqlite_store):
    book = FlagBook(sqlite_store)
    (opened,) = book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))],
                          T0 + timedelta(minutes=20), HOLD).opened
    fid = opened["id"]
    book.review(fid, "dismissed", "alice", T0 + timedelta(minutes=30), note="planned maintenance")
    book.review(fid, "confirmed", "bob", T0 + timedelta(minutes=40))
    book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=45))], T0 + timedelta(minutes=45), HOLD)
    book.sync("site_offline", [], T0 + timedelta(hours=3), HOLD)
    book.sync("site_offline", [], T0 + timedelta(hours=4), HOLD)
    shown = book.show(fid)
    assert shown["status"] == "confirmed"
    assert shown["window_end"] == T0 + timedelta(minutes=45)
    assert [(r["decision"], r["reviewed_by"], r["note"]) for r in shown["reviews"]] == [
        ("dismissed", "alice", "planned maintenance"), ("confirmed", "bob", None)]
    assert len(book.list()) == 1
    with pytest.raises(ReviewError):
        book.review(fid, "maybe", "carol", T0)
    with pytest.raises(UnknownFlag):
        book.review(999, "confirmed", "carol", T0)


def test_out_of_scope_flags_are_not_resolved(sqlite_store):
    book = FlagBook(sqlite_store)
    bill = Finding(kind="overcharging", rule="overcharging", site_id="S1", severity="warning",
                   window_start=T0 - timedelta(days=30), window_end=T0, summary="bill B1",
                   evidence={"excess_cny": 10.0}, bill_id="B1", supplier_id="LL1")
    book.sync("overcharging", [bill], T0, 0.0)
    r = book.sync("overcharging", [], T0 + timedelta(days=90), 0.0, in_scope=lambda f: False)
    assert not r.resolved and book.list()[0]["status"] == "open"


def test_an_incident_stays_one_flag_when_its_strongest_cell_changes(sqlite_store):
    from rules.finding import subject_key

    book = FlagBook(sqlite_store)

    def incident(anchor_site: str, cells: list[tuple[str, str]], end: datetime) -> Finding:
        site, cell = next(c for c in cells if c[0] == anchor_site)
        return Finding(kind="interference", rule="interference", site_id=site, cell_id=cell,
                       severity="warning", window_start=T0, window_end=end, summary="incident",
                       evidence={"cells": [c for _, c in cells]},
                       member_keys=tuple(subject_key("interference", s, c) for s, c in cells))

    both = [("A", "A1"), ("B", "B1")]
    (first,) = book.sync("interference", [incident("A", both, T0 + timedelta(minutes=45))],
                         T0 + timedelta(minutes=45), HOLD).opened
    r = book.sync("interference", [incident("B", both, T0 + timedelta(minutes=60))], T0 + timedelta(minutes=60), HOLD)
    assert not r.opened and r.updated[0]["id"] == first["id"]
    # The incident shrinks to B alone (a plain single-cell finding): still the same flag.
    alone = Finding(kind="interference", rule="interference", site_id="B", cell_id="B1", severity="warning",
                    window_start=T0 + timedelta(minutes=30), window_end=T0 + timedelta(minutes=75),
                    summary="B1", evidence={})
    r = book.sync("interference", [alone], T0 + timedelta(minutes=75), HOLD)
    assert not r.opened and r.updated[0]["id"] == first["id"]
    r = book.sync("interference", [alone], T0 + timedelta(minutes=90), HOLD)
    assert not r.opened and r.updated[0]["id"] == first["id"]
    assert [f["id"] for f in book.list()] == [first["id"]]


def test_ack_and_assign_are_kept_with_their_history(sqlite_store):
    book = FlagBook(sqlite_store)
    book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20), HOLD)
    (flag,) = book.list()
    assert (flag["acknowledged_by"], flag["acknowledged_at"], flag["assignee"]) == (None, None, None)
    book.ack(flag["id"], " zhang.san ", T0 + timedelta(minutes=21), note="driving there")
    book.assign(flag["id"], "wang.wu", "lead", T0 + timedelta(minutes=22))
    shown = book.assign(flag["id"], "li.si", "lead", T0 + timedelta(minutes=23), note="handover")
    assert shown["acknowledged_by"] == "zhang.san" and shown["assignee"] == "li.si"
    assert shown["acknowledged_at"] == T0 + timedelta(minutes=21)
    assert [(a["action"], a["by"], a["value"], a["note"]) for a in shown["actions"]] == [
        ("ack", "zhang.san", None, "driving there"), ("assign", "lead", "wang.wu", None),
        ("assign", "lead", "li.si", "handover")]
    assert shown["status"] == "open"  # taking a flag on is not a decision on it
    with pytest.raises(ReviewError, match="--by"):
        book.ack(flag["id"], " ", T0)
    with pytest.raises(ReviewError, match="--to"):
        book.assign(flag["id"], "", "lead", T0)
    with pytest.raises(UnknownFlag):
        book.ack(999, "x", T0)
    # A resolved flag has nothing left to acknowledge.
    book.sync("site_offline", [], T0 + timedelta(minutes=25), HOLD)
    book.sync("site_offline", [], T0 + timedelta(hours=2), HOLD)
    with pytest.raises(ReviewError, match="resolved"):
        book.ack(flag["id"], "zhang.san", T0 + timedelta(hours=2))
