"""Every legal and illegal lifecycle move, the guards, and time travel, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.twin.conftest import T0, add_site
from twin.errors import TransitionNotAllowed, UnknownSite
from twin.lifecycle import PRE_ON_AIR, TRANSITIONS, State, check_move, history, state_at, transition
from twin.models import LifecycleEvent, Site
from twin.store import open_store

FORWARD = [State.PLANNED, State.SITE_SECURED, State.APPROVED, State.UNDER_CONSTRUCTION,
           State.POWER_CONNECTED, State.ON_AIR, State.RELOCATING, State.DECOMMISSIONED]


def walk_to(store, site_id: str, target: State, start: int = 1) -> int:
    """Move a planned site forward to ``target``, one hour per step; returns the next hour."""
    hour = start
    for state in FORWARD[1:FORWARD.index(target) + 1]:
        with store.session() as s:
            transition(s, site_id, state, at=T0 + timedelta(hours=hour), actor="test")
        hour += 1
    return hour


def reach(store, site_id: str, state: State) -> None:
    """A new site in ``state`` with a legal history (blocked = blocked while approved)."""
    add_site(store, site_id)
    if state == State.BLOCKED:
        walk_to(store, site_id, State.APPROVED)
        with store.session() as s:
            transition(s, site_id, State.BLOCKED, at=T0 + timedelta(hours=50), actor="test",
                       reason="landlord withdrew consent")
    else:
        walk_to(store, site_id, state)


@pytest.mark.integration
def test_every_legal_move(store):
    for i, move in enumerate(TRANSITIONS):
        site = f"L{i}"
        add_site(store, site)
        if move.verb == "unblock":
            walk_to(store, site, move.target)
            with store.session() as s:
                transition(s, site, State.BLOCKED, at=T0 + timedelta(hours=60), reason="permit")
        else:
            walk_to(store, site, move.source)
        with store.session() as s:
            ev = transition(s, site, move.target, at=T0 + timedelta(hours=70), actor="alice",
                            note="ok", reason="why" if move.verb == "block" else None)
            assert ev.verb == move.verb
        with store.session() as s:
            assert s.get(Site, site).state == move.target.value
            last = history(s, site)[-1]
            assert (last.from_state, last.to_state, last.actor, last.note) == (
                move.source.value, move.target.value, "alice", "ok")


@pytest.mark.integration
def test_every_illegal_move_is_refused_and_changes_nothing(store):
    legal = {(t.source, t.target) for t in TRANSITIONS}
    for state in State:
        site = f"I_{state.value}"
        reach(store, site, state)
        with store.session() as s:
            before = s.scalar(select(func.count()).select_from(LifecycleEvent)
                              .where(LifecycleEvent.site_id == site))
        for target in State:
            if (state, target) in legal and state != State.BLOCKED:
                continue
            if state == State.BLOCKED and target == State.APPROVED:
                continue  # the one way back from this block
            with pytest.raises(TransitionNotAllowed) as err:
                with store.session() as s:
                    transition(s, site, target, at=T0 + timedelta(hours=100), reason="r")
            assert err.value.state == state.value and err.value.target == target.value
            assert state.value in str(err.value) and target.value in str(err.value)
        with store.session() as s:
            assert s.get(Site, site).state == state.value
            assert s.scalar(select(func.count()).select_from(LifecycleEvent)
                            .where(LifecycleEvent.site_id == site)) == before


@pytest.mark.integration
def test_blocked_returns_to_the_interrupted_state_only(store):
    for state in PRE_ON_AIR:
        site = f"B_{state.value}"
        add_site(store, site)
        walk_to(store, site, state)
        with store.session() as s:
            with pytest.raises(TransitionNotAllowed, match="needs a reason"):
                transition(s, site, State.BLOCKED, at=T0 + timedelta(hours=20))
        with store.session() as s:
            ev = transition(s, site, State.BLOCKED, at=T0 + timedelta(hours=20), note="no permit")
            assert ev.reason == "no permit"
        others = [x for x in PRE_ON_AIR if x != state]
        for other in others:
            with pytest.raises(TransitionNotAllowed, match="returns to the state it interrupted"):
                with store.session() as s:
                    transition(s, site, other, at=T0 + timedelta(hours=21))
        with store.session() as s:
            assert transition(s, site, state, at=T0 + timedelta(hours=22)).verb == "unblock"
            assert s.get(Site, site).state == state.value


@pytest.mark.integration
def test_no_on_air_without_power_connected(store):
    # The table already routes on_air through power_connected; the guard is checked as well,
    # so a history that somehow lacks power_connected still cannot go on air.
    with pytest.raises(TransitionNotAllowed, match="without having been power_connected"):
        check_move("P1", State.POWER_CONNECTED, State.ON_AIR, interrupted=None,
                   was_power_connected=False, replacement_state=None, reason=None)
    add_site(store, "P2")
    walk_to(store, "P2", State.UNDER_CONSTRUCTION)
    with store.session() as s:
        with pytest.raises(TransitionNotAllowed, match="no such move"):
            transition(s, "P2", State.ON_AIR, at=T0 + timedelta(hours=30))
        transition(s, "P2", State.POWER_CONNECTED, at=T0 + timedelta(hours=31))
        transition(s, "P2", State.ON_AIR, at=T0 + timedelta(hours=32))
    with store.session() as s:
        assert s.get(Site, "P2").state == "on_air"


@pytest.mark.integration
def test_replaced_site_waits_for_its_replacement_on_air(store):
    add_site(store, "OLD")
    walk_to(store, "OLD", State.RELOCATING)
    add_site(store, "NEW", replaces="OLD")
    walk_to(store, "NEW", State.POWER_CONNECTED, start=10)
    with pytest.raises(TransitionNotAllowed, match="replacement is power_connected"):
        with store.session() as s:
            transition(s, "OLD", State.DECOMMISSIONED, at=T0 + timedelta(hours=20))
    with store.session() as s:
        transition(s, "NEW", State.ON_AIR, at=T0 + timedelta(hours=30))
    # Dated before the replacement went on air: still refused.
    with pytest.raises(TransitionNotAllowed, match="replacement is power_connected"):
        with store.session() as s:
            transition(s, "OLD", State.DECOMMISSIONED, at=T0 + timedelta(hours=25))
    with store.session() as s:
        transition(s, "OLD", State.DECOMMISSIONED, at=T0 + timedelta(hours=31))
    with store.session() as s:
        assert s.get(Site, "OLD").state == "decommissioned"


@pytest.mark.integration
def test_state_at_travels_in_time_and_history_is_append_only(store):
    add_site(store, "T1")
    walk_to(store, "T1", State.ON_AIR)  # hours 1..5
    with store.session() as s:
        assert state_at(s, "T1", T0 - timedelta(seconds=1)) is None
        assert state_at(s, "T1", T0) == State.PLANNED
        assert state_at(s, "T1", T0 + timedelta(hours=2, minutes=30)) == State.APPROVED
        assert state_at(s, "T1", T0 + timedelta(hours=5)) == State.ON_AIR
        assert state_at(s, "T1", T0 + timedelta(days=400)) == State.ON_AIR
        with pytest.raises(UnknownSite):
            state_at(s, "NOPE", T0)
    with pytest.raises(TransitionNotAllowed, match="append-only"):
        with store.session() as s:
            transition(s, "T1", State.RELOCATING, at=T0 + timedelta(hours=4))
    with pytest.raises(UnknownSite):
        with store.session() as s:
            transition(s, "NOPE", State.APPROVED)
    with pytest.raises(TransitionNotAllowed, match="not a state"):
        with store.session() as s:
            transition(s, "T1", "flying")


# Property: any sequence of attempted moves on a replaced site and its replacement leaves a
# history that replays to the current state, uses only legal moves, and never breaks a guard.
# A step is "next" (the next forward state: reaches deep states often), "back" (the state
# before), or an arbitrary target.
_TARGETS = st.sampled_from(["next"] * 12 + ["back"] + list(State))
_MOVES = st.lists(st.tuples(st.sampled_from(["OLD", "NEW", "NEW"]), _TARGETS), min_size=1,
                  max_size=30)


def _resolve(store, site: str, target):
    with store.session() as s:
        state = State(s.get(Site, site).state)
    if target not in ("next", "back"):
        return target
    if state == State.BLOCKED:
        return State.APPROVED
    i = FORWARD.index(state) + (1 if target == "next" else -1)
    return FORWARD[max(0, min(i, len(FORWARD) - 1))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=_MOVES)
def test_random_move_sequences_keep_history_consistent(moves):
    store = open_store("sqlite://")
    try:
        add_site(store, "OLD", state="on_air")
        add_site(store, "NEW", replaces="OLD")
        for i, (site, step) in enumerate(moves):
            target = _resolve(store, site, step)
            try:
                with store.session() as s:
                    transition(s, site, target, at=T0 + timedelta(hours=i + 1),
                               reason="random" if i % 2 else None)
            except TransitionNotAllowed as exc:
                event(f"refused: {exc.reason.split(' (')[0]}")
        legal = {(t.source.value, t.target.value, t.verb) for t in TRANSITIONS}
        with store.session() as s:
            for site in ("OLD", "NEW"):
                events = history(s, site)
                state = events[0].to_state
                seen = [state]
                for prev, ev in itertools.pairwise(events):
                    assert ev.from_state == prev.to_state
                    assert (ev.from_state, ev.to_state, ev.verb) in legal
                    if ev.verb == "unblock":
                        assert ev.to_state == prev.from_state
                    if ev.to_state == "on_air" and site == "NEW":
                        assert "power_connected" in seen
                    if ev.to_state == "decommissioned" and site == "OLD":
                        event("OLD decommissioned (after NEW went on air)")
                        assert state_at(s, "NEW", ev.at) == State.ON_AIR
                    seen.append(ev.to_state)
                    state = ev.to_state
                assert s.get(Site, site).state == state
    finally:
        store.close()


@pytest.mark.integration
def test_future_moves_are_refused(store):
    from datetime import UTC, datetime

    add_site(store, "F1")
    with pytest.raises(TransitionNotAllowed, match="in the future"):
        with store.session() as s:
            transition(s, "F1", State.SITE_SECURED, at=datetime.now(UTC) + timedelta(hours=1))
    with store.session() as s:
        assert s.get(Site, "F1").state == "planned"


@pytest.mark.integration
def test_a_site_imported_as_blocked_can_be_unblocked(store):
    add_site(store, "IB", state="blocked")
    with store.session() as s:
        with pytest.raises(TransitionNotAllowed, match="returns to a state before on_air"):
            transition(s, "IB", State.ON_AIR, at=T0 + timedelta(hours=1))
        assert transition(s, "IB", State.UNDER_CONSTRUCTION, at=T0 + timedelta(hours=1)).verb \
            == "unblock"


# -- moves of one site at once -------------------------------------------------------------------

RACED_SITES = 25


def _move_in_process(url: str, barrier, results, target: str, reason: str | None) -> None:
    """Move each raced site to ``target``, in step with the other process (a barrier per site)."""
    from twin.errors import StateChanged

    store = open_store(url)
    outcome = []
    try:
        for i in range(RACED_SITES):
            barrier.wait(60)
            try:
                with store.session() as s:
                    transition(s, f"R{i:02d}", target, at=T0 + timedelta(hours=1), actor=target,
                               reason=reason)
                outcome.append("moved")
            except StateChanged:
                outcome.append("changed")
            except TransitionNotAllowed:
                outcome.append("refused")
        results.put(outcome)
    except BaseException as exc:  # reported to the test
        results.put(repr(exc))
    finally:
        store.close()


@pytest.mark.integration
def test_two_moves_of_one_site_at_once_keep_one_chain(store, twin_url):
    """Two processes move the same planned sites to site_secured at the same moment: for each
    site exactly one move is recorded (the other is refused: already there, or the state
    changed underneath), the history is a chain and the current state is its last event's."""
    import multiprocessing as mp

    for i in range(RACED_SITES):
        add_site(store, f"R{i:02d}")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_move_in_process, args=(twin_url, barrier, results, target, reason))
             for target, reason in (("site_secured", None), ("site_secured", None))]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(isinstance(g, list) for g in got), got
    for i in range(RACED_SITES):
        outcomes = sorted(g[i] for g in got)
        assert outcomes.count("moved") == 1, (i, outcomes)
    with store.session() as s:
        for i in range(RACED_SITES):
            site_id = f"R{i:02d}"
            events = history(s, site_id)
            assert len(events) == 2, [(e.from_state, e.to_state) for e in events]
            for before, after in itertools.pairwise(events):
                assert after.from_state == before.to_state
            assert s.get(Site, site_id).state == events[-1].to_state


