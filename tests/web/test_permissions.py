"""Every route x every role gets exactly the answer the permission table allows.

The routes are enumerated from the app, so a new route fails here until it declares
its action (``require``) and its allowed answer is listed below.
"""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount

from tests.web.conftest import bearer
from web.permissions import PERMISSIONS, PUBLIC, allowed

# (method, path) -> the status an allowed caller gets for the request made below.  POSTs are
# sent without a body, so an allowed caller is stopped by validation (422) and nothing changes.
ALLOWED_ANSWER = {
    ("GET", "/api/v1/sites"): 200,
    ("GET", "/api/v1/sites/{site_id}"): 200,
    ("POST", "/api/v1/sites/{site_id}/transitions"): 422,
    ("GET", "/api/v1/flags"): 200,
    ("GET", "/api/v1/flags/{flag_id}"): 200,
    ("POST", "/api/v1/flags/{flag_id}/review"): 422,
    ("POST", "/api/v1/flags/{flag_id}/ack"): 422,
    ("POST", "/api/v1/flags/{flag_id}/assign"): 422,
    ("GET", "/api/v1/suppliers"): 200,
    ("GET", "/api/v1/reservations"): 200,
    ("GET", "/api/v1/ledger"): 200,
    ("GET", "/api/v1/tariffs"): 200,
    ("GET", "/api/v1/bills"): 200,
    ("GET", "/api/v1/reports/overcharging"): 422,  # period is required
    ("GET", "/api/v1/audit"): 200,
    ("POST", "/api/v1/imports/{kind}"): 422,
    ("GET", "/api/v1/users"): 200,
    ("GET", "/api/v1/me"): 200,
    ("GET", "/api/v1/me/tokens"): 200,
    ("POST", "/api/v1/me/tokens"): 422,
    ("DELETE", "/api/v1/me/tokens/{token_id}"): 404,  # no such token
    ("POST", "/api/v1/users/{username}/tokens"): 422,
    ("DELETE", "/api/v1/tokens/{token_id}"): 404,
    ("GET", "/api/v1/health"): 200,
    ("GET", "/api/v1/pipeline"): 200,
    ("GET", "/api/v1/problems/{slug}"): 200,
    ("GET", "/api/v1/openapi.json"): 200,
    ("GET", "/api/v1/docs"): 200,
    ("GET", "/"): 303,
    ("GET", "/login"): 200,
    ("POST", "/login"): 422,
    ("POST", "/logout"): 303,
    ("GET", "/review"): 200,
    ("GET", "/flags/{flag_id}"): 200,
    ("POST", "/flags/{flag_id}/review"): 422,
    ("POST", "/flags/{flag_id}/ack"): 303,  # the form has no field: an allowed caller acks
    ("POST", "/flags/{flag_id}/assign"): 422,
    ("GET", "/alarms"): 200,
    ("GET", "/sites"): 200,
    ("GET", "/sites/{site_id}"): 200,
    ("POST", "/sites/{site_id}/transition"): 422,
    ("GET", "/ledger"): 200,
    ("GET", "/audit"): 200,
    ("GET", "/imports"): 200,
    ("POST", "/imports"): 422,
}


def _declared(route) -> list[str]:
    """The actions a route's dependencies declare through ``require``."""
    found, stack = [], list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if hasattr(dep.call, "action"):
            found.append(dep.call.action)
        stack.extend(dep.dependencies)
    return found


def _routes(app):
    """(method, path, route) of every route, included routers' prefixes applied."""
    out = []
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            assert route.path == "/static", f"unexpected mount {route.path}"
            continue
        assert isinstance(route.original_route, APIRoute), \
            f"{route!r} is not an APIRoute with a declared action"
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, route.path, route))
    return out


def test_every_route_declares_one_action_and_an_answer(app):
    for method, path, route in _routes(app):
        actions = _declared(route)
        assert len(actions) == 1, f"{method} {path} declares {actions}: it needs exactly one require()"
        assert actions[0] == PUBLIC or any(actions[0] in a for a in PERMISSIONS.values()), \
            f"{method} {path} needs {actions[0]!r}, which no role has"
        assert (method, path) in ALLOWED_ANSWER, f"{method} {path}: add its allowed answer here"
    assert {(m, p) for m, p, _ in _routes(app)} == set(ALLOWED_ANSWER)


def test_nothing_but_the_login_health_and_schema_is_public(app):
    public = sorted(f"{m} {p}" for m, p, r in _routes(app) if _declared(r) == [PUBLIC])
    assert public == ["GET /", "GET /api/v1/docs", "GET /api/v1/health", "GET /api/v1/openapi.json",
                      "GET /api/v1/problems/{slug}", "GET /login", "POST /login"]


@pytest.mark.integration
def test_route_by_role(app, client, world):
    for role in (None, "regulator", "grid", "noc", "viewer", "admin"):
        _check_role(app, client, world, role)


def _check_role(app, client, world, role):
    params = {"site_id": "S001", "flag_id": str(world.bill_flag), "kind": "sites",
              "slug": "forbidden", "token_id": "999999", "username": "viewer1"}
    checked = 0
    for method, path, route in _routes(app):
        action = _declared(route)[0]
        given = {**params, "flag_id": str(world.offline_flag)} if path.endswith("/ack") else params
        url = path.format(**{k: v for k, v in given.items() if "{" + k + "}" in path})
        r = client.request(method, url, headers=bearer(world, role), follow_redirects=False)
        where = f"{method} {path} as {role or 'anonymous'} (needs {action})"
        if allowed(role, action):
            assert r.status_code == ALLOWED_ANSWER[(method, path)], f"{where}: {r.status_code} {r.text[:300]}"
        elif role is None and path.startswith("/api/"):
            assert r.status_code == 401, where
            assert r.headers["content-type"] == "application/problem+json", where
            assert r.json()["type"] == "/api/v1/problems/not-authenticated", where
        elif role is None:
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), where
        else:
            assert r.status_code == 403, f"{where}: {r.status_code}"
            if path.startswith("/api/"):
                assert r.json()["type"] == "/api/v1/problems/forbidden", where
        checked += 1
    assert checked == len(ALLOWED_ANSWER)
