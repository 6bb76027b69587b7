"""The HTTP API on the real registry (SQLite and PostgreSQL): paging, filters, as-of, transitions
(409 with the reason), reviews with their audit entry, problem+json, tokens, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.web.conftest import bearer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "application/problem+json"


def get(client, world, role, url, **kw):
    return client.get(url, headers=bearer(world, role), **kw)


def test_sites_paging_totals_and_sorting(client, world):
    r = get(client, world, "viewer", "/api/v1/sites?limit=2&offset=0")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 5 and body["limit"] == 2 and body["offset"] == 0
    assert [s["site_id"] for s in body["items"]] == ["S001", "S002"]
    last = get(client, world, "viewer", "/api/v1/sites?limit=2&offset=4").json()
    assert [s["site_id"] for s in last["items"]] == ["S005"] and last["total"] == 5
    desc = get(client, world, "viewer", "/api/v1/sites?sort=-site_id&limit=1").json()
    assert desc["items"][0]["site_id"] == "S005"


@pytest.mark.parametrize(("query", "expected"), [
    ("county=Pidu", ["S003", "S004"]),
    ("state=on_air", ["S001", "S002"]),
    ("kind=pole", ["S004"]),
    ("supply=transfer", ["S001", "S003", "S005"]),
    ("online=true", ["S001"]),
    ("online=false", ["S002", "S003", "S004", "S005"]),
    ("q=market", ["S002"]),
    ("q=xipu", ["S003"]),
    ("county=Xinjin&supply=direct", ["S002"]),
])
def test_site_filters(client, world, query, expected):
    body = get(client, world, "noc", f"/api/v1/sites?{query}").json()
    assert [s["site_id"] for s in body["items"]] == expected
    assert body["total"] == len(expected)


def test_site_detail_with_live_state_reservation_and_open_flags(client, world):
    site = get(client, world, "noc", "/api/v1/sites/S002").json()
    assert site["state"] == "on_air" and site["live"]["online"] is False
    assert site["live"]["on_battery"] is True
    assert site["reservation"]["feeder"] == "F-10"
    assert [f["kind"] for f in site["open_flags"]] == ["site_offline"]
    assert site["history"][-1]["to_state"] == "on_air"


def test_site_as_of(client, world):
    # S003 was imported as under_construction since 2026-09-01 (local): before that, no state.
    before = get(client, world, "viewer", "/api/v1/sites/S003?at=2026-08-31").json()
    assert before["state_at"] is None
    after = get(client, world, "viewer", "/api/v1/sites/S003?at=2026-09-02T00:00:00%2B08:00").json()
    assert after["state_at"] == "under_construction"
    assert after["at"].startswith("2026-09-01T16:00:00")


def test_refused_transition_is_a_409_with_the_reason(client, world):
    r = client.post("/api/v1/sites/S004/transitions", json={"state": "on_air"},
                    headers=bearer(world, "admin"))
    assert r.status_code == 409
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == "/api/v1/problems/transition-refused"
    assert body["state"] == "planned" and body["target"] == "on_air"
    assert "no such move" in body["reason"]
    assert get(client, world, "admin", "/api/v1/sites/S004").json()["state"] == "planned"
    audit = get(client, world, "admin", "/api/v1/audit?action=site.transition").json()
    assert audit["total"] == 0


def test_transition_is_made_by_the_account_and_audited(client, world):
    r = client.post("/api/v1/sites/S004/transitions",
                    json={"state": "site_secured", "note": "lease signed"},
                    headers=bearer(world, "admin"))
    assert r.status_code == 201, r.text
    assert r.json()["actor"] == "admin1" and r.json()["to_state"] == "site_secured"
    entry = get(client, world, "admin", "/api/v1/audit?action=site.transition").json()["items"][0]
    assert entry["actor"] == "admin1" and entry["target_id"] == "S004"
    assert entry["before"] == {"state": "planned"}
    assert entry["after"]["state"] == "site_secured" and entry["note"] == "lease signed"
    assert entry["client_ip"] == "testclient"


@pytest.mark.parametrize(("url", "loc"), [
    ("/api/v1/sites?limit=0", "limit"),
    ("/api/v1/sites?limit=501", "limit"),
    ("/api/v1/sites?state=flying", "state"),
    ("/api/v1/sites?sort=password_hash", "sort"),
    ("/api/v1/sites/S001?at=yesterday", "at"),
    ("/api/v1/flags?kind=nonsense", "kind"),
    ("/api/v1/flags?since=2026-13-01", "since"),
])
def test_bad_input_is_a_422_problem(client, world, url, loc):
    r = get(client, world, "admin", url)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == "/api/v1/problems/invalid-request" and body["status"] == 422
    assert any(loc in e["loc"] for e in body["errors"])


def test_flag_filters(client, world):
    def ids(q):
        return sorted(f["id"] for f in get(client, world, "viewer", f"/api/v1/flags?{q}").json()["items"])

    bills = sorted([world.bill_flag, world.second_bill_flag])
    assert ids("kind=overcharging") == bills
    assert ids("kind=overcharging&kind=site_offline") == sorted([*bills, world.offline_flag])
    assert ids("supplier_id=SUP-1") == [world.bill_flag]
    assert ids("county=Pidu") == [world.second_bill_flag]
    assert ids("severity=critical&site_id=S002") == [world.offline_flag]
    assert ids("until=2026-09-30") == []
    assert ids("since=2026-11-02T00:00:00Z&kind=overcharging") == []
    assert ids("since=2026-10-15&until=2026-10-16&kind=overcharging") == bills
    page = get(client, world, "viewer", "/api/v1/flags?limit=1&sort=-id").json()
    assert page["total"] == 3 and page["items"][0]["id"] == max([*bills, world.offline_flag])


def test_review_needs_a_note(client, world):
    url = f"/api/v1/flags/{world.bill_flag}/review"
    for body in ({"decision": "confirmed"}, {"decision": "confirmed", "note": "   "},
                 {"decision": "maybe", "note": "x"}):
        r = client.post(url, json=body, headers=bearer(world, "regulator"))
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, body
    assert get(client, world, "regulator", f"/api/v1/flags/{world.bill_flag}").json()["reviews"] == []


def test_review_is_attributed_to_the_account_and_audited(client, world):
    r = client.post(f"/api/v1/flags/{world.bill_flag}/review",
                    json={"decision": "confirmed", "note": "price 1.20 against cap 0.618"},
                    headers=bearer(world, "regulator"))
    assert r.status_code == 200, r.text
    flag = r.json()
    assert flag["status"] == "confirmed"
    assert [(x["decision"], x["reviewed_by"], x["note"]) for x in flag["reviews"]] == [
        ("confirmed", "regulator1", "price 1.20 against cap 0.618")]
    entry = get(client, world, "admin", f"/api/v1/audit?target_type=flag&target_id={world.bill_flag}"
                ).json()["items"][0]
    assert (entry["actor"], entry["action"]) == ("regulator1", "flag.review")
    assert entry["before"] == {"status": "open"}
    assert entry["after"] == {"status": "confirmed", "decision": "confirmed"}
    rows = get(client, world, "regulator", "/api/v1/reports/overcharging?period=2026-10").json()
    bill = next(r for r in rows if r["row"] == "bill" and r["flag_id"] == world.bill_flag)
    assert bill["status"] == "confirmed" and bill["reviewed_by"] == "regulator1"


def test_operational_flags_are_not_reviewed_by_the_regulator(client, world):
    r = client.post(f"/api/v1/flags/{world.offline_flag}/review",
                    json={"decision": "dismissed", "note": "not mine"},
                    headers=bearer(world, "regulator"))
    assert r.status_code == 403 and r.json()["type"] == "/api/v1/problems/forbidden"


def test_overcharging_report_downloads(client, world):
    r = get(client, world, "regulator", "/api/v1/reports/overcharging?period=2026-10&format=csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "B-1" in r.content.decode("utf-8-sig") and "reviewed_by" in r.text
    x = get(client, world, "regulator", "/api/v1/reports/overcharging?period=2026-10&format=xlsx")
    assert x.status_code == 200 and x.content[:2] == b"PK"


def test_ledger_endpoints(client, world):
    res = get(client, world, "grid", "/api/v1/reservations?substation=SUB-A").json()
    assert [r["site_id"] for r in res["items"]] == ["S001", "S002"] and res["total"] == 2
    tariffs = get(client, world, "regulator", "/api/v1/tariffs").json()
    assert tariffs["items"][0]["price_cny_per_kwh"] == 0.6
    bills = get(client, world, "regulator", "/api/v1/bills?supplier_id=SUP-2").json()
    assert [b["bill_id"] for b in bills["items"]] == ["B-2"]
    start = bills["items"][0]["period_start"]  # ISO 8601 with its offset
    assert start.endswith(("Z", "+00:00")) and start[:10] in ("2026-09-30", "2026-10-01")
    suppliers = get(client, world, "regulator", "/api/v1/suppliers").json()
    assert {s["supplier_id"] for s in suppliers} == {"SUP-1", "SUP-2"}


def test_import_upload_refuses_bad_rows_with_line_and_column(client, world):
    bad = "site_id,declared_kw,reserved_kw,feeder,substation,status\nS001,10,-1,F,SUB,energized\n"
    r = client.post("/api/v1/imports/reservations", files={"file": ("res.csv", bad, "text/csv")},
                    headers=bearer(world, "admin"))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    errors = r.json()["errors"]
    assert errors[0]["line"] == 2 and errors[0]["column"] == "reserved_kw"
    good = "site_id,declared_kw,reserved_kw,feeder,substation,status\nS005,5,6,F-30,SUB-B,requested\n"
    r = client.post("/api/v1/imports/reservations", files={"file": ("res.csv", good, "text/csv")},
                    headers=bearer(world, "admin"))
    assert r.status_code == 201 and r.json()["inserted"] == 1
    entry = get(client, world, "admin", "/api/v1/audit?action=import.reservations").json()["items"]
    assert len(entry) == 1 and entry[0]["after"]["inserted"] == 1


def test_revoked_token_and_disabled_user_are_refused(client, world):
    from twin.accounts import revoke_token, set_disabled

    assert get(client, world, "grid", "/api/v1/me").json()["username"] == "grid1"
    with world.store.session() as s:
        set_disabled(s, "grid1", True, actor="test")
    r = get(client, world, "grid", "/api/v1/me")
    assert r.status_code == 401 and r.json()["type"] == "/api/v1/problems/not-authenticated"
    me = get(client, world, "noc", "/api/v1/me").json()
    assert me["role"] == "noc"
    with world.store.session() as s:
        from twin.accounts import list_tokens

        token_id = next(t["id"] for t in list_tokens(s, "noc1"))
        revoke_token(s, token_id, actor="test")
    assert get(client, world, "noc", "/api/v1/me").status_code == 401
    r = client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_audit_log_is_append_only(world):
    with world.store.engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM audit_log")).scalar()
        assert n >= 10  # user.add and token.create for each role
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"):
            with world.store.engine.begin() as conn:
                conn.execute(text(statement))
    with world.store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == n


def test_problem_types_are_served(client):
    r = client.get("/api/v1/problems/transition-refused")
    assert r.status_code == 200 and r.json()["status"] == 409
    assert client.get("/api/v1/problems/nope").status_code == 404


def test_served_schema_equals_the_checked_in_one(client):
    served = client.get("/api/v1/openapi.json").json()
    checked_in = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert served == checked_in, ("the API changed: regenerate docs/openapi.json"
                                  " (.venv/bin/python -m web.schema > docs/openapi.json) and review the diff")
    assert served["info"]["title"] == "sitetwin API"
    assert "/api/v1/flags/{flag_id}/review" in served["paths"]


def test_health(client, world):
    body = client.get("/api/v1/health", headers=bearer(world, "noc")).json()
    assert body == {**body, "status": "ok", "registry": "ok", "sites": 5, "open_flags": 3}
    anonymous = client.get("/api/v1/health").json()
    assert anonymous["status"] == "ok" and anonymous["sites"] is None


def test_noc_acknowledges_and_assigns_an_operational_flag(client, world):
    url = f"/api/v1/flags/{world.offline_flag}"
    r = client.post(url + "/ack", json={"note": "field team called"}, headers=bearer(world, "noc"))
    assert r.status_code == 200, r.text
    flag = r.json()
    assert flag["acknowledged_by"] == "noc1" and flag["acknowledged_at"] and flag["status"] == "open"
    r = client.post(url + "/assign", json={"assignee": "zhang.san"}, headers=bearer(world, "noc"))
    assert r.status_code == 200 and r.json()["assignee"] == "zhang.san"
    assert client.post(url + "/assign", json={"assignee": " "},
                       headers=bearer(world, "noc")).status_code == 422
    entries = get(client, world, "admin", f"/api/v1/audit?target_type=flag&target_id={world.offline_flag}"
                  ).json()["items"]
    assert [e["action"] for e in entries] == ["flag.assign", "flag.ack"]
    assert entries[1]["before"] == {"acknowledged_by": None, "acknowledged_at": None}
    assert entries[1]["note"] == "field team called"
    assert entries[0]["after"] == {"assignee": "zhang.san"}
    # Bill flags are the regulator's to review, not the NOC's to acknowledge.
    r = client.post(f"/api/v1/flags/{world.bill_flag}/ack", json={}, headers=bearer(world, "noc"))
    assert r.status_code == 403


def test_tokens_by_their_owner_and_by_an_admin(client, world):
    r = client.post("/api/v1/me/tokens", json={"name": "my script"}, headers=bearer(world, "grid"))
    assert r.status_code == 201
    mine = r.json()
    assert mine["token"].startswith("stw_") and mine["username"] == "grid1"
    listed = get(client, world, "grid", "/api/v1/me/tokens").json()
    assert {t["name"] for t in listed} == {"tests", "my script"}
    assert all("token" not in t for t in listed)
    own = {"Authorization": f"Bearer {mine['token']}"}
    assert client.get("/api/v1/me", headers=own).json()["username"] == "grid1"
    # Someone else's token is not yours to revoke; an admin may revoke any.
    theirs = next(t["id"] for t in get(client, world, "admin", "/api/v1/me/tokens").json())
    assert client.delete(f"/api/v1/me/tokens/{theirs}", headers=bearer(world, "grid")).status_code == 404
    assert client.delete(f"/api/v1/me/tokens/{mine['id']}", headers=bearer(world, "grid")).status_code == 200
    assert client.get("/api/v1/me", headers=own).status_code == 401
    r = client.post("/api/v1/users/noc1/tokens", json={"name": "noc wall"}, headers=bearer(world, "admin"))
    assert r.status_code == 201 and r.json()["username"] == "noc1"
    assert client.delete(f"/api/v1/tokens/{r.json()['id']}", headers=bearer(world, "admin")).status_code == 200
    actions = [e["action"] for e in get(client, world, "admin", "/api/v1/audit?target_type=token&limit=4"
                                         ).json()["items"]]
    assert actions == ["token.revoke", "token.create", "token.revoke", "token.create"]
