"""The tower rules backfilled in one pass give the step-by-step flags (issue 15).

``door_open``, ``cabinet_overtemp``, ``tilt_exceeded``, ``battery_llvd_risk`` and
``mains_failure`` screen each step from the range's 5-minute buckets
(``rules.backfill.RangeData._screened``): a step whose screen passes no site gets the empty
frame, any other the step path's frames.  Random small fleets of tower reports with door,
heat, tilt, on-battery and silent spells go through real InfluxDB; the same range is
backfilled into two registries, step by step and in one pass, and every step's outcome
and the full flag tables must be equal.  A live run inside the range leaves flags the
backfill must not rewrite, and ``until`` is sometimes off the 5-minute grid.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.lineprotocol import line
from rules.environment import BATTERY_LLVD_RISK, CABINET_OVERTEMP, DOOR_OPEN, TILT_EXCEEDED
from rules.operations import MAINS_FAILURE
from tests.rules.backfill_support import add_site, one_pass_equals_stepped

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 1, tzinfo=UTC)
LEAD = timedelta(hours=4)  # reports before the range: the first steps' windows
RANGE = timedelta(hours=5)
RULES = [MAINS_FAILURE, DOOR_OPEN, CABINET_OVERTEMP, TILT_EXCEEDED, BATTERY_LLVD_RISK]
KINDS = ("door", "heat", "tilt", "battery", "silent")


@st.composite
def fleets(draw):
    n_sites = draw(st.integers(1, 3))
    spells = draw(st.lists(st.tuples(st.integers(0, n_sites - 1), st.sampled_from(KINDS),
                                     st.integers(0, (LEAD + RANGE) // timedelta(minutes=5) - 1),
                                     st.integers(1, 30), st.booleans()), max_size=6))
    return {"sites": [f"S{k}" for k in range(n_sites)], "spells": spells,
            "period_min": draw(st.sampled_from([1, 2, 5])), "seed": draw(st.integers(0, 2**16)),
            "hold_off_m": draw(st.sampled_from([0, 15])), "until_off_min": draw(st.sampled_from([0, 3])),
            "live_at_min": draw(st.integers(10, 280))}


def _lines(fleet) -> list[str]:
    rnd = random.Random(fleet["seed"])
    spells: dict[str, list[tuple[str, datetime, datetime, bool]]] = {}
    for s_idx, kind, q0, length, strong in fleet["spells"]:
        a = START + timedelta(minutes=5 * q0)
        spells.setdefault(fleet["sites"][s_idx], []).append((kind, a, a + timedelta(minutes=5 * length), strong))
    out = []
    end = START + LEAD + RANGE + timedelta(minutes=10)
    for site in fleet["sites"]:
        t = START + timedelta(seconds=rnd.randrange(0, 60))
        soc = 95.0
        while t < end:
            now = {kind: strong for kind, a, b, strong in spells.get(site, []) if a <= t < b}
            if "silent" not in now:
                battery = "battery" in now
                soc = max(soc - (1.5 if battery else -2.0), 5.0) if battery else min(soc + 2.0, 95.0)
                fields = {
                    "door_open": "door" in now,
                    "cabinet_temp_c": (57.0 if now.get("heat") else 48.0) + rnd.uniform(-1, 1) if "heat" in now
                    else 30.0 + rnd.uniform(-2, 2),
                    "tilt_deg": (6.0 if now.get("tilt") else 3.5) + rnd.uniform(-0.2, 0.2) if "tilt" in now
                    else 0.5 + rnd.uniform(-0.2, 0.2),
                    "on_battery": battery, "mains_ok": not battery,
                    "battery_soc_pct": round(soc, 1),
                    "battery_voltage_v": (44.3 if now.get("battery") else 46.5) + rnd.uniform(-0.3, 0.3)
                    if battery else 53.5 + rnd.uniform(-0.2, 0.2),
                }
                out.append(line("tower", {"site_id": site}, fields, int(t.timestamp()) * 10**9))
            t += timedelta(minutes=fleet["period_min"], seconds=rnd.randrange(-10, 10))
    return out


def _registry(url: str, fleet) -> None:
    from twin.store import open_store

    store = open_store(url)
    with store.session() as s:
        for k, site in enumerate(fleet["sites"]):
            add_site(s, k, site, "on_air", START - timedelta(days=30))
    store.close()


def _check(fleet, influxdb, tmp_path) -> list[dict]:
    since = START + LEAD
    return one_pass_equals_stepped(
        influxdb, tmp_path, lines=_lines(fleet), registry=lambda url: _registry(url, fleet), rules=RULES,
        rule_settings={"hold_off": f"{fleet['hold_off_m']}m"},
        live_at=START + timedelta(minutes=fleet["live_at_min"]),
        since=since, until=since + RANGE + timedelta(minutes=fleet["until_off_min"]))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=fleets())
def test_tower_rules_one_pass_equal_step_by_step(fleet, influxdb, tmp_path):
    flags = _check(fleet, influxdb, tmp_path)
    if not [s for s in fleet["spells"] if s[1] != "silent"]:
        assert flags == []  # honest towers raise nothing, either way


def test_tower_rules_one_pass_with_every_condition(influxdb, tmp_path):
    """A fixed fleet where every tower rule flags (so the comparison covers their findings),
    beside an honest site that must stay unflagged."""
    fleet = {"sites": ["S0", "S1", "S2"],
             "spells": [(0, "door", 50, 4, False), (0, "heat", 55, 8, False), (1, "tilt", 60, 6, False),
                        (1, "battery", 62, 20, True), (0, "silent", 80, 6, False), (1, "heat", 90, 5, True),
                        (0, "battery", 95, 12, False)],
             "period_min": 1, "seed": 3, "hold_off_m": 15, "until_off_min": 3, "live_at_min": 40}
    flags = _check(fleet, influxdb, tmp_path)
    kinds = {f["kind"] for f in flags}
    assert {"door_open", "cabinet_overtemp", "tilt_exceeded", "mains_failure", "battery_llvd_risk"} <= kinds
    assert not [f for f in flags if f["site_id"] == "S2"]
