"""The registry opens, creates its schema once, and keeps times UTC-aware on both backends."""

from __future__ import annotations

import shutil
import textwrap
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from twin.errors import StoreError
from twin.migrations import latest_version
from twin.models import Flag, Tariff
from twin.store import open_store

pytestmark = pytest.mark.integration


def test_open_creates_schema_once_and_reopens(twin_url):
    a = open_store(twin_url)
    assert a.version == latest_version()
    a.close()
    b = open_store(twin_url)  # a second open finds the schema and changes nothing
    with b.session() as s:
        versions = s.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [latest_version()]
    b.close()


def test_refuses_a_newer_schema(twin_url):
    s = open_store(twin_url)
    with s.session() as ses:
        ses.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    s.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(twin_url)


def test_a_registry_from_before_alembic_is_stamped_and_kept(twin_url):
    s = open_store(twin_url)
    with s.session() as ses:
        ses.add(Tariff(region="R", customer_class="C", price_cny_per_kwh=0.6,
                       effective_from=datetime(2026, 1, 1, tzinfo=UTC)))
        ses.execute(text("DROP TABLE alembic_version"))
        ses.execute(text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                         " description VARCHAR(200), applied_at TIMESTAMP)"))
        ses.execute(text("INSERT INTO schema_version VALUES (1, 'baseline', CURRENT_TIMESTAMP)"))
    s.close()
    again = open_store(twin_url)
    assert again.version == latest_version()
    with again.session() as ses:
        assert ses.scalars(select(Tariff)).one().price_cny_per_kwh == 0.6
    again.close()


def test_datetimes_come_back_utc_aware(store):
    cst = timezone(timedelta(hours=8))
    at = datetime(2026, 3, 1, 8, 0, tzinfo=cst)
    with store.session() as s:
        s.add(Tariff(region="R", customer_class="C", effective_from=at, price_cny_per_kwh=0.6))
    with store.session() as s:
        got = s.scalars(select(Tariff)).one()
    assert got.effective_from == datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    assert got.effective_from.tzinfo is not None and got.effective_from.utcoffset() == timedelta(0)
    assert got.period == "flat"


def test_flag_evidence_json_round_trips(store):
    now = datetime(2026, 5, 1, tzinfo=UTC)
    with store.session() as s:
        s.add(Flag(kind="overcharging", rule="overcharging", site_id="S1", severity="warning",
                   status="open", opened_at=now, updated_at=now, window_start=now,
                   window_end=now, summary="too dear", evidence={"excess_cny": 12.5, "rows": [1]},
                   dedup_key="overcharging:S1:B1"))
    with store.session() as s:
        f = s.scalars(select(Flag)).one()
    assert f.evidence == {"excess_cny": 12.5, "rows": [1]} and f.id >= 1


def test_naive_datetime_is_refused(store):
    with pytest.raises(StoreError):
        with store.session() as s:
            s.add(Tariff(region="R", customer_class="C", effective_from=datetime(2026, 1, 1),
                         price_cny_per_kwh=0.6))


def test_bad_url_is_a_store_error():
    with pytest.raises(StoreError):
        open_store("nonsense://")


def test_errors_never_show_the_password(tmp_path):
    from sitetwin.services import free_port

    with pytest.raises(StoreError) as err:
        open_store(f"postgresql+psycopg://u:s3cret@127.0.0.1:{free_port()}/x?connect_timeout=2")
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


def test_an_older_registry_is_upgraded_in_order(twin_url, tmp_path, monkeypatch):
    import twin.migrations as migrations

    open_store(twin_url).close()  # a registry at today's head
    head = latest_version()
    versions = tmp_path / "alembic" / "versions"
    shutil.copytree(migrations.LOCATION, tmp_path / "alembic")
    n = int(head)
    (versions / f"{n + 1:04d}_notes.py").write_text(textwrap.dedent(f"""
        import sqlalchemy as sa
        from alembic import op
        revision = "{n + 1:04d}"
        down_revision = "{head}"
        def upgrade():
            op.create_table("site_notes", sa.Column("site_id", sa.String(64), primary_key=True),
                            sa.Column("body", sa.Text))
        """))
    (versions / f"{n + 2:04d}_fill.py").write_text(textwrap.dedent(f"""
        from alembic import op
        revision = "{n + 2:04d}"
        down_revision = "{n + 1:04d}"
        def upgrade():
            op.execute("INSERT INTO site_notes VALUES ('S1', 'hello')")
        """))
    monkeypatch.setattr(migrations, "LOCATION", tmp_path / "alembic")
    s = open_store(twin_url)
    assert s.version == f"{n + 2:04d}"
    with s.session() as ses:
        assert ses.execute(text("SELECT version_num FROM alembic_version")).scalars().all() \
            == [f"{n + 2:04d}"]
        assert ses.execute(text("SELECT body FROM site_notes")).scalar() == "hello"
    s.close()
    open_store(twin_url).close()  # nothing left to apply
    with open_store(twin_url).session() as ses:
        assert ses.execute(text("SELECT count(*) FROM site_notes")).scalar() == 1


