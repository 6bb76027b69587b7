"""The site list and the site page (the twin: identity, timeline, live state, links, flags)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse

from twin.lifecycle import State, allowed_moves
from twin.sites import page_sites
from web.api.common import now, online_window_s
from web.api.sites import do_transition, site_detail
from web.auth import require
from web.render import render

router = APIRouter(include_in_schema=False)

PAGE = 50


@router.get("/sites")
def sites_page(request: Request, _p=Depends(require("sites.read")),
               q: Annotated[str | None, Query(max_length=100)] = None, county: str | None = None,
               state: str | None = None, page: int = 0):
    state = state if state in {s.value for s in State} else None
    with request.app.state.store.session() as s:
        total, rows = page_sites(s, now=now(request),
                                 window_s=online_window_s(request),
                                 q=q or None, county=county or None, state=state,
                                 limit=PAGE, offset=max(page, 0) * PAGE)
    return render(request, "sites.html", {"sites": rows, "total": total, "q": q or "",
                                          "county": county or "", "state": state or "",
                                          "states": [s.value for s in State],
                                          "page": max(page, 0),
                                          "pages": (total + PAGE - 1) // PAGE})


@router.get("/sites/{site_id}")
def site_page(request: Request, site_id: str, _p=Depends(require("sites.read")),
              at: str | None = None):
    site = site_detail(request, site_id, at or None)
    moves = [t.target.value for t in allowed_moves(site["state"])]
    return render(request, "site.html", {"site": site, "at": at or "", "moves": moves})


@router.post("/sites/{site_id}/transition")
def transition_form(request: Request, site_id: str, state: Annotated[str, Form(max_length=32)],
                    note: Annotated[str, Form(max_length=2000)] = "",
                    principal=Depends(require("sites.transition"))):
    do_transition(request, site_id, state, None, note or None, None, principal)
    return RedirectResponse(f"/sites/{site_id}", status_code=303)
