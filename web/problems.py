"""Errors as ``application/problem+json`` (RFC 9457), with stable ``type`` URIs.

Each kind of problem has a slug; its ``type`` is ``/api/v1/problems/<slug>``
(relative, resolved against the API's address, and served: it answers with the
problem's description).  Twin and rule errors are mapped here, at one seam;
nothing else in the web app builds an error body.  A page request (not under
``/api/``) gets the same status with an HTML page instead, and a missing login
there is a redirect to the login page.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rules.errors import ReviewError, RuleError, UnknownFlag
from twin.errors import (
    AccountError,
    ImportFailed,
    StoreError,
    TransitionNotAllowed,
    UnknownSite,
    UnknownUser,
)

__all__ = ["PROBLEMS", "Problem", "install", "problem_type"]

log = logging.getLogger(__name__)

# slug -> (status, title, description)
PROBLEMS: dict[str, tuple[int, str, str]] = {
    "not-authenticated": (401, "Not authenticated",
                          "Log in (web) or send 'Authorization: Bearer <token>' (API)."),
    "forbidden": (403, "Forbidden", "Your role does not allow this action."),
    "csrf-refused": (403, "CSRF token missing or wrong",
                     "A form or cookie-authenticated request must carry the session's CSRF"
                     " token (form field csrf_token or header X-CSRF-Token)."),
    "not-found": (404, "Not found", "No such resource."),
    "unknown-site": (404, "Unknown site", "The site id is not in the registry."),
    "unknown-flag": (404, "Unknown flag", "The flag id is not in the registry."),
    "unknown-user": (404, "Unknown user or token", "No such account or token."),
    "method-not-allowed": (405, "Method not allowed", "This path does not take that method."),
    "transition-refused": (409, "Lifecycle transition refused",
                           "The move is not in the lifecycle table or a guard refused it;"
                           " 'reason' says why. Nothing changed."),
    "invalid-request": (422, "Invalid request",
                        "A parameter or the body is invalid; 'errors' lists each problem."),
    "review-refused": (422, "Review refused", "The decision or note is missing or invalid."),
    "account-refused": (422, "Account change refused", "The change was refused; see 'detail'."),
    "import-refused": (422, "Import refused",
                       "The file has invalid rows and nothing was imported; 'errors' lists"
                       " each with line, column and reason."),
    "too-many-attempts": (429, "Too many login attempts",
                          "Wait for the time in Retry-After before trying again."),
    "registry-unavailable": (503, "Registry unavailable", "The registry database is unreachable."),
    "pipeline-unavailable": (503, "Pipeline counters unavailable",
                             "InfluxDB, where the collectors write their counters, did not answer."),
    "internal-error": (500, "Internal error", "Something failed on the server; it is logged."),
}


def problem_type(slug: str) -> str:
    return f"/api/v1/problems/{slug}"


class Problem(Exception):
    """An error answer: a problem slug, a detail for people, and extension members."""

    def __init__(self, slug: str, detail: str | None = None, *,
                 headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail or PROBLEMS[slug][1])
        self.slug = slug
        self.status = PROBLEMS[slug][0]
        self.title = PROBLEMS[slug][1]
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def body(self, instance: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": problem_type(self.slug), "title": self.title,
                               "status": self.status, "instance": instance}
        if self.detail:
            out["detail"] = self.detail
        out.update(self.extensions)
        return out


def _from_exception(exc: Exception) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, TransitionNotAllowed):
        return Problem("transition-refused", str(exc), reason=exc.reason, state=exc.state,
                       target=exc.target, site_id=exc.site_id)
    if isinstance(exc, UnknownSite):
        return Problem("unknown-site", str(exc), site_id=exc.site_id)
    if isinstance(exc, UnknownFlag):
        return Problem("unknown-flag", str(exc))
    if isinstance(exc, UnknownUser):
        return Problem("unknown-user", str(exc))
    if isinstance(exc, AccountError):
        return Problem("account-refused", str(exc))
    if isinstance(exc, ImportFailed):
        return Problem("import-refused", f"{len(exc.errors)} invalid row(s), nothing imported",
                       errors=[{"line": e.line, "column": e.column, "reason": e.reason}
                               for e in exc.errors])
    if isinstance(exc, ReviewError):
        return Problem("review-refused", str(exc))
    if isinstance(exc, StoreError):
        return Problem("registry-unavailable", str(exc))
    if isinstance(exc, RuleError):
        return Problem("registry-unavailable", str(exc))
    if isinstance(exc, RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        return Problem("invalid-request", f"{'.'.join(first['loc'])}: {first['msg']}",
                       errors=errors)
    if isinstance(exc, StarletteHTTPException):
        slug = {404: "not-found", 405: "method-not-allowed", 401: "not-authenticated",
                403: "forbidden"}.get(exc.status_code)
        if slug:
            return Problem(slug, None if exc.detail in (None, "Not Found", "Method Not Allowed")
                           else str(exc.detail))
    log.error("unexpected error", exc_info=exc)
    return Problem("internal-error")


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _handle(request: Request, exc: Exception) -> Response:
    problem = _from_exception(exc)
    if is_api(request):
        return JSONResponse(problem.body(request.url.path), status_code=problem.status,
                            media_type="application/problem+json", headers=problem.headers)
    if problem.slug == "not-authenticated":
        from urllib.parse import quote

        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    from web.render import render

    return render(request, "error.html", {"problem": problem}, status_code=problem.status,
                  headers=problem.headers)


def install(app: Any) -> None:
    """Route every error of the app through ``_handle``."""
    for exc_type in (Problem, TransitionNotAllowed, UnknownSite, UnknownFlag, UnknownUser,
                     AccountError, ImportFailed, ReviewError, StoreError, RuleError,
                     RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, _handle)
