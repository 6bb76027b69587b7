"""``/api/v1/sites``: the list, one site (as of a time), lifecycle transitions."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from rules.flag import FlagBook
from twin.audit import record
from twin.lifecycle import State, transition
from twin.sites import SITE_SORTS, page_sites, show_site
from web.api.common import Paging, instant, now, online_window_s, paging, store
from web.auth import client_ip, require
from web.schemas import Page, SiteDetail, SiteSummary, TransitionIn, TransitionOut

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])

_SORT_PATTERN = "^-?(" + "|".join(SITE_SORTS) + ")$"


@router.get("", response_model=Page[SiteSummary], summary="Sites, filtered, sorted and paged")
def list_sites(
    request: Request,
    _p=Depends(require("sites.read")),
    pg: Paging = Depends(paging),
    county: str | None = None,
    state: Annotated[Literal[tuple(s.value for s in State)] | None, Query()] = None,  # type: ignore[valid-type]
    kind: Literal["macro", "micro", "pole", "indoor"] | None = None,
    supply: Literal["direct", "transfer"] | None = None,
    online: bool | None = None,
    q: Annotated[str | None,
                 Query(max_length=100, description="text in id, name or district")] = None,
    sort: Annotated[str, Query(pattern=_SORT_PATTERN,
                               description="column, '-' prefix for descending")] = "site_id",
):
    with store(request).session() as s:
        total, items = page_sites(s, now=now(request),
                                  window_s=online_window_s(request),
                                  county=county, state=state, kind=kind, supply=supply,
                                  online=online, q=q, sort=sort, limit=pg.limit, offset=pg.offset)
    return pg.page(total, items)


def site_detail(request: Request, site_id: str, at: str | None) -> dict:
    """One site with its open flags (shared with the site page)."""
    when = instant(request, at, "at")
    with store(request).session() as s:
        data = show_site(s, site_id, now=now(request),
                         window_s=online_window_s(request), at=when)
    _, data["open_flags"] = FlagBook(store(request)).query(site_id=site_id, status="open",
                                                           sort="-opened_at", limit=100)
    return data


@router.get("/{site_id}", response_model=SiteDetail,
            summary="One site: identity, state (and state at ?at=), history, live, links, flags")
def get_site(request: Request, site_id: str, _p=Depends(require("sites.read")),
             at: Annotated[str | None, Query(description="as-of time (ISO 8601)")] = None):
    return site_detail(request, site_id, at)


def do_transition(request: Request, site_id: str, state: str, at: str | None, note: str | None,
                  reason: str | None, principal) -> dict:
    """A lifecycle move and its audit entry in one transaction (shared with the site page)."""
    when = instant(request, at, "at")
    with store(request).session() as s:
        event = transition(s, site_id, state, at=when, actor=principal.username, note=note,
                           reason=reason)
        out = {"site_id": site_id, **event.as_dict()}
        record(s, actor=principal.username, action="site.transition", target_type="site",
               target_id=site_id, before={"state": event.from_state},
               after={"state": event.to_state, "verb": event.verb, "at": event.at},
               note=note, client_ip=client_ip(request))
    return out


@router.post("/{site_id}/transitions", response_model=TransitionOut, status_code=201,
             summary="Move a site to another lifecycle state (409 with the reason if refused)",
             responses={409: {"description": "refused by the lifecycle table or a guard"}})
def post_transition(request: Request, site_id: str, body: TransitionIn,
                    principal=Depends(require("sites.transition"))):
    return do_transition(request, site_id, body.state, body.at, body.note, body.reason, principal)
