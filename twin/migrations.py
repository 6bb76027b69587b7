"""Versioned schema migrations (an Alembic-like mechanism without the dependency).

The ``schema_version`` table holds one row per applied migration.  A new
registry is created from the current models and stamped with the latest
version (as Alembic's "create_all, then stamp head"); an existing one gets
every migration above its version, in order, each in the open transaction.
To change the schema: edit ``twin.models`` and append a ``Migration`` whose
``upgrade`` brings a registry of the previous version to the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, inspect, select, text

from twin.errors import StoreError
from twin.models import Base, SchemaVersion, utcnow

__all__ = ["MIGRATIONS", "Migration", "current_version", "latest_version", "upgrade"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[Connection], None]


def _baseline(conn: Connection) -> None:
    Base.metadata.create_all(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "registry, lifecycle, live state, reservations, tariffs, bills, flags", _baseline),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version


def current_version(conn: Connection) -> int | None:
    """The registry's schema version, or ``None`` if it has none yet."""
    if not inspect(conn).has_table(SchemaVersion.__tablename__):
        return None
    return conn.scalar(select(SchemaVersion.version).order_by(SchemaVersion.version.desc())
                       .limit(1))


def upgrade(conn: Connection) -> int:
    """Create or upgrade the schema inside the caller's transaction; returns the version."""
    if conn.dialect.name == "postgresql":
        # Two processes opening a new registry at once must not both create it.
        conn.execute(text("SELECT pg_advisory_xact_lock(7301931)"))
    version = current_version(conn)
    latest = latest_version()
    if version is not None and version > latest:
        raise StoreError(f"the registry's schema is version {version}, newer than this"
                         f" sitetwin understands ({latest}); upgrade sitetwin")
    if version is None:
        Base.metadata.create_all(conn)
        conn.execute(SchemaVersion.__table__.insert(), [
            {"version": m.version, "description": m.description, "applied_at": utcnow()}
            for m in MIGRATIONS])
        return latest
    for m in MIGRATIONS:
        if m.version > version:
            m.upgrade(conn)
            conn.execute(SchemaVersion.__table__.insert(),
                         [{"version": m.version, "description": m.description,
                           "applied_at": utcnow()}])
    return latest
