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
def test_a_finding_apart_from_the_open_flag_by_more_than_the_hold_off_resolves_it_and_opens_one(
        sqlite_store):
    """At most one open flag per condition: the earlier occurrence ends where the new one opens."""
    book = FlagBook(sqlite_store)
    book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20), HOLD)
    later = offline(T0 + timedelta(hours=3), T0 + timedelta(hours=4))
    r = book.sync("site_offline", [later], T0 + timedelta(hours=4), HOLD)
    assert len(r.opened) == 1 and len(r.resolved) == 1
    assert [f["status"] for f in book.list()] == ["resolved", "open"]
    # Two findings of one condition in one evaluation: one flag, its window covering both.
    r = book.sync("site_offline", [offline(T0 + timedelta(hours=3), T0 + timedelta(hours=4)),
                                   offline(T0 + timedelta(hours=8), T0 + timedelta(hours=9))],
                  T0 + timedelta(hours=9), HOLD)
    assert [f["status"] for f in book.list()] == ["resolved", "open"]
    assert book.list(status="open")[0]["window_end"] == T0 + timedelta(hours=9)


# -- concurrent evaluations --------------------------------------------------------------------

SITES = 50


def _sync_in_process(url: str, barrier, results, now_min: int) -> None:
    from twin.store import open_store

    store = open_store(url)
    try:
        findings = [offline(T0, T0 + timedelta(minutes=now_min), site=f"S{i:03d}")
                    for i in range(SITES)]
        barrier.wait(60)
        r = FlagBook(store).sync("site_offline", findings, T0 + timedelta(minutes=now_min), HOLD)
        results.put((len(r.opened), len(r.updated)))
    except BaseException as exc:  # reported to the test
        results.put(repr(exc))
    finally:
        store.close()


@pytest.mark.integration
def test_two_rule_runs_at_once_open_one_flag_per_condition(twin_url):
    """Two processes evaluate the same rule over 50 sites at the same moment, five times:
    the database keeps one open flag per site (the loser of each race updates it)."""
    import multiprocessing as mp

    from twin.store import open_store

    open_store(twin_url).close()
    ctx = mp.get_context("spawn")
    for round_ in range(5):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_sync_in_process, args=(twin_url, barrier, results, 20 + round_))
                 for _ in range(2)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        assert all(isinstance(g, tuple) for g in got), got
        assert sum(opened + updated for opened, updated in got) == 2 * SITES
        if round_ == 0:
            assert sum(opened for opened, _ in got) == SITES
    store = open_store(twin_url)
    try:
        flags = FlagBook(store).list()
    finally:
        store.close()
    assert len(flags) == SITES
    assert sorted(f["site_id"] for f in flags) == [f"S{i:03d}" for i in range(SITES)]
    assert all(f["status"] == "open" and f["window_end"] == T0 + timedelta(minutes=24) for f in flags)


def test_a_review_with_a_control_character_is_refused(sqlite_store):
    book = FlagBook(sqlite_store)
    book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20), HOLD)
    (flag,) = book.list()
    with pytest.raises(ReviewError, match="the reviewer's name contains the control character U\\+0000"):
        book.review(flag["id"], "confirmed", "ali\x00ce", T0 + timedelta(hours=1))
    with pytest.raises(ReviewError, match="the note contains the control character U\\+0007"):
        book.review(flag["id"], "confirmed", "alice", T0 + timedelta(hours=1), note="\a")
    assert book.show(flag["id"])["reviews"] == [] and book.list()[0]["status"] == "open"


@pytest.mark.integration
def test_two_rules_run_commands_racing_on_postgresql_leave_one_open_flag_per_site(
        postgresql_url, influxdb, influx_db, tmp_path):
    """Two ``sitetwin rules run`` processes, held at their first flag write until both are
    there (the test locks the flags table), then released together: 50 silent sites, 50
    open flags (the old code opened 100)."""
    import os
    import subprocess
    import sys

    import psycopg
    from sqlalchemy.engine import make_url

    from tests.support import ROOT, wait_for
    from twin.models import LifecycleEvent, Site
    from twin.store import open_store

    store = open_store(postgresql_url)
    with store.session() as s:
        for i in range(SITES):
            s.add(Site(site_id=f"S{i:03d}", name=f"S{i:03d}", lat=30.0, lon=104.0, county="Pi",
                       kind="macro", supply="direct", region="R", customer_class="C",
                       state="on_air"))
            s.flush()
            s.add(LifecycleEvent(site_id=f"S{i:03d}", from_state=None, to_state="on_air",
                                 verb="import", at=T0 - timedelta(days=30), actor="test"))
    store.close()
    cfg = tmp_path / "sitetwin.toml"
    cfg.write_text(f'[influxdb]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n'
                   f'[twin]\nurl = "{postgresql_url}"\n'
                   f'[services]\nstate_dir = "{tmp_path / "state"}"\n')
    url = make_url(postgresql_url)
    conninfo = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    argv = [sys.executable, "-m", "sitetwin", "rules", "run", "--rule", "site_offline",
            "--no-publish", "--json", "--config", str(cfg)]
    with psycopg.connect(**conninfo) as lock, psycopg.connect(**conninfo, autocommit=True) as probe:
        lock.execute("LOCK TABLE flags IN EXCLUSIVE MODE")  # reads pass, writes wait
        procs = [subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]
        try:
            def waiting() -> int:
                assert all(p.poll() is None for p in procs), "a rules run ended while the table was locked"
                return probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                    " AND wait_event_type = 'Lock'", (url.database,)).fetchone()[0]

            wait_for(lambda: waiting() >= 2, timeout=120, message="both rules runs at their flag write")
        finally:
            lock.rollback()  # releases the lock: both go at once
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-1000:] for o in outs]
    store = open_store(postgresql_url)
    try:
        flags = FlagBook(store).list(status="open")
    finally:
        store.close()
    assert sorted(f["site_id"] for f in flags) == [f"S{i:03d}" for i in range(SITES)]


