"""At most one open flag per rule and condition: a partial unique index on open flags.

Two ``rules run`` at once each opened a flag for the same condition (up to 100
flags for 50 sites, on SQLite and PostgreSQL).  The index makes the database
refuse the second; ``rules.flag.FlagBook.sync`` then re-reads and updates the
flag the other run opened.

A registry written before this revision may already hold such duplicates, and
the index cannot be created over them: for each (rule, dedup_key) with several
open flags the oldest is kept (its window widened to cover the others) and the
others are resolved, their evidence noting which flag they were merged into.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from twin.models import OPEN_FLAG_INDEX, JSONType, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MERGE_NOTE = "resolved by migration 0004: a duplicate open flag of the same condition"

_flags = sa.table(
    "flags",
    sa.column("id", sa.Integer),
    sa.column("rule", sa.String),
    sa.column("dedup_key", sa.String),
    sa.column("status", sa.String),
    sa.column("opened_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("resolved_at", UTCDateTime()),
    sa.column("window_start", UTCDateTime()),
    sa.column("window_end", UTCDateTime()),
    sa.column("evidence", JSONType),
)


def merge_duplicates(conn: sa.Connection, now: datetime) -> int:
    """Resolve every open flag but the oldest of its (rule, dedup_key); returns how many."""
    f = _flags.c
    dupes = conn.execute(sa.select(f.rule, f.dedup_key).where(f.status == "open")
                         .group_by(f.rule, f.dedup_key).having(sa.func.count() > 1)).all()
    merged = 0
    for rule, key in dupes:
        rows = conn.execute(sa.select(_flags).where(f.status == "open", f.rule == rule,
                                                    f.dedup_key == key)
                            .order_by(f.opened_at, f.id)).all()
        keep, rest = rows[0], rows[1:]
        for r in rest:
            evidence = dict(r.evidence or {})
            evidence["merged_into"] = keep.id
            evidence["note"] = MERGE_NOTE
            conn.execute(sa.update(_flags).where(f.id == r.id).values(
                status="resolved", resolved_at=now, updated_at=now, evidence=evidence))
        conn.execute(sa.update(_flags).where(f.id == keep.id).values(
            window_start=min(r.window_start for r in rows),
            window_end=max(r.window_end for r in rows),
            updated_at=max(r.updated_at for r in rows),
            evidence={**(keep.evidence or {}), "merged_flags": [r.id for r in rest]}))
        merged += len(rest)
    return merged


def upgrade() -> None:
    conn = op.get_bind()
    merge_duplicates(conn, datetime.now(UTC))
    if OPEN_FLAG_INDEX in {ix["name"] for ix in sa.inspect(conn).get_indexes("flags")}:
        return  # a registry stamped 0001 but created from later models already has it
    op.create_index(OPEN_FLAG_INDEX, "flags", ["rule", "dedup_key"], unique=True,
                    postgresql_where=sa.text("status = 'open'"),
                    sqlite_where=sa.text("status = 'open'"))


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
