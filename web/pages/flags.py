"""The regulator's review queue, one flag as an officer reads it, and the review form."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from rules.flag import FlagBook
from web.api.flags import operate, review
from web.auth import require
from web.permissions import REVIEWABLE_KINDS, allowed
from web.render import render

router = APIRouter(include_in_schema=False)

PAGE = 50


@router.get("/review")
def review_queue(request: Request, _p=Depends(require("flags.review")),
                 status: Literal["open", "confirmed", "dismissed", "resolved", "all"] = "open",
                 supplier_id: str | None = None, page: int = 0):
    book = FlagBook(request.app.state.store)
    total, flags = book.query(kinds=REVIEWABLE_KINDS, status=None if status == "all" else status,
                              supplier_id=supplier_id or None, sort="supplier_id",
                              limit=PAGE, offset=max(page, 0) * PAGE)
    return render(request, "review_queue.html", {
        "flags": flags, "total": total, "status": status, "supplier_id": supplier_id or "",
        "page": max(page, 0), "pages": (total + PAGE - 1) // PAGE,
        "suppliers": book.supplier_summary()})


@router.get("/flags/{flag_id}")
def flag_page(request: Request, flag_id: int, principal=Depends(require("flags.read"))):
    flag = FlagBook(request.app.state.store).show(flag_id)
    can_review = allowed(principal.role, "flags.review") and flag["kind"] in REVIEWABLE_KINDS
    return render(request, "flag.html", {"flag": flag, "ev": flag["evidence"] or {},
                                         "can_review": can_review})


@router.post("/flags/{flag_id}/review")
def review_form(request: Request, flag_id: int,
                decision: Annotated[Literal["confirmed", "dismissed"], Form()],
                note: Annotated[str, Form(max_length=4000)] = "",
                principal=Depends(require("flags.review"))):
    review(request, flag_id, decision, note, principal)
    return RedirectResponse(f"/flags/{flag_id}", status_code=303)


@router.post("/flags/{flag_id}/ack")
def ack_form(request: Request, flag_id: int, principal=Depends(require("flags.ack"))):
    operate(request, flag_id, principal)
    return RedirectResponse("/alarms", status_code=303)


@router.post("/flags/{flag_id}/assign")
def assign_form(request: Request, flag_id: int,
                assignee: Annotated[str, Form(min_length=1, max_length=100)],
                principal=Depends(require("flags.ack"))):
    operate(request, flag_id, principal, assignee=assignee)
    return RedirectResponse("/alarms", status_code=303)


@router.get("/alarms")
def alarms(request: Request, _p=Depends(require("alarms.read")), page: int = 0):
    """Open operational flags, most severe first: the NOC's list."""
    from rules.finding import KINDS

    operational = [k for k in KINDS if k not in REVIEWABLE_KINDS
                   and not k.startswith("reservation_")]
    book = FlagBook(request.app.state.store)
    total, flags = book.query(kinds=operational, status="open", sort="-updated_at",
                              limit=PAGE, offset=max(page, 0) * PAGE)
    rank = {"critical": 0, "warning": 1, "info": 2}
    flags.sort(key=lambda f: rank.get(f["severity"], 3))
    return render(request, "alarms.html", {"flags": flags, "total": total, "page": max(page, 0),
                                           "pages": (total + PAGE - 1) // PAGE})
