"""The pages through HTTP: login with CSRF and throttling, cookies, the review form, languages."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.web.conftest import NOW, PASSWORD

pytestmark = pytest.mark.integration


def _login_form(client) -> str:
    r = client.get("/login")
    assert r.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)


def login(client, username, password=PASSWORD):
    token = _login_form(client)
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token}, follow_redirects=False)


def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_login_sets_a_safe_cookie_and_lands_on_the_role_page(client, world):
    r = login(client, "regulator1")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "sitetwin_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # [web] secure_cookies = false by default
    assert client.get("/", follow_redirects=False).headers["location"] == "/review"
    page = client.get("/review")
    assert page.status_code == 200 and "B-1" in page.text and "SUP-1" in page.text


def test_secure_cookies_when_configured(world, settings):
    from fastapi.testclient import TestClient

    from tests.web.conftest import no_peaks
    from web.app import create_app

    secure = settings.model_copy(update={"web": settings.web.model_copy(update={"secure_cookies": True})})
    with TestClient(create_app(secure, world.store, peaks=no_peaks), base_url="https://testserver") as c:
        r = login(c, "viewer1")
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_login_without_its_csrf_token_is_refused(client, world):
    _login_form(client)
    r = client.post("/login", data={"username": "regulator1", "password": PASSWORD,
                                    "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and "sitetwin_session" not in r.headers.get("set-cookie", "")


def test_wrong_password_is_audited_and_logins_are_throttled(client, world, web_settings):
    attempts = web_settings.web.login_attempts
    for _ in range(attempts):
        r = login(client, "regulator1", "wrong password!")
        assert r.status_code == 401
    r = login(client, "regulator1")  # the right password, but too late
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "sitetwin_session" not in r.headers.get("set-cookie", "")
    other = login(client, "grid1")  # same address: throttled as well
    assert other.status_code == 429
    from twin.audit import list_entries

    with world.store.session() as s:
        total, entries = list_entries(s, action="user.login_failed")
    assert total == attempts and entries[0]["target_id"] == "regulator1"
    assert entries[0]["client_ip"] == "testclient"


def test_a_failed_login_of_no_account_does_not_repeat_what_was_typed(client, world):
    assert login(client, "hunter2-typed-in-the-wrong-box", "whatever").status_code == 401
    from twin.audit import list_entries

    with world.store.session() as s:
        _, entries = list_entries(s, action="user.login_failed")
    assert entries[0]["actor"] == "-" and entries[0]["target_id"] is None
    assert "hunter2" not in str(entries)


def test_throttle_window_passes():
    from web.auth import LoginThrottle

    now = [1000.0]
    t = LoginThrottle(2, 60.0, clock=lambda: now[0])
    t.failed("u", "1.2.3.4")
    assert t.retry_after("u", "1.2.3.4") == 0
    t.failed("u", "1.2.3.4")
    assert 59 <= t.retry_after("u", "1.2.3.4") <= 61
    assert t.retry_after("v", "5.6.7.8") == 0
    now[0] += 60.0
    assert t.retry_after("u", "1.2.3.4") == 0


def test_review_form_needs_the_csrf_token(client, world):
    assert login(client, "regulator1").status_code == 303
    page = client.get(f"/flags/{world.bill_flag}")
    assert page.status_code == 200 and 'id="review-form"' in page.text
    url = f"/flags/{world.bill_flag}/review"
    r = client.post(url, data={"decision": "confirmed", "note": "x"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post(url, data={"decision": "confirmed", "note": "x", "csrf_token": "forged"},
                    follow_redirects=False)
    assert r.status_code == 403
    r = client.post(url, data={"decision": "confirmed", "note": "1.20 CNY/kWh is twice the cap",
                               "csrf_token": _csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(f"/flags/{world.bill_flag}")
    assert "1.20 CNY/kWh is twice the cap" in page.text and "regulator1" in page.text


def test_a_session_ends_at_its_expiry(world):
    from twin.accounts import authenticate_password, open_session, resolve_session
    from twin.models import WebSession

    with world.store.session() as s:
        user = authenticate_password(s, "viewer1", PASSWORD)
        sid, _ = open_session(s, user, 3600)
    with world.store.session() as s:
        row = s.query(WebSession).one()
        assert row.expires_at - row.created_at == timedelta(hours=1)
        assert resolve_session(s, sid, now=row.created_at + timedelta(minutes=59)).username == "viewer1"
        assert resolve_session(s, sid, now=row.created_at + timedelta(hours=1)) is None
        assert resolve_session(s, "not-a-session") is None


def test_logout_ends_the_session(client, world):
    assert login(client, "viewer1").status_code == 303
    page = client.get("/sites")
    assert page.status_code == 200
    r = client.post("/logout", data={"csrf_token": _csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/sites", follow_redirects=False).status_code == 303


def test_no_open_redirect_after_login(client, world):
    token = _login_form(client)
    r = client.post("/login", data={"username": "viewer1", "password": PASSWORD,
                                    "csrf_token": token, "next": "//evil.example/x"},
                    follow_redirects=False)
    assert r.headers["location"] == "/"


def test_chinese_by_accept_language_and_by_choice(client, world):
    assert login(client, "noc1").status_code == 303
    zh = client.get("/alarms", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert "未处理告警" in zh.text and "站点离线" in zh.text and 'lang="zh-CN"' in zh.text
    en = client.get("/alarms", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert "Open alarms" in en.text and "site_offline" in en.text
    chosen = client.get("/alarms?lang=zh-CN", headers={"Accept-Language": "en"})
    assert "未处理告警" in chosen.text
    assert "未处理告警" in client.get("/alarms", headers={"Accept-Language": "en"}).text  # remembered


def test_times_are_shown_in_the_display_zone(client, world):
    assert login(client, "noc1").status_code == 303
    page = client.get("/sites/S001")
    # S001's live state is 30 s before NOW (04:00 UTC): 12:00 in Asia/Shanghai.
    assert NOW.isoformat() == "2026-11-20T04:00:00+00:00"
    assert "2026-11-20 11:59:30 +08:00" in page.text


def test_pages_of_each_role(client, world):
    assert login(client, "grid1").status_code == 303
    ledger = client.get("/ledger")
    assert ledger.status_code == 200
    assert all(x in ledger.text for x in ("SUB-A", "F-10", "S001", "SUB-B", "S003"))
    assert 'id="peaks-error"' in ledger.text
    assert client.get("/review", follow_redirects=False).status_code == 403
    assert client.get("/audit").status_code == 403
    site = client.get("/sites/S003?at=2026-08-01")
    assert site.status_code == 200 and 'id="state-at"' in site.text


def test_refused_transition_on_the_site_page_shows_the_reason(client, world):
    assert login(client, "admin1").status_code == 303
    page = client.get("/sites/S004")
    r = client.post("/sites/S004/transition", data={"state": "on_air", "csrf_token": _csrf(page.text)})
    assert r.status_code == 409 and "no such move" in r.text
    audit = client.get("/audit")
    assert audit.status_code == 200 and "user.login" in audit.text


def test_import_page_lists_every_refused_row(client, world):
    assert login(client, "admin1").status_code == 303
    page = client.get("/imports")
    csrf = _csrf(page.text)
    bad = ("site_id,declared_kw,reserved_kw,feeder,substation,status\n"
           "S001,10,-1,F,SUB,energized\nS404,1,2,F,SUB,shiny\n")
    r = client.post("/imports", data={"kind": "reservations", "csrf_token": csrf},
                    files={"file": ("res.csv", bad, "text/csv")})
    assert r.status_code == 422 and 'id="import-errors"' in r.text
    assert "reserved_kw" in r.text and "status" in r.text and "<td>3</td>" in r.text
    good = "site_id,declared_kw,reserved_kw,feeder,substation,status\nS005,5,6,F-30,SUB-B,requested\n"
    r = client.post("/imports", data={"kind": "reservations", "csrf_token": csrf},
                    files={"file": ("res.csv", good, "text/csv")})
    assert r.status_code == 201 and "1 inserted" in r.text
    r = client.post("/imports", data={"kind": "reservations"},
                    files={"file": ("res.csv", good, "text/csv")})
    assert r.status_code == 403  # no CSRF token
