"""`sitetwin demo` end to end on a small city: what `make demo` promises, kept true in CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, full_or_short

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end_and_finds_every_planted_anomaly(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "sitetwin", "demo", "--dir", str(tmp_path / "demo"), "--sites",
         str(int(full_or_short(40, 20))), "--live", "5s", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # --json: stdout is the summary and nothing else
    ingest = summary["ingest"]
    assert ingest["in_influxdb"] == ingest["readings"]
    assert summary["planted_anomalies"] and all(summary["planted_anomalies"].values()), \
        summary["planted_anomalies"]
    assert summary["unexpected_flags"] == []  # nothing else flagged, of any kind (fair bills)
    assert summary["online_sites"] > 0
    assert {Path(p).name for p in summary["reports"]} >= {"reservations.csv"}
    assert any(Path(p).name.startswith("conversions-") for p in summary["reports"])
    assert any(Path(p).name.endswith("-H1.xlsx") for p in summary["reports"])
    assert any(Path(p).name.startswith("overcharging-") for p in summary["reports"])
    dashboards = Path(summary["dashboards"])
    assert len(list((dashboards / "dashboards").glob("*.json"))) == 5
    # the services were stopped afterwards
    status = subprocess.run([sys.executable, "-m", "sitetwin", "--config",
                             str(tmp_path / "demo" / "sitetwin.toml"), "services", "status"],
                            cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 1 and "stopped" in status.stdout


def test_the_demo_counts_every_flag_nothing_planted_accounts_for():
    from sitetwin.commands.demo import _planted_found, _unexpected_flags

    expected = {"overcharging": {"kind": "overcharging", "site_ids": ["S1"], "bill_ids": ["B1-X"]},
                "site_offline": {"kind": "site_offline", "site_ids": ["S2"]},
                "meter_swap": {"kind": "none", "site_ids": ["S3"]}}
    flags = [{"id": 1, "kind": "overcharging", "site_id": "S1", "bill_id": "B1-X"},
             {"id": 2, "kind": "overcharging", "site_id": "S1", "bill_id": "B1"},   # a fair bill
             {"id": 3, "kind": "site_offline", "site_id": "S2", "bill_id": None},
             {"id": 4, "kind": "mains_failure", "site_id": "S2", "bill_id": None},  # another kind
             {"id": 5, "kind": "overbilling", "site_id": "S3", "bill_id": "B3"}]
    assert [f["id"] for f in _unexpected_flags(expected, flags)] == [2, 4, 5]
    assert _planted_found(expected, flags) == {"overcharging": True, "site_offline": True}
