"""Log in and out; ``/`` sends each role to its own page.

The login form itself has no session yet, so its CSRF protection is a
double-submit cookie: a random value in a SameSite=Strict cookie and in the
form, which must match.  Failed logins are throttled (``web.auth.LoginThrottle``)
and written to the audit log with the address they came from.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from twin.accounts import authenticate_password, end_session, open_session
from twin.audit import record
from twin.models import User
from web.api.common import web_config
from web.auth import SESSION_COOKIE, client_ip, require
from web.problems import Problem
from web.render import render

router = APIRouter(include_in_schema=False)

LOGIN_CSRF_COOKIE = "sitetwin_login_csrf"
HOMES = {"regulator": "/review", "grid": "/ledger", "noc": "/alarms", "viewer": "/sites",
         "admin": "/audit"}


def _safe_next(value: str | None) -> str | None:
    """Only a path on this site: never ``//host`` or ``https://host`` (an open redirect)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


@router.get("/")
def home(request: Request, principal=Depends(require("public"))):
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(HOMES.get(principal.role, "/sites"), status_code=303)


@router.get("/login")
def login_page(request: Request, _p=Depends(require("public")), next: str | None = None):
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"login_csrf": token, "next": _safe_next(next) or "",
                                              "error": None})
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=web_config(request).secure_cookies, path="/login")
    return response


def _login(store, username: str, password: str, lifetime_s: float, ip: str | None):
    with store.session() as s:
        user = authenticate_password(s, username, password)
        if user is None:
            # A name that is no account is not repeated: people type passwords there.
            known = s.scalar(select(User.username).where(User.username == username))
            record(s, actor=known or "-", action="user.login_failed", target_type="user",
                   target_id=known, note=None if known else "no such user", client_ip=ip)
            return None
        return open_session(s, user, lifetime_s, client_ip=ip)


@router.post("/login")
async def login(request: Request, username: Annotated[str, Form(max_length=64)],
                password: Annotated[str, Form(max_length=1024)],
                csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "",
                _p=Depends(require("public"))):
    config = web_config(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not csrf_token or not hmac.compare_digest(cookie, csrf_token):
        raise Problem("csrf-refused", "the login form expired or came from elsewhere; reload it")
    throttle = request.app.state.login_throttle
    ip = client_ip(request)
    wait = throttle.retry_after(username, ip)
    if wait:
        raise Problem("too-many-attempts", f"too many failed logins; try again in {wait} s",
                      headers={"Retry-After": str(wait)})
    opened = await run_in_threadpool(_login, request.app.state.store, username, password,
                                     config.session_lifetime, ip)
    if opened is None:
        throttle.failed(username, ip)
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", {"login_csrf": token,
                                                  "next": _safe_next(next) or "",
                                                  "error": "wrong user name or password"},
                          status_code=401)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=config.secure_cookies, path="/login")
        return response
    throttle.succeeded(username)
    sid, _csrf = opened
    redirect = RedirectResponse(_safe_next(next) or "/", status_code=303)
    redirect.set_cookie(SESSION_COOKIE, sid, max_age=int(config.session_lifetime),
                        httponly=True, samesite="lax", secure=config.secure_cookies)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return redirect


@router.post("/logout")
def logout(request: Request, _p=Depends(require("account.self"))):
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        with request.app.state.store.session() as s:
            end_session(s, sid, client_ip=client_ip(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
