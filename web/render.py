"""Pages: Jinja2 templates with the request's language, display zone, user and CSRF token.

The language is, in order: ``?lang=`` (remembered in a cookie), that cookie,
the user's own setting, the browser's ``Accept-Language``, English.  Times are
shown in ``[time] zone`` with their offset (``core.timeutil.format_local``).
Templates only lay out what the services returned: no queries, no decisions.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from core.i18n import DEFAULT_LANG, gettext_for, normalise_lang
from core.timeutil import format_local
from web.permissions import allowed

__all__ = ["LANG_COOKIE", "language", "render", "templates"]

LANG_COOKIE = "sitetwin_lang"
TEMPLATES = Path(__file__).with_name("templates")

templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)


def _parse_lang(value: str | None) -> str | None:
    try:
        return normalise_lang(value) if value else None
    except ValueError:
        return None


def _accept_language(header: str | None) -> str | None:
    if not header:
        return None
    ranked = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip()))
    for _, _, tag in sorted(ranked):
        lang = _parse_lang(tag)
        if lang:
            return lang
    return None


def language(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return (_parse_lang(request.query_params.get("lang"))
            or _parse_lang(request.cookies.get(LANG_COOKIE))
            or (_parse_lang(principal.lang) if principal else None)
            or _accept_language(request.headers.get("accept-language"))
            or DEFAULT_LANG)


def _local(zone: str):
    def fmt(value: Any, seconds: bool = False) -> str:
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value
        return format_local(value, zone, seconds=seconds)
    return fmt


def _num(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def render(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    config, zone = request.app.state.web, request.app.state.zone
    lang = language(request)
    principal = getattr(request.state, "principal", None)
    ctx = {
        "request": request, "_": gettext_for(lang, "web"), "lang": lang, "user": principal,
        "csrf_token": principal.csrf_token if principal else None,
        "can": lambda action: allowed(principal.role if principal else None, action),
        "local": _local(zone), "num": _num, "zone": zone,
        "grafana_url": config.grafana_url.rstrip("/"),
        **context,
    }
    html = templates.get_template(name).render(ctx)
    response = HTMLResponse(html, status_code=status_code, headers=headers)
    if request.query_params.get("lang") and _parse_lang(request.query_params.get("lang")):
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, httponly=True,
                            samesite="lax", secure=config.secure_cookies)
    return response
