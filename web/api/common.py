"""What the API routers share: the store, the clock, the sections of configuration they read
(``[web]``, the ``[time] zone``, the twin's online window), time parameters, paging.

``create_app`` picks these out of ``Settings`` once; a router reads only what it uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Query, Request

from core.settings import WebSettings
from core.timeutil import parse_instant, utcnow
from web.problems import Problem

__all__ = ["MAX_LIMIT", "Paging", "instant", "now", "online_window_s", "paging", "store", "web_config",
           "zone"]

MAX_LIMIT = 500


def store(request: Request) -> Any:
    return request.app.state.store


def web_config(request: Request) -> WebSettings:
    """The ``[web]`` section: cookies, sessions, logins, the Grafana link."""
    config: WebSettings = request.app.state.web
    return config


def zone(request: Request) -> str:
    """The ``[time] zone``: local time of parameters without an offset, and of pages."""
    name: str = request.app.state.zone
    return name


def online_window_s(request: Request) -> float:
    """``[twin] reporting_period * online_periods``: a site seen within it is online."""
    window: float = request.app.state.online_window_s
    return window


def now(request: Request) -> datetime:
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock else utcnow()


def instant(request: Request, value: str | None, name: str) -> datetime | None:
    """A time parameter: ISO 8601; without an offset it is local time in ``[time] zone``."""
    if value is None or value == "":
        return None
    try:
        return parse_instant(value, zone(request))
    except ValueError as exc:
        raise Problem("invalid-request", f"{name}: {exc}",
                      errors=[{"loc": ["query", name], "msg": str(exc), "type": "value_error"}]
                      ) from None


class Paging:
    def __init__(self, limit: int, offset: int) -> None:
        self.limit = limit
        self.offset = offset

    def page(self, total: int, items: list[Any]) -> dict[str, Any]:
        return {"total": total, "limit": self.limit, "offset": self.offset, "items": items}


def paging(limit: int = Query(50, ge=1, le=MAX_LIMIT, description="items per page"),
           offset: int = Query(0, ge=0, description="items to skip")) -> Paging:
    return Paging(limit, offset)