def test_a_move_checked_against_a_state_that_changed_meanwhile_is_refused(tmp_path, monkeypatch):
    """Another process's move lands between this move's check and its write (SQLite, where
    nothing locks the row): ``StateChanged``, and nothing of this move is written."""
    import twin.lifecycle as lifecycle
    from twin.errors import StateChanged

    store = open_store(f"sqlite:///{tmp_path / 'twin.sqlite'}")
    other = open_store(f"sqlite:///{tmp_path / 'twin.sqlite'}")
    try:
        add_site(store, "C1")
        real_check = lifecycle.check_move
        raced = []

        def check_then_race(*args, **kwargs):
            move = real_check(*args, **kwargs)
            if not raced:
                raced.append(True)
                with other.session() as s:
                    transition(s, "C1", State.BLOCKED, at=T0 + timedelta(hours=1), actor="bob",
                               reason="permit")
                    transition(s, "C1", State.PLANNED, at=T0 + timedelta(hours=2), actor="bob")
            return move

        monkeypatch.setattr(lifecycle, "check_move", check_then_race)
        # Checked against planned, and planned it is again: only the history shows the change.
        with pytest.raises(StateChanged, match="another move of the site was recorded"):
            with store.session() as s:
                transition(s, "C1", State.SITE_SECURED, at=T0 + timedelta(hours=4), actor="alice")
        with store.session() as s:
            events = history(s, "C1")
            assert [(e.actor, e.to_state) for e in events] == [
                ("test", "planned"), ("bob", "blocked"), ("bob", "planned")]
            assert s.get(Site, "C1").state == "planned"
    finally:
        store.close()
        other.close()


def test_a_note_or_reason_with_a_control_character_is_refused(store):
    add_site(store, "N1")
    with pytest.raises(TransitionNotAllowed, match="the note contains the control character U\\+0000"):
        with store.session() as s:
            transition(s, "N1", State.SITE_SECURED, at=T0 + timedelta(hours=1), note="ok\x00")
    with pytest.raises(TransitionNotAllowed, match="the reason contains the control character U\\+001B"):
        with store.session() as s:
            transition(s, "N1", State.BLOCKED, at=T0 + timedelta(hours=1), reason="\x1b[2J")
    with store.session() as s:
        assert s.get(Site, "N1").state == "planned" and len(history(s, "N1")) == 1
