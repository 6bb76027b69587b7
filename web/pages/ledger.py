"""The grid engineer's reservation ledger: substations -> feeders -> sites, reserved, declared,
peak and headroom, from the same ``rules.report.reservations_table`` as the CLI's report.

Peaks come from InfluxDB (``WindowData.power_peak``, the reservations rule's window);
they are kept for a minute, since a 7-day peak does not move between two page loads
and the query costs seconds at 10 000 sites.  If InfluxDB cannot answer, the ledger
still shows reservations, with the peaks left empty and a note saying why.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, Request

from rules.data import load_facts
from rules.report import reservations_table
from web.api.common import now
from web.auth import require
from web.render import render

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

PEAK_CACHE_S = 60.0


class InfluxPeaks:
    """``(facts, until) -> (peaks frame | None, window_s, error | None)`` from InfluxDB."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._cached: tuple[float, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, facts: Any, until: datetime
                 ) -> tuple[pd.DataFrame | None, float, str | None]:
        from connectors.influx import InfluxReader
        from rules.data import WindowData
        from rules.engine import thresholds_for
        from rules.registry import get_rule

        t = thresholds_for(self.settings, get_rule("reservations"))
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < PEAK_CACHE_S:
                return self._cached[1], t.window, None
            try:
                reader = InfluxReader.from_settings(self.settings.influxdb)
                try:
                    peaks = WindowData(reader).power_peak(facts, until, t, {})
                finally:
                    reader.close()
            except Exception as exc:  # noqa: BLE001  # the ledger still shows reservations
                log.warning("peaks unavailable: %s", exc)
                return None, t.window, f"{type(exc).__name__}"
            self._cached = (time.monotonic(), peaks)
            return peaks, t.window, None


def ledger_tree(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The report's rows as substations, each with its feeders, each with its sites."""
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    subs = {r["substation"]: {**r, "feeders": []} for r in rows if r["level"] == "substation"}
    feeders = {}
    for r in rows:
        if r["level"] == "feeder":
            feeders[r["feeder"]] = {**r, "sites": []}
            subs.setdefault(r["substation"], {"substation": r["substation"], "feeders": []}
                            )["feeders"].append(feeders[r["feeder"]])
    missing = {"substation": None, "feeders": [{"feeder": None, "sites": []}]}
    for r in rows:
        if r["level"] == "site":
            if r["feeder"] in feeders:
                feeders[r["feeder"]]["sites"].append(r)
            else:
                missing["feeders"][0]["sites"].append(r)
    out = sorted(subs.values(), key=lambda s: str(s["substation"]))
    if missing["feeders"][0]["sites"]:
        out.append(missing)
    return out


@router.get("/ledger")
def ledger(request: Request, _p=Depends(require("reservations.read"))):
    store = request.app.state.store
    until = now(request)
    facts = load_facts(store)
    peaks, window_s, error = request.app.state.peaks(facts, until)
    table = reservations_table(facts, peaks, until - timedelta(seconds=window_s), until)
    return render(request, "ledger.html", {"tree": ledger_tree(table), "peaks_error": error,
                                           "window_start": until - timedelta(seconds=window_s),
                                           "until": until})
