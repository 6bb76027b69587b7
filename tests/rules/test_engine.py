"""The engine: a failing rule is an error outcome and the others still run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd

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
    engine = Engine(settings, sqlite_store, data=FixedData(), write_influx=False, publish_mqtt=False)
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
    engine = Engine(settings, sqlite_store, data=FixedData(), write_influx=False, publish_mqtt=False)
    (o,) = engine.run(NOW, [SITE_OFFLINE], facts=Facts(sites=sites({"site_id": "S1"})))
    assert o.status == "error" and "rules.site_offline.offline_after" in o.error
