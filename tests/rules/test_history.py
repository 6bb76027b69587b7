"""Backfill sees each site's lifecycle state as it was at the step's time, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rules.data import load_facts, load_site_history
from rules.engine import Engine, summarise
from rules.operations import SITE_OFFLINE
from tests.twin.conftest import add_site
from twin.lifecycle import UNDATED_IMPORT_NOTE, transition
from twin.models import LifecycleEvent, Site
from twin.store import open_store

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FORWARD = ["site_secured", "approved", "under_construction", "power_connected", "on_air"]


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def store(twin_url):
    s = open_store(twin_url)
    yield s
    s.close()


def build(store) -> None:
    """A: on air at +5 h, relocating at +8 h, decommissioned at +9 h.  U: imported on air without a
    date at +10 h, relocating from +12 h.  N: on air, no events at all.  L: registered at +20 h."""
    add_site(store, "A", at=h(0))
    for i, state in enumerate(FORWARD, start=1):
        with store.session() as s:
            transition(s, "A", state, at=h(i), actor="test")
    with store.session() as s:
        transition(s, "A", "relocating", at=h(8), actor="test")
    with store.session() as s:
        transition(s, "A", "decommissioned", at=h(9), actor="test")
    add_site(store, "U", state="on_air", at=h(10))
    with store.session() as s:
        s.query(LifecycleEvent).filter_by(site_id="U").update({"verb": "import", "note": UNDATED_IMPORT_NOTE})
    with store.session() as s:
        transition(s, "U", "relocating", at=h(12), actor="test")
    with store.session() as s:
        s.add(Site(site_id="N", name="N", lat=30.6, lon=104.0, county="Xinjin", kind="macro", supply="direct",
                   region="Sichuan", customer_class="industrial", state="on_air"))
    add_site(store, "L", at=h(20))


def states(facts) -> dict[str, tuple]:
    def known(v):
        return None if pd.isna(v) else v

    return {r.site_id: (r.state, known(r.state_since), known(r.on_air_since)) for r in facts.sites.itertuples()}


def test_facts_at_a_past_time_give_the_states_then(store):
    build(store)
    facts = load_facts(store)
    history = load_site_history(store)
    ts = pd.Timestamp

    at = states(history.facts_at(facts, h(6)))
    assert at["A"] == ("on_air", ts(h(5)), ts(h(5)))
    assert at["U"] == ("on_air", None, None)  # imported without a date: assumed to have held
    assert at["N"] == ("on_air", None, None)  # no history at all: today's state
    assert pd.isna(at["L"][0])  # its history starts later: no state for any rule to act on

    at = states(history.facts_at(facts, h(9)))  # an event exactly at the step counts
    assert at["A"] == ("decommissioned", ts(h(9)), ts(h(5)))

    at = states(history.facts_at(facts, h(11)))
    assert at["U"] == ("on_air", None, None)  # its undated import is not a date it went on air

    # Far enough ahead, the history gives exactly what the registry says today.
    now = load_facts(store).sites.set_index("site_id")
    later = history.facts_at(facts, h(1000)).sites.set_index("site_id")
    assert later["state"].equals(now["state"])
    for col in ("state_since", "on_air_since"):  # the same times (pandas may pick another unit)
        assert later[col].astype("datetime64[ns, UTC]").equals(now[col].astype("datetime64[ns, UTC]")), col
    # every other column is untouched
    assert later.drop(columns=["state", "state_since", "on_air_since"]).equals(
        now.drop(columns=["state", "state_since", "on_air_since"]))


class Silent:
    """A's last reading is at +5 h 30 min; nothing after."""

    def fetch(self, rule, facts, now, t):
        return {"last_seen": pd.DataFrame({"site_id": ["A"], "time": [pd.Timestamp(h(5.5))]})}


def test_backfill_flags_a_site_offline_while_it_was_on_air_and_not_after(store, settings):
    build(store)
    engine = Engine(store, rules=settings.rules, data=Silent(), write_influx=False)
    outcomes = engine.backfill(h(5), h(7.5), [SITE_OFFLINE])
    summary = {r["rule"]: r for r in summarise(outcomes)}
    assert summary["site_offline"]["errors"] == 0
    flags = [f for f in engine.flags.list() if f["site_id"] == "A"]
    # A was on air and silent from +5 h 45 min: flagged then, although it is decommissioned today.
    assert len(flags) == 1 and flags[0]["status"] == "open"
    # No telemetry either from N (no history: on air as today) or U (imported on air without a
    # date, so assumed on air before); L was not in the registry yet.
    assert {f["site_id"] for f in engine.flags.list()} == {"A", "N", "U"}

    # Past the decommissioning (+9 h) and the hold-off, A's condition is gone and its flag resolves.
    engine.backfill(h(7.5), h(11), [SITE_OFFLINE])
    (flag,) = [f for f in engine.flags.list() if f["site_id"] == "A"]
    assert flag["status"] == "resolved"


# -- the vectorised history against a plain reading of the events --------------------------------

_STATES = ["planned", "site_secured", "approved", "blocked", "on_air", "relocating"]


def _reference(events: pd.DataFrame, sites: pd.DataFrame, at: pd.Timestamp) -> dict[str, tuple]:
    out = {}
    for sid, today in zip(sites["site_id"], sites["state"], strict=True):
        mine = events[events["site_id"] == sid]
        if mine.empty:
            out[sid] = (today, None, None)
            continue
        before = mine[mine["at"] <= at]
        if before.empty:
            first = mine.iloc[0]
            out[sid] = (None if first["dated"] else first["to_state"], None, None)
            continue
        state = before.iloc[-1]["to_state"]
        dated = before[before["dated"]]
        into = dated[dated["to_state"] == state]["at"]
        on_air = dated[dated["to_state"] == "on_air"]["at"]
        out[sid] = (state, into.max() if len(into) else None, on_air.max() if len(on_air) else None)
    return out


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.sampled_from(_STATES), st.booleans()),
                max_size=40),
       st.integers(-1, 42))
@hsettings(max_examples=200, deadline=None)
def test_states_at_any_time_match_a_plain_reading_of_the_events(raw, hour):
    from rules.data import SiteHistory
    from rules.rule import Facts

    rows = sorted(((f"S{s}", T0 + timedelta(hours=t), state, dated) for s, t, state, dated in raw),
                  key=lambda r: r[1])
    events = pd.DataFrame(rows, columns=["site_id", "at", "to_state", "dated"]).astype(
        {"at": "datetime64[ns, UTC]", "dated": bool})
    sites = pd.DataFrame({"site_id": [f"S{i}" for i in range(7)], "state": "on_air",
                          "state_since": pd.NaT, "on_air_since": pd.NaT})
    at = pd.Timestamp(h(hour))
    got = states(SiteHistory(events).facts_at(Facts(sites=sites), at))
    want = _reference(events, sites, at)
    assert {k: (None if pd.isna(v[0]) else v[0], *v[1:]) for k, v in got.items()} == want
