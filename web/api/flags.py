"""``/api/v1/flags``: list and filter, one flag with evidence and reviews, review, suppliers."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from core.timeutil import utcnow
from rules.finding import KINDS, SEVERITIES
from rules.flag import SORTS, STATUSES, FlagBook
from twin.audit import record
from web.api.common import Paging, instant, paging, store
from web.auth import client_ip, require
from web.permissions import REVIEWABLE_KINDS
from web.problems import Problem
from web.schemas import AckIn, AssignIn, FlagDetail, FlagOut, Page, ReviewIn, SupplierRow

router = APIRouter(prefix="/api/v1", tags=["flags"])

_SORT_PATTERN = "^-?(" + "|".join(SORTS) + ")$"
Kind = Literal[KINDS]  # type: ignore[valid-type]


@router.get("/flags", response_model=Page[FlagOut], summary="Flags, filtered, sorted and paged")
def list_flags(
    request: Request,
    _p=Depends(require("flags.read")),
    pg: Paging = Depends(paging),
    kind: Annotated[list[Kind] | None, Query(description="repeat for several kinds")] = None,
    status: Literal[STATUSES] | None = None,  # type: ignore[valid-type]
    severity: Literal[SEVERITIES] | None = None,  # type: ignore[valid-type]
    site_id: str | None = None,
    county: str | None = None,
    supplier_id: str | None = None,
    since: Annotated[str | None, Query(description="window overlaps from (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="window overlaps until (ISO 8601)")] = None,
    sort: Annotated[str, Query(pattern=_SORT_PATTERN)] = "id",
):
    total, items = FlagBook(store(request)).query(
        kinds=kind, status=status, severity=severity, site_id=site_id, county=county,
        supplier_id=supplier_id, since=instant(request, since, "since"),
        until=instant(request, until, "until"), sort=sort, limit=pg.limit, offset=pg.offset)
    return pg.page(total, items)


@router.get("/flags/{flag_id}", response_model=FlagDetail,
            summary="One flag with its evidence and whole review history")
def get_flag(request: Request, flag_id: int, _p=Depends(require("flags.read"))):
    return FlagBook(store(request)).show(flag_id)


def review(request: Request, flag_id: int, decision: str, note: str, principal) -> dict:
    """Record a review and its audit entry in one transaction (shared with the flag page)."""
    book = FlagBook(store(request))
    if book.show(flag_id)["kind"] not in REVIEWABLE_KINDS:
        raise Problem("forbidden", "reviews decide overcharging and over-billing flags;"
                      " this flag is operational")
    if not note or not note.strip():
        raise Problem("review-refused", "a review needs a note (why)")

    def audit(session, before, after):
        record(session, actor=principal.username, action="flag.review", target_type="flag",
               target_id=flag_id, before={"status": before["status"]},
               after={"status": after["status"], "decision": decision}, note=note.strip(),
               client_ip=client_ip(request))

    return book.review(flag_id, decision, principal.username, utcnow(), note=note.strip(),
                       audit=audit)


@router.post("/flags/{flag_id}/review", response_model=FlagDetail,
             summary="Confirm or dismiss a bill flag (a note is required)")
def post_review(request: Request, flag_id: int, body: ReviewIn,
                principal=Depends(require("flags.review"))):
    return review(request, flag_id, body.decision, body.note, principal)


def operate(request: Request, flag_id: int, principal, *, assignee: str | None = None,
            note: str | None = None) -> dict:
    """Acknowledge (or assign) an operational flag, audited in the same transaction."""
    book = FlagBook(store(request))
    if book.show(flag_id)["kind"] in REVIEWABLE_KINDS:
        raise Problem("forbidden", "bill flags are reviewed by the regulator, not acknowledged")
    action = "flag.assign" if assignee is not None else "flag.ack"

    def audit(session, before, after):
        keys = ("assignee",) if assignee is not None else ("acknowledged_by", "acknowledged_at")
        record(session, actor=principal.username, action=action, target_type="flag",
               target_id=flag_id, before={k: before[k] for k in keys},
               after={k: after[k] for k in keys}, note=note, client_ip=client_ip(request))

    if assignee is not None:
        return book.assign(flag_id, assignee, principal.username, utcnow(), audit=audit)
    return book.acknowledge(flag_id, principal.username, utcnow(), audit=audit)


@router.post("/flags/{flag_id}/ack", response_model=FlagDetail,
             summary="Acknowledge an open operational flag (the NOC is on it)")
def post_ack(request: Request, flag_id: int, body: AckIn,
             principal=Depends(require("flags.ack"))):
    return operate(request, flag_id, principal, note=body.note)


@router.post("/flags/{flag_id}/assign", response_model=FlagDetail,
             summary="Assign an open operational flag to someone")
def post_assign(request: Request, flag_id: int, body: AssignIn,
                principal=Depends(require("flags.ack"))):
    return operate(request, flag_id, principal, assignee=body.assignee)


@router.get("/suppliers", response_model=list[SupplierRow],
            summary="Suppliers' bill flags by status, repeat offenders first")
def suppliers(request: Request, _p=Depends(require("bills.read"))):
    return FlagBook(store(request)).supplier_summary()
