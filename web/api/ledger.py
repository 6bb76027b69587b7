"""``/api/v1/reservations``, ``/ledger``, ``/tariffs``, ``/bills`` and the overcharging report.

The ledger's peaks come from InfluxDB (``WindowData.power_peak`` per site and
``coincident_peaks`` per feeder and substation, over the reservations rule's window);
they are kept for a minute, since a 7-day peak does not move between two page loads
and the query costs seconds at 10 000 sites.  If InfluxDB cannot
answer, the ledger still has the reservations, with the peaks empty and a reason.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from core.settings import InfluxSettings, RulesSettings
from core.timeutil import local_month
from rules.data import load_facts
from rules.flag import FlagBook
from rules.report import overcharging_table, reservations_table
from twin.listings import page_bills, page_reservations, page_tariffs
from web.api.common import Paging, instant, now, paging, store, zone
from web.auth import require
from web.problems import Problem
from web.schemas import BillRow, Ledger, Page, ReservationRow, TariffRow

router = APIRouter(prefix="/api/v1", tags=["ledger"])
log = logging.getLogger(__name__)

PEAK_CACHE_S = 60.0


class InfluxPeaks:
    """``(facts, until) -> (peaks frame | None, window_s, error | None)`` from InfluxDB."""

    def __init__(self, influxdb: InfluxSettings, rules: RulesSettings) -> None:
        """``influxdb``: where the power readings are; ``rules``: the reservation rule's
        window and the query concurrency (the ``[rules]`` section)."""
        self.influxdb = influxdb
        self.rules = rules
        self._cached: tuple[float, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, facts: Any, until: datetime
                 ) -> tuple[pd.DataFrame | None, dict[str, pd.DataFrame], float, str | None]:
        """``(site peaks, coincident peaks per level, window_s, error)``."""
        from connectors.influx import InfluxReader
        from rules.capacity import members
        from rules.data import WindowData
        from rules.registry import get_rule, thresholds_for

        t = thresholds_for(self.rules, get_rule("reservations"))
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < PEAK_CACHE_S:
                peaks, grid = self._cached[1]
                return peaks, grid, t.window, None
            try:
                reader = InfluxReader.from_settings(self.influxdb)
                data = WindowData(reader, concurrency=self.rules.query_concurrency)
                try:
                    peaks = data.power_peak(facts, until, t, {}, sites=facts.sites["site_id"])
                    grid = data.coincident_peaks(members(facts),
                                                 until - timedelta(seconds=t.window), until)
                finally:
                    data.close()
                    reader.close()
            except Exception as exc:  # noqa: BLE001  # the ledger still shows reservations
                log.warning("peaks unavailable: %s", exc)
                return None, {}, t.window, f"{type(exc).__name__}"
            self._cached = (time.monotonic(), (peaks, grid))
            return peaks, grid, t.window, None


def ledger_table(request: Request) -> tuple[Any, pd.DataFrame, float, datetime, str | None]:
    """``(facts, table, window_s, until, peaks error)``: the reservations report as of now."""
    from rules.capacity import capacity_sheets
    from rules.data import load_ratings

    until = now(request)
    facts = load_facts(request.app.state.store)
    feeders, substations = load_ratings(request.app.state.store)
    peaks, grid, window_s, error = request.app.state.peaks(facts, until)
    sheets = capacity_sheets(facts, peaks, grid.get("feeder"), grid.get("substation"), feeders,
                             substations, until - timedelta(seconds=window_s), until)
    table = reservations_table(sheets)
    # A feeder's or a substation's peak is what the line carries: the coincident peak.
    table["peak_kw"] = table["peak_kw"].where(table["level"] == "site",
                                              table["coincident_peak_kw"])
    return facts, table, window_s, until, error




@router.get("/reservations", response_model=Page[ReservationRow],
            summary="Grid reservations per site, feeder, substation")
def reservations(request: Request, _p=Depends(require("reservations.read")),
                 pg: Paging = Depends(paging), site_id: str | None = None,
                 feeder: str | None = None, substation: str | None = None):
    with store(request).session() as s:
        total, items = page_reservations(s, site_id=site_id, feeder=feeder, substation=substation,
                                         limit=pg.limit, offset=pg.offset)
    return pg.page(total, items)


@router.get("/ledger", response_model=Ledger,
            summary="Reserved vs declared vs peak and headroom per site, feeder and substation")
def ledger(request: Request, _p=Depends(require("reservations.read"))):
    _, table, window_s, until, error = ledger_table(request)
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return {"window_start": until - timedelta(seconds=window_s), "window_end": until,
            "peaks": "unavailable" if error else "ok",
            "rows": [{k: (int(v) if k == "sites" and v is not None else v) for k, v in r.items()}
                     for r in rows]}


@router.get("/tariffs", response_model=Page[TariffRow], summary="Regulated catalogue prices")
def tariffs(request: Request, _p=Depends(require("tariffs.read")), pg: Paging = Depends(paging),
            region: str | None = None, customer_class: str | None = None):
    with store(request).session() as s:
        total, items = page_tariffs(s, region=region, customer_class=customer_class,
                                    limit=pg.limit, offset=pg.offset)
    return pg.page(total, items)


@router.get("/bills", response_model=Page[BillRow], summary="Transfer-power bills")
def bills(request: Request, _p=Depends(require("bills.read")), pg: Paging = Depends(paging),
          site_id: str | None = None, supplier_id: str | None = None,
          since: str | None = None, until: str | None = None):
    with store(request).session() as s:
        total, items = page_bills(s, site_id=site_id, supplier_id=supplier_id,
                                  since=instant(request, since, "since"),
                                  until=instant(request, until, "until"),
                                  limit=pg.limit, offset=pg.offset)
    return pg.page(total, items)


def overcharging_rows(request: Request, period: str) -> list[dict]:
    """The overcharging report's rows for ``period``, each bill row with who decided it."""
    try:
        local_month(period, zone(request))
    except ValueError as exc:
        raise Problem("invalid-request", f"period: {exc}") from None
    book = FlagBook(store(request))
    _, flags = book.query(kinds=("overcharging", "overbilling"), limit=1_000_000)
    table = overcharging_table(flags, period)
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    decided = book.last_reviews([r["flag_id"] for r in rows if r.get("flag_id") is not None])
    for r in rows:
        review = decided.get(r.get("flag_id"))
        r["reviewed_by"] = review["reviewed_by"] if review else None
        r["reviewed_at"] = review["reviewed_at"] if review else None
        r["review_note"] = review["note"] if review else None
    return rows


@router.get("/reports/overcharging", summary="The overcharging report (JSON, CSV or XLSX)",
            responses={200: {"content": {"text/csv": {}, "application/vnd.openxmlformats-"
                                         "officedocument.spreadsheetml.sheet": {}}}})
def report_overcharging(request: Request,
                        period: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")],
                        _p=Depends(require("bills.read")),
                        format: Literal["json", "csv", "xlsx"] = "json"):
    from exports.tables import write_table

    rows = overcharging_rows(request, period)
    if format == "json":
        from core.jsonout import to_json

        return Response(to_json(rows), media_type="application/json")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(pd.DataFrame(rows), Path(tmp) / f"overcharging-{period}.{format}",
                           sheet_name=f"overcharging {period}")
        body = Path(path).read_bytes()
    media = "text/csv" if format == "csv" else \
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return Response(body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="overcharging-{period}.{format}"'})
