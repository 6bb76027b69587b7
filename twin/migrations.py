"""Schema migrations with Alembic, run inside the caller's transaction.

Revisions live in ``twin/alembic/versions`` and are numbered ``0001``,
``0002``, ... (the revision id is the number, so ``Store.version`` reads as
one).  A new registry is created from the current models and stamped with the
head revision (Alembic's "create_all, then stamp head"); an existing one gets
every revision above its own, in order.  A registry made by sitetwin before
Alembic (a ``schema_version`` table at version 1) is stamped ``0001`` first.
A registry whose revision this sitetwin does not know was written by a newer
one and is refused rather than touched.

To change the schema: edit ``twin.models``, then add a revision
(``.venv/bin/alembic -c twin/alembic.ini revision -m "what"``, rename it to the
next number and set ``revision``/``down_revision`` to numbers) whose
``upgrade`` brings a registry of the previous revision to the new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, inspect, text

from twin.errors import StoreError
from twin.models import Base

__all__ = ["LEGACY_TABLE", "current_version", "latest_version", "script_directory", "upgrade"]

LOCATION = Path(__file__).with_name("alembic")
LEGACY_TABLE = "schema_version"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(LOCATION))
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def latest_version() -> str:
    head = script_directory().get_current_head()
    assert head is not None, "twin/alembic/versions has no revision"
    return head


def current_version(conn: Connection) -> str | None:
    """The registry's revision, or ``None`` if it has none yet."""
    return MigrationContext.configure(conn).get_current_revision()


def _legacy_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(LEGACY_TABLE):
        return None
    version = conn.scalar(text("SELECT max(version) FROM schema_version"))
    return None if version is None else int(version)


def upgrade(conn: Connection) -> str:
    """Create or upgrade the schema inside the caller's transaction; returns the revision."""
    if conn.dialect.name == "postgresql":
        # Two processes opening a new registry at once must not both create it.
        conn.execute(text("SELECT pg_advisory_xact_lock(7301931)"))
    script = script_directory()
    head = latest_version()
    context = MigrationContext.configure(conn)
    current = context.get_current_revision()
    if current is None:
        legacy = _legacy_version(conn)
        if legacy is not None and legacy > 1:
            raise StoreError(f"the registry's schema is version {legacy}, newer than this"
                             f" sitetwin understands; upgrade sitetwin")
        if legacy is None and not inspect(conn).has_table("sites"):
            Base.metadata.create_all(conn)
            context.stamp(script, head)
            return head
        context.stamp(script, "0001")
        current = "0001"
    try:
        script.get_revision(current)
    except CommandError:
        raise StoreError(f"the registry's schema is revision {current}, newer than this"
                         f" sitetwin understands ({head}); upgrade sitetwin") from None
    if current == head:
        return head

    def steps(rev: Any, _context: Any) -> Any:
        return script._upgrade_revs(head, rev)

    with EnvironmentContext(_config(), script, fn=steps, destination_rev=head) as env:
        env.configure(connection=conn, target_metadata=Base.metadata, fn=steps,
                      render_as_batch=True, transactional_ddl=True)
        env.run_migrations()
    return head
