"""The admin's audit page: the log, newest first, filtered by actor and action."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from twin.audit import list_entries
from web.auth import require
from web.render import render

router = APIRouter(include_in_schema=False)

PAGE = 100


@router.get("/audit")
def audit_page(request: Request, _p=Depends(require("audit.read")), actor: str | None = None,
               action: str | None = None, page: int = 0):
    with request.app.state.store.session() as s:
        total, entries = list_entries(s, actor=actor or None, action=action or None, limit=PAGE,
                                      offset=max(page, 0) * PAGE)
    return render(request, "audit.html", {"entries": entries, "total": total, "actor": actor or "",
                                          "action": action or "", "page": max(page, 0),
                                          "pages": (total + PAGE - 1) // PAGE})
