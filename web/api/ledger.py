"""``/api/v1/reservations``, ``/tariffs``, ``/bills`` and the overcharging report download."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from core.timeutil import local_month
from rules.flag import FlagBook
from rules.report import overcharging_table
from twin.listings import page_bills, page_reservations, page_tariffs
from web.api.common import Paging, instant, paging, settings, store
from web.auth import require
from web.problems import Problem
from web.schemas import BillRow, Page, ReservationRow, TariffRow

router = APIRouter(prefix="/api/v1", tags=["ledger"])


@router.get("/reservations", response_model=Page[ReservationRow],
            summary="Grid reservations per site, feeder, substation")
def reservations(request: Request, _p=Depends(require("reservations.read")),
                 pg: Paging = Depends(paging), site_id: str | None = None,
                 feeder: str | None = None, substation: str | None = None):
    with store(request).session() as s:
        total, items = page_reservations(s, site_id=site_id, feeder=feeder, substation=substation,
                                         limit=pg.limit, offset=pg.offset)
    return pg.page(total, items)


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
        local_month(period, settings(request).time.zone)
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
    import pandas as pd

    from twin.export import write_table

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
