"""Who a bill is between: the landlord's identity and the site's name and address.

Read by the overcharging report, which names both parties as a regulator needs
them (the flag's evidence carries only the supplier's id and name).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from twin.models import Bill, Site

__all__ = ["PARTY_FIELDS", "bill_parties"]

PARTY_FIELDS = ("supplier_id", "supplier_name", "supplier_credit_code", "supplier_address",
                "supplier_contact", "site_id", "site_name", "site_address")


def bill_parties(session: Session, bill_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``bill_id -> {PARTY_FIELDS}`` for the bills of ``bill_ids`` that are registered."""
    wanted = sorted(set(bill_ids))
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(wanted), 1000):
        q = (select(Bill.bill_id, Bill.supplier_id, Bill.supplier_name, Bill.supplier_credit_code,
                    Bill.supplier_address, Bill.supplier_contact, Bill.site_id,
                    Site.name.label("site_name"), Site.address.label("site_address"))
             .join(Site, Site.site_id == Bill.site_id, isouter=True)
             .where(Bill.bill_id.in_(wanted[i:i + 1000])))
        for row in session.execute(q):
            out[row.bill_id] = {k: getattr(row, k) for k in PARTY_FIELDS}
    return out
