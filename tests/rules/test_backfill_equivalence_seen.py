"""``site_offline`` and ``lifecycle`` backfilled in one pass give the step-by-step flags (issue 15).

Both read ``last_seen`` (the latest tower or power reading per site in the window), which a
one-pass backfill keeps as a running maximum over raw chunks read once
(``rules.backfill._LastSeen``).  Random small fleets - sites on air, relocating, one
replacing another, one stalled in a state since a dated event - report power and tower
readings at random times with silent spells; the same range is backfilled into two
registries, step by step and in one pass, and every step's outcome and the flag tables
must be equal.  A live run inside the range leaves flags the backfill must not rewrite,
and ``until`` is sometimes off any grid.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.lineprotocol import line
from rules.lifecycle import LIFECYCLE
from rules.operations import SITE_OFFLINE
from tests.rules.backfill_support import add_site, one_pass_equals_stepped

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 1, tzinfo=UTC)
LEAD = timedelta(hours=26)  # readings before the range: lifecycle's 24-hour window
RANGE = timedelta(hours=6)
RULES = [LIFECYCLE, SITE_OFFLINE]
STATES = ("on_air", "on_air", "relocating", "power_connected", "decommissioned")


@st.composite
def fleets(draw):
    n_sites = draw(st.integers(1, 4))
    sites = [{"site_id": f"S{k}", "state": draw(st.sampled_from(STATES)),
              "power_min": draw(st.sampled_from([0, 10, 60])), "tower_min": draw(st.sampled_from([0, 5])),
              "since_days": draw(st.sampled_from([None, 3, 20]))} for k in range(n_sites)]
    if n_sites > 1 and draw(st.booleans()):
        sites[-1]["replaces"] = sites[0]["site_id"]
    tens = (LEAD + RANGE) // timedelta(minutes=10)
    silent = draw(st.lists(st.tuples(st.integers(0, n_sites - 1), st.integers(0, tens), st.integers(1, 30)),
                           max_size=5))
    return {"sites": sites, "silent": silent, "seed": draw(st.integers(0, 2**16)),
            "hold_off_m": draw(st.sampled_from([0, 20])), "until_off_s": draw(st.sampled_from([0, 137])),
            "interval_s": draw(st.sampled_from([300, 420])), "live_at_min": draw(st.integers(10, 300))}


def _lines(fleet) -> list[str]:
    rnd = random.Random(fleet["seed"])
    quiet = {}
    for s_idx, q0, length in fleet["silent"]:
        a = START + timedelta(minutes=10 * q0)
        quiet.setdefault(fleet["sites"][s_idx]["site_id"], []).append((a, a + timedelta(minutes=10 * length)))
    out = []
    end = START + LEAD + RANGE + timedelta(minutes=10)
    for site in fleet["sites"]:
        sid = site["site_id"]
        for measurement, minutes in (("power", site["power_min"]), ("tower", site["tower_min"])):
            if not minutes:
                continue
            t = START + timedelta(seconds=rnd.randrange(0, 60 * minutes))
            energy = 1000.0
            while t < end:
                if not any(a <= t < b for a, b in quiet.get(sid, [])):
                    energy += 1.0
                    fields = ({"energy_kwh": energy, "power_kw": 3.0} if measurement == "power"
                              else {"mains_ok": True, "on_battery": False, "battery_soc_pct": 99.0})
                    tags = {"site_id": sid, "meter_id": f"M-{sid}"} if measurement == "power" else {"site_id": sid}
                    ns = int(t.timestamp()) * 10**9 + rnd.randrange(0, 1000) * 10**6
                    out.append(line(measurement, tags, fields, ns))
                t += timedelta(minutes=minutes, seconds=rnd.randrange(-20, 20))
    return out


def _registry(url: str, fleet) -> None:
    from twin.store import open_store

    store = open_store(url)
    with store.session() as s:
        for k, site in enumerate(fleet["sites"]):
            dated = site["since_days"] is not None
            add_site(s, k, site["site_id"], site["state"], START + LEAD - timedelta(days=site["since_days"] or 60),
                     verb="set" if dated else "import", replaces=site.get("replaces"))
    store.close()


def _check(fleet, influxdb, tmp_path) -> list[dict]:
    since = START + LEAD
    return one_pass_equals_stepped(
        influxdb, tmp_path, lines=_lines(fleet), registry=lambda url: _registry(url, fleet), rules=RULES,
        rule_settings={"hold_off": f"{fleet['hold_off_m']}m",
                       "site_offline": {"interval": f"{fleet['interval_s']}s"}},
        live_at=since + timedelta(minutes=fleet["live_at_min"]),
        since=since, until=since + RANGE + timedelta(seconds=fleet["until_off_s"]))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=fleets())
def test_offline_and_lifecycle_one_pass_equal_step_by_step(fleet, influxdb, tmp_path):
    _check(fleet, influxdb, tmp_path)


def test_offline_and_lifecycle_one_pass_with_every_condition(influxdb, tmp_path):
    """A fixed fleet where both rules flag: a site silent for an hour, one never heard, an
    old site silent while its replacement is not on air, one stalled past its limit; and an
    honest sites reporting power only or tower only, which must stay unflagged."""
    fleet = {"sites": [{"site_id": "S0", "state": "on_air", "power_min": 10, "tower_min": 5, "since_days": 3},
                       {"site_id": "S1", "state": "on_air", "power_min": 0, "tower_min": 0, "since_days": None},
                       {"site_id": "S2", "state": "power_connected", "power_min": 10, "tower_min": 0,
                        "since_days": 20, "replaces": "S0"},
                       {"site_id": "S3", "state": "on_air", "power_min": 10, "tower_min": 0, "since_days": 3},
                       {"site_id": "S4", "state": "on_air", "power_min": 0, "tower_min": 5, "since_days": 3}],
             "silent": [(0, 160, 9)], "seed": 5, "hold_off_m": 20, "until_off_s": 137, "interval_s": 300,
             "live_at_min": 30}
    flags = _check(fleet, influxdb, tmp_path)
    kinds = {(f["kind"], f["site_id"]) for f in flags}
    assert {("site_offline", "S0"), ("site_offline", "S1"), ("relocation_violation", "S0"),
            ("lifecycle_stalled", "S2")} <= kinds
    assert not [f for f in flags if f["site_id"] in ("S3", "S4")]
