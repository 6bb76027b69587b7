"""The ASGI application of ``sitetwin serve``: the HTTP API (``/api/v1``) and the pages.

``create_app(settings, store)`` wires routers (one per resource) to an open
registry.  It is the one place of the web app that sees the whole ``Settings``: it
serves every section's reader, so it hands each its part (``[web]``, the
``[time] zone`` and the twin's online window to the routes through ``app.state``,
``[influxdb]`` and ``[rules]`` to the ledger's peaks, ``[influxdb]`` to the
pipeline's counters); nothing here holds state of its own beyond the login throttle and
the ledger's peak cache.  The API's schema is served at ``/api/v1/openapi.json``
(checked in as ``docs/openapi.json``) and read as a page at ``/api/v1/docs``,
rendered here without any script from a CDN.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles

from core import __version__
from core.settings import Settings
from web import problems
from web.auth import LoginThrottle, require

__all__ = ["API_DESCRIPTION", "create_app"]

STATIC = Path(__file__).with_name("static")

API_DESCRIPTION = """\
sitetwin's HTTP API: the site twin, its flags and their reviews, the grid ledger, tariffs,
bills and the audit log.  Authenticate with `Authorization: Bearer <token>` (tokens from
`sitetwin users token create`).  Errors are `application/problem+json` (RFC 9457) with a
stable `type` (`/api/v1/problems/<slug>`).  Times are ISO 8601 with an offset; a time
parameter without one is local time in the server's `[time] zone`.  Lists take `limit`
and `offset` and answer `total`.
"""

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def create_app(settings: Settings, store: Any, *,
               peaks: Callable[[Any, datetime], Any] | None = None,
               pipeline: Callable[[datetime], list[dict[str, Any]]] | None = None,
               clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The web app over ``store`` (a ``twin.store.Store``).

    ``peaks`` replaces the ledger's InfluxDB peak source, ``pipeline`` the source of the
    collectors' counters, ``clock`` the time of "now" (online windows), for tests and
    benchmarks.
    """
    from web.api import admin, flags, ledger, sites
    from web.pages import audit as audit_page
    from web.pages import auth as auth_page
    from web.pages import flags as flag_pages
    from web.pages import imports as import_page
    from web.pages import ledger as ledger_page
    from web.pages import sites as site_pages

    app = FastAPI(title="sitetwin API", version=__version__, description=API_DESCRIPTION,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.web = settings.web
    app.state.zone = settings.time.zone
    app.state.online_window_s = settings.twin.online_window_s
    app.state.store = store
    app.state.clock = clock
    app.state.peaks = peaks or ledger.InfluxPeaks(settings.influxdb, settings.rules)
    app.state.pipeline = pipeline or admin.InfluxPipeline(settings.influxdb)
    app.state.login_throttle = LoginThrottle(settings.web.login_attempts, settings.web.login_window)
    problems.install(app)

    for module in (sites, flags, ledger, admin, auth_page, flag_pages, site_pages, ledger_page,
                   audit_page, import_page):
        app.include_router(module.router)

    @app.get("/api/v1/openapi.json", include_in_schema=False)
    def openapi(_p=Depends(require("public"))) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/v1/docs", include_in_schema=False)
    def docs(request: Request, _p=Depends(require("public"))):
        from web.render import render

        return render(request, "api_docs.html", {"schema": app.openapi()})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
