"""Paged views of the bills, tariffs and reservations tables for the HTTP API (filtered dicts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from twin.models import Bill, Reservation, Tariff

__all__ = ["page_bills", "page_reservations", "page_tariffs"]


def _page(session: Session, q: Select[Any], order: Sequence[Any], limit: int, offset: int
          ) -> tuple[int, list[Any]]:
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    return total, list(session.scalars(q.order_by(*order).limit(limit).offset(offset)))


def page_bills(session: Session, *, site_id: str | None = None, supplier_id: str | None = None,
               since: datetime | None = None, until: datetime | None = None, limit: int = 50,
               offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """Bills whose period overlaps ``[since, until)``, by period then id."""
    q = select(Bill)
    if site_id is not None:
        q = q.where(Bill.site_id == site_id)
    if supplier_id is not None:
        q = q.where(Bill.supplier_id == supplier_id)
    if since is not None:
        q = q.where(Bill.period_end > since)
    if until is not None:
        q = q.where(Bill.period_start < until)
    total, rows = _page(session, q, (Bill.period_start, Bill.bill_id), limit, offset)
    return total, [{"bill_id": b.bill_id, "site_id": b.site_id, "supplier_id": b.supplier_id,
                    "supplier_name": b.supplier_name, "meter_id": b.meter_id,
                    "period_start": b.period_start, "period_end": b.period_end,
                    "billed_kwh": b.billed_kwh, "amount_cny": b.amount_cny} for b in rows]


def page_tariffs(session: Session, *, region: str | None = None,
                 customer_class: str | None = None, limit: int = 50,
                 offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """Tariff rows by region, class, period and date."""
    q = select(Tariff)
    if region is not None:
        q = q.where(Tariff.region == region)
    if customer_class is not None:
        q = q.where(Tariff.customer_class == customer_class)
    total, rows = _page(session, q, (Tariff.region, Tariff.customer_class, Tariff.period,
                                     Tariff.effective_from), limit, offset)
    return total, [{"region": t.region, "customer_class": t.customer_class, "period": t.period,
                    "hours": t.hours, "effective_from": t.effective_from,
                    "price_cny_per_kwh": t.price_cny_per_kwh} for t in rows]


def page_reservations(session: Session, *, site_id: str | None = None, feeder: str | None = None,
                      substation: str | None = None, limit: int = 50,
                      offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """Reservations by substation, feeder and site."""
    q = select(Reservation)
    for column, value in ((Reservation.site_id, site_id), (Reservation.feeder, feeder),
                          (Reservation.substation, substation)):
        if value is not None:
            q = q.where(column == value)
    total, rows = _page(session, q, (Reservation.substation, Reservation.feeder,
                                     Reservation.site_id), limit, offset)
    return total, [{"site_id": r.site_id, "feeder": r.feeder, "substation": r.substation,
                    "declared_kw": r.declared_kw, "reserved_kw": r.reserved_kw,
                    "status": r.status, "updated_at": r.updated_at} for r in rows]
