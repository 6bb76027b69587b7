"""Revision 0006 (alarms) upgrades a registry of the revision before it, on SQLite and
PostgreSQL: the flag columns and the three tables appear, and the flags that exist count
as announced (turning notifications on does not replay the history)."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, inspect, text

from twin.migrations import latest_version, script_directory
from twin.models import Base
from twin.store import open_store

NEW_TABLES = {"flag_actions", "notify_state", "notify_outbox"}
NEW_FLAG_COLUMNS = {"acknowledged_by", "acknowledged_at", "assignee"}
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _registry_before_0006(url: str) -> None:
    """The models without what 0006 adds, stamped with 0006's ``down_revision``."""
    before = MetaData()
    for table in Base.metadata.sorted_tables:
        if table.name in NEW_TABLES:
            continue
        columns = [c._copy() for c in table.columns
                   if not (table.name == "flags" and c.name in NEW_FLAG_COLUMNS)]
        Table(table.name, before, *columns)
    script = script_directory()
    engine = create_engine(url)
    with engine.begin() as conn:
        before.create_all(conn)
        MigrationContext.configure(conn).stamp(script, script.get_revision("0006").down_revision)
        for site, status in (("S1", "open"), ("S2", "resolved")):
            conn.execute(text(
                "INSERT INTO flags (kind, rule, site_id, severity, status, opened_at, updated_at,"
                " window_start, window_end, summary, evidence, dedup_key) VALUES ('site_offline',"
                " 'site_offline', :site, 'warning', :status, :t, :t, :t, :t, 'silent', '{}', :key)"),
                {"site": site, "status": status, "t": T0.replace(tzinfo=None), "key": f"k:{site}"})
    engine.dispose()


def test_0006_upgrades_the_registry_before_it(twin_url):
    _registry_before_0006(twin_url)
    store = open_store(twin_url)
    try:
        assert store.version == latest_version()
        found = inspect(store.engine)
        assert set(found.get_table_names()) >= NEW_TABLES
        assert {c["name"] for c in found.get_columns("flags")} >= NEW_FLAG_COLUMNS
        with store.session() as s:
            states = s.execute(text("SELECT f.site_id, n.status, n.seq FROM notify_state n"
                                    " JOIN flags f ON f.id = n.flag_id ORDER BY f.site_id")).all()
        assert [tuple(r) for r in states] == [("S1", "open", 0), ("S2", "resolved", 0)]
        from core.settings import load_settings
        from notify import Notifier
        from rules.flag import FlagBook

        settings = load_settings(None, notify={"channels": []})
        assert Notifier(settings.notify, store, zone=settings.time.zone).tick(datetime.now(UTC)).events == 0
        flag = FlagBook(store).ack(FlagBook(store).list(site_id="S1")[0]["id"], "zhang.san",
                                   datetime.now(UTC))
        assert flag["acknowledged_by"] == "zhang.san" and flag["actions"][0]["action"] == "ack"
    finally:
        store.close()
