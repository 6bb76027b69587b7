"""Who is asking, and may they: sessions, API tokens, ``require(action)``, CSRF, throttling.

A request is authenticated by ``Authorization: Bearer <token>`` (machines) or
by the session cookie (browsers).  ``require(action)`` is the one dependency
every route declares; it looks the action up in ``web.permissions`` and
answers 401 or 403 otherwise.  A state-changing request authenticated by the
cookie must also carry the session's CSRF token (form field ``csrf_token`` or
header ``X-CSRF-Token``), so another site cannot make a logged-in browser act;
a bearer token is never sent by a browser on its own, so it needs none.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from twin.accounts import Principal, authenticate_token, resolve_session
from web.permissions import PUBLIC, allowed
from web.problems import Problem

__all__ = ["SESSION_COOKIE", "LoginThrottle", "client_ip", "principal_of", "require"]

SESSION_COOKIE = "sitetwin_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_ip(request: Request) -> str | None:
    """The peer address (no X-Forwarded-For: a proxy in front sets uvicorn's own options)."""
    return request.client.host if request.client else None


def _lookup(store: Any, bearer: str | None, sid: str | None) -> Principal | None:
    with store.session() as s:
        if bearer is not None:
            return authenticate_token(s, bearer)
        if sid:
            return resolve_session(s, sid)
    return None


async def principal_of(request: Request) -> Principal | None:
    """The principal of this request (cached on it), or ``None`` if not logged in."""
    if hasattr(request.state, "principal"):
        return request.state.principal
    header = request.headers.get("authorization")
    bearer = None
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Problem("not-authenticated", "the Authorization header must be 'Bearer <token>'",
                          headers={"WWW-Authenticate": "Bearer"})
        bearer = value.strip()
    sid = request.cookies.get(SESSION_COOKIE)
    principal = None
    if bearer is not None or sid:
        principal = await run_in_threadpool(_lookup, request.app.state.store, bearer, sid)
        if principal is None and bearer is not None:
            raise Problem("not-authenticated", "the token is unknown or revoked",
                          headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    return principal


async def _check_csrf(request: Request, principal: Principal) -> None:
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not sent or not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
        raise Problem("csrf-refused")


def require(action: str) -> Callable[..., Any]:
    """The dependency a route declares: its principal may take ``action``, or 401/403."""
    async def dependency(request: Request) -> Principal | None:
        principal = await principal_of(request)
        if action == PUBLIC:
            return principal
        if principal is None:
            raise Problem("not-authenticated", headers={"WWW-Authenticate": "Bearer"}
                          if request.url.path.startswith("/api/") else None)
        if not allowed(principal.role, action):
            raise Problem("forbidden", f"the {principal.role} role may not {action}",
                          action=action, role=principal.role)
        if request.method not in SAFE_METHODS and principal.via == "session":
            await _check_csrf(request, principal)
        return principal

    dependency.action = action  # type: ignore[attr-defined]  # read by the route x role test
    dependency.__name__ = f"require_{action.replace('.', '_')}"
    return dependency


class LoginThrottle:
    """At most ``attempts`` failed logins per user name and per address within ``window_s``.

    Kept in memory, per process: it slows an online guesser down to a few guesses a
    window; a restart forgets it, which the argon2 cost per guess still bounds.
    """

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def retry_after(self, username: str, ip: str | None) -> int:
        """Seconds until a login for ``username`` from ``ip`` may be tried (0: now)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in (f"u:{username.lower()}", f"ip:{ip}"):
                q = self._recent(key, now)
                if len(q) >= self.attempts:
                    wait = max(wait, q[0] + self.window_s - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, username: str, ip: str | None) -> None:
        now = self.clock()
        with self._lock:
            for key in (f"u:{username.lower()}", f"ip:{ip}"):
                self._recent(key, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(f"u:{username.lower()}", None)
