"""The reservations rule backfilled in one pass gives the step-by-step flags (issue 15).

The one-pass ``power_peak`` is every site's peak of 15-minute means over the window, from
the range's buckets read once (``rules.backfill.RangeData._power_peak``); the step path
asks InfluxDB each step's peaks for the sites cheap bounds cannot rule out.  Random small
fleets - reserved sites loaded at random levels, spells over or far under the reservation,
a site with two meters, one without a reservation - go through real InfluxDB; the same
range is backfilled into two registries, step by step and in one pass, and every step's
outcome and the flag tables must be equal.  A live run inside the range leaves flags the
backfill must not rewrite, and ``until`` is sometimes off the 15-minute grid.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.lineprotocol import line
from rules.reservations import RESERVATIONS
from tests.rules.backfill_support import add_site, one_pass_equals_stepped

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 1, 5, 30, tzinfo=UTC)  # off midnight: windows cut at midnights
WINDOW = timedelta(days=2)
RANGE = timedelta(hours=14)


@st.composite
def fleets(draw):
    n_sites = draw(st.integers(1, 4))
    sites = [{"site_id": f"S{k}", "reserved_kw": draw(st.sampled_from([None, 10.0, 20.0])),
              "load_kw": draw(st.floats(2.0, 14.0)), "meters": draw(st.sampled_from([1, 1, 2])),
              "state": draw(st.sampled_from(["on_air", "on_air", "power_connected"]))} for k in range(n_sites)]
    spells = draw(st.lists(st.tuples(st.integers(0, n_sites - 1),
                                     st.integers(0, (WINDOW + RANGE) // timedelta(hours=1)),
                                     st.integers(1, 10), st.floats(0.1, 2.5)), max_size=5))
    return {"sites": sites, "spells": spells, "seed": draw(st.integers(0, 2**16)),
            "every_min": draw(st.sampled_from([5, 10, 60])), "hold_off_m": draw(st.sampled_from([0, 90])),
            "until_off_min": draw(st.sampled_from([0, 20])), "live_at_h": draw(st.integers(1, 12))}


def _lines(fleet) -> list[str]:
    rnd = random.Random(fleet["seed"])
    out = []
    end = START + WINDOW + RANGE + timedelta(hours=1)
    for k, site in enumerate(fleet["sites"]):
        spells = [(START + timedelta(hours=h), START + timedelta(hours=h + n), f)
                  for s, h, n, f in fleet["spells"] if s == k]
        for m in range(site["meters"]):
            t = START + timedelta(seconds=rnd.randrange(0, 60))
            while t < end:
                factor = next((f for a, b, f in spells if a <= t < b), 1.0)
                kw = site["load_kw"] / site["meters"] * factor * rnd.uniform(0.9, 1.1)
                out.append(line("power", {"site_id": site["site_id"], "meter_id": f"M{k}-{m}"},
                                {"power_kw": kw, "energy_kwh": 100.0}, int(t.timestamp()) * 10**9))
                t += timedelta(minutes=fleet["every_min"], seconds=rnd.randrange(-30, 30))
    return out


def _registry(url: str, fleet) -> None:
    from twin.models import Reservation
    from twin.store import open_store

    store = open_store(url)
    with store.session() as s:
        for k, site in enumerate(fleet["sites"]):
            add_site(s, k, site["site_id"], site["state"], START - timedelta(days=90), verb="set")
            if site["reserved_kw"] is not None:
                s.add(Reservation(site_id=site["site_id"], declared_kw=site["reserved_kw"],
                                  reserved_kw=site["reserved_kw"], feeder="F1", substation="SS1", status="active"))
    store.close()


def _check(fleet, influxdb, tmp_path) -> list[dict]:
    since = START + WINDOW
    return one_pass_equals_stepped(
        influxdb, tmp_path, lines=_lines(fleet), registry=lambda url: _registry(url, fleet),
        rules=[RESERVATIONS],
        rule_settings={"hold_off": f"{fleet['hold_off_m']}m",
                       "reservations": {"window": "2d", "underused_after_days": 30}},
        live_at=since + timedelta(hours=fleet["live_at_h"]),
        since=since, until=since + RANGE + timedelta(minutes=fleet["until_off_min"]))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=fleets())
def test_reservations_one_pass_equal_step_by_step(fleet, influxdb, tmp_path):
    _check(fleet, influxdb, tmp_path)


def test_reservations_one_pass_with_every_finding(influxdb, tmp_path):
    """A fixed fleet with an exceeded, an underused, a missing reservation and a two-meter
    site over its reservation only when its meters' means are summed; an honest site
    loaded within its reservation must stay unflagged."""
    fleet = {"sites": [{"site_id": "S0", "reserved_kw": 10.0, "load_kw": 8.0, "meters": 1, "state": "on_air"},
                       {"site_id": "S1", "reserved_kw": 20.0, "load_kw": 3.0, "meters": 1, "state": "on_air"},
                       {"site_id": "S2", "reserved_kw": None, "load_kw": 5.0, "meters": 1, "state": "on_air"},
                       {"site_id": "S3", "reserved_kw": 10.0, "load_kw": 9.0, "meters": 2, "state": "on_air"},
                       {"site_id": "S4", "reserved_kw": 20.0, "load_kw": 12.0, "meters": 1, "state": "on_air"}],
             "spells": [(0, 50, 3, 1.6), (3, 56, 4, 1.3), (1, 20, 2, 1.5), (0, 21, 1, 1.45)],
             "seed": 11, "every_min": 10, "hold_off_m": 90,
             "until_off_min": 20, "live_at_h": 3}
    flags = _check(fleet, influxdb, tmp_path)
    kinds = {(f["kind"], f["site_id"]) for f in flags}
    assert {("reservation_exceeded", "S0"), ("reservation_underused", "S1"), ("reservation_missing", "S2"),
            ("reservation_exceeded", "S3")} <= kinds
    assert not [f for f in flags if f["site_id"] == "S4"]
