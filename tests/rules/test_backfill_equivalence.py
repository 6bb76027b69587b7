"""A one-pass backfill gives the step-by-step backfill's findings and flags (issue 15).

Random small fleets of interfered cells go through real InfluxDB; the same range is
backfilled into two registries, once step by step (``one_pass=False``: every step asks
InfluxDB its window, as before) and once in one pass (``rules.backfill.RangeData``), and
the per-step outcomes and the full flag tables must be equal.  A live run inside the
range first leaves a flag the backfill must not rewrite (``frozen``), and ``until`` is
sometimes off a bucket boundary (that step takes the step path).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line
from core.settings import load_settings
from rules.engine import Engine
from rules.flag import FlagBook
from rules.interference import INTERFERENCE

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 1, tzinfo=UTC)  # baseline days start here
BASELINE_DAYS = 2


@st.composite
def fleets(draw):
    n_sites = draw(st.integers(1, 3))
    sites = []
    for k in range(n_sites):
        near = draw(st.booleans())
        sites.append({"site_id": f"S{k}", "lat": 31.0 + (0.001 * k if near else 0.5 * k), "lon": 121.0,
                      "cells": draw(st.integers(1, 2))})
    # Each cell: a quiet level, and raised spells (start hour offset into the range, length, level).
    spells = draw(st.lists(st.tuples(st.integers(0, n_sites - 1), st.integers(0, 1),
                                     st.integers(0, 20 * 4), st.integers(1, 12),
                                     st.floats(-112.0, -98.0)), max_size=5))
    quiet = draw(st.floats(-124.0, -114.0))
    jitter = draw(st.integers(0, 2**16))
    per_bucket = draw(st.integers(1, 3))
    return {"sites": sites, "spells": spells, "quiet": quiet, "seed": jitter, "per_bucket": per_bucket,
            "window_h": draw(st.sampled_from([1, 2])), "consecutive": draw(st.integers(2, 3)),
            "interval_s": draw(st.sampled_from([900, 1800])), "hold_off_m": draw(st.sampled_from([0, 30])),
            "until_off_min": draw(st.sampled_from([0, 7])), "live_at_q": draw(st.integers(2, 60)),
            "prb": draw(st.booleans())}


def _lines(fleet) -> list[str]:
    import random

    rnd = random.Random(fleet["seed"])
    range_start = START + timedelta(days=BASELINE_DAYS)
    end = range_start + timedelta(hours=24)
    raised: dict[tuple[str, str], list[tuple[datetime, datetime, float]]] = {}
    for s_idx, c_idx, q0, length, level in fleet["spells"]:
        site = fleet["sites"][s_idx]
        cell = f"{site['site_id']}-C{min(c_idx, site['cells'] - 1)}"
        a = range_start + timedelta(minutes=15 * q0)
        raised.setdefault((site["site_id"], cell), []).append((a, a + timedelta(minutes=15 * length), level))
    out = []
    t = START
    while t < end:
        for site in fleet["sites"]:
            for c in range(site["cells"]):
                cell = f"{site['site_id']}-C{c}"
                for k in range(fleet["per_bucket"]):
                    ts = t + timedelta(seconds=rnd.randrange(0, 900 // fleet["per_bucket"]) +
                                       k * (900 // fleet["per_bucket"]))
                    level = fleet["quiet"] + rnd.uniform(-1.5, 1.5)
                    for a, b, lv in raised.get((site["site_id"], cell), []):
                        if a <= ts < b:
                            level = lv + rnd.uniform(-0.5, 0.5)
                    ns = int(ts.timestamp()) * 10**9
                    out.append(line("interference", {"site_id": site["site_id"], "cell_id": cell,
                                                     "band": "n41"}, {"ul_interference_dbm": level}, ns))
                    if fleet["prb"] and ts >= range_start - timedelta(hours=3):
                        prbs = {f"prb_{i:02d}": level + (4.0 if i < 4 else 0.0) + rnd.uniform(-0.3, 0.3)
                                for i in range(8)}
                        out.append(line("interference_prb", {"site_id": site["site_id"], "cell_id": cell},
                                        prbs, ns))
        t += timedelta(minutes=15)
    return out


def _registry(url: str, fleet) -> None:
    from twin.models import LifecycleEvent, Site
    from twin.store import open_store

    store = open_store(url)
    with store.session() as s:
        for site in fleet["sites"]:
            s.add(Site(site_id=site["site_id"], name=site["site_id"], lat=site["lat"], lon=site["lon"],
                       county="Pudong", kind="macro", supply="direct", region="SH", customer_class="C",
                       state="on_air"))
            s.flush()
            s.add(LifecycleEvent(site_id=site["site_id"], to_state="on_air", verb="import",
                                 at=START - timedelta(days=30), actor="test"))
    store.close()


def _backfill(url: str, influx_url: str, db: str, fleet, *, one_pass: bool):
    from twin.store import open_store

    store = open_store(url)
    try:
        settings_ = load_settings(None, influxdb={"url": influx_url, "database": db}, twin={"url": url},
                                  rules={"hold_off": f"{fleet['hold_off_m']}m", "interference": {
                                      "window": f"{fleet['window_h']}h", "interval": f"{fleet['interval_s']}s",
                                      "consecutive_periods": fleet["consecutive"],
                                      "baseline_days": BASELINE_DAYS, "min_baseline_days": 1}})
        since = START + timedelta(days=BASELINE_DAYS)
        until = since + timedelta(hours=20, minutes=fleet["until_off_min"])
        engine = Engine(store, rules=settings_.rules, influxdb=settings_.influxdb, write_influx=False)
        # A live run inside the range leaves flags the backfill must not rewrite.
        engine.run(since + timedelta(minutes=15 * fleet["live_at_q"]), [INTERFERENCE])
        seen = []
        outcomes = engine.backfill(since, until, [INTERFERENCE], one_pass=one_pass,
                                   progress=lambda done, total, at: seen.append((done, total)))
        assert seen and seen[-1][0] == seen[-1][1] == len(outcomes)
        flags = FlagBook(store).list()
        return ([(o.now, o.status, o.findings, o.opened, o.updated, o.resolved, o.error) for o in outcomes],
                [{k: v for k, v in f.items() if k != "id"} for f in flags], engine)
    finally:
        store.close()


def _check(fleet, influxdb, tmp_path, url_for) -> None:
    db = f"t_{uuid.uuid4().hex[:12]}"
    influxdb.query(f'CREATE DATABASE "{db}"')
    try:
        writer = InfluxWriter(influxdb.url, database=db)
        assert not writer.write("\n".join(_lines(fleet)).encode()).rejected
        writer.close()
        stepped_url, one_pass_url = url_for("stepped"), url_for("one_pass")
        _registry(stepped_url, fleet)
        _registry(one_pass_url, fleet)
        stepped = _backfill(stepped_url, influxdb.url, db, fleet, one_pass=False)
        sliced = _backfill(one_pass_url, influxdb.url, db, fleet, one_pass=True)
        assert sliced[0] == stepped[0]  # every step's findings and flag changes
        assert sliced[1] == stepped[1]  # the full flag table, evidence included
    finally:
        influxdb.query(f'DROP DATABASE "{db}"')


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=fleets())
def test_one_pass_backfill_equals_step_by_step_sqlite(fleet, influxdb, tmp_path):
    tag = uuid.uuid4().hex[:8]
    _check(fleet, influxdb, tmp_path, lambda name: f"sqlite:///{tmp_path / f'{name}-{tag}.sqlite'}")


def test_one_pass_backfill_equals_step_by_step_postgresql(influxdb, tmp_path, postgresql_url):
    """One fixed fleet on PostgreSQL (the stepped run on SQLite): a flagged incident of two
    near sites, a lone cell, a live flag inside the range."""
    fleet = {"sites": [{"site_id": "S0", "lat": 31.0, "lon": 121.0, "cells": 2},
                       {"site_id": "S1", "lat": 31.001, "lon": 121.0, "cells": 1},
                       {"site_id": "S2", "lat": 31.5, "lon": 121.0, "cells": 1}],
             "spells": [(0, 0, 8, 10, -104.0), (1, 0, 9, 8, -108.0), (2, 0, 40, 6, -109.0),
                        (0, 1, 60, 3, -100.0)],
             "quiet": -119.0, "seed": 7, "per_bucket": 2, "window_h": 2, "consecutive": 3,
             "interval_s": 900, "hold_off_m": 30, "until_off_min": 7, "live_at_q": 12, "prb": True}
    urls = {"stepped": f"sqlite:///{tmp_path / 'stepped.sqlite'}", "one_pass": postgresql_url}
    _check(fleet, influxdb, tmp_path, urls.__getitem__)
    from twin.store import open_store

    store = open_store(postgresql_url)
    try:
        flags = FlagBook(store).list()
    finally:
        store.close()
    # the fleet must exercise flags, or the comparison proves little
    assert len(flags) >= 2 and any(f["evidence"].get("incident") for f in flags)


def test_range_data_fetches_once_per_chunk(influxdb, influx_db, tmp_path):
    """The one-pass path asks InfluxDB a few range statements, not several per step."""
    fleet = {"sites": [{"site_id": "S0", "lat": 31.0, "lon": 121.0, "cells": 1}], "spells": [],
             "quiet": -119.0, "seed": 1, "per_bucket": 1, "window_h": 2, "consecutive": 3,
             "interval_s": 900, "hold_off_m": 0, "until_off_min": 0, "live_at_q": 2, "prb": False}
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(_lines(fleet)).encode()).rejected
    writer.close()
    url = f"sqlite:///{tmp_path / 'twin.sqlite'}"
    _registry(url, fleet)
    from rules import backfill as backfill_module

    made = []
    original = backfill_module.RangeData.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    backfill_module.RangeData.__init__ = keep
    try:
        outcomes, _, _ = _backfill(url, influxdb.url, influx_db, fleet, one_pass=True)
    finally:
        backfill_module.RangeData.__init__ = original
    (data,) = made
    assert len(outcomes) == 80 and data.sliced_steps == 80 and data.stepped == 0
    # 22 h of 15-minute buckets (the first window and the range) in 6-hour chunks, and the
    # baseline's 3 days, each asked once
    assert data.fetches <= 4 + 3


def test_csv_frame_equals_the_json_frame(influxdb, influx_db):
    """The range chunks are asked as CSV: the same frame as the JSON path, and a failed
    statement (an empty CSV answer) or a tag value that cannot be split back still goes the
    JSON way (an error stays an error)."""
    from connectors.influx import InfluxReader
    from rules.backfill import _HOURLY, _RECENT, csv_frame
    from rules.data import WindowData
    from rules.errors import RuleDataError

    t0 = int(START.timestamp())
    lines = [line("interference", {"site_id": f"S{i % 3}", "cell_id": f"C{i % 5}", "band": "n78"},
                  {"ul_interference_dbm": -100.0 - (i % 7) * 1.37}, (t0 + 60 * i) * 10**9) for i in range(600)]
    lines.append(line("interference", {"site_id": "S,odd", "cell_id": "C=odd", "band": "n78"},
                      {"ul_interference_dbm": -99.5}, t0 * 10**9))
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()
    data = WindowData(InfluxReader(influxdb.url, influx_db))
    plain = f"time >= {t0}s AND time < {t0 + 600 * 60}s AND \"site_id\" =~ /^S[0-9]$/"
    for template in (_RECENT, _HOURLY):
        for where in (plain, f"time >= {t0}s AND time < {t0 + 600 * 60}s", "time < 0"):
            q = template.format(where=where)
            pd.testing.assert_frame_equal(csv_frame(data, q), data._frame(q))
    assert len(csv_frame(data, _RECENT.format(where=plain))) == 40 * 15  # 40 buckets of 15 series
    with pytest.raises(RuleDataError, match="undefined function"):
        csv_frame(data, 'SELECT meen("x") FROM "interference"')
