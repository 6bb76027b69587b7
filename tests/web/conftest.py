"""Fixtures of the web tests: a registry (SQLite and PostgreSQL) filled through the CSV
importer and the flag book, an account and an API token per role, and the app on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rules.finding import Finding
from rules.flag import FlagBook
from twin.accounts import ROLES, add_user, create_token
from twin.imports import import_csv
from twin.models import LiveSiteState
from twin.store import Store, open_store
from web.app import create_app

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"

SITES_CSV = """site_id,name,lat,lon,county,kind,supply,region,customer_class,district,state,state_since
S001,Xinjin Bridge,30.41,103.81,Xinjin,macro,transfer,Sichuan,industrial,Wujin,on_air,2026-03-01
S002,Xinjin Market,30.42,103.82,Xinjin,micro,direct,Sichuan,industrial,Wujin,on_air,2026-03-05
S003,Pidu Campus,30.80,103.90,Pidu,macro,transfer,Sichuan,industrial,Xipu,under_construction,2026-09-01
S004,Pidu Depot,30.81,103.91,Pidu,pole,direct,Sichuan,industrial,,planned,2026-01-10
S005,Jintang Hill,30.86,104.41,Jintang,indoor,transfer,Sichuan,industrial,,approved,2026-06-01
"""
RESERVATIONS_CSV = """site_id,declared_kw,reserved_kw,feeder,substation,status
S001,10,12,F-10,SUB-A,energized
S002,6,8,F-10,SUB-A,energized
S003,15,20,F-20,SUB-B,approved
"""
TARIFFS_CSV = """region,customer_class,effective_from,price_cny_per_kwh
Sichuan,industrial,2026-01-01,0.60
"""
BILLS_CSV = """bill_id,site_id,supplier_id,period_start,period_end,billed_kwh,amount_cny,supplier_name
B-1,S001,SUP-1,2026-10-01,2026-11-01,1000,1200,Golden Landlord Ltd
B-2,S003,SUP-2,2026-10-01,2026-11-01,800,500,Honest Property Co
"""


@dataclass
class World:
    """What the fixture put in the registry: ids the tests ask about."""

    store: Store
    tokens: dict[str, str]
    bill_flag: int
    second_bill_flag: int
    offline_flag: int


def _csv(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def _bill_finding(bill_id: str, site: str, supplier: str, price: float, excess: float) -> Finding:
    # October in UTC and in local time alike (the report's month is the window's start).
    start = datetime(2026, 10, 1, tzinfo=UTC)
    return Finding(
        kind="overcharging", rule="overcharging", site_id=site, severity="critical",
        window_start=start, window_end=datetime(2026, 11, 1, tzinfo=UTC),
        summary=f"bill {bill_id} from {supplier}: {price:.4f} CNY/kWh against a cap of 0.6180",
        bill_id=bill_id, supplier_id=supplier,
        evidence={"bill_id": bill_id, "supplier_id": supplier, "supplier_name": "Golden Landlord Ltd",
                  "unit_price_cny_per_kwh": price, "cap_cny_per_kwh": 0.6, "loss_share": 0.03,
                  "allowed_cny_per_kwh": 0.618, "tolerance": 0.0, "billed_kwh": 1000.0,
                  "amount_cny": 1200.0, "excess_cny": excess,
                  "cap_basis": "metered-energy-weighted catalogue price", "time_of_use": False,
                  "metered_kwh": 998.2, "coverage": 0.97, "energy_mix_kwh": {"flat": 998.2},
                  "tariff_rows": [{"period": "flat", "hours": "", "effective_from":
                                   "2025-12-31T16:00:00Z", "price_cny_per_kwh": 0.6}]})


def fill(store: Store, tmp: Path) -> World:
    """Sites, reservations, tariffs and bills through the importer; flags through the flag
    book (as the rule engine writes them); one account and token per role."""
    for kind, text in (("sites", SITES_CSV), ("reservations", RESERVATIONS_CSV),
                       ("tariffs", TARIFFS_CSV), ("bills", BILLS_CSV)):
        import_csv(store, _csv(tmp, f"{kind}.csv", text), kind, actor="fixture")
    with store.session() as s:
        s.add(LiveSiteState(site_id="S001", last_seen=NOW - timedelta(seconds=30), mains_ok=True,
                            on_battery=False, battery_soc_pct=98.0, power_kw=7.5,
                            cabinet_temp_c=27.0, energy_kwh=12345.0, registered=True))
        s.add(LiveSiteState(site_id="S002", last_seen=NOW - timedelta(hours=3), mains_ok=False,
                            on_battery=True, battery_soc_pct=40.0, power_kw=3.0,
                            cabinet_temp_c=31.0, energy_kwh=2222.0, registered=True))
    book = FlagBook(store)
    opened = book.sync("overcharging", [_bill_finding("B-1", "S001", "SUP-1", 1.2, 582.0),
                                        _bill_finding("B-2", "S003", "SUP-2", 0.625, 5.6)],
                       NOW, 1800).opened
    offline = book.sync("site_offline", [Finding(
        kind="site_offline", rule="site_offline", site_id="S002", severity="critical",
        window_start=NOW - timedelta(hours=3), window_end=NOW, summary="S002 silent for 3 h",
        evidence={"last_seen": (NOW - timedelta(hours=3)).isoformat(), "silent_s": 10800})],
        NOW, 1800).opened
    tokens = {}
    with store.session() as s:
        for role in ROLES:
            add_user(s, f"{role}1", role, PASSWORD, actor="fixture")
            tokens[role], _ = create_token(s, f"{role}1", "tests", actor="fixture")
    return World(store, tokens, opened[0]["id"], opened[1]["id"], offline[0]["id"])


def no_peaks(facts, until):
    """The ledger's peak source when a test is not about peaks: InfluxDB 'did not answer'."""
    return None, {}, 7 * 86400.0, "not asked"


def no_collectors(now):
    """The pipeline source when a test is not about it: no collector has reported."""
    return []


@pytest.fixture(autouse=True)
def _cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at its lowest cost: these tests log in hundreds of times, each default hash
    costs about 0.2 s here.  The production parameters are checked in
    tests/twin/test_accounts.py."""
    from argon2 import PasswordHasher

    import twin.accounts

    monkeypatch.setattr(twin.accounts, "_hasher",
                        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def world(twin_url: str, tmp_path: Path) -> Iterator[World]:
    store = open_store(twin_url)
    try:
        yield fill(store, tmp_path)
    finally:
        store.close()


@pytest.fixture
def web_settings(settings):
    return settings


@pytest.fixture
def app(world: World, web_settings):
    return create_app(web_settings, world.store, peaks=no_peaks, pipeline=no_collectors,
                      clock=lambda: NOW)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


def bearer(world: World, role: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[role]}"} if role else {}