# -- flags held in memory (a backfill) ----------------------------------------------------------

def _script() -> list[tuple[datetime, list[Finding]]]:
    """Evaluations that open, update, clear, come back within the hold-off, resolve, and
    open again, over two sites."""
    m = lambda k: T0 + timedelta(minutes=k)  # noqa: E731
    return [(m(20), [offline(T0, m(20))]),
            (m(25), [offline(T0, m(25), severity="critical"), offline(m(5), m(25), site="S2")]),
            (m(30), [offline(m(5), m(30), site="S2")]),
            (m(50), [offline(m(40), m(50)), offline(m(5), m(50), site="S2")]),
            (m(55), []),
            (m(84), []),
            (m(90), [offline(m(85), m(90), site="S2")]),
            (m(200), []),
            (m(300), [offline(m(290), m(300))])]


def test_held_flags_end_as_one_evaluation_at_a_time_leaves_them(tmp_path):
    """``holding`` keeps the flags in memory between evaluations: every evaluation's result
    and the flags it ends with are those of evaluations that each read and write the registry."""
    from twin.store import open_store

    stores = [open_store(f"sqlite:///{tmp_path / name}") for name in ("plain.sqlite", "held.sqlite")]
    try:
        plain, held = FlagBook(stores[0]), FlagBook(stores[1])
        expected = [plain.sync("site_offline", findings, now, HOLD) for now, findings in _script()]
        with held.holding(every_s=3600):
            got = [held.sync("site_offline", findings, now, HOLD) for now, findings in _script()]
        assert got == expected
        assert held.list() == plain.list()
        assert [(f["site_id"], f["status"]) for f in plain.list()] == [
            ("S1", "resolved"), ("S2", "resolved"), ("S2", "resolved"), ("S1", "open")]
    finally:
        for store in stores:
            store.close()


def test_held_flags_are_written_at_each_opening_and_resolution_and_at_the_end(sqlite_store):
    book, reader = FlagBook(sqlite_store), FlagBook(sqlite_store)
    with book.holding(every_s=3600):
        book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20), HOLD)
        assert [f["window_end"] for f in reader.list()] == [T0 + timedelta(minutes=20)]  # the opening
        book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=25))], T0 + timedelta(minutes=25), HOLD)
        assert [f["window_end"] for f in reader.list()] == [T0 + timedelta(minutes=20)]  # held
        book.sync("site_offline", [], T0 + timedelta(minutes=30), HOLD)
        book.sync("site_offline", [], T0 + timedelta(hours=2), HOLD)
        (flag,) = reader.list()  # the resolution, and the update before it
        assert flag["status"] == "resolved" and flag["window_end"] == T0 + timedelta(minutes=25)
        book.sync("site_offline", [offline(T0 + timedelta(hours=5), T0 + timedelta(hours=6), site="S2")],
                  T0 + timedelta(hours=6), HOLD)
        book.sync("site_offline", [offline(T0 + timedelta(hours=5), T0 + timedelta(hours=7), site="S2")],
                  T0 + timedelta(hours=7), HOLD)
        assert reader.list()[1]["window_end"] == T0 + timedelta(hours=6)
    assert reader.list()[1]["window_end"] == T0 + timedelta(hours=7)  # written at the end


def test_held_flags_meet_a_flag_another_evaluation_opened_meanwhile(sqlite_store):
    """Another evaluation opens the flag of a condition the held book also finds: the unique
    index refuses the second, the evaluation is applied again from a fresh read and updates
    the other's flag, and the held changes of the evaluations before it are not lost."""
    book, other = FlagBook(sqlite_store), FlagBook(sqlite_store)
    only_s1 = lambda flag: flag.site_id == "S1"  # noqa: E731
    with book.holding(every_s=3600):
        book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=20), site="S2")],
                  T0 + timedelta(minutes=20), HOLD)
        book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=25), site="S2", severity="critical")],
                  T0 + timedelta(minutes=25), HOLD)  # held, not written yet
        other.sync("site_offline", [offline(T0, T0 + timedelta(minutes=26))], T0 + timedelta(minutes=26), HOLD,
                   in_scope=only_s1)
        r = book.sync("site_offline", [offline(T0, T0 + timedelta(minutes=30))], T0 + timedelta(minutes=30), HOLD,
                      in_scope=only_s1)
        assert (len(r.opened), len(r.updated)) == (0, 1)
    flags = FlagBook(sqlite_store).list()
    assert [(f["site_id"], f["status"], f["severity"], f["window_end"]) for f in flags] == [
        ("S2", "open", "critical", T0 + timedelta(minutes=25)),
        ("S1", "open", "warning", T0 + timedelta(minutes=30))]