def test_revision_0002_adds_the_supplier_identity_to_a_0001_registry(twin_url):
    # A registry as revision 0001 left it: bills and sites without the new columns.
    s = open_store(twin_url)
    with s.session() as ses:
        for table, column in (("bills", "supplier_credit_code"), ("bills", "supplier_address"),
                              ("bills", "supplier_contact"), ("sites", "address")):
            ses.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        ses.execute(text("INSERT INTO sites (site_id, name, lat, lon, county, kind, supply, region,"
                         " customer_class, state, created_at, updated_at) VALUES ('S1', 'One', 30, 104,"
                         " 'Pi', 'macro', 'transfer', 'SC', 'C', 'on_air', '2026-01-01 00:00:00',"
                         " '2026-01-01 00:00:00')"))
        ses.execute(text("INSERT INTO bills (bill_id, site_id, supplier_id, period_start, period_end,"
                         " billed_kwh, amount_cny) VALUES ('B1', 'S1', 'LL', '2026-10-01 00:00:00',"
                         " '2026-11-01 00:00:00', 10, 8)"))
        ses.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    s.close()
    again = open_store(twin_url)
    assert again.version == latest_version()
    from twin.models import Bill, Site

    with again.session() as ses:
        bill = ses.get(Bill, "B1")
        assert (bill.billed_kwh, bill.supplier_credit_code) == (10.0, None)
        bill.supplier_credit_code = "91350100M000100Y43"
        ses.get(Site, "S1").address = "成都市"
    with again.session() as ses:
        assert ses.get(Bill, "B1").supplier_credit_code == "91350100M000100Y43"
        assert ses.get(Site, "S1").address == "成都市"
    again.close()
def test_upgrade_to_0004_merges_duplicate_open_flags_then_enforces_one(twin_url):
    """A registry of revision 0001 may hold two open flags of one condition (two ``rules run``
    at once): the upgrade keeps the oldest, resolves the other with a note, adds the index."""
    from twin.models import OPEN_FLAG_INDEX

    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def flag(opened_h: int, status: str = "open", key: str = "site_offline|S1||") -> Flag:
        at = t0 + timedelta(hours=opened_h)
        return Flag(kind="site_offline", rule="site_offline", site_id="S1", severity="warning",
                    status=status, opened_at=at, updated_at=at, window_start=at,
                    window_end=at + timedelta(hours=1), summary="offline", evidence={"n": opened_h},
                    dedup_key=key)

    s = open_store(twin_url)
    with s.session() as ses:
        ses.execute(text(f"DROP INDEX {OPEN_FLAG_INDEX}"))
        ses.add_all([flag(2), flag(0), flag(1), flag(0, "resolved"), flag(0, key="site_offline|S2||")])
        ses.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    s.close()

    s = open_store(twin_url)
    try:
        assert s.version == latest_version()
        with s.session() as ses:
            rows = ses.scalars(select(Flag).order_by(Flag.opened_at, Flag.id)).all()
            open_s1 = [f for f in rows if f.status == "open" and f.site_id == "S1"
                       and f.dedup_key.endswith("S1||")]
            assert len(open_s1) == 1
            keep = open_s1[0]
            assert keep.opened_at == t0  # the oldest
            assert keep.window_end == t0 + timedelta(hours=3)  # widened over the merged ones
            merged = [f for f in rows if f.evidence.get("merged_into") == keep.id]
            assert sorted(f.evidence["n"] for f in merged) == [1, 2]
            assert all(f.status == "resolved" and f.resolved_at and "0004" in f.evidence["note"]
                       for f in merged)
            assert sorted(keep.evidence["merged_flags"]) == sorted(f.id for f in merged)
            assert sum(f.status == "open" for f in rows) == 2  # S1's and S2's
        with pytest.raises(StoreError, match="IntegrityError"), s.session() as ses:
            ses.add(flag(5))
        with s.session() as ses:  # a resolved duplicate is fine
            ses.add(flag(5, "resolved"))
    finally:
        s.close()


def test_revision_0007_adds_the_interferers_and_maintenance_tables(twin_url):
    # A registry as revision 0002 left it: neither table.
    s = open_store(twin_url)
    with s.session() as ses:
        ses.execute(text("DROP TABLE interferers"))
        ses.execute(text("DROP TABLE maintenance_windows"))
        ses.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    s.close()
    again = open_store(twin_url)
    assert again.version == latest_version()
    from twin.models import Interferer

    with again.session() as ses:
        ses.add(Interferer(interferer_id="EXAM-1", name="Exam hall", lat=30.6, lon=104.0,
                           radius_m=800.0, bands="n78", windows="2026-06-07T00:00:00Z/2026-06-07T09:00:00Z"))
    with again.session() as ses:
        assert ses.get(Interferer, "EXAM-1").updated_at.tzinfo is not None
        assert ses.execute(text("SELECT count(*) FROM maintenance_windows")).scalar() == 0
    again.close()
