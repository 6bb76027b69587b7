"""The engine: a failing rule is an error outcome and the others still run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
import pytest

from rules.engine import Engine, summarise
from rules.operations import SITE_OFFLINE
from rules.rule import Facts
from tests.rules.helpers import sites

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class FixedData:
    """Frames handed to the rules as if fetched (the rules' I/O seam)."""

    def fetch(self, rule, facts, now, t):
        if rule.name == "broken_query":
            raise RuntimeError("InfluxDB said no")
        return {"last_seen": pd.DataFrame({"site_id": ["S1"], "time": [pd.Timestamp("2026-11-20T10:00:00Z")]})}


def boom(frames, facts, now, t):
    raise ZeroDivisionError("bug in a rule")


def test_a_failing_rule_does_not_stop_the_others(sqlite_store, settings):
    engine = Engine(sqlite_store, rules=settings.rules, data=FixedData(), write_influx=False)
    rules = [replace(SITE_OFFLINE, name="buggy", evaluate=boom), replace(SITE_OFFLINE, name="broken_query"),
             SITE_OFFLINE]
    facts = Facts(sites=sites({"site_id": "S1"}))
    outcomes = engine.run(NOW, rules, facts=facts)
    assert [(o.rule, o.status) for o in outcomes] == [("buggy", "error"), ("broken_query", "error"),
                                                      ("site_offline", "ok")]
    assert "bug in a rule" in outcomes[0].error and "said no" in outcomes[1].error
    assert outcomes[2].opened == 1
    assert [f["kind"] for f in engine.flags.list()] == ["site_offline"]
    summary = {r["rule"]: r for r in summarise(outcomes)}
    assert summary["buggy"]["errors"] == 1 and summary["site_offline"]["findings"] == 1


def test_bad_thresholds_are_an_error_outcome(sqlite_store, tmp_path):
    from sitetwin.config import load_settings

    settings = load_settings(None, services={"state_dir": str(tmp_path)},
                             rules={"site_offline": {"offline_after": "soon"}})
    engine = Engine(sqlite_store, rules=settings.rules, data=FixedData(), write_influx=False)
    (o,) = engine.run(NOW, [SITE_OFFLINE], facts=Facts(sites=sites({"site_id": "S1"})))
    assert o.status == "error" and "rules.site_offline.offline_after" in o.error


def test_backfill_steps_each_rule_at_its_interval_and_reports_a_bad_one(sqlite_store, tmp_path):
    from datetime import timedelta

    from rules.operations import MAINS_FAILURE
    from sitetwin.config import load_settings
    from twin.models import Site

    with sqlite_store.session() as s:
        s.add(Site(site_id="S1", name="S1", lat=31.0, lon=121.0, county="c", kind="macro", supply="direct",
                   region="SH", customer_class="C", state="on_air"))
    settings = load_settings(None, services={"state_dir": str(tmp_path)},
                             rules={"site_offline": {"interval": "10m"}, "mains_failure": {"window": "later"}})
    engine = Engine(sqlite_store, rules=settings.rules, data=FixedData(), write_influx=False)
    outcomes = engine.backfill(NOW - timedelta(hours=1), NOW, [SITE_OFFLINE, MAINS_FAILURE])
    summary = {r["rule"]: r for r in summarise(outcomes)}
    assert summary["site_offline"]["runs"] == 6 and summary["site_offline"]["opened"] == 1
    assert summary["mains_failure"]["runs"] == 1 and summary["mains_failure"]["errors"] == 1


def test_the_engine_is_given_sections_and_needs_influxdb_only_to_read_or_write(sqlite_store, settings):
    with pytest.raises(ValueError, match=r"\[influxdb\]"):
        Engine(sqlite_store, rules=settings.rules)  # no data source and nowhere to write flags
    with pytest.raises(ValueError, match=r"\[influxdb\]"):
        Engine(sqlite_store, rules=settings.rules, data=FixedData())  # flags written by default
    engine = Engine(sqlite_store, rules=settings.rules, data=FixedData(), write_influx=False)
    assert (engine.influxdb, engine.broker) == (None, None)  # reads nothing, publishes nothing
    assert engine.concurrency == settings.rules.query_concurrency
