"""`sitetwin demo` end to end on a small city: what `make demo` promises, kept true in CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_finds_every_planted_anomaly(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "sitetwin", "demo", "--dir", str(tmp_path / "demo"), "--sites", "40",
         "--live", "5s", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # --json: stdout is the summary and nothing else
    ingest = summary["ingest"]
    assert ingest["in_influxdb"] == ingest["readings"]
    assert summary["planted_anomalies"] and all(summary["planted_anomalies"].values()), \
        summary["planted_anomalies"]
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
